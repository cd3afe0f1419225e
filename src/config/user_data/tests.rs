use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kvmprov_seed::merge::Node as CcNode;

use super::*;
use crate::config::{parse, Config};

const HEAD: &str = "\
kvm_image_cache_path: /srv/images
kvm_instance_disk_pool_path: /srv/instances
kvm_cloud_image_catalog:
  - image_name: debian-12
    image_url: http://127.0.0.1:1/d.qcow2
    image_checksum_manifest_url: http://127.0.0.1:1/SHA512SUMS
";

fn p(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("vars.yml"), &format!("{HEAD}{text}"), &[])
}

fn err(text: &str) -> String {
    match p(text) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn q(s: &str) -> CcNode {
    CcNode::Quoted(s.into())
}
fn pl(s: &str) -> CcNode {
    CcNode::Plain(s.into())
}

#[test]
fn defaults_and_instance_user_data_merge_lists_first_and_instance_scalars_win() {
    let c = p("\
kvm_cloud_init_defaults:
  user_data:
    timezone: UTC
    packages: [curl]
    ca_certs:
      trusted: [\"A\"]
      remove_defaults: false
kvm_instance_definitions:
  - instance_name: app-01
    image_name: debian-12
    fqdn: App-01.Example.com
    user_data:
      timezone: Europe/Berlin
      packages: [jq]
      ca_certs:
        trusted: [\"B\"]
      write_files:
        - path: /etc/x
          permissions: '0644'
          content: |
            hello
  - instance_name: app-02
    image_name: debian-12
")
    .unwrap();
    let ud = &c.instances[0].user_data;
    assert_eq!(ud.get("timezone"), Some(&pl("Europe/Berlin")));
    assert_eq!(
        ud.get("packages"),
        Some(&CcNode::Seq(vec![pl("curl"), pl("jq")]))
    );
    let CcNode::Map(ca) = ud.get("ca_certs").unwrap() else {
        panic!("ca_certs is a mapping")
    };
    assert_eq!(ca.get("trusted"), Some(&CcNode::Seq(vec![q("A"), q("B")])));
    assert_eq!(ca.get("remove_defaults"), Some(&pl("false")));
    let CcNode::Seq(files) = ud.get("write_files").unwrap() else {
        panic!("write_files is a list")
    };
    let CcNode::Map(f) = &files[0] else {
        panic!("a file is a mapping")
    };
    assert_eq!(f.get("permissions"), Some(&q("0644")));
    assert_eq!(f.get("content"), Some(&q("hello\n")));
    assert_eq!(c.instances[0].fqdn.as_deref(), Some("app-01.example.com"));
    // An instance without its own gets the defaults'.
    assert_eq!(c.instances[1].user_data.get("timezone"), Some(&pl("UTC")));
}

#[test]
fn a_key_kvmprov_sets_is_refused_at_its_line_and_column() {
    let e = err("\
kvm_cloud_init_defaults:
  user_data:
    timezone: UTC
    ssh_pwauth: true
kvm_instance_definitions: []
");
    assert!(
        e.starts_with("vars.yml:10:5: user_data key `ssh_pwauth` is set by kvmprov"),
        "{e}"
    );
    for key in [
        "ssh_keys",
        "chpasswd",
        "hostname",
        "disable_root",
        "password",
        "ssh_authorized_keys",
    ] {
        let e = err(&format!(
            "kvm_instance_definitions:\n  - instance_name: a\n    image_name: debian-12\n    user_data:\n      {key}: x\n"
        ));
        assert!(
            e.starts_with(&format!(
                "vars.yml:11:7: user_data key `{key}` is set by kvmprov"
            )),
            "{e}"
        );
    }
}

#[test]
fn a_second_user_is_fine_but_the_login_user_and_default_are_refused() {
    let c = p("\
kvm_cloud_init_defaults:
  user_data:
    users:
      - name: backup
        ssh_authorized_keys: [\"ssh-ed25519 AAAA b@x\"]
kvm_instance_definitions: []
")
    .unwrap();
    assert!(c.instances.is_empty());
    let e = err("kvm_cloud_init_defaults:\n  user_data:\n    users:\n      - name: debian\n");
    assert!(
        e.starts_with("vars.yml:10:9: user_data users: user `debian` is kvmprov's login user"),
        "{e}"
    );
    let e = err("kvm_cloud_init_defaults:\n  user_data:\n    users: [default]\n");
    assert!(
        e.contains("vars.yml:9:13: user_data users: `default`"),
        "{e}"
    );
    let e = err("kvm_cloud_init_defaults:\n  user_data:\n    runcmd: ls\n");
    assert!(
        e.contains("vars.yml:9:5: user_data key `runcmd` must be a list"),
        "{e}"
    );
}

#[test]
fn user_data_must_be_a_mapping_and_not_beside_a_file() {
    let e = err("kvm_cloud_init_defaults:\n  user_data: [a]\n");
    assert!(e.contains("vars.yml:8:"), "{e}");
    let e = err("kvm_cloud_init_defaults:\n  user_data: {a: 1}\n  user_data_file: x.yml\n");
    assert!(
        e.contains("vars.yml:9:") && e.contains("cannot be used together"),
        "{e}"
    );
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    f
}

fn in_dir(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    parse(&dir.join("vars.yml"), &format!("{HEAD}{text}"), &[])
}

#[test]
fn a_user_data_file_is_read_relative_to_the_variables_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ud.yml",
        "#cloud-config\nruncmd:\n  - touch /run/marker\nbootcmd: [\"echo hi\"]\n",
        0o644,
    );
    let c = in_dir(
        dir.path(),
        "kvm_cloud_init_defaults:\n  user_data_file: ud.yml\nkvm_instance_definitions:\n  - {instance_name: a, image_name: debian-12, runcmd: [\"echo own\"]}\n",
    )
    .unwrap();
    let ud = &c.instances[0].user_data;
    assert_eq!(
        ud.get("runcmd"),
        Some(&CcNode::Seq(vec![pl("touch /run/marker")]))
    );
    assert_eq!(c.instances[0].runcmd, vec!["echo own".to_string()]);
}

#[test]
fn a_user_data_file_that_is_not_yaml_or_not_a_mapping_is_located_in_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = "kvm_cloud_init_defaults:\n  user_data_file: ud.yml\n";
    write(dir.path(), "ud.yml", "runcmd:\n  - [unclosed\n", 0o600);
    let e = in_dir(dir.path(), text).unwrap_err().to_string();
    let ud = dir.path().join("ud.yml");
    assert!(e.starts_with(&format!("{}:", ud.display())), "{e}");
    assert!(e.contains("YAML syntax error"), "{e}");
    write(dir.path(), "ud.yml", "#!/bin/sh\necho hi\n", 0o600);
    let e = in_dir(dir.path(), text).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:2:1:", ud.display())), "{e}");
    assert!(e.contains("must be a cloud-config mapping"), "{e}");
    write(
        dir.path(),
        "ud.yml",
        "timezone: UTC\nssh_pwauth: true\n",
        0o600,
    );
    let e = in_dir(dir.path(), text).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:2:1: user_data key `ssh_pwauth`", ud.display())),
        "{e}"
    );
}

#[test]
fn a_user_data_file_others_can_write_or_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = "kvm_cloud_init_defaults:\n  user_data_file: ud.yml\n";
    let f = write(dir.path(), "ud.yml", "timezone: UTC\n", 0o666);
    let e = in_dir(dir.path(), text).unwrap_err().to_string();
    assert!(
        e.contains("vars.yml:8:19:") && e.contains("can be written by group or others"),
        "{e}"
    );
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    if kvmprov_safefs::euid() == 0 {
        std::os::unix::fs::chown(&f, Some(4242), None).unwrap();
        let e = in_dir(dir.path(), text).unwrap_err().to_string();
        assert!(e.contains("owned by uid 4242"), "{e}");
    }
    std::fs::remove_file(&f).unwrap();
    let real = write(dir.path(), "real.yml", "timezone: UTC\n", 0o644);
    std::os::unix::fs::symlink(&real, &f).unwrap();
    let e = in_dir(dir.path(), text).unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
}

#[test]
fn fqdn_must_be_a_dns_name_starting_with_the_instance_name() {
    let inst = |fqdn: &str| {
        err(&format!(
            "kvm_instance_definitions:\n  - instance_name: app-01\n    image_name: debian-12\n    fqdn: {fqdn}\n"
        ))
    };
    assert!(inst("app-01").contains("vars.yml:10:11: fqdn `app-01` has no domain"));
    assert!(inst("web.example.com").contains("must start with the instance name"));
    assert!(inst("app-01.exa_mple.com").contains("label `exa_mple`"));
}
