//! The kvmprov binary as a user runs it: exit codes, messages, and plans against libvirt's test
//! driver (a node description file gives each test a known hypervisor state).

use std::path::{Path, PathBuf};
use std::process::Command;

mod util;
use util::{kvmprov, text};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A config for instances `names` with cache/pool under `dir`, talking to `uri`.
fn config(dir: &Path, uri: &str, names: &[&str]) -> PathBuf {
    let mut y = format!(
        "kvm_libvirt_uri: \"{uri}\"\nkvm_domain_type: qemu\nkvm_image_cache_path: {0}/images\nkvm_instance_disk_pool_path: {0}/instances\n\
         kvm_cloud_image_catalog:\n  - image_name: debian-12\n    image_url: http://127.0.0.1:9/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2\n    image_checksum_manifest_url: http://127.0.0.1:9/images/cloud/bookworm/latest/SHA512SUMS\n\
         kvm_cloud_init_defaults:\n  password: \"cli-test-secret\"\nkvm_instance_definitions:\n",
        dir.display()
    );
    for n in names {
        y.push_str(&format!("  - instance_name: {n}\n    image_name: debian-12\n    vcpus: 1\n    memory_mib: 512\n"));
    }
    let p = dir.join("vars.yml");
    std::fs::write(&p, y).unwrap();
    p
}

/// A test-driver node: the default network, and `domains` (name, vcpus) already defined.
fn node(dir: &Path, domains: &[(&str, u32)]) -> String {
    let mut x = String::from("<node>\n");
    x.push_str("<network><name>default</name><bridge name='virbr0'/><forward/><ip address='192.168.122.1' netmask='255.255.255.0'><dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip></network>\n");
    for (name, vcpus) in domains {
        let mac = kvmprov_hypervisor::xml::mac_for(name);
        x.push_str(&format!(
            "<domain type='test'><name>{name}</name><memory unit='MiB'>512</memory><vcpu>{vcpus}</vcpu>\
             <os><type>hvm</type></os><metadata><kvmprov:instance xmlns:kvmprov='{ns}'><kvmprov:image name='debian-12' version='' sha512=''/>\
             <kvmprov:config digest='' instance-id='{name}-1'/></kvmprov:instance></metadata>\
             <devices><interface type='network'><source network='default'/><mac address='{mac}'/></interface></devices></domain>\n",
            ns = kvmprov_hypervisor::xml::METADATA_NS
        ));
    }
    x.push_str("</node>\n");
    let p = dir.join("node.xml");
    std::fs::write(&p, x).unwrap();
    format!("test://{}", p.display())
}

#[test]
fn shipped_example_passes_check() {
    let o = kvmprov(&[
        "-c",
        repo().join("vars/kvm-provisioning.yml").to_str().unwrap(),
        "check",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("instances       2"), "{}", text(&o));
}

#[test]
fn config_errors_exit_2_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(repo().join("vars/kvm-provisioning.yml")).unwrap();
    let cases = [
        (
            "typo",
            good.replace("kvm_instance_definitions:", "kvm_instance_definition:"),
            "did you mean `kvm_instance_definitions`",
        ),
        (
            "duplicate",
            good.replace("instance_name: app-02", "instance_name: app-01"),
            "declared twice",
        ),
        (
            "missing image",
            good.replace(
                "    image_name: debian-13\n    vcpus",
                "    image_name: debian-14\n    vcpus",
            ),
            "not in kvm_cloud_image_catalog",
        ),
        (
            "relative path",
            good.replace(
                "kvm_image_cache_path: /var/lib",
                "kvm_image_cache_path: var/lib",
            ),
            "absolute",
        ),
        (
            "yaml syntax",
            good.replace("kvm_domain_type: auto", "kvm_domain_type: [auto"),
            "YAML syntax error",
        ),
    ];
    for (name, body, want) in cases {
        let f = dir.path().join(format!("{}.yml", name.replace(' ', "-")));
        std::fs::write(&f, body).unwrap();
        let o = kvmprov(&["-c", f.to_str().unwrap(), "check"]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {t}");
        assert!(t.contains(want), "{name}: {t}");
        let prefix = format!("error: {}:", f.display());
        assert!(t.starts_with(&prefix), "{name}: {t}");
        let pos: Vec<&str> = t[prefix.len()..].splitn(3, ':').collect();
        assert!(
            pos[0].parse::<u32>().is_ok() && pos[1].parse::<u32>().is_ok(),
            "{name}: no line:column in {t}"
        );
    }
}

#[test]
fn overrides_are_applied_and_typed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "test:///default", &["a-01"]);
    let o = kvmprov(&[
        "-c",
        cfg.to_str().unwrap(),
        "-e",
        "kvm_cleanup_confirmed=true",
        "-e",
        "kvm_provision_stage=runtime",
        "--output",
        "json",
        "check",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["command"], "check");
    assert_eq!(v["config"]["cleanup_confirmed"], true);
    assert_eq!(v["config"]["stage"], "runtime");
    assert_eq!(v["config"]["cloud_init"]["password"], "<redacted>");
    let o = kvmprov(&[
        "-c",
        cfg.to_str().unwrap(),
        "-e",
        "kvm_cleanup_confirmed=perhaps",
        "check",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("-e kvm_cleanup_confirmed=perhaps"),
        "{}",
        text(&o)
    );
}

#[test]
fn ping_test_driver_and_no_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "test:///default", &["a-01"]);
    let o = kvmprov(&["-c", cfg.to_str().unwrap(), "ping"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains("libvirt version") && t.contains("domain type kvm    available"),
        "{t}"
    );
    let o = kvmprov(&[
        "-c",
        cfg.to_str().unwrap(),
        "-e",
        "kvm_libvirt_uri=qemu+unix:///system?socket=/nonexistent/sock",
        "ping",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert_eq!(t.trim().lines().count(), 1, "{t}");
    assert!(
        t.starts_with("error: cannot connect to the hypervisor"),
        "{t}"
    );
}

fn plan_ops(cfg: &Path, uri: &str) -> Vec<(String, String, String)> {
    let o = kvmprov(&[
        "-c",
        cfg.to_str().unwrap(),
        "-e",
        &format!("kvm_libvirt_uri={uri}"),
        "--check",
        "--output",
        "json",
        "provision",
        "--stage",
        "provision",
    ]);
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    v["stages"][0]["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["target"].as_str().unwrap().to_string(),
                o["op"].as_str().unwrap().to_string(),
                o["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn provision_plans_for_empty_partial_and_full_hosts_and_drift() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["web-01", "web-02", "web-03"];
    let cfg = config(dir.path(), "test:///default", &names);
    // Empty host: the pools and every instance are to be created (no image cached yet: blocked).
    let uri = node(dir.path(), &[]);
    let ops = plan_ops(&cfg, &uri);
    assert_eq!(
        ops.iter()
            .filter(|(t, op, _)| t.starts_with("pool ") && op == "create")
            .count(),
        2,
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .filter(|(t, _, _)| names.contains(&t.as_str()))
            .all(|(_, op, r)| op == "create" && r.contains("not cached")),
        "{ops:?}"
    );
    // Partly provisioned: web-01 exists and matches, web-02 drifted, web-03 missing.
    let uri = node(dir.path(), &[("web-01", 1), ("web-02", 4)]);
    let ops = plan_ops(&cfg, &uri);
    let find = |n: &str| ops.iter().find(|(t, _, _)| t == n).cloned().unwrap();
    assert_eq!(find("web-01").1, "ok");
    assert_eq!(find("web-02").1, "drift");
    assert!(find("web-02").2.contains("vcpus 4 (config 1)"), "{ops:?}");
    assert_eq!(find("web-03").1, "create");
    // Fully provisioned: nothing to do.
    let uri = node(dir.path(), &[("web-01", 1), ("web-02", 1), ("web-03", 1)]);
    let ops = plan_ops(&cfg, &uri);
    assert!(
        ops.iter()
            .filter(|(t, _, _)| names.contains(&t.as_str()))
            .all(|(_, op, _)| op == "ok"),
        "{ops:?}"
    );
}

/// Profiles resolve to plain instances before any stage runs: `--check` plans and drift read
/// the values an instance took from its profile.
#[test]
fn provision_check_reads_the_values_an_instance_took_from_its_profile() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "test:///default", &[]);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text.replace(
        "kvm_instance_definitions:\n",
        "kvm_instance_profiles:\n  web:\n    image_name: debian-12\n    vcpus: 1\n    memory_mib: 512\n\
         kvm_instance_definitions:\n  - instance_name: web-01\n    profile: web\n  - instance_name: web-02\n    profile: web\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let uri = node(dir.path(), &[("web-01", 1), ("web-02", 4)]);
    let ops = plan_ops(&cfg, &uri);
    let find = |n: &str| ops.iter().find(|(t, _, _)| t == n).cloned().unwrap();
    assert_eq!(find("web-01").1, "ok", "{ops:?}");
    assert_eq!(find("web-02").1, "drift");
    assert!(find("web-02").2.contains("vcpus 4 (config 1)"), "{ops:?}");
}

#[test]
fn regression_provision_said_matches_the_config_after_ipv4_address_changed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "test:///default", &["web-01"]);
    // Defined without a static address; the config now asks for one. The record names only
    // two fields: the others are not compared.
    let text =
        std::fs::read_to_string(node(dir.path(), &[("web-01", 1)]).trim_start_matches("test://"))
            .unwrap()
            .replace(
                "</kvmprov:instance>",
                "<kvmprov:fields><kvmprov:field name='ipv4_address' value=''/>\
             <kvmprov:field name='vcpus' value='1'/></kvmprov:fields></kvmprov:instance>",
            );
    let node = dir.path().join("recorded.xml");
    std::fs::write(&node, text).unwrap();
    let uri = format!("test://{}", node.display());
    let ops = plan_ops(&cfg, &uri);
    let web = ops.iter().find(|(t, _, _)| t == "web-01").unwrap();
    assert_eq!(web.1, "ok", "{ops:?}");
    let changed = std::fs::read_to_string(&cfg).unwrap().replace(
        "    vcpus: 1\n",
        "    vcpus: 1\n    ipv4_address: 192.168.122.50/24\n",
    );
    std::fs::write(&cfg, changed).unwrap();
    let ops = plan_ops(&cfg, &uri);
    let web = ops.iter().find(|(t, _, _)| t == "web-01").unwrap();
    assert_eq!(web.1, "drift", "{ops:?}");
    assert!(
        web.2.contains(
            "ipv4_address (none) → 192.168.122.50/24 (recreate: only a new domain with a new cloud-init seed"
        ),
        "{ops:?}"
    );
}

#[test]
fn confirmed_cleanup_of_a_domain_kvmprov_did_not_create_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "test:///default", &["app-01"]);
    let disk = dir.path().join("instances/app-01.qcow2");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    std::fs::write(&disk, b"x").unwrap();
    // Made by the replaced playbook: no kvmprov metadata.
    let node = dir.path().join("foreign.xml");
    std::fs::write(
        &node,
        format!(
            "<node><domain type='test'><name>app-01</name><memory unit='MiB'>64</memory>\
             <os><type>hvm</type></os><devices><disk type='file' device='disk'>\
             <source file='{}'/><target dev='vda'/></disk></devices></domain></node>",
            disk.display()
        ),
    )
    .unwrap();
    let o = kvmprov(&[
        "-c",
        cfg.to_str().unwrap(),
        "-e",
        &format!("kvm_libvirt_uri=test://{}", node.display()),
        "-e",
        "kvm_cleanup_confirmed=true",
        "-e",
        "kvm_cleanup_remove_instance_disks=true",
        "--output",
        "json",
        "cleanup",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let outcomes = v["stages"][0]["outcomes"].as_array().unwrap();
    let ops: Vec<(&str, &str)> = outcomes
        .iter()
        .map(|o| (o["op"].as_str().unwrap(), o["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        [("stop", "done"), ("undefine", "done"), ("delete", "done")],
        "{outcomes:?}"
    );
    for o in &outcomes[..2] {
        let reason = o["reason"].as_str().unwrap();
        assert!(reason.contains("not created by kvmprov"), "{reason}");
    }
    assert!(!disk.exists());
}

#[test]
fn cleanup_without_confirmation_only_plans_and_never_touches_undeclared() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "test:///default", &["app-01", "gone-01"]);
    let uri = node(dir.path(), &[("app-01", 1), ("app-0", 1), ("APP-01", 1)]);
    let o = kvmprov(&[
        "-c",
        cfg.to_str().unwrap(),
        "-e",
        &format!("kvm_libvirt_uri={uri}"),
        "--output",
        "json",
        "cleanup",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let outcomes = v["stages"][0]["outcomes"].as_array().unwrap();
    let targets: Vec<&str> = outcomes
        .iter()
        .map(|o| o["target"].as_str().unwrap())
        .collect();
    assert!(
        targets.iter().all(|t| *t == "app-01" || *t == "gone-01"),
        "{targets:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| o["status"] == "planned" || o["op"] == "skip"),
        "{outcomes:?}"
    );
    let o = kvmprov(&[
        "-c",
        cfg.to_str().unwrap(),
        "-e",
        &format!("kvm_libvirt_uri={uri}"),
        "cleanup",
    ]);
    assert!(
        text(&o).contains("kvm_cleanup_confirmed=true"),
        "{}",
        text(&o)
    );
}

#[test]
fn help_explains_every_command() {
    let o = kvmprov(&["--help"]);
    let t = text(&o);
    for cmd in [
        "check",
        "ping",
        "preflight",
        "image-cache",
        "provision",
        "runtime",
        "cleanup",
        "status",
        "start",
        "stop",
        "restart",
        "console",
        "ssh",
    ] {
        assert!(t.contains(cmd), "{cmd} missing from --help: {t}");
        let o = kvmprov(&[cmd, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{cmd} --help");
    }
    let o = kvmprov(&["nonsense"]);
    assert_eq!(o.status.code(), Some(2));
}

/// The day-two verbs take declared names only: an undeclared one, given to any of them, exits 2
/// before anything is looked at or changed (the domain is still running for a plan run after);
/// named instances are the only ones worked on; `stop` shuts the guest down (the test driver's
/// ACPI shutdown is immediate), with its own `--output json` envelope.
#[test]
fn lifecycle_verbs_take_declared_names_only_and_stop_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let uri = node(dir.path(), &[("web-01", 1), ("web-02", 1)]);
    let cfg = config(dir.path(), &uri, &["web-01", "web-02"]);
    let c = cfg.to_str().unwrap();
    for verb in ["start", "stop", "restart"] {
        let o = kvmprov(&["-c", c, "--output", "json", verb, "web-01", "web-03"]);
        assert_eq!(o.status.code(), Some(2), "{verb}: {}", text(&o));
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(doc["command"], verb);
        assert_eq!(doc["ok"], false);
        let e = doc["error"].as_str().unwrap();
        assert!(
            e.starts_with("`web-03` is not a declared instance of")
                && e.contains("(declared: web-01, web-02), did you mean `web-0"),
            "{e}"
        );
        assert!(doc.get("stages").is_none(), "{doc}");
    }
    let o = kvmprov(&["-c", c, "console", "web-03"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // The console needs a terminal; the test's stdin is none.
    let o = kvmprov(&["-c", c, "console", "web-01"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("`kvmprov console --log web-01` prints the console log"));

    let o = kvmprov(&["-c", c, "--check", "--output", "json", "stop", "web-02"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let outcomes = doc["stages"][0]["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 1, "{doc}");
    assert_eq!(outcomes[0]["target"], "web-02");
    assert_eq!(outcomes[0]["status"], "planned");
    assert_eq!(
        outcomes[0]["reason"],
        "shut down (ACPI), wait up to 120 s for it to power off"
    );

    let o = kvmprov(&["-c", c, "--output", "json", "stop", "web-01"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["command"], "stop");
    let outcomes = doc["stages"][0]["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 1, "{doc}");
    assert_eq!(outcomes[0]["op"], "stop");
    assert_eq!(outcomes[0]["status"], "done");
    assert_eq!(
        outcomes[0]["reason"],
        "shut down: powered off 0 s after the request"
    );
}

/// `make bench` printed its results and then failed with "Error 143": the download benchmark's
/// EXIT trap ended with `wait` on the mirror it had just killed, and under `set -e` that status
/// became the script's. Runs the script's own `cleanup` function in the same setting.
#[test]
fn regression_bench_download_trap_turned_success_into_143() {
    let script = std::fs::read_to_string(repo().join("tests/bench/download.sh")).unwrap();
    let start = script
        .find("cleanup() {")
        .expect("download.sh defines cleanup()");
    let len = script[start..].find("\n}\n").expect("end of cleanup()") + 3;
    let cleanup = &script[start..start + len];
    let run = |tail: &str| {
        let body = format!(
            "set -euo pipefail\nDIR=$(mktemp -d)\nMIRROR_PID=\"\"\n{cleanup}trap cleanup EXIT\n\
             sleep 30 &\nMIRROR_PID=$!\necho results\n{tail}"
        );
        Command::new("bash").arg("-c").arg(body).output().unwrap()
    };
    let ok = run("");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(text(&ok).contains("results"));
    // A failing benchmark still fails, with its own status.
    let failed = run("exit 3");
    assert_eq!(failed.status.code(), Some(3), "{}", text(&failed));
}

/// An `-e` value that failed validation was echoed whole, so
/// `-e 'kvm_cloud_init_defaults={user: Bad, password: s3cret}'` printed the password to stderr
/// (and into CI logs). Errors name the secret field instead, for every way the value can fail.
#[test]
fn regression_invalid_e_value_echoed_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "test:///default", &["app-01"]);
    for value in [
        "kvm_cloud_init_defaults={user: Bad, password: s3cret}",
        "kvm_cloud_init_defaults={user: debian, password: s3cret",
        "kvm_cloud_init_defaults={password: \"s3cret}",
        "kvm_cloud_init_defaults={password: s3cret, password: s3cret}",
        "kvm_cloud_init_defaults={password: s3cret, ssh_password_authentication: maybe}",
        "kvm_cloud_init_defaults={password: s3cret, pasword: x}",
        "kvm_cloud_init_defaults={password: s3cret}\nmore",
        "kvm_cloud_init_default={password: s3cret}",
        "kvm_cloud_init_defaults:{password: s3cret}",
        "kvm_instance_definitions=[{instance_name: a, image_name: x, api_token: s3cret}]",
    ] {
        for output in ["human", "json"] {
            let o = kvmprov(&[
                "-c",
                cfg.to_str().unwrap(),
                "--output",
                output,
                "-e",
                value,
                "check",
            ]);
            let all = text(&o);
            assert_eq!(o.status.code(), Some(2), "{value}: {all}");
            assert!(!all.contains("s3cret"), "{value}: {all}");
            assert!(all.contains("-e "), "{value}: {all}");
            assert!(
                all.contains("`password`") || all.contains("`token`"),
                "the field is named: {value}: {all}"
            );
        }
    }
    // Values without secrets are still shown, to find the mistake in.
    let o = kvmprov(&[
        "-c",
        cfg.to_str().unwrap(),
        "-e",
        "kvm_cleanup_confirmed=maybe",
        "check",
    ]);
    assert!(
        text(&o).contains("-e kvm_cleanup_confirmed=maybe"),
        "{}",
        text(&o)
    );
}

/// A cached image's sidecar with a truncated digest made `provision` panic (`sha512[..16]` on a
/// short string). A damaged sidecar means "not cached", like a missing one.
#[test]
fn regression_truncated_image_sidecar_panicked_provision() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "test:///default", &["web-01"]);
    let cache = dir.path().join("images");
    std::fs::create_dir_all(&cache).unwrap();
    let image = cache.join("debian-12-genericcloud-amd64-0123456789abcdef.qcow2");
    std::fs::write(&image, b"QFI\xfb not really").unwrap();
    std::fs::write(
        cache.join("debian-12-genericcloud-amd64-0123456789abcdef.qcow2.json"),
        r#"{"image_name":"debian-12","sha512":"0123","size":14,"version":null,"url":"http://127.0.0.1:9/x.qcow2","cached_at":"1"}"#,
    )
    .unwrap();
    let uri = node(dir.path(), &[]);
    let ops = plan_ops(&cfg, &uri);
    let web = ops.iter().find(|(t, _, _)| t == "web-01").unwrap();
    assert_eq!(web.1, "create", "{ops:?}");
    assert!(web.2.contains("not cached"), "{ops:?}");
}

/// `kvmprov inventory` against the test driver: a running instance with a static address is a
/// host with the pinned known_hosts; one without an address, one shut off and one not defined
/// are named on stderr; the binary answers Ansible's script calls (`--list`, `--host NAME`) itself.
#[test]
fn inventory_lists_running_instances_and_names_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let uri = node(
        dir.path(),
        &[("inv-static", 1), ("inv-dhcp", 1), ("inv-off", 1)],
    );
    // inv-off is shut off (the test driver's own run state element).
    let node_xml = dir.path().join("node.xml");
    let xml = std::fs::read_to_string(&node_xml).unwrap().replace(
        "<name>inv-off</name>",
        "<name>inv-off</name><test:runstate xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>5</test:runstate>",
    );
    std::fs::write(&node_xml, xml).unwrap();
    let cfg = config(
        dir.path(),
        &uri,
        &["inv-static", "inv-dhcp", "inv-off", "inv-absent"],
    );
    let body = std::fs::read_to_string(&cfg).unwrap().replace(
        "  - instance_name: inv-static\n",
        "  - instance_name: inv-static\n    ipv4_address: 192.168.122.50/24\n",
    );
    std::fs::write(&cfg, body).unwrap();
    // What provision leaves behind: the operator key and the instance's pinned host key.
    let state = kvmprov::state::StateDir::open(&dir.path().join("instances"))
        .unwrap()
        .path()
        .to_path_buf();
    for f in ["id_ed25519", "id_ed25519.pub"] {
        std::fs::write(state.join(f), "test key\n").unwrap();
    }
    let pinned =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedPinnedPinnedPinnedPinnedPinnedPinnedPin";
    std::fs::write(
        kvmprov::state::host_key_path(&state, &uri, "inv-static"),
        pinned,
    )
    .unwrap();

    let o = kvmprov(&["-c", cfg.to_str().unwrap(), "inventory", "--list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let vars = &doc["_meta"]["hostvars"]["inv-static"];
    assert_eq!(vars["ansible_host"], "192.168.122.50");
    assert_eq!(vars["ansible_user"], "debian");
    assert_eq!(
        vars["ansible_ssh_private_key_file"],
        state.join("id_ed25519").display().to_string()
    );
    let common = vars["ansible_ssh_common_args"].as_str().unwrap();
    assert!(common.contains("StrictHostKeyChecking=yes"), "{common}");
    // Split as Ansible splits it; the value is one ssh_config word in double quotes.
    let words = shlex::split(common).unwrap();
    let known_hosts = words
        .iter()
        .find_map(|w| w.strip_prefix("UserKnownHostsFile="))
        .unwrap()
        .trim_matches('"');
    assert_eq!(
        std::fs::read_to_string(known_hosts).unwrap(),
        format!("192.168.122.50 {pinned}\n")
    );
    for group in ["image_debian_12", "hypervisor_localhost", "network_default"] {
        assert_eq!(
            doc[group]["hosts"],
            serde_json::json!(["inv-static"]),
            "{group}"
        );
        assert!(doc["all"]["children"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(group)));
    }
    assert!(doc["_meta"]["hostvars"].get("inv-dhcp").is_none());
    let err = String::from_utf8_lossy(&o.stderr);
    // The test driver has no DHCP leases (the lookup fails) nor a pinned key for inv-dhcp:
    // whichever reason comes first, it is named.
    assert!(err.contains("inv-dhcp left out: "), "{err}");
    assert!(
        err.contains("inv-off left out: shutoff on test://"),
        "{err}"
    );
    assert!(err.contains("inv-absent left out: not defined"), "{err}");

    let yaml = kvmprov(&["-c", cfg.to_str().unwrap(), "inventory", "--format", "yaml"]);
    assert_eq!(yaml.status.code(), Some(0), "{}", text(&yaml));
    let y = String::from_utf8_lossy(&yaml.stdout);
    assert!(
        y.contains("      ansible_host: \"192.168.122.50\"\n"),
        "{y}"
    );
    assert!(
        y.contains("    image_debian_12:\n      hosts:\n        \"inv-static\": {}\n"),
        "{y}"
    );

    // Ansible's script protocol, with the config from the environment.
    let script = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kvmprov"))
            .args(args)
            .env("KVMPROV_CONFIG", &cfg)
            .output()
            .unwrap()
    };
    let list = script(&["--list"]);
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&list.stdout).unwrap(),
        doc
    );
    let host = script(&["--host", "inv-static"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&host.stdout).unwrap(),
        *vars
    );
    let down = script(&["--host", "inv-dhcp"]);
    assert_eq!(String::from_utf8_lossy(&down.stdout).trim(), "{}");
    let typo = script(&["--host", "inv-statc"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        text(&typo).contains("did you mean `inv-static`"),
        "{}",
        text(&typo)
    );
}

#[test]
fn schema_man_and_completions_need_no_variables_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.yml");
    let c = missing.to_str().unwrap();
    let schema = kvmprov(&["-c", c, "schema"]);
    assert_eq!(schema.status.code(), Some(0), "{}", text(&schema));
    let doc: serde_json::Value = serde_json::from_slice(&schema.stdout).unwrap();
    assert!(doc["properties"]["kvm_instance_definitions"].is_object());
    let man = kvmprov(&["-c", c, "man"]);
    assert!(String::from_utf8_lossy(&man.stdout).starts_with(".ie \\n(.g .ds Aq"));
    assert!(String::from_utf8_lossy(&man.stdout).contains("inventory"));
    let pages = dir.path().join("man");
    std::fs::create_dir(&pages).unwrap();
    let o = kvmprov(&["-c", c, "man", "--out-dir", pages.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for page in [
        "kvmprov.1",
        "kvmprov-inventory.1",
        "kvmprov-image-cache-prune.1",
    ] {
        assert!(pages.join(page).is_file(), "{page}");
    }
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef kvmprov"),
        ("fish", "complete -c kvmprov"),
    ] {
        let o = kvmprov(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(marker),
            "{shell}"
        );
    }
}

/// `make help` lists the targets that carry a `## ` description: every target must have one,
/// and every target must be phony (none of them is a file).
#[test]
fn every_make_target_is_described_and_phony() {
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let phony: Vec<&str> = makefile
        .split(".PHONY:")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .flat_map(|l| l.split_whitespace())
        .filter(|w| *w != "\\")
        .collect();
    let targets: Vec<&str> = makefile
        .lines()
        .filter(|l| !l.starts_with('\t') && !l.starts_with('.') && !l.contains(":="))
        .filter_map(|l| l.split_once(':'))
        .filter(|(t, _)| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        .map(|(t, rest)| {
            assert!(
                rest.contains("## "),
                "make target `{t}` has no `## ` description"
            );
            t
        })
        .collect();
    let mut a = phony.clone();
    let mut b = targets.clone();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, ".PHONY vs the targets");
    assert!(targets.contains(&"deb") && targets.contains(&"inventory"));
}

/// A qcow2 file of 1 MiB, backed by `backing` if given: made by `qemu-img` when it is installed
/// (what users have), else its header written here.
fn qcow2(path: &Path, backing: Option<&Path>) {
    let qemu_img = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if qemu_img {
        let mut cmd = Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2"]);
        if let Some(b) = backing {
            cmd.arg("-b").arg(b).args(["-F", "qcow2"]);
        }
        let out = cmd.arg(path).arg("1M").output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        return;
    }
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
    if let Some(b) = backing {
        let name = b.to_str().unwrap().as_bytes();
        h[8..16].copy_from_slice(&112u64.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h[112..112 + name.len()].copy_from_slice(name);
    }
    std::fs::write(path, h).unwrap();
}

/// A cached version of debian-12 (image and sidecar) whose digest starts with `fill`.
fn cached_image(cache: &Path, fill: &str) -> PathBuf {
    let sha = fill.repeat(128 / fill.len());
    let path = cache.join(format!("debian-12-genericcloud-amd64-{}.qcow2", &sha[..16]));
    qcow2(&path, None);
    let side = serde_json::json!({
        "image_name": "debian-12", "sha512": sha, "size": std::fs::metadata(&path).unwrap().len(),
        "version": null, "url": "http://127.0.0.1:9/x.qcow2", "cached_at": "1"
    });
    std::fs::write(
        format!("{}.json", path.display()),
        serde_json::to_string(&side).unwrap(),
    )
    .unwrap();
    path
}

#[test]
fn regression_prune_deleted_the_base_of_a_disk_kept_by_cleanup_force() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), &node(t.path(), &[]), &["app-01"]);
    let cache = t.path().join("images");
    let pool = t.path().join("instances");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(&pool).unwrap();
    let base = cached_image(&cache, "a");
    let unused = cached_image(&cache, "b");
    // What `cleanup-force` leaves: the overlay, no domain.
    qcow2(&pool.join("app-01.qcow2"), Some(&base));
    std::fs::write(pool.join("app-01-console.log"), "boot\n").unwrap();

    let out = kvmprov(&["-c", cfg.to_str().unwrap(), "image-cache", "prune", "--yes"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(base.exists(), "the overlay's base was kept: {said}");
    assert!(said.contains("app-01.qcow2"), "says what it backs: {said}");
    assert!(!unused.exists(), "the unused version was deleted: {said}");
    assert!(!PathBuf::from(format!("{}.json", unused.display())).exists());
}

#[test]
fn regression_prune_deleted_images_a_run_with_another_pool_was_about_to_use() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), &node(t.path(), &[]), &["app-01"]);
    let cache = t.path().join("images");
    std::fs::create_dir_all(&cache).unwrap();
    let unused = cached_image(&cache, "c");
    // Another run (another instance pool, the same cache) between its download and its use.
    let run = kvmprov_image::CacheLock::shared(&cache).unwrap();
    let out = kvmprov(&["-c", cfg.to_str().unwrap(), "image-cache", "prune", "--yes"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("another kvmprov run is using the image cache"),
        "{said}"
    );
    assert!(unused.exists());
    drop(run);
    let out = kvmprov(&["-c", cfg.to_str().unwrap(), "image-cache", "prune", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!unused.exists());
}

/// A config whose debian-12 image is `image` served from a local directory by `file://` URLs.
fn file_catalog(dir: &Path, uri: &str, image: &[u8]) -> PathBuf {
    use sha2::Digest;
    let mirror = dir.join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    std::fs::write(mirror.join("debian-12-genericcloud-amd64.qcow2"), image).unwrap();
    let sum = hex::encode(sha2::Sha512::digest(image));
    std::fs::write(
        mirror.join("SHA512SUMS"),
        format!("{sum}  debian-12-genericcloud-amd64.qcow2\n"),
    )
    .unwrap();
    let cfg = config(dir, uri, &["app-01"]);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "http://127.0.0.1:9/images/cloud/bookworm/latest/",
        &format!("file://{}/", mirror.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

#[test]
fn regression_file_image_url_passed_check_but_failed_to_download() {
    let t = tempfile::tempdir().unwrap();
    let image_file = t.path().join("made.qcow2");
    qcow2(&image_file, None);
    let image = std::fs::read(&image_file).unwrap();
    let cfg = file_catalog(t.path(), &node(t.path(), &[]), &image);
    let out = kvmprov(&["-c", cfg.to_str().unwrap(), "check"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = kvmprov(&["-c", cfg.to_str().unwrap(), "image-cache"]);
    assert!(out.status.success(), "{}", text(&out));
    let cached = kvmprov_image::newest_cached(&t.path().join("images"), "debian-12")
        .unwrap()
        .expect("cached");
    assert_eq!(std::fs::read(&cached.path).unwrap(), image);
    assert!(cached.url.starts_with("file:///"), "{}", cached.url);
}

#[test]
fn regression_non_qcow2_image_reached_provisioning() {
    let t = tempfile::tempdir().unwrap();
    let cfg = file_catalog(
        t.path(),
        &node(t.path(), &[]),
        b"<html>mirror maintenance page</html>\n",
    );
    let out = kvmprov(&["-c", cfg.to_str().unwrap(), "provision"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let line = said
        .lines()
        .find(|l| l.contains("is not a qcow2 image"))
        .unwrap_or_else(|| panic!("the image-cache stage says why: {said}"));
    assert!(
        line.contains("debian-12-genericcloud-amd64.qcow2"),
        "{line}"
    );
    assert!(
        // Preflight's address check names the instance; no stage after image-cache may.
        !said
            .lines()
            .any(|l| l.contains("app-01") && !l.contains("address app-01"))
            && !said.lines().any(|l| l.starts_with("provision")),
        "provisioning never started: {said}"
    );
    assert!(kvmprov_image::list_cached(&t.path().join("images"))
        .unwrap()
        .is_empty());
}

#[test]
fn regression_check_showed_url_credentials() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), "test:///default", &["app-01"]);
    let text_with_secrets = std::fs::read_to_string(&cfg).unwrap().replace(
        "http://127.0.0.1:9/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
        "https://kvm:pa55word@mirror.example/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2?token=t0ps3cret",
    );
    std::fs::write(&cfg, text_with_secrets).unwrap();
    for args in [vec!["check"], vec!["--output", "json", "check"]] {
        let mut all = vec!["-c", cfg.to_str().unwrap()];
        all.extend(args);
        let out = kvmprov(&all);
        let said = text(&out);
        assert!(out.status.success(), "{said}");
        assert!(
            !said.contains("pa55word") && !said.contains("t0ps3cret"),
            "{said}"
        );
        assert!(said.contains("https://***@mirror.example/"), "{said}");
    }
}

/// Snapshots of help, human and JSON output (in their own file; one test binary, like here).
#[path = "cli/snapshots.rs"]
mod snapshots;

/// Data disks against the test driver: `provision --check` has one line per disk (created,
/// used as it is, or of another size: drift, never resized) and changes nothing; an existing
/// domain made without the disks reports them added; `status --output json` lists them.
#[test]
fn data_disks_have_a_plan_line_each_and_are_listed_by_status() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("instances");
    let cfg = config(dir.path(), "test:///default", &["db-01", "db-02"]);
    let body = std::fs::read_to_string(&cfg).unwrap().replace(
        "  - instance_name: db-01\n",
        "  - instance_name: db-01\n    disks:\n      - {name: data, size_gib: 2, filesystem: ext4, mount: /srv/data}\n      - {name: raw, size_gib: 1}\n",
    ).replace(
        "  - instance_name: db-02\n",
        "  - instance_name: db-02\n    disks: [{name: data, size_gib: 1}]\n",
    );
    std::fs::write(&cfg, body).unwrap();
    // db-01 has no domain; its `data` volume is left from an earlier life, `raw` is missing.
    // db-02's domain exists, defined without data disks; its volume was made bigger by hand.
    let uri = node(dir.path(), &[("db-02", 1)]);
    let node_xml = dir.path().join("node.xml");
    let volume = |name: &str, gib: u64| {
        format!(
            "<volume><name>{name}</name><capacity unit='GiB'>{gib}</capacity><target><path>{}</path><format type='qcow2'/></target></volume>",
            pool.join(name).display()
        )
    };
    // db-02 is shut off (the test driver's run state): status asks no address of it.
    let xml = std::fs::read_to_string(&node_xml).unwrap().replace(
        "<name>db-02</name>",
        "<name>db-02</name><test:runstate xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>5</test:runstate>",
    ).replace(
        "</node>",
        &format!(
            "<pool type='dir'><name>inst</name><target><path>{}</path></target>{}{}</pool>\n</node>",
            pool.display(),
            volume("db-01_data.qcow2", 2),
            volume("db-02_data.qcow2", 3),
        ),
    );
    std::fs::write(&node_xml, xml).unwrap();
    let ops = plan_ops(&cfg, &uri);
    let lines: Vec<(&str, &str, &str)> = ops
        .iter()
        .filter(|(t, _, r)| t.starts_with("db-") && r.starts_with("data disk"))
        .map(|(t, op, r)| (t.as_str(), op.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        lines,
        vec![
            ("db-01", "ok", "data disk db-01_data.qcow2 (data 2 GiB ext4 on /srv/data, /dev/disk/by-id/virtio-data): exists, used as it is"),
            ("db-01", "create", "data disk db-01_raw.qcow2 (raw 1 GiB raw, /dev/disk/by-id/virtio-raw): missing, created empty"),
            ("db-02", "drift", "data disk db-02_data.qcow2 (data 1 GiB raw, /dev/disk/by-id/virtio-data): exists with 3 GiB (config 1), used as it is, never resized by kvmprov"),
        ],
        "{ops:?}"
    );
    let db02 = ops
        .iter()
        .find(|(t, _, r)| t == "db-02" && !r.starts_with("data disk"))
        .unwrap();
    assert_eq!(db02.1, "drift", "{ops:?}");
    assert!(
        db02.2.contains("data disks (none) (config data)"),
        "{ops:?}"
    );

    let o = kvmprov(&[
        "-c",
        cfg.to_str().unwrap(),
        "-e",
        &format!("kvm_libvirt_uri={uri}"),
        "--output",
        "json",
        "status",
    ]);
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let rows = v["instances"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(rows.len(), 2, "{v}");
    let disks = &rows[0]["disks"];
    assert_eq!(disks[0]["name"], "data", "{v}");
    assert_eq!(disks[0]["capacity_bytes"], 2u64 << 30, "{v}");
    assert_eq!(disks[0]["mount"], "/srv/data", "{v}");
    assert_eq!(disks[1]["capacity_bytes"], serde_json::Value::Null, "{v}");
    assert_eq!(disks[1]["by_id"], "/dev/disk/by-id/virtio-raw", "{v}");
}

/// An instance with two NICs: `--check` plans a line per NIC, and preflight needs every NIC's
/// network.
#[test]
fn provision_check_plans_a_line_per_nic_and_preflight_needs_every_network() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "test:///default", &[]);
    let mut y = std::fs::read_to_string(&cfg).unwrap();
    y.push_str(
        "  - instance_name: db-01\n    image_name: debian-12\n    nics:\n      - network: default\n      - {network: storage, ipv4_address: 10.77.0.10/24, ipv6_address: 'fd77::10/64'}\n",
    );
    std::fs::write(&cfg, y).unwrap();
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    cached_image(&dir.path().join("images"), "a");
    let uri = node(dir.path(), &[]);
    let ops = plan_ops(&cfg, &uri);
    let nic_lines: Vec<&(String, String, String)> = ops
        .iter()
        .filter(|(t, _, _)| t.starts_with("db-01 nic"))
        .collect();
    let mac0 = kvmprov_hypervisor::xml::mac_for("db-01");
    let mac1 = kvmprov_hypervisor::xml::mac_for_nic("db-01", 1);
    assert_eq!(
        nic_lines,
        vec![
            &(
                "db-01 nic0".to_string(),
                "create".to_string(),
                format!("network default, mac {mac0}, DHCPv4, primary")
            ),
            &(
                "db-01 nic1".to_string(),
                "create".to_string(),
                format!("network storage, mac {mac1}, static 10.77.0.10/24, static fd77::10/64")
            ),
        ],
        "{ops:?}"
    );
    // `check` shows every NIC under the instance.
    let o = kvmprov(&["-c", cfg.to_str().unwrap(), "check"]);
    assert!(
        text(&o).contains(&format!(
            "      nic1 network storage, mac {mac1}, static 10.77.0.10/24, static fd77::10/64\n"
        )),
        "{}",
        text(&o)
    );
    // The node has no `storage` network: preflight says so.
    let o = kvmprov(&[
        "-c",
        cfg.to_str().unwrap(),
        "-e",
        &format!("kvm_libvirt_uri={uri}"),
        "--check",
        "provision",
        "--stage",
        "preflight",
    ]);
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("Network not found: `storage`"), "{t}");
}
