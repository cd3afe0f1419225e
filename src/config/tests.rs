use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::*;

const GOOD: &str = "\
kvm_image_cache_path: /srv/images
kvm_instance_disk_pool_path: /srv/instances
kvm_cloud_image_catalog:
  - image_name: debian-12
    image_url: http://127.0.0.1:1/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2
    image_checksum_manifest_url: http://127.0.0.1:1/images/cloud/bookworm/latest/SHA512SUMS
kvm_cloud_init_defaults:
  password: secret-pw
kvm_instance_definitions:
  - instance_name: app-01
    image_name: debian-12
  - instance_name: app-02
    image_name: debian-12
    ipv4_address: 192.168.122.50/24
";

fn p(text: &str, ov: &[&str]) -> Result<Config, ConfigError> {
    let ov: Vec<String> = ov.iter().map(|s| s.to_string()).collect();
    parse(Path::new("vars.yml"), text, &ov)
}

fn err(text: &str, ov: &[&str]) -> String {
    match p(text, ov) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn firmware_defaults_to_bios_and_follows_the_top_level_default() {
    let c = p(GOOD, &[]).unwrap();
    assert!(c
        .instances
        .iter()
        .all(|i| i.firmware == FirmwareChoice::Bios));
    let c = p(GOOD, &["kvm_default_firmware=uefi"]).unwrap();
    assert!(c
        .instances
        .iter()
        .all(|i| i.firmware == FirmwareChoice::Uefi));
    let text = GOOD.replace(
        "  - instance_name: app-02\n",
        "  - instance_name: app-02\n    firmware: bios\n",
    );
    let c = p(&text, &["kvm_default_firmware=uefi"]).unwrap();
    assert_eq!(c.instances[1].firmware, FirmwareChoice::Bios);
}

#[test]
fn secure_boot_needs_uefi_and_uefi_may_name_a_snapshot() {
    let text = GOOD.replace(
        "  - instance_name: app-02\n",
        "  - instance_name: app-02\n    secure_boot: true\n",
    );
    let e = err(&text, &[]);
    assert!(e.contains("secure_boot needs firmware: uefi"), "{e}");
    assert!(e.contains("vars.yml:"), "{e}");
    let text = GOOD.replace(
        "  - instance_name: app-02\n",
        "  - instance_name: app-02\n    firmware: uefi\n    snapshot_name: base\n",
    );
    // Whether libvirt can snapshot a UEFI guest is the hypervisor's question (preflight).
    let c = p(&text, &[]).unwrap();
    assert_eq!(c.instances[1].firmware, FirmwareChoice::Uefi);
    assert_eq!(c.instances[1].snapshot_name.as_deref(), Some("base"));
    let e = err(GOOD, &["kvm_default_firmware=efi"]);
    assert!(e.contains("expected `bios` or `uefi`"), "{e}");
}

#[test]
fn instances_may_name_their_own_hypervisor() {
    let text = GOOD.replace(
        "  - instance_name: app-02\n",
        "  - instance_name: app-02\n    hypervisor_host: admin@hv2\n",
    );
    let c = p(&text, &["kvm_hypervisor_host=hv1"]).unwrap();
    assert_eq!(
        c.hosts(),
        ["qemu+ssh://hv1/system", "qemu+ssh://admin@hv2/system"]
    );
    let hv2 = c.for_host("qemu+ssh://admin@hv2/system");
    assert_eq!(hv2.libvirt_uri, "qemu+ssh://admin@hv2/system");
    assert_eq!(hv2.instances.len(), 1);
    assert_eq!(hv2.instances[0].name, "app-02");
    let e = err(
        &GOOD.replace(
            "  - instance_name: app-02\n",
            "  - instance_name: app-02\n    hypervisor_host: \"bad host\"\n",
        ),
        &[],
    );
    assert!(e.contains("hypervisor_host"), "{e}");
    assert!(e.contains("vars.yml:"), "{e}");
}

#[test]
fn good_file_resolves_defaults() {
    let c = p(GOOD, &[]).unwrap();
    assert_eq!(c.hosts(), ["qemu:///system"]);
    assert_eq!(c.libvirt_uri, "qemu:///system");
    assert_eq!(c.instances.len(), 2);
    assert_eq!(c.instances[0].vcpus, 2);
    assert_eq!(c.instances[0].attach.network(), Some("default"));
    let s = c.instances[1].ipv4.as_ref().unwrap();
    assert_eq!(s.gateway, Ipv4Addr::new(192, 168, 122, 1));
    assert_eq!(s.dns, vec![Ipv4Addr::new(192, 168, 122, 1)]);
    assert!(!c.cleanup_confirmed);
    assert!(!c.drift_recreate_confirmed);
    assert!(c.auto_fix_pool_access);
}

#[test]
fn password_never_in_debug_or_json() {
    let c = p(GOOD, &[]).unwrap();
    assert!(!format!("{c:?}").contains("secret-pw"));
    assert!(!serde_json::to_string(&c).unwrap().contains("secret-pw"));
}

#[test]
fn typo_key_names_line_column_and_hint() {
    let text = GOOD.replace("kvm_instance_definitions:", "kvm_instance_definition:");
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:9:1:"), "{e}");
    assert!(e.contains("did you mean `kvm_instance_definitions`"), "{e}");
}

#[test]
fn nested_typo_key() {
    let text = GOOD.replace("    ipv4_address:", "    ipv4_adress:");
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:14:5:"), "{e}");
    assert!(e.contains("did you mean `ipv4_address`"), "{e}");
}

#[test]
fn duplicate_instance_name() {
    let text = GOOD.replace("instance_name: app-02", "instance_name: app-01");
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:12:20:"), "{e}");
    assert!(e.contains("declared twice"), "{e}");
}

/// Two instances with one MAC address passed `check`, and the second guest's NIC then
/// fought the first's on the network (no DHCP lease, no SSH for either).
#[test]
fn regression_duplicate_mac_addresses_passed_check() {
    let derived = kvmprov_hypervisor::xml::mac_for("app-01");
    let text = GOOD.replace(
        "    ipv4_address: 192.168.122.50/24\n",
        &format!("    ipv4_address: 192.168.122.50/24\n    mac_address: \"{derived}\"\n"),
    );
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:15:18:"), "{e}");
    assert!(e.contains("`app-01`") && e.contains("`app-02`"), "{e}");
    assert!(e.contains(&derived), "{e}");

    // Both declared, in another case.
    let text = GOOD
        .replace(
            "  - instance_name: app-02\n",
            "    mac_address: 52:54:00:AA:BB:CC\n  - instance_name: app-02\n",
        )
        .replace(
            "    ipv4_address: 192.168.122.50/24\n",
            "    ipv4_address: 192.168.122.50/24\n    mac_address: 52:54:00:aa:bb:cc\n",
        );
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:16:18:"), "{e}");
    assert!(e.contains("`app-01`") && e.contains("`app-02`"), "{e}");

    // Two names whose derived MACs collide (the derivation keeps 24 bits).
    let mut by_mac = HashMap::new();
    let (a, b) = (0..100_000)
        .map(|i| format!("vm-{i}"))
        .find_map(|n| {
            let mac = kvmprov_hypervisor::xml::mac_for(&n);
            by_mac.insert(mac, n.clone()).map(|first| (first, n))
        })
        .expect("a collision among 100000 names");
    let text = GOOD
        .replace("instance_name: app-01", &format!("instance_name: {a}"))
        .replace("instance_name: app-02", &format!("instance_name: {b}"));
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:12:20:"), "{e}");
    assert!(
        e.contains(&format!("`{a}`")) && e.contains(&format!("`{b}`")),
        "{e}"
    );
}

#[test]
fn missing_image_reference() {
    let text = GOOD.replacen(
        "    image_name: debian-12\n  - instance_name: app-02",
        "    image_name: debian-13\n  - instance_name: app-02",
        1,
    );
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:11:17:"), "{e}");
    assert!(e.contains("not in kvm_cloud_image_catalog"), "{e}");
}

#[test]
fn relative_path() {
    let text = GOOD.replace("/srv/images", "srv/images");
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:1:23:"), "{e}");
    assert!(e.contains("absolute"), "{e}");
}

#[test]
fn nested_paths_rejected() {
    let text = GOOD.replace("/srv/instances", "/srv/images/instances");
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:2:"), "{e}");
}

#[test]
fn yaml_syntax_error() {
    let e = err("kvm_instance_definitions:\n  - instance_name: [a\n", &[]);
    assert!(e.starts_with("vars.yml:"), "{e}");
    assert!(e.contains("YAML syntax error"), "{e}");
    let e = err("a: b\n c: d\n", &[]);
    assert!(e.starts_with("vars.yml:2:"), "{e}");
}

#[test]
fn wrong_type_is_located() {
    let text = GOOD.replace(
        "    image_name: debian-12\n  - instance_name: app-02",
        "    image_name: debian-12\n    vcpus: many\n  - instance_name: app-02",
    );
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:12:12:"), "{e}");
}

#[test]
fn anchors_rejected() {
    let e = err("a: &x [1]\nb: *x\n", &[]);
    assert!(e.contains("anchors"), "{e}");
}

#[test]
fn duplicate_key_rejected() {
    let e = err(
        "kvm_cleanup_confirmed: false\nkvm_cleanup_confirmed: true\n",
        &[],
    );
    assert!(e.starts_with("vars.yml:2:1:"), "{e}");
    assert!(e.contains("duplicate key"), "{e}");
}

#[test]
fn overrides_are_typed() {
    let c = p(
        GOOD,
        &[
            "kvm_cleanup_confirmed=true",
            "kvm_provision_stage=image-cache",
            "kvm_runtime_timeout_seconds=60",
            "kvm_hypervisor_host=admin@hv1",
            "kvm_drift_recreate_confirmed=true",
        ],
    )
    .unwrap();
    assert!(c.cleanup_confirmed);
    assert!(c.drift_recreate_confirmed);
    assert_eq!(c.stage, StageChoice::ImageCache);
    assert_eq!(c.runtime_timeout_seconds, 60);
    assert_eq!(c.libvirt_uri, "qemu+ssh://admin@hv1/system");
}

#[test]
fn override_errors_name_the_argument() {
    let e = err(GOOD, &["kvm_cleanup_confirmed=maybe"]);
    assert!(e.contains("-e kvm_cleanup_confirmed=maybe"), "{e}");
    let e = err(GOOD, &["kvm_cleanup_confirm=true"]);
    assert!(e.contains("did you mean `kvm_cleanup_confirmed`"), "{e}");
    let e = err(GOOD, &["novalue"]);
    assert!(e.contains("KEY=VALUE"), "{e}");
}

#[test]
fn bad_static_ip() {
    let text = GOOD.replace("192.168.122.50/24", "192.168.122.255/24");
    assert!(err(&text, &[]).contains("broadcast"));
    let text = GOOD.replace("192.168.122.50/24", "192.168.122.50/31");
    assert!(err(&text, &[]).contains("prefix"));
    let text = GOOD.replace("192.168.122.50/24", "300.1.1.1/24");
    assert!(err(&text, &[]).starts_with("vars.yml:14:19:"));
}

#[test]
fn hostile_instance_names() {
    for bad in [
        "a/b",
        "..",
        "a b",
        "x".repeat(64).as_str(),
        "аpp",
        "-a",
        "a\\nb",
    ] {
        let text = GOOD.replace(
            "instance_name: app-01",
            &format!("instance_name: \"{bad}\""),
        );
        let e = err(&text, &[]);
        assert!(e.starts_with("vars.yml:10:"), "{bad}: {e}");
    }
}

#[test]
fn empty_file_has_defaults() {
    let c = p("", &[]).unwrap();
    assert!(c.instances.is_empty());
    assert_eq!(
        c.image_cache_path,
        PathBuf::from("/var/lib/kvm-provisioning/images")
    );
}

#[test]
fn regression_yaml_null_was_the_string_null() {
    let base = "kvm_cloud_image_catalog:\n  - image_name: d\n    image_url: https://x/d.qcow2\n    image_checksum_manifest_url: https://x/SHA512SUMS\n    image_sha512: ~\n\
                    kvm_instance_definitions:\n  - instance_name: a\n    image_name: d\n    ipv4_address: null\n    firmware: null\n";
    let c = p(
        &format!("{base}kvm_cloud_init_defaults:\n  password: null\n"),
        &[],
    )
    .unwrap();
    assert!(c.cloud_init.password.is_none());
    assert!(c.instances[0].ipv4.is_none());
    let c = p(base, &["kvm_runtime_timeout_seconds=~"]).unwrap();
    assert_eq!(c.runtime_timeout_seconds, 900);
}

#[test]
fn did_you_mean_only_when_close() {
    assert_eq!(did_you_mean("zzz", TOP_LEVEL_KEYS), "");
}

/// Errors serde raises itself (a wrong type, an unknown variant, a missing field) came without
/// a position, and were all reported at `vars.yml:1:21`: the first `:` of the file.
#[test]
fn regression_type_error_pointed_at_wrong_line() {
    let in_app_02 = |line: &str| {
        GOOD.replace(
            "  - instance_name: app-02\n",
            &format!("  - instance_name: app-02\n    {line}\n"),
        )
    };
    for (text, at) in [
        (in_app_02("vcpus: [1]"), "vars.yml:13:12: "),
        (in_app_02("secure_boot: [1]"), "vars.yml:13:18: "),
        (in_app_02("packages: x"), "vars.yml:13:15: "),
        (in_app_02("firmware: efi"), "vars.yml:13:15: "),
        (GOOD.replace("/srv/images\n", "[a]\n"), "vars.yml:1:23: "),
        (
            GOOD.replace(
                "kvm_cloud_init_defaults:\n  password: secret-pw\n",
                "kvm_cloud_init_defaults: 5\n",
            ),
            "vars.yml:7:26: ",
        ),
    ] {
        let e = err(&text, &[]);
        assert!(e.starts_with(at), "want {at}: {e}");
    }
    let e = err(&in_app_02("vcpus: [1]"), &[]);
    assert!(e.contains("invalid type: sequence, expected u32"), "{e}");
}

/// A missing required field was reported at `vars.yml:1:21`, far from the entry that lacks it:
/// it is now at the entry's first key.
#[test]
fn regression_missing_field_pointed_at_wrong_line() {
    let text = GOOD.replace(
        "  - instance_name: app-02\n    image_name: debian-12\n",
        "  - instance_name: app-02\n",
    );
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:12:5: "), "{e}");
    assert!(e.contains("missing field `image_name`"), "{e}");
    let text = GOOD.replace(
        "    image_checksum_manifest_url: http://127.0.0.1:1/images/cloud/bookworm/latest/SHA512SUMS\n",
        "",
    );
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:4:5: "), "{e}");
    assert!(
        e.contains("missing field `image_checksum_manifest_url`"),
        "{e}"
    );
}

/// An invalid `-e` value that serde rejects named a place in the file (`vars.yml:1:21`) that
/// has nothing to do with it: it names the `-e` argument.
#[test]
fn regression_invalid_override_pointed_at_the_file() {
    for (arg, message) in [
        ("kvm_domain_type=xen", "unknown variant `xen`"),
        (
            "kvm_instance_definitions=[{instance_name: a}]",
            "missing field `image_name`",
        ),
        (
            "kvm_instance_definitions=[{instance_name: a, image_name: debian-12, vcpus: [1]}]",
            "invalid type: sequence, expected u32",
        ),
        ("kvm_image_cache_path=[a]", "invalid type: sequence"),
    ] {
        let e = err(GOOD, &[arg]);
        assert!(e.starts_with(&format!("-e {arg}: ")), "{e}");
        assert!(e.contains(message), "{e}");
    }
    // A secret stays hidden in the located error too.
    let e = err(GOOD, &["kvm_cloud_init_defaults={password: [1]}"]);
    assert!(
        e.starts_with("-e kvm_cloud_init_defaults=… (value not shown"),
        "{e}"
    );
    assert!(!e.contains("vars.yml"), "{e}");
}

/// Cache and pool overlapping, with the pool left at its default: the error names the key that
/// is in the file (it pointed at the file's first `:`).
#[test]
fn regression_overlap_with_default_pool_pointed_at_wrong_line() {
    let text = GOOD.replace(
        "kvm_image_cache_path: /srv/images\nkvm_instance_disk_pool_path: /srv/instances\n",
        "kvm_cloud_init_defaults: {}\nkvm_image_cache_path: /var/lib/kvm-provisioning/instances/images\n",
    ).replace("kvm_cloud_init_defaults:\n  password: secret-pw\n", "");
    let e = err(&text, &[]);
    assert!(e.starts_with("vars.yml:2:23: "), "{e}");
    assert!(e.contains("must be separate directories"), "{e}");
}

/// Data disks: resolved in order; every broken rule is an error at its key's line and column.
#[test]
fn data_disks_are_checked_where_they_are_written() {
    let with_disks = |disks: &str| {
        GOOD.replace(
            "  - instance_name: app-02\n",
            &format!("  - instance_name: app-02\n    disks:\n{disks}"),
        )
    };
    let c = p(
        &with_disks(
            "      - {name: data, size_gib: 10, filesystem: ext4, mount: /srv/data}\n      - {name: raw, size_gib: 1}\n",
        ),
        &[],
    )
    .unwrap();
    let d = &c.instances[1].disks;
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].summary(), "data 10 GiB ext4 on /srv/data");
    assert_eq!(d[0].by_id(), "/dev/disk/by-id/virtio-data");
    assert_eq!(d[1].summary(), "raw 1 GiB raw");
    assert!(c.instances[0].disks.is_empty());
    for (disks, at, says) in [
        ("      - {name: Data, size_gib: 1}\n", "vars.yml:14:16: ", "may contain only"),
        (
            "      - {name: a-very-long-disk-name, size_gib: 1}\n",
            "vars.yml:14:16: ",
            "1 to 16 characters",
        ),
        (
            "      - {name: d, size_gib: 1}\n      - {name: d, size_gib: 2}\n",
            "vars.yml:15:16: ",
            "declared twice",
        ),
        ("      - {name: d, size_gib: 0}\n", "vars.yml:14:29: ", "between 1 and 65536"),
        (
            "      - {name: d, size_gib: 1}\n      - {name: dp1, size_gib: 1}\n",
            "vars.yml:15:16: ",
            "reads as a partition of data disk `d`",
        ),
        (
            "      - {name: d, size_gib: 1, filesystem: xfs}\n",
            "vars.yml:14:44: ",
            "xfs is not supported yet",
        ),
        (
            "      - {name: d, size_gib: 1, mount: /srv/d}\n",
            "vars.yml:14:39: ",
            "mount needs a filesystem",
        ),
        (
            "      - {name: d, size_gib: 1, filesystem: ext4, mount: /etc/d}\n",
            "vars.yml:14:57: ",
            "guest's own system files",
        ),
        (
            "      - {name: d, size_gib: 1, filesystem: ext4, mount: /srv/d}\n      - {name: e, size_gib: 1, filesystem: ext4, mount: /srv/d}\n",
            "vars.yml:15:57: ",
            "used by another data disk",
        ),
        (
            "      - {name: d, size_gib: 1, filesystem: ext4, mount_options: noatime}\n",
            "vars.yml:14:65: ",
            "mount_options needs mount",
        ),
        (
            "      - {name: d, size_gib: 1, filesystem: ext4, mount: /srv/d, mount_options: \"a b\"}\n",
            "vars.yml:14:80: ",
            "without white space",
        ),
        ("      - {name: d, size_gib: 1, bus: scsi}\n", "vars.yml:14:32: ", "unknown"),
    ] {
        let e = err(&with_disks(disks), &[]);
        assert!(e.starts_with(at) && e.contains(says), "want {at} … {says}: {e}");
    }
}
