use super::*;
use crate::merge::{self, CloudConfig, Node};
use std::net::Ipv4Addr;
use std::process::Command;

fn spec(network: NetworkSpec) -> SeedSpec {
    SeedSpec {
        instance_id: "app-01-1732480000".into(),
        hostname: "app-01".into(),
        user: "debian".into(),
        password_hash: Some(hash_password("pw").unwrap()),
        ssh_authorized_keys: vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests op@host".into(),
        ],
        ssh_password_authentication: false,
        host_keys: HostKeys::generate().unwrap(),
        network: vec![NicNetwork::only(network)],
        packages: vec!["yes".into(), "0777".into()],
        runcmd: vec!["echo on: 1e3 # not a comment".into(), "null".into()],
        fqdn: None,
        user_data: CloudConfig::default(),
        data_filesystems: vec![],
    }
}

fn dhcp() -> NetworkSpec {
    NetworkSpec::Dhcp {
        mac: "52:54:00:12:34:56".into(),
    }
}

/// Parse YAML with PyYAML (what cloud-init uses) and return it as JSON.
fn pyyaml(text: &str) -> Option<Value> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("doc.yaml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(&f)
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'yaml'") {
            eprintln!("skipped: python3-yaml is not installed");
            return None;
        }
        panic!("PyYAML rejected the document: {err}\n{text}");
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn user_data_types_survive_pyyaml() {
    let s = spec(dhcp());
    let ud = user_data(&s);
    assert!(ud.starts_with("#cloud-config\n"));
    let Some(v) = pyyaml(&ud) else { return };
    assert_eq!(v["hostname"], "app-01");
    assert_eq!(v["ssh_pwauth"], false);
    assert_eq!(v["packages"], json!(["yes", "0777"]));
    assert_eq!(v["runcmd"], json!(["echo on: 1e3 # not a comment", "null"]));
    assert_eq!(v["users"][0]["name"], "debian");
    assert_eq!(v["users"][0]["lock_passwd"], false);
    assert!(v["users"][0]["hashed_passwd"]
        .as_str()
        .unwrap()
        .starts_with("$6$"));
    assert_eq!(
        v["ssh_keys"]["ed25519_private"],
        s.host_keys.ed25519_private_openssh
    );
    assert_eq!(v["ssh_genkeytypes"], json!(["ed25519"]));
}

#[test]
fn hostile_strings_stay_strings() {
    let hostile = [
        "yes",
        "no",
        "on",
        "off",
        "true",
        "null",
        "~",
        "0777",
        "1e3",
        "1_000",
        "0x1f",
        "1:20",
        "2001-01-01",
        "a: b",
        "#x",
        " lead",
        "trail ",
        "multi\nline",
        "tab\there",
        "ünï\u{1F600}",
        "\"quoted\"",
        "back\\slash",
        "- dash",
        "[x]",
        "{y}",
        "&a",
        "*b",
        "!tag",
        "%p",
        "@at",
        "`bq",
        "\u{7}bell",
    ];
    let mut s = spec(dhcp());
    s.runcmd = hostile.iter().map(|h| h.to_string()).collect();
    let Some(v) = pyyaml(&user_data(&s)) else {
        return;
    };
    assert_eq!(v["runcmd"], json!(hostile));
}

/// serde_json's escaping left these raw: PyYAML refused the whole user-data ("special characters
/// are not allowed") for U+007F, C1 controls and U+FFFE/U+FFFF, and read U+0085, U+2028 and
/// U+2029 as line breaks, so the guest came up without its user or keys.
#[test]
fn regression_yaml_1_1_special_characters_broke_user_data() {
    let specials = [
        '\u{0}', '\u{1b}', '\u{7f}', '\u{80}', '\u{85}', '\u{9f}', '\u{a0}', '\u{2028}',
        '\u{2029}', '\u{feff}', '\u{fffe}', '\u{ffff}',
    ];
    for c in specials {
        let odd = format!("a{c}b");
        let mut s = spec(dhcp());
        s.user = odd.clone();
        s.hostname = odd.clone();
        s.instance_id = odd.clone();
        s.ssh_authorized_keys = vec![format!("ssh-ed25519 AAAA {odd}")];
        s.packages = vec![odd.clone()];
        s.runcmd = vec![odd.clone()];
        let Some(v) = pyyaml(&user_data(&s)) else {
            return;
        };
        let want = json!(odd);
        assert_eq!(v["users"][0]["name"], want, "U+{:04X}", u32::from(c));
        assert_eq!(v["hostname"], want, "U+{:04X}", u32::from(c));
        assert_eq!(
            v["users"][0]["ssh_authorized_keys"],
            json!([format!("ssh-ed25519 AAAA {odd}")]),
            "U+{:04X}",
            u32::from(c)
        );
        assert_eq!(v["packages"], json!([odd]), "U+{:04X}", u32::from(c));
        assert_eq!(v["runcmd"], json!([odd]), "U+{:04X}", u32::from(c));
        let md = pyyaml(&meta_data(&s)).unwrap_or_default();
        assert_eq!(md["local-hostname"], want, "U+{:04X}", u32::from(c));
        assert_eq!(md["instance-id"], want, "U+{:04X}", u32::from(c));
    }
}

#[test]
fn meta_data_and_network_config() {
    let s = spec(NetworkSpec::Static {
        mac: "52:54:00:aa:bb:cc".into(),
        address: "192.168.122.50/24".into(),
        gateway: Some(Ipv4Addr::new(192, 168, 122, 1)),
        dns: vec![Ipv4Addr::new(192, 168, 122, 1)],
    });
    let Some(md) = pyyaml(&meta_data(&s)) else {
        return;
    };
    assert_eq!(
        md,
        json!({"instance-id": "app-01-1732480000", "local-hostname": "app-01"})
    );
    let nc = pyyaml(&network_config(&s)).unwrap();
    assert_eq!(nc["version"], 2);
    let nic = &nc["ethernets"]["primary"];
    assert_eq!(nic["match"]["macaddress"], "52:54:00:aa:bb:cc");
    assert_eq!(nic["addresses"], json!(["192.168.122.50/24"]));
    assert_eq!(
        nic["routes"],
        json!([{"to": "0.0.0.0/0", "via": "192.168.122.1"}])
    );
    assert_eq!(nic["nameservers"]["addresses"], json!(["192.168.122.1"]));
    let d = pyyaml(&network_config(&spec(dhcp()))).unwrap();
    assert_eq!(d["ethernets"]["primary"]["dhcp4"], true);
}

/// A primary NIC by DHCP and a second one with static IPv4 and IPv6 addresses, then the
/// primary one marked elsewhere: each NIC matched by MAC, one default route.
fn two_nics() -> Vec<NicNetwork> {
    vec![
        NicNetwork::only(dhcp()),
        NicNetwork {
            ipv4: NetworkSpec::Static {
                mac: "52:54:00:aa:bb:01".into(),
                address: "10.77.0.10/24".into(),
                gateway: None,
                dns: vec![],
            },
            ipv6: Some(Ipv6Static {
                address: "fd77::10/64".into(),
                gateway: None,
            }),
            primary: false,
        },
    ]
}

#[test]
fn network_config_of_several_nics_has_one_default_route() {
    let mut s = spec(dhcp());
    s.network = two_nics();
    let Some(nc) = pyyaml(&network_config(&s)) else {
        return;
    };
    let first = &nc["ethernets"]["primary"];
    assert_eq!(
        first,
        &json!({"match": {"macaddress": "52:54:00:12:34:56"}, "dhcp4": true})
    );
    let second = &nc["ethernets"]["nic1"];
    assert_eq!(second["match"]["macaddress"], "52:54:00:aa:bb:01");
    assert_eq!(second["dhcp4"], false);
    assert_eq!(second["addresses"], json!(["10.77.0.10/24", "fd77::10/64"]));
    assert!(second.get("routes").is_none(), "{second}");

    // The second NIC primary (static, with gateways), the first by DHCP without its routes.
    s.network[0].primary = false;
    s.network[1].primary = true;
    s.network[1].ipv4 = NetworkSpec::Static {
        mac: "52:54:00:aa:bb:01".into(),
        address: "10.77.0.10/24".into(),
        gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 77, 0, 1)],
    };
    s.network[1].ipv6 = Some(Ipv6Static {
        address: "fd77::10/64".into(),
        gateway: Some("fd77::1".parse().unwrap()),
    });
    let nc = pyyaml(&network_config(&s)).unwrap();
    let first = &nc["ethernets"]["nic0"];
    assert_eq!(first["dhcp4"], true);
    assert_eq!(first["dhcp4-overrides"], json!({"use-routes": false}));
    let primary = &nc["ethernets"]["primary"];
    assert_eq!(
        primary["routes"],
        json!([{"to": "0.0.0.0/0", "via": "10.77.0.1"}, {"to": "::/0", "via": "fd77::1"}])
    );
}

#[test]
fn cloud_init_schema_accepts_user_data() {
    if Command::new("cloud-init")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: cloud-init is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("user-data");
    std::fs::write(&f, user_data(&spec(dhcp()))).unwrap();
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&f)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Valid"), "{text}");
}

#[test]
fn iso_reads_back_with_isoinfo_and_blkid() {
    if Command::new("isoinfo").arg("-version").output().is_err() {
        eprintln!("skipped: isoinfo (genisoimage) is not installed");
        return;
    }
    let s = spec(dhcp());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("seed.iso");
    std::fs::write(&f, build_iso(&s).unwrap()).unwrap();
    let d = Command::new("isoinfo")
        .arg("-d")
        .arg("-i")
        .arg(&f)
        .output()
        .unwrap();
    let d = String::from_utf8_lossy(&d.stdout);
    assert!(d.contains("Volume id: cidata"), "{d}");
    assert!(d.contains("Joliet"), "{d}");
    assert!(d.contains("Rock Ridge"), "{d}");
    for (name, want) in [
        ("user-data", user_data(&s)),
        ("meta-data", meta_data(&s)),
        ("network-config", network_config(&s)),
    ] {
        for ext in ["-R", "-J"] {
            let out = Command::new("isoinfo")
                .arg(ext)
                .arg("-x")
                .arg(format!("/{name}"))
                .arg("-i")
                .arg(&f)
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                want,
                "{name} via {ext}"
            );
        }
    }
    let l = Command::new("isoinfo")
        .args(["-R", "-l", "-i"])
        .arg(&f)
        .output()
        .unwrap();
    let l = String::from_utf8_lossy(&l.stdout);
    assert!(!l.contains(";1"), "{l}");
    if let Ok(b) = Command::new("blkid").arg(&f).output() {
        let b = String::from_utf8_lossy(&b.stdout);
        assert!(b.contains("LABEL=\"cidata\""), "{b}");
        assert!(b.contains("TYPE=\"iso9660\""), "{b}");
    }
}

#[test]
fn password_hash_is_sha512_crypt() {
    let h = hash_password("s3cret").unwrap();
    assert!(h.starts_with("$6$"), "{h}");
    assert!(sha_crypt::sha512_check("s3cret", &h).is_ok());
    assert!(sha_crypt::sha512_check("other", &h).is_err());
    // openssl computes the same hash from the same salt.
    let salt = h.split('$').nth(2).unwrap();
    if let Ok(o) = Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, "s3cret"])
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), h);
    }
    assert_ne!(hash_password("s3cret").unwrap(), h, "salt must be random");
}

#[test]
fn host_keys_are_valid_openssh() {
    let k = HostKeys::generate().unwrap();
    assert!(k.ed25519_public_openssh.starts_with("ssh-ed25519 "));
    assert!(!format!("{k:?}").contains("PRIVATE"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("key");
    std::fs::write(&f, &k.ed25519_private_openssh).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let Ok(out) = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&f)
        .output()
    else {
        eprintln!("skipped: ssh-keygen is not installed");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let derived = String::from_utf8_lossy(&out.stdout);
    let field = |s: &str| s.split_whitespace().nth(1).map(String::from);
    assert_eq!(field(&derived), field(&k.ed25519_public_openssh));
}

#[test]
fn debug_redacts_secrets() {
    let s = spec(dhcp());
    let d = format!("{s:?}");
    assert!(!d.contains("$6$"), "{d}");
    assert!(!d.contains("PRIVATE KEY"), "{d}");
}

fn plain(s: &str) -> Node {
    Node::Plain(s.into())
}
fn quoted(s: &str) -> Node {
    Node::Quoted(s.into())
}
fn map(pairs: Vec<(&str, Node)>) -> Node {
    Node::Map(CloudConfig(
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    ))
}

/// An operator's cloud-config as the config layer hands it over (plain scalars as written).
fn operator_user_data() -> CloudConfig {
    let Node::Map(m) = map(vec![
        ("timezone", plain("Europe/Berlin")),
        ("packages", Node::Seq(vec![plain("jq")])),
        ("runcmd", Node::Seq(vec![plain("touch /run/ud-marker")])),
        (
            "write_files",
            Node::Seq(vec![map(vec![
                ("path", plain("/etc/motd.d/ud")),
                ("permissions", quoted("0644")),
                ("content", quoted("hello from user_data\n")),
            ])]),
        ),
        (
            "users",
            Node::Seq(vec![map(vec![
                ("name", plain("backup")),
                ("shell", plain("/bin/sh")),
                ("lock_passwd", plain("true")),
            ])]),
        ),
        ("package_update", plain("false")),
        // A kvmprov key that slipped through: kvmprov's value stays.
        ("ssh_pwauth", plain("true")),
    ]) else {
        unreachable!()
    };
    m
}

#[test]
fn user_data_joins_the_operators_lists_and_keeps_kvmprovs_keys() {
    let mut s = spec(dhcp());
    s.fqdn = Some("app-01.example.com".into());
    s.user_data = operator_user_data();
    let Some(v) = pyyaml(&user_data(&s)) else {
        return;
    };
    assert_eq!(v["fqdn"], "app-01.example.com");
    assert_eq!(v["hostname"], "app-01");
    assert_eq!(v["manage_etc_hosts"], true);
    assert_eq!(v["timezone"], "Europe/Berlin");
    assert_eq!(v["package_update"], false);
    // The operator's list items first, then the instance's own fields.
    assert_eq!(v["packages"], json!(["jq", "yes", "0777"]));
    assert_eq!(
        v["runcmd"],
        json!([
            "touch /run/ud-marker",
            "echo on: 1e3 # not a comment",
            "null"
        ])
    );
    assert_eq!(v["users"][0]["name"], "debian");
    assert_eq!(v["users"][1]["name"], "backup");
    assert_eq!(v["users"][1]["lock_passwd"], true);
    // kvmprov's sshd line first, then the operator's files.
    assert_eq!(v["write_files"][0]["path"], SSHD_PASSWORD_FILE);
    assert_eq!(v["write_files"][1]["path"], "/etc/motd.d/ud");
    assert_eq!(v["write_files"][1]["permissions"], "0644");
    assert_eq!(v["ssh_pwauth"], false);
}

/// cloud-init's set-passwords module wrote `ssh_pwauth` into sshd's configuration in the
/// middle of the boot and restarted sshd (~1.6 s of a TCG guest's CPU): the line is now
/// written ahead, in its file, as that module writes it, so it finds nothing to change.
#[test]
fn regression_sshd_restarted_during_boot_for_ssh_pwauth() {
    for allowed in [false, true] {
        let mut s = spec(dhcp());
        s.ssh_password_authentication = allowed;
        let Some(v) = pyyaml(&user_data(&s)) else {
            return;
        };
        assert_eq!(v["ssh_pwauth"], allowed);
        let line = if allowed { "yes" } else { "no" };
        assert_eq!(
            v["write_files"],
            json!([{
                "path": "/etc/ssh/sshd_config.d/50-cloud-init.conf",
                "content": format!("PasswordAuthentication {line}\n"),
                "owner": "root:root",
                "permissions": "0600",
                "append": true,
            }])
        );
    }
}

#[test]
fn layering_concatenates_lists_merges_mappings_and_lets_the_instance_win() {
    let Node::Map(base) = map(vec![
        ("packages", Node::Seq(vec![plain("a")])),
        ("timezone", plain("UTC")),
        (
            "ca_certs",
            map(vec![
                ("trusted", Node::Seq(vec![quoted("A")])),
                ("remove_defaults", plain("false")),
            ]),
        ),
        ("apt", map(vec![("proxy", plain("http://p"))])),
    ]) else {
        unreachable!()
    };
    let Node::Map(top) = map(vec![
        ("packages", Node::Seq(vec![plain("b")])),
        ("timezone", plain("Europe/Paris")),
        (
            "ca_certs",
            map(vec![("trusted", Node::Seq(vec![quoted("B")]))]),
        ),
        ("apt", plain("x")),
    ]) else {
        unreachable!()
    };
    let got = merge::layer(&base, &top);
    assert_eq!(
        got.get("packages"),
        Some(&Node::Seq(vec![plain("a"), plain("b")]))
    );
    assert_eq!(got.get("timezone"), Some(&plain("Europe/Paris")));
    assert_eq!(
        got.get("ca_certs"),
        Some(&map(vec![
            ("trusted", Node::Seq(vec![quoted("A"), quoted("B")])),
            ("remove_defaults", plain("false")),
        ]))
    );
    // Different kinds: the instance's value.
    assert_eq!(got.get("apt"), Some(&plain("x")));
}

#[test]
fn plain_scalars_keep_the_type_yaml_1_1_gives_them() {
    let mut s = spec(dhcp());
    let Node::Map(m) = map(vec![
        ("a", plain("0644")),
        ("b", plain("yes")),
        ("c", plain("")),
        ("d", plain("two\nlines")),
        ("e", quoted("yes")),
    ]) else {
        unreachable!()
    };
    s.user_data = m;
    let Some(v) = pyyaml(&user_data(&s)) else {
        return;
    };
    assert_eq!(v["a"], 420);
    assert_eq!(v["b"], true);
    assert_eq!(v["c"], Value::Null);
    assert_eq!(v["d"], "two\nlines");
    assert_eq!(v["e"], "yes");
}

/// Every kind of document the seed writes, for `tests/cloud-init-schema.sh`: with
/// `KVMPROV_CLOUD_INIT_DOCS=DIR` each is written to `DIR/NAME.user-data` and
/// `DIR/NAME.network-config`, where Debian 12's and 13's cloud-init validate them.
#[test]
fn documents_for_cloud_init_schema() {
    let static_net = NetworkSpec::Static {
        mac: "52:54:00:aa:bb:cc".into(),
        address: "192.168.122.50/24".into(),
        gateway: Some(Ipv4Addr::new(192, 168, 122, 1)),
        dns: vec![Ipv4Addr::new(192, 168, 122, 1), Ipv4Addr::new(9, 9, 9, 9)],
    };
    let mut table: Vec<(&str, SeedSpec)> =
        vec![("dhcp", spec(dhcp())), ("static", spec(static_net.clone()))];
    let mut s = spec(dhcp());
    s.password_hash = None;
    s.packages = vec![];
    s.runcmd = vec![];
    s.ssh_password_authentication = true;
    table.push(("locked-bare", s));
    let mut s = spec(static_net);
    s.fqdn = Some("app-01.example.com".into());
    s.user_data = operator_user_data();
    s.user_data.0.retain(|(k, _)| k != "ssh_pwauth");
    table.push(("user-data-fqdn", s));
    let mut s = spec(NetworkSpec::Static {
        mac: "52:54:00:aa:bb:cd".into(),
        address: "10.1.2.3/16".into(),
        gateway: None,
        dns: vec![],
    });
    s.password_hash = Some(
        "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/".into(),
    );
    table.push(("password-hash-static-no-gateway", s));
    let mut s = spec(dhcp());
    s.network = two_nics();
    table.push(("two-nics-dhcp-static-ipv6", s));
    let mut s = spec(dhcp());
    s.network = two_nics();
    s.network[0].primary = false;
    s.network[1].primary = true;
    s.network[1].ipv4 = NetworkSpec::Static {
        mac: "52:54:00:aa:bb:01".into(),
        address: "10.77.0.10/24".into(),
        gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 77, 0, 1)],
    };
    s.network[1].ipv6 = Some(Ipv6Static {
        address: "fd77::10/64".into(),
        gateway: Some("fd77::1".parse().unwrap()),
    });
    table.push(("two-nics-second-primary-gateways", s));

    let mut s = spec(dhcp());
    s.data_filesystems = data_filesystems();
    table.push(("data-disks", s));
    let mut s = spec(dhcp());
    s.data_filesystems = data_filesystems();
    s.user_data = CloudConfig(vec![(
        "mounts".into(),
        Node::Seq(vec![Node::Seq(vec![
            quoted("/dev/vdz"),
            quoted("/srv/other"),
            quoted("auto"),
        ])]),
    )]);
    table.push(("data-disks-and-operator-mounts", s));

    let dir = std::env::var_os("KVMPROV_CLOUD_INIT_DOCS").map(std::path::PathBuf::from);
    for (name, s) in &table {
        let ud = user_data(s);
        let nc = network_config(s);
        if pyyaml(&ud).is_none() {
            return;
        }
        pyyaml(&nc);
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("{name}.user-data")), ud).unwrap();
            std::fs::write(dir.join(format!("{name}.network-config")), nc).unwrap();
        }
    }
}

fn data_filesystems() -> Vec<DataFilesystem> {
    vec![
        DataFilesystem {
            device: "/dev/disk/by-id/virtio-data".into(),
            label: "data".into(),
            filesystem: "ext4".into(),
            mount: Some("/srv/data".into()),
            options: "defaults,nofail".into(),
        },
        DataFilesystem {
            device: "/dev/disk/by-id/virtio-scratch".into(),
            label: "scratch".into(),
            filesystem: "ext4".into(),
            mount: None,
            options: "defaults,nofail".into(),
        },
    ]
}

/// Data disks are formatted by cloud-init only when empty (`partition: any`, never
/// `overwrite`) and mounted by their by-id name; the operator's own `mounts` follow ours.
#[test]
fn data_disks_are_formatted_only_when_empty_and_mounted_by_serial() {
    let mut s = spec(dhcp());
    s.data_filesystems = data_filesystems();
    s.user_data = CloudConfig(vec![(
        "mounts".into(),
        Node::Seq(vec![Node::Seq(vec![
            quoted("/dev/vdz"),
            quoted("/srv/other"),
        ])]),
    )]);
    let Some(v) = pyyaml(&user_data(&s)) else {
        return;
    };
    assert_eq!(
        v["fs_setup"],
        serde_json::json!([
            {"label": "data", "filesystem": "ext4", "device": "/dev/disk/by-id/virtio-data", "partition": "any", "overwrite": false},
            {"label": "scratch", "filesystem": "ext4", "device": "/dev/disk/by-id/virtio-scratch", "partition": "any", "overwrite": false},
        ])
    );
    assert_eq!(
        v["mounts"],
        serde_json::json!([
            [
                "/dev/disk/by-id/virtio-data",
                "/srv/data",
                "ext4",
                "defaults,nofail",
                "0",
                "2"
            ],
            ["/dev/vdz", "/srv/other"],
        ])
    );
    // Without data disks, no such keys.
    let v = pyyaml(&user_data(&spec(dhcp()))).unwrap();
    assert!(v.get("fs_setup").is_none() && v.get("mounts").is_none());
}
