//! `kvmprov snapshot …` as a user runs it, against libvirt's test driver: a node file gives each
//! test a domain with a snapshot (every kvmprov process reads it afresh, so what one run changes
//! is seen only within that run; the real round trip is `tests/e2e/snapshots.sh`).

use std::path::Path;

mod util;
use util::{kvmprov, text};

/// A node with `app-01` running, holding snapshot `base` (taken while running), and a domain
/// `foreign` no config declares.
fn node(dir: &Path) -> String {
    let dom = |name: &str, snaps: &str| {
        format!(
            "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'><name>{name}</name>\
             <memory unit='MiB'>512</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices/>{snaps}</domain>\n"
        )
    };
    let base = "<test:domainsnapshot><name>base</name><description>first boot</description>\
        <state>running</state><creationTime>1765100000</creationTime><active>0</active>\
        <domain type='test'><name>app-01</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>\
        <os><type>hvm</type></os></domain></test:domainsnapshot>";
    let x = format!(
        "<node>\n<network><name>default</name><bridge name='virbr0'/></network>\n{}{}</node>\n",
        dom("app-01", base),
        dom("foreign", "")
    );
    let p = dir.join("node.xml");
    std::fs::write(&p, x).unwrap();
    format!("test://{}", p.display())
}

/// A config declaring `app-01` and `app-02` (not defined) on `uri`.
fn config(dir: &Path, uri: &str) -> String {
    let y = format!(
        "kvm_libvirt_uri: \"{uri}\"\nkvm_domain_type: qemu\nkvm_image_cache_path: {0}/images\nkvm_instance_disk_pool_path: {0}/instances\n\
         kvm_cloud_image_catalog:\n  - {{image_name: d, image_url: http://127.0.0.1:9/a.qcow2, image_checksum_manifest_url: http://127.0.0.1:9/S}}\n\
         kvm_instance_definitions:\n  - {{instance_name: app-01, image_name: d}}\n  - {{instance_name: app-02, image_name: d}}\n",
        dir.display()
    );
    let p = dir.join("vars.yml");
    std::fs::write(&p, y).unwrap();
    p.display().to_string()
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn undeclared_names_and_bad_snapshot_names_exit_2_and_ask_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A URI nothing answers at: exit 2 must come before any connection.
    let c = config(dir.path(), "test:///nonexistent/node.xml");
    for args in [
        vec!["snapshot", "list", "app-01", "foreign"],
        vec!["snapshot", "create", "foreign", "s"],
        vec!["snapshot", "revert", "foreign", "s", "--yes"],
        vec!["snapshot", "delete", "app-0", "s"],
        vec!["snapshot", "create", "app-01", "a b"],
        vec!["snapshot", "delete", "app-01", ".hidden"],
        vec!["snapshot", "revert", "app-01", "../x", "--yes"],
    ] {
        let mut all = vec!["-c", c.as_str()];
        all.extend(&args);
        let o = kvmprov(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let t = text(&o);
        assert!(
            t.contains("is not a declared instance") || t.contains("snapshot name `"),
            "{args:?}: {t}"
        );
        assert!(!t.contains("cannot connect"), "{args:?}: {t}");
    }
    let o = kvmprov(&[
        "-c", &c, "--output", "json", "snapshot", "delete", "app-0", "s",
    ]);
    let j = json(&o);
    assert_eq!(j["command"], "snapshot delete");
    assert_eq!(j["ok"], false);
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains(", did you mean `app-0"),
        "{j}"
    );
}

#[test]
fn list_shows_each_declared_instance_and_its_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), &node(dir.path()));
    let o = kvmprov(&["-c", &c, "snapshot", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("app-01           base                 2025-12-07 09:33:20  running"),
        "{t}"
    );
    assert!(t.contains("app-02           (not defined)"), "{t}");
    assert!(!t.contains("foreign"), "{t}");
    let o = kvmprov(&["-c", &c, "--output", "json", "snapshot", "list", "app-01"]);
    let j = json(&o);
    assert_eq!(j["command"], "snapshot list");
    assert_eq!(j["ok"], true);
    let i = &j["instances"];
    assert_eq!(i.as_array().unwrap().len(), 1, "{j}");
    assert_eq!(i[0]["name"], "app-01");
    assert_eq!(i[0]["defined"], true);
    assert_eq!(i[0]["snapshots"][0]["name"], "base");
    assert_eq!(i[0]["snapshots"][0]["state"], "running");
    assert_eq!(i[0]["snapshots"][0]["created"], 1_765_100_000);
    assert_eq!(i[0]["snapshots"][0]["description"], "first boot");
}

#[test]
fn revert_is_only_planned_without_yes_and_with_check() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), &node(dir.path()));
    for extra in [vec![], vec!["--check", "--yes"]] {
        let mut args = vec![
            "-c",
            c.as_str(),
            "--output",
            "json",
            "snapshot",
            "revert",
            "app-01",
            "base",
        ];
        args.extend(&extra);
        let o = kvmprov(&args);
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", text(&o));
        let j = json(&o);
        assert_eq!(j["check"], true, "{j}");
        let out = &j["stages"][0]["outcomes"][0];
        assert_eq!(
            (out["op"].as_str(), out["status"].as_str()),
            (Some("revert"), Some("planned")),
            "{j}"
        );
        assert!(
            out["reason"]
                .as_str()
                .unwrap()
                .contains("it runs on from that moment"),
            "{j}"
        );
    }
    let o = kvmprov(&["-c", &c, "snapshot", "revert", "app-01", "base"]);
    assert!(
        text(&o).contains("nothing was changed: add --yes to revert"),
        "{}",
        text(&o)
    );
    let o = kvmprov(&["-c", &c, "snapshot", "revert", "app-01", "base", "--yes"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("✓ revert    app-01"), "{}", text(&o));
}

#[test]
fn create_and_delete_apply_or_refuse_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), &node(dir.path()));
    let run = |args: &[&str]| {
        let mut all = vec!["-c", c.as_str()];
        all.extend(args);
        kvmprov(&all)
    };
    let o = run(&["--check", "snapshot", "create", "app-01", "next"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(
            "- snapshot  app-01             take snapshot `next` (running: disks and memory)"
        ),
        "{}",
        text(&o)
    );
    let o = run(&["snapshot", "create", "app-01", "next"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("✓ snapshot  app-01"), "{}", text(&o));
    let o = run(&["snapshot", "delete", "app-01", "base"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for (args, why) in [
        (
            vec!["snapshot", "create", "app-01", "base"],
            "app-01 already has a snapshot `base`",
        ),
        (
            vec!["snapshot", "delete", "app-01", "gone"],
            "app-01 has no snapshot `gone`",
        ),
        (
            vec!["snapshot", "revert", "app-01", "gone", "--yes"],
            "(it has base)",
        ),
        (
            vec!["snapshot", "create", "app-02", "s"],
            "app-02 is not defined on test://",
        ),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(why), "{args:?}: {}", text(&o));
    }
}
