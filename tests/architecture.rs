//! The import rules of `src/` (README, "Development"), checked on the source text so that a
//! change that breaks them fails here rather than in a review: no stage imports another stage,
//! and nothing below `cli` imports `cli`.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The stage a file belongs to: `src/stages/NAME.rs` or `src/stages/NAME/…`; `None` for
/// `src/stages/mod.rs` (the driver, which knows every stage) and files outside the stages.
fn stage_of(rel: &Path) -> Option<String> {
    let mut parts = rel.iter().map(|p| p.to_string_lossy().into_owned());
    if parts.next()? != "stages" {
        return None;
    }
    let first = parts.next()?;
    if first == "mod.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// Code lines only: the rules are about imports, not about what comments mention.
fn code(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_start()))
        .filter(|(_, l)| !l.starts_with("//"))
}

#[test]
fn no_stage_imports_another_stage_and_nothing_below_cli_imports_cli() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    let mut broken = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(&src).expect("under src/");
        let text = fs::read_to_string(path).expect("read a source file");
        let top = rel.to_string_lossy();
        let below_cli = !matches!(top.as_ref(), "cli.rs" | "main.rs" | "lib.rs");
        let stage = stage_of(rel);
        for (n, line) in code(&text) {
            if below_cli && line.contains("crate::cli") {
                broken.push(format!("src/{top}:{n}: imports cli: {line}"));
            }
            if stage.is_some() && line.contains("crate::stages") {
                broken.push(format!("src/{top}:{n}: a stage imports the stages: {line}"));
            }
            // Inside a stage's folder `super::` is that stage; two levels up is `stages`.
            // The one exception: tests of a stage's submodule reuse the stage's test fixtures.
            if stage.is_some() && line.contains("super::super::") && !line.contains("::tests::") {
                broken.push(format!("src/{top}:{n}: reaches above its stage: {line}"));
            }
            // A stage file directly in src/stages/: `super::` is `stages` itself.
            if rel.parent() == Some(Path::new("stages"))
                && stage.is_some()
                && line.contains("super::")
                && !line.contains("use super::*;")
            {
                broken.push(format!("src/{top}:{n}: imports through stages/: {line}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "import rules broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_rule_check_sees_a_stage_importing_a_sibling() {
    assert_eq!(
        stage_of(Path::new("stages/runtime/wait.rs")).as_deref(),
        Some("runtime")
    );
    assert_eq!(
        stage_of(Path::new("stages/check.rs")).as_deref(),
        Some("check")
    );
    assert_eq!(stage_of(Path::new("stages/mod.rs")), None);
    assert_eq!(stage_of(Path::new("address.rs")), None);
    let lines: Vec<_> = code("// crate::stages::x\nuse crate::stages::provision;\n").collect();
    assert_eq!(lines, vec![(2, "use crate::stages::provision;")]);
}
