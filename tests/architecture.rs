//! The import rules of `src/` (README, "Development"), checked on the source text so that a
//! change that breaks them fails here rather than in a review: no stage imports another stage,
//! no command imports another command, nothing below `cli` imports `cli`, and no import circle
//! between modules, in `src/` or in any crate under `crates/`.

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

/// A folder whose members must not import each other: `src/FOLDER/NAME.rs` or
/// `src/FOLDER/NAME/…` is the member NAME.
struct Folder {
    name: &'static str,
    /// What a member is called in a message.
    member: &'static str,
    /// Files of the folder that are no member and may import every member: `mod.rs`, and the
    /// plumbing that runs them (the stage runner, the pipeline and drift's recreate that join
    /// two stages' parts, the error that names each stage's error).
    above: &'static [&'static str],
    /// Modules of the folder every member may import: the types of the boundary they share.
    shared: &'static [&'static str],
}

const FOLDERS: [Folder; 2] = [
    Folder {
        name: "stages",
        member: "stage",
        above: &[
            "mod.rs",
            "hosts.rs",
            "pipeline.rs",
            "recreate.rs",
            "error.rs",
        ],
        shared: &["handoff"],
    },
    Folder {
        name: "commands",
        member: "command",
        above: &["mod.rs"],
        shared: &[],
    },
];

/// The folder and member a file belongs to: `src/stages/NAME.rs` or `src/stages/NAME/…` is the
/// stage NAME; `None` for the folder's own files (`above`) and for files outside the folders.
fn member_of(rel: &Path) -> Option<(&'static Folder, String)> {
    let mut parts = rel.iter().map(|p| p.to_string_lossy().into_owned());
    let top = parts.next()?;
    let folder = FOLDERS.iter().find(|f| f.name == top)?;
    let first = parts.next()?;
    if folder.above.contains(&first.as_str()) {
        return None;
    }
    Some((folder, first.trim_end_matches(".rs").to_string()))
}

/// Code lines only: the rules are about imports, not about what comments mention.
fn code(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_start()))
        .filter(|(_, l)| !l.starts_with("//"))
}

/// The rule breaks of one line of a member of `folder` (a file directly in the folder when
/// `direct`).
fn member_breaks(folder: &Folder, direct: bool, line: &str) -> Vec<&'static str> {
    let mut broken = Vec::new();
    let prefix = format!("crate::{}", folder.name);
    let shared = |rest: &str| {
        folder
            .shared
            .iter()
            .any(|m| rest.starts_with(&format!("::{m}::")))
    };
    let mut from = 0;
    while let Some(at) = line[from..].find(&prefix) {
        let rest = &line[from + at + prefix.len()..];
        if !shared(rest) {
            broken.push("imports its own folder (a sibling, or the folder's runner)");
            break;
        }
        from += at + prefix.len();
    }
    // Inside a member's folder `super::` is that member; two levels up is the folder.
    // The one exception: tests of a member's submodule reuse the member's test fixtures.
    if line.contains("super::super::") && !line.contains("::tests::") {
        broken.push("reaches above itself");
    }
    // A member file directly in the folder: `super::` is the folder itself.
    if direct && line.contains("super::") && !line.contains("use super::*;") {
        broken.push("imports through its folder");
    }
    broken
}

#[test]
fn no_stage_imports_another_stage_no_command_another_and_nothing_below_cli_imports_cli() {
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
        let member = member_of(rel);
        for (n, line) in code(&text) {
            if below_cli && line.contains("crate::cli") {
                broken.push(format!("src/{top}:{n}: imports cli: {line}"));
            }
            if let Some((folder, name)) = &member {
                let direct = rel.parent() == Some(Path::new(folder.name));
                for why in member_breaks(folder, direct, line) {
                    broken.push(format!(
                        "src/{top}:{n}: the {} `{name}` {why}: {line}",
                        folder.member
                    ));
                }
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
fn the_rule_check_sees_a_stage_or_a_command_importing_a_sibling() {
    let member = |p: &str| member_of(Path::new(p)).map(|(f, m)| (f.name, m));
    assert_eq!(
        member("stages/runtime/wait.rs"),
        Some(("stages", "runtime".into()))
    );
    assert_eq!(
        member("commands/status.rs"),
        Some(("commands", "status".into()))
    );
    assert_eq!(member("stages/mod.rs"), None);
    assert_eq!(member("stages/hosts.rs"), None);
    assert_eq!(member("commands/mod.rs"), None);
    assert_eq!(member("address.rs"), None);
    let lines: Vec<_> = code("// crate::stages::x\nuse crate::stages::provision;\n").collect();
    assert_eq!(lines, vec![(2, "use crate::stages::provision;")]);
    let [stages, commands] = &FOLDERS;
    assert_eq!(
        member_breaks(stages, false, "use crate::stages::provision::Prepared;").len(),
        1
    );
    assert!(member_breaks(stages, false, "use crate::stages::handoff::Handoff;").is_empty());
    assert_eq!(
        member_breaks(stages, false, "use crate::stages::{handoff::Handoff, run};").len(),
        1
    );
    assert_eq!(
        member_breaks(commands, true, "use crate::commands::status;").len(),
        1
    );
    assert_eq!(
        member_breaks(commands, true, "use super::ping::NAME;").len(),
        1
    );
    assert!(member_breaks(commands, true, "use crate::stages::{self, Handoff};").is_empty());
}

// ---------------------------------------------------------------------------------------------
// No import circles, in `src/` and in every crate under `crates/*/src/`.
//
// Granularity: a module is a file, or a folder together with everything under it, and modules
// are compared with their siblings, level by level. At the top of `src/`, `stages/` is one node
// (an edge from `stages/provision/create.rs` to `output/human.rs` is the edge `stages → output`);
// inside `stages/`, `provision/` and `runtime/` are nodes; and so on down. So a circle between
// two folders is found even when no two files in them import each other, and a circle inside a
// folder is found at that folder's level. Why folders and not only files: a folder is how this
// code base names a concern (`config/`, `output/`, `stages/`), and "`output` needs `stages` needs
// `output`" is the tangle that makes a concern impossible to read or move alone, whichever files
// carry the two imports. A module and its own descendants (its `tests` module, its submodules
// reaching back with `super::`) are one unit and never a circle.
// ---------------------------------------------------------------------------------------------

use std::collections::{BTreeMap, BTreeSet};

type ModPath = Vec<String>;

/// One crate's modules: module path → file, and `use` aliases: (module, name) → full path.
struct Crate {
    root: PathBuf,
    files: BTreeMap<ModPath, PathBuf>,
    aliases: BTreeMap<(ModPath, String), ModPath>,
}

/// An import of `to` by module `from`, seen at `file:line`.
struct Import {
    from: ModPath,
    to: ModPath,
    at: String,
}

fn module_path(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("under src/");
    let mut parts: ModPath = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Code only, with comments cut off and inline modules (`mod tests { … }`) tracked: each line
/// comes with the module path its `super::` and `self::` are relative to.
fn code_lines(text: &str, module: &ModPath) -> Vec<(usize, ModPath, String)> {
    let mut out = Vec::new();
    // (indentation of the `mod x {` line, module path inside it)
    let mut inline: Vec<(usize, ModPath)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let indent = raw.len() - raw.trim_start().len();
        let line = raw.trim();
        if let Some((open, _)) = inline.last() {
            if *open == indent && line == "}" {
                inline.pop();
                continue;
            }
        }
        if line.starts_with("//") || line.starts_with("#") {
            continue;
        }
        let line = match line.find("// ") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        let here = inline.last().map_or(module, |(_, m)| m).clone();
        let decl = line.strip_prefix("pub ").unwrap_or(line);
        if let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(" {")) {
            let mut inner = here.clone();
            inner.push(name.to_string());
            inline.push((indent, inner));
            continue;
        }
        out.push((i + 1, here, line.to_string()));
    }
    out
}

/// `a::{b, c::{d, e as f}, self}` → `[a::b, a::c::d, a::c::e (as f), a]`, each with the name
/// it binds (`None` for a glob).
fn expand_use(tree: &str) -> Vec<(ModPath, Option<String>)> {
    fn split_top(list: &str) -> Vec<&str> {
        let (mut depth, mut start, mut out) = (0, 0, Vec::new());
        for (i, c) in list.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(list[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(list[start..].trim());
        out.into_iter().filter(|s| !s.is_empty()).collect()
    }
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let prefix: ModPath = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').expect("a closing brace")];
        let mut out = Vec::new();
        for part in split_top(inner) {
            for (path, name) in expand_use(part) {
                let mut full = prefix.clone();
                full.extend(path);
                out.push((full, name));
            }
        }
        return out;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((p, a)) => (p.trim(), Some(a.trim().to_string())),
        None => (tree, None),
    };
    let mut path: ModPath = path.split("::").map(|s| s.trim().to_string()).collect();
    if path.len() > 1 && path.last().is_some_and(|s| s == "self") {
        path.pop();
    }
    let name = match path.last().map(String::as_str) {
        Some("*") => None,
        Some(last) => Some(alias.unwrap_or_else(|| last.to_string())),
        None => None,
    };
    vec![(path, name)]
}

/// A path as written in module `here` made absolute (from the crate root). A `use` path may
/// start with a name in scope (`use child::X;`): it is taken as relative to `here` (`use_path`),
/// and lands back in `here` when the name is not a module of this crate (`std::…`, a crate).
/// Elsewhere only `crate::`, `super::` and `self::` paths are read.
fn absolute(here: &ModPath, path: &[String], use_path: bool) -> Option<ModPath> {
    let mut segs = path.iter().peekable();
    let mut base = match segs.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segs.next();
            ModPath::new()
        }
        Some("super") | Some("self") => here.clone(),
        _ if use_path => here.clone(),
        _ => return None,
    };
    while let Some(s) = segs.peek() {
        match s.as_str() {
            "super" => {
                base.pop()?;
            }
            "self" => {}
            _ => break,
        }
        segs.next();
    }
    base.extend(segs.cloned());
    Some(base)
}

/// The module an absolute path lands in: modules are walked into, `use` aliases followed.
fn resolve(krate: &Crate, path: &[String], depth: usize) -> ModPath {
    let mut cur = ModPath::new();
    for (i, seg) in path.iter().enumerate() {
        let mut next = cur.clone();
        next.push(seg.clone());
        if krate.files.contains_key(&next) {
            cur = next;
        } else if let Some(target) = krate.aliases.get(&(cur.clone(), seg.clone())) {
            if depth > 8 || target.len() > 1 && target[..] == path[..=i] {
                return cur;
            }
            let mut rest = target.clone();
            rest.extend(path[i + 1..].iter().cloned());
            return resolve(krate, &rest, depth + 1);
        } else {
            break;
        }
    }
    cur
}

/// Every `use` statement of a file (joined over lines) and every other `crate::`/`super::`/
/// `self::` path, each as (line, module it is written in, absolute path, is a `use`, bound name).
fn paths_of(text: &str, module: &ModPath) -> Vec<(usize, ModPath, ModPath, bool, Option<String>)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, ModPath, String)> = None;
    for (n, here, line) in code_lines(text, module) {
        if let Some((start, m, mut acc)) = pending.take() {
            acc.push(' ');
            acc.push_str(&line);
            if acc.contains(';') {
                for (p, name) in expand_use(acc.split(';').next().unwrap_or("")) {
                    if let Some(abs) = absolute(&m, &p, true) {
                        out.push((start, m.clone(), abs, true, name));
                    }
                }
            } else {
                pending = Some((start, m, acc));
            }
            continue;
        }
        let stmt = line
            .strip_prefix("pub(crate) ")
            .or_else(|| line.strip_prefix("pub(super) "))
            .or_else(|| line.strip_prefix("pub "))
            .unwrap_or(&line);
        if let Some(rest) = stmt.strip_prefix("use ") {
            if let Some((tree, _)) = rest.split_once(';') {
                for (p, name) in expand_use(tree) {
                    if let Some(abs) = absolute(&here, &p, true) {
                        out.push((n, here.clone(), abs, true, name));
                    }
                }
            } else {
                pending = Some((n, here.clone(), rest.to_string()));
            }
            continue;
        }
        for start in ["crate::", "super::", "self::"] {
            let mut from = 0;
            while let Some(at) = line[from..].find(start) {
                let at = from + at;
                from = at + start.len();
                let before = line[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let tail: String = line[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let p: ModPath = tail
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if let Some(abs) = absolute(&here, &p, false) {
                    out.push((n, here.clone(), abs, false, None));
                }
            }
        }
    }
    out
}

fn load_crate(src: &Path) -> (Crate, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| f.file_name().is_none_or(|n| n != "main.rs"));
    let mut krate = Crate {
        root: src.to_path_buf(),
        files: BTreeMap::new(),
        aliases: BTreeMap::new(),
    };
    let mut texts = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).expect("read a source file");
        krate.files.insert(module_path(src, &f), f.clone());
        texts.push((f, text));
    }
    for (f, text) in &texts {
        let module = module_path(src, f);
        for (_, here, abs, is_use, name) in paths_of(text, &module) {
            if let (true, Some(name)) = (is_use, name) {
                krate.aliases.insert((here, name), abs);
            }
        }
    }
    (krate, texts)
}

fn imports(krate: &Crate, texts: &[(PathBuf, String)], base: &Path) -> Vec<Import> {
    let mut out = Vec::new();
    for (f, text) in texts {
        let from = module_path(&krate.root, f);
        let shown = f.strip_prefix(base).unwrap_or(f).display().to_string();
        for (n, _, abs, _, _) in paths_of(text, &from) {
            let to = resolve(krate, &abs, 0);
            out.push(Import {
                from: from.clone(),
                to,
                at: format!("{shown}:{n}"),
            });
        }
    }
    out
}

/// The circles among siblings, each as `a → b → … → a` followed by where each step is imported.
fn circles(imports: &[Import], root_name: &str) -> Vec<String> {
    // parent module → sibling → sibling → the first place the step is imported
    let mut levels: BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, String>>> = BTreeMap::new();
    for i in imports {
        let common = i.from.iter().zip(&i.to).take_while(|(a, b)| a == b).count();
        if common == i.from.len() || common == i.to.len() {
            continue; // itself, an ancestor or a descendant
        }
        levels
            .entry(i.from[..common].to_vec())
            .or_default()
            .entry(i.from[common].clone())
            .or_default()
            .entry(i.to[common].clone())
            .or_insert_with(|| i.at.clone());
    }
    let mut found = Vec::new();
    for (parent, graph) in &levels {
        let mut seen_in_circle: BTreeSet<String> = BTreeSet::new();
        for start in graph.keys() {
            if seen_in_circle.contains(start) {
                continue;
            }
            // breadth-first from `start` back to `start`: the shortest circle through it
            let mut prev: BTreeMap<String, String> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start.clone()]);
            let mut closed = None;
            while let Some(node) = queue.pop_front() {
                for next in graph.get(&node).into_iter().flat_map(|m| m.keys()) {
                    if next == start {
                        closed = Some(node.clone());
                        break;
                    }
                    if !prev.contains_key(next) {
                        prev.insert(next.clone(), node.clone());
                        queue.push_back(next.clone());
                    }
                }
                if closed.is_some() {
                    break;
                }
            }
            let Some(mut last) = closed else { continue };
            let mut ring = vec![start.clone()];
            while last != *start {
                ring.insert(1, last.clone());
                last = prev[&last].clone();
            }
            seen_in_circle.extend(ring.iter().cloned());
            let mut text = format!(
                "{root_name}{}: {} → {start}",
                if parent.is_empty() {
                    String::new()
                } else {
                    format!(" in {}", parent.join("::"))
                },
                ring.join(" → ")
            );
            for (k, a) in ring.iter().enumerate() {
                let b = &ring[(k + 1) % ring.len()];
                text.push_str(&format!("\n    {a} → {b}: {}", graph[a][b]));
            }
            found.push(text);
        }
    }
    found
}

fn crate_sources() -> Vec<PathBuf> {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut roots = vec![top.join("src")];
    let mut crates: Vec<_> = fs::read_dir(top.join("crates"))
        .expect("read crates/")
        .map(|e| e.expect("dir entry").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    crates.sort();
    roots.extend(crates);
    roots
}

#[test]
fn no_module_import_circles_in_src_or_the_crates() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let roots = crate_sources();
    assert!(roots.len() >= 5, "found only {roots:?}");
    let mut found = Vec::new();
    for src in roots {
        let (krate, texts) = load_crate(&src);
        let name = src.strip_prefix(top).unwrap_or(&src).display().to_string();
        found.extend(circles(&imports(&krate, &texts, top), &name));
    }
    assert!(
        found.is_empty(),
        "import circles between modules:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_circle_check_sees_a_circle_and_reads_use_trees() {
    assert_eq!(
        expand_use("crate::{a, b::{c, d as e}, f::self}"),
        vec![
            (vec!["crate".into(), "a".into()], Some("a".into())),
            (
                vec!["crate".into(), "b".into(), "c".into()],
                Some("c".into())
            ),
            (
                vec!["crate".into(), "b".into(), "d".into()],
                Some("e".into())
            ),
            (vec!["crate".into(), "f".into()], Some("f".into())),
        ]
    );
    let m = |s: &str| -> ModPath { s.split("::").map(String::from).collect() };
    assert_eq!(
        absolute(
            &m("stages::runtime::wait"),
            &m("super::super::tests::inst"),
            false
        ),
        Some(m("stages::tests::inst"))
    );
    let import = |from: &str, to: &str| Import {
        from: m(from),
        to: m(to),
        at: format!("{from}.rs"),
    };
    // a file in a folder importing its parent, and the parent its child: one unit, no circle
    let family = [
        import("stages::provision", "stages"),
        import("stages", "stages::provision"),
    ];
    assert!(circles(&family, "src").is_empty());
    // two folders through different files: a circle at the top
    let tangle = [
        import("stages::provision::create", "output"),
        import("output::human", "stages::runtime"),
    ];
    let found = circles(&tangle, "src");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("src: output → stages → output"),
        "{}",
        found[0]
    );
    let lines = code_lines("mod tests {\n    use super::x;\n}\nuse y;\n", &m("a"));
    assert_eq!(lines[0].1, m("a::tests"));
    assert_eq!(lines[1].1, m("a"));
}
