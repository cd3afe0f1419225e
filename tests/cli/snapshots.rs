//! Snapshots (`insta`) of what users read: `--help` of every command, `check` on the shipped
//! example, the plan lines and summary table, and every command's `--output json`, run against
//! libvirt's `test:///default`-style driver. What varies from run to run or machine to machine
//! (the scratch directory, path hashes, the host name and versions) is replaced by a `[NAME]`;
//! durations are dropped.
//!
//! A changed output fails here; if the change is meant, review and accept it with
//! `cargo insta review` (or `INSTA_UPDATE=always cargo test`, then `git diff`).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{config, node, repo};

/// kvmprov with a fixed environment: run from the repository, help wrapped at 100 columns.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_kvmprov"))
        .args(args)
        .current_dir(repo())
        .env("COLUMNS", "100")
        .env_remove("KVMPROV_LOG")
        .env_remove("KVMPROV_CONFIG")
        .output()
        .expect("run kvmprov");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The scratch directory as `[TMP]`, pool names (which hash their path) as `kvmprov-images-[HASH]`,
/// and the ` (1.2s)` after a done action dropped (shown only past 0.05 s: present or not by chance).
fn redact(text: &str, tmp: &Path) -> String {
    let text = redact_pools(&text.replace(&tmp.display().to_string(), "[TMP]"));
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(" (") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let len = after.find("s)").unwrap_or(0);
        let number = &after[..len];
        if len > 0 && number.contains('.') && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        {
            rest = &after[len + 2..];
        } else {
            out.push_str(" (");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `kvmprov-images-349257a5` → `kvmprov-images-[HASH]` (the suffix hashes the pool's path).
fn redact_pools(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("kvmprov-") {
        let after = &rest[i..];
        let prefix = ["kvmprov-images-", "kvmprov-instances-"]
            .into_iter()
            .find(|p| after.starts_with(p));
        match prefix {
            Some(p)
                if after.len() >= p.len() + 8
                    && after[p.len()..p.len() + 8]
                        .chars()
                        .all(|c| c.is_ascii_hexdigit()) =>
            {
                out.push_str(&rest[..i]);
                out.push_str(p);
                out.push_str("[HASH]");
                rest = &after[p.len() + 8..];
            }
            _ => {
                out.push_str(&rest[..i + "kvmprov-".len()]);
                rest = &after["kvmprov-".len()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The JSON document with `[TMP]` for the scratch directory and every duration zeroed.
fn redact_json(stdout: &str, tmp: &Path) -> Value {
    fn walk(v: &mut Value, tmp: &str) {
        match v {
            Value::String(s) => *s = redact_pools(&s.replace(tmp, "[TMP]")),
            Value::Array(a) => a.iter_mut().for_each(|v| walk(v, tmp)),
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if k == "seconds" {
                        *v = Value::from(0.0);
                    } else {
                        walk(v, tmp);
                    }
                }
            }
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("one JSON document on stdout ({e}): {stdout}"));
    walk(&mut v, &tmp.display().to_string());
    v
}

/// Exit code, stdout and stderr in one snapshot.
fn shown(code: Option<i32>, stdout: &str, stderr: &str) -> String {
    format!("exit {code:?}\n--- stdout\n{stdout}--- stderr\n{stderr}")
}

#[test]
fn help_of_the_binary_and_every_command() {
    let commands: &[&[&str]] = &[
        &[],
        &["check"],
        &["ping"],
        &["preflight"],
        &["image-cache"],
        &["image-cache", "prune"],
        &["provision"],
        &["runtime"],
        &["cleanup"],
        &["status"],
        &["start"],
        &["stop"],
        &["restart"],
        &["console"],
        &["ssh"],
        &["snapshot"],
        &["snapshot", "list"],
        &["snapshot", "revert"],
        &["inventory"],
        &["schema"],
        &["completions"],
        &["man"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        let name = if cmd.is_empty() {
            "help".to_string()
        } else {
            format!("help_{}", cmd.join("_"))
        };
        insta::assert_snapshot!(name, stdout);
    }
}

#[test]
fn check_on_the_shipped_example() {
    let (code, stdout, stderr) = run(&["-c", "vars/kvm-provisioning.yml", "check"]);
    insta::assert_snapshot!("check_human", shown(code, &stdout, &stderr));
    let (code, stdout, _) = run(&[
        "-c",
        "vars/kvm-provisioning.yml",
        "--output",
        "json",
        "check",
    ]);
    assert_eq!(code, Some(0));
    insta::assert_snapshot!("check_json", stdout);
}

/// The shipped example with its commented profiles (`web`, `db`) and the instance `db-01` that
/// names one taken in: the commented example must stay valid, and `check` shows where each
/// value of `db-01` came from. Only the lines of that block are uncommented.
fn example_with_profiles(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("vars/kvm-provisioning.yml")).unwrap();
    let start = text
        .find("# kvm_instance_profiles:")
        .expect("the example has a commented kvm_instance_profiles");
    let end = text
        .find("  - instance_name: app-01")
        .expect("the example's first instance");
    let block: String = text[start..end]
        .lines()
        .map(|l| {
            let body = l.trim_start();
            match body.strip_prefix("# ") {
                Some(rest) => format!("{}{rest}\n", &l[..l.len() - body.len()]),
                None => format!("{l}\n"),
            }
        })
        .collect();
    let path = dir.join("kvm-provisioning.yml");
    std::fs::write(&path, format!("{}{block}{}", &text[..start], &text[end..])).unwrap();
    path
}

#[test]
fn check_shows_where_the_values_of_an_instance_with_a_profile_come_from() {
    let t = tempfile::tempdir().unwrap();
    let cfg = example_with_profiles(t.path());
    let c = cfg.to_str().unwrap();
    let (code, stdout, stderr) = run(&["-c", c, "check"]);
    assert_eq!(code, Some(0), "{stderr}");
    insta::assert_snapshot!(
        "check_profiles_human",
        shown(code, &redact(&stdout, t.path()), &stderr)
    );
    let (code, stdout, _) = run(&["-c", c, "--output", "json", "check"]);
    assert_eq!(code, Some(0));
    insta::assert_snapshot!(
        "check_profiles_json",
        format!("{:#}", redact_json(&stdout, t.path()))
    );
}

#[test]
fn a_config_error_in_json_mode_is_an_envelope_too() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("bad.yml");
    std::fs::write(&f, "kvm_domain_typ: qemu\n").unwrap();
    let c = f.to_str().unwrap();
    let (code, stdout, stderr) = run(&["-c", c, "--output", "json", "provision"]);
    assert_eq!(code, Some(2));
    insta::assert_snapshot!(
        "config_error_json",
        shown(
            code,
            &format!("{:#}\n", redact_json(&stdout, t.path())),
            &redact(&stderr, t.path())
        )
    );
}

/// A host where web-01 matches the config, web-02 has drifted (4 vCPUs) and web-03 is missing;
/// `gone` is declared and shut off, for status.
fn drifted_host(dir: &Path) -> (String, std::path::PathBuf) {
    let uri = node(dir, &[("web-01", 1), ("web-02", 4)]);
    let cfg = config(dir, &uri, &["web-01", "web-02", "web-03"]);
    (uri, cfg)
}

/// `args` after `-c CFG`, in human and in JSON mode: one snapshot each.
fn both(name: &str, dir: &Path, cfg: &Path, args: &[&str]) {
    let c = cfg.to_str().unwrap();
    let mut human = vec!["-c", c];
    human.extend(args);
    let (code, stdout, stderr) = run(&human);
    insta::assert_snapshot!(
        format!("{name}_human"),
        redact(&shown(code, &stdout, &stderr), dir)
    );
    let mut json = vec!["-c", c, "--output", "json"];
    json.extend(args);
    let (code_json, stdout, stderr) = run(&json);
    assert_eq!(code_json, code, "both modes exit alike: {stderr}");
    let doc = redact_json(&stdout, dir);
    assert_eq!(
        doc["ok"],
        code == Some(0),
        "ok is the exit status's verdict"
    );
    insta::assert_snapshot!(format!("{name}_json"), format!("{doc:#}"));
}

#[test]
fn provision_plan_and_summary_table() {
    let t = tempfile::tempdir().unwrap();
    let (_, cfg) = drifted_host(t.path());
    both(
        "provision_check",
        t.path(),
        &cfg,
        &["--check", "provision", "--stage", "provision"],
    );
}

#[test]
fn runtime_plan() {
    let t = tempfile::tempdir().unwrap();
    let (_, cfg) = drifted_host(t.path());
    both("runtime_check", t.path(), &cfg, &["--check", "runtime"]);
}

#[test]
fn cleanup_plan_and_confirmed_cleanup() {
    let t = tempfile::tempdir().unwrap();
    let (_, cfg) = drifted_host(t.path());
    both("cleanup_unconfirmed", t.path(), &cfg, &["cleanup"]);
    both(
        "cleanup_confirmed",
        t.path(),
        &cfg,
        &["-e", "kvm_cleanup_confirmed=true", "cleanup"],
    );
}

#[test]
fn status_of_declared_instances() {
    let t = tempfile::tempdir().unwrap();
    let uri = node(t.path(), &[("web-01", 1)]);
    // Shut off (the test driver's run state element): status asks no guest for its address.
    let node_xml = t.path().join("node.xml");
    let xml = std::fs::read_to_string(&node_xml).unwrap().replace(
        "<name>web-01</name>",
        "<name>web-01</name><test:runstate xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>5</test:runstate>",
    );
    std::fs::write(&node_xml, xml).unwrap();
    let cfg = config(t.path(), &uri, &["web-01", "web-02"]);
    both("status", t.path(), &cfg, &["status"]);
}

#[test]
fn ping_the_test_driver() {
    let t = tempfile::tempdir().unwrap();
    let (_, cfg) = drifted_host(t.path());
    let c = cfg.to_str().unwrap();
    let (_, stdout, _) = run(&["-c", c, "--output", "json", "ping"]);
    let mut doc = redact_json(&stdout, t.path());
    // What differs between machines and libvirt releases.
    let host = &mut doc["hypervisors"][0]["host"];
    let mut varying = Vec::new();
    for (key, name) in [
        ("hostname", "[HOSTNAME]"),
        ("libvirt_version", "[LIBVIRT_VERSION]"),
        ("hypervisor_version", "[HYPERVISOR_VERSION]"),
    ] {
        let seen = host[key].as_str().expect(key).to_string();
        varying.push((seen, name));
        host[key] = Value::from(name);
    }
    insta::assert_snapshot!("ping_json", format!("{doc:#}"));
    let (code, stdout, stderr) = run(&["-c", c, "ping"]);
    let mut lines = Vec::new();
    for line in stdout.lines() {
        let mut line = line.to_string();
        for (seen, name) in &varying {
            // Whole values only: a version may be a substring of another line.
            if let Some(at) = line.rfind(&format!(" {seen}")) {
                if line.ends_with(seen.as_str()) {
                    line = format!("{} {name}", &line[..at]);
                }
            }
        }
        lines.push(line);
    }
    let stdout = lines.join("\n") + "\n";
    insta::assert_snapshot!(
        "ping_human",
        redact(&shown(code, &stdout, &stderr), t.path())
    );
}

/// The image-cache stage over a `file://` mirror: a verified download, then the prune plan.
#[test]
fn image_cache_download_and_prune() {
    let t = tempfile::tempdir().unwrap();
    let uri = node(t.path(), &[]);
    // A fixed qcow2 header (no backing file): the digest is the same on every machine.
    let mut image = vec![0u8; 512];
    image[..4].copy_from_slice(b"QFI\xfb");
    image[4..8].copy_from_slice(&3u32.to_be_bytes());
    image[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
    let cfg = super::file_catalog(t.path(), &uri, &image);
    let c = cfg.to_str().unwrap();
    let (code, stdout, stderr) = run(&["-c", c, "image-cache"]);
    insta::assert_snapshot!(
        "image_cache_human",
        redact(&shown(code, &stdout, &stderr), t.path())
    );
    // Cached now: the second run keeps it.
    let (code, stdout, _) = run(&["-c", c, "--output", "json", "image-cache"]);
    assert_eq!(code, Some(0));
    insta::assert_snapshot!(
        "image_cache_json",
        format!("{:#}", redact_json(&stdout, t.path()))
    );
    both("prune_plan", t.path(), &cfg, &["image-cache", "prune"]);
}

/// Preflight reads this machine (tools, the qemu user, free space): what differs between
/// machines of one kind (versions, free MiB) is `N`; a missing tool is a real difference.
#[test]
fn preflight_json() {
    let t = tempfile::tempdir().unwrap();
    let (_, cfg) = drifted_host(t.path());
    let c = cfg.to_str().unwrap();
    let (code, stdout, stderr) = run(&["-c", c, "--output", "json", "--check", "preflight"]);
    assert_eq!(code, Some(0), "{stderr}");
    let mut doc = redact_json(&stdout, t.path());
    for o in doc["stages"][0]["outcomes"].as_array_mut().unwrap() {
        if o["target"] == "hypervisor" || o["target"] == "free space" {
            let reason = o["reason"].as_str().unwrap();
            o["reason"] = Value::from(digits_as_n(reason));
        }
    }
    insta::assert_snapshot!("preflight_check_json", format!("{doc:#}"));
}

/// `libvirt 9.0.0, 65397 MiB` → `libvirt N.N.N, N MiB`.
fn digits_as_n(text: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

/// `check` of an instance whose NICs sit on a libvirt network and straight on a host bridge:
/// the bridge NIC's line, and `bridge` in place of `network` in the JSON.
#[test]
fn check_of_nics_on_a_network_and_a_host_bridge() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), "test:///default", &[]);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "  - instance_name: edge-01\n    image_name: debian-12\n    nics:\n      - network: default\n      - {bridge: br0, ipv4_address: 192.0.2.10/24}\n  - instance_name: edge-02\n    image_name: debian-12\n    nics: [{bridge: br0}]\n",
    );
    std::fs::write(&cfg, text).unwrap();
    both("check_bridge", t.path(), &cfg, &["check"]);
}
