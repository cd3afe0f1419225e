use std::path::Path;

use super::*;
use crate::config::{parse, Config};

const BASE: &str = "\
kvm_image_cache_path: /srv/images
kvm_instance_disk_pool_path: /srv/instances
kvm_cloud_image_catalog:
  - image_name: debian-12
    image_url: http://127.0.0.1:1/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2
    image_checksum_manifest_url: http://127.0.0.1:1/images/cloud/bookworm/latest/SHA512SUMS
";

/// BASE with two profiles (lines 7–14) and two instances (from line 15).
fn with_profiles(instances: &str) -> String {
    format!(
        "{BASE}\
kvm_instance_profiles:
  db:
    image_name: debian-12
    vcpus: 4
    memory_mib: 8192
    packages: [postgresql]
  web:
    image_name: debian-12
kvm_instance_definitions:
{instances}"
    )
}

const TWO: &str = "  - instance_name: db-01
    profile: db
    memory_mib: 4096
    packages: [htop]
  - instance_name: web-01
    profile: web
";

fn p(text: &str, ov: &[&str]) -> Result<Config, ConfigError> {
    let ov: Vec<String> = ov.iter().map(|s| s.to_string()).collect();
    parse(Path::new("vars.yml"), text, &ov)
}

fn err(text: &str) -> String {
    match p(text, &[]) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_instance_field_is_known_in_declaration_order() {
    let fields = instance_fields();
    assert_eq!(fields.first(), Some(&"instance_name"));
    for f in [
        "image_name",
        "vcpus",
        "memory_mib",
        "firmware",
        "user_data",
        PROFILE,
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
}

#[test]
fn the_profile_fills_what_the_instance_leaves_unset_and_the_instance_wins_whole() {
    let c = p(&with_profiles(TWO), &[]).unwrap();
    let db = &c.instances[0];
    assert_eq!((db.vcpus, db.memory_mib), (4, 4096));
    // A list is replaced whole, not joined.
    assert_eq!(db.packages, vec!["htop".to_string()]);
    let web = &c.instances[1];
    assert_eq!(
        (web.image_name.as_str(), web.vcpus, web.memory_mib),
        ("debian-12", 2, 2048)
    );
}

#[test]
fn a_null_in_the_instance_leaves_the_field_to_the_profile() {
    let text = with_profiles("  - instance_name: db-01\n    profile: db\n    vcpus: null\n");
    assert_eq!(p(&text, &[]).unwrap().instances[0].vcpus, 4);
}

#[test]
fn profiles_can_be_given_with_e() {
    let text = with_profiles(TWO);
    let set = "kvm_instance_profiles={db: {image_name: debian-12, vcpus: 8}, web: {image_name: debian-12, vcpus: 1}}";
    let c = p(&text, &[set]).unwrap();
    assert_eq!((c.instances[0].vcpus, c.instances[1].vcpus), (8, 1));
    // `-e` replaces the whole set: an instance naming a profile it dropped is refused.
    let e = p(
        &text,
        &["kvm_instance_profiles={db: {image_name: debian-12}}"],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "vars.yml:21:14: profile `web` is not in kvm_instance_profiles (known: db)"
    );
}

#[test]
fn an_unknown_profile_is_refused_at_its_name_with_a_suggestion() {
    let text = with_profiles("  - instance_name: db-01\n    profile: dbs\n");
    assert_eq!(
        err(&text),
        "vars.yml:17:14: profile `dbs` is not in kvm_instance_profiles (known: db, web), did you mean `db`?"
    );
    let text = format!("{BASE}kvm_instance_definitions:\n  - instance_name: a\n    profile: db\n");
    assert_eq!(
        err(&text),
        "vars.yml:9:14: profile `db` is not in kvm_instance_profiles (known: none)"
    );
}

#[test]
fn an_unknown_key_in_a_profile_is_the_error_an_instance_gives_even_unused() {
    let text = with_profiles("").replace("    vcpus: 4\n", "    vcpu: 4\n");
    assert_eq!(
        err(&text),
        "vars.yml:10:5: unknown key `vcpu`, did you mean `vcpus`?"
    );
    let text = format!(
        "{BASE}kvm_instance_definitions:\n  - instance_name: a\n    image_name: debian-12\n    vcpu: 4\n"
    );
    assert_eq!(
        err(&text),
        "vars.yml:10:5: unknown key `vcpu`, did you mean `vcpus`?"
    );
}

#[test]
fn a_bad_value_from_a_profile_is_reported_at_the_profile_line() {
    // A type error, in a profile no instance uses.
    let text = with_profiles("").replace("    vcpus: 4\n", "    vcpus: four\n");
    assert!(
        err(&text).starts_with("vars.yml:10:12: expected a whole number"),
        "{}",
        err(&text)
    );
    // A rule broken by the value the instance took from the profile.
    let text = with_profiles(TWO).replace("    vcpus: 4\n", "    vcpus: 400\n");
    assert_eq!(
        err(&text),
        "vars.yml:10:12: vcpus must be between 1 and 256"
    );
    // The same value written in the instance is reported there.
    let text = with_profiles(TWO).replace("    memory_mib: 4096\n", "    memory_mib: 1\n");
    assert_eq!(
        err(&text),
        "vars.yml:18:17: memory_mib must be between 128 and 4194304"
    );
}

#[test]
fn a_profile_sets_neither_instance_name_nor_profile() {
    let text = with_profiles(TWO).replace("    vcpus: 4\n", "    instance_name: x\n");
    assert_eq!(
        err(&text),
        "vars.yml:10:5: a profile cannot set `instance_name`: each instance names itself"
    );
    let text = with_profiles(TWO).replace("    vcpus: 4\n", "    profile: web\n");
    assert_eq!(
        err(&text),
        "vars.yml:10:5: a profile cannot set `profile`: profiles do not name other profiles"
    );
}

#[test]
fn malformed_profiles_are_refused_where_they_are() {
    let text = format!("{BASE}kvm_instance_profiles: [db]\n");
    assert_eq!(
        err(&text),
        "vars.yml:7:24: kvm_instance_profiles must be a mapping of profile names to instance fields"
    );
    let text = format!("{BASE}kvm_instance_profiles:\n  db: 4\n");
    assert_eq!(
        err(&text),
        "vars.yml:8:7: profile `db` must be a mapping of instance fields"
    );
    let text = format!("{BASE}kvm_instance_profiles:\n  'd b':\n    vcpus: 2\n");
    assert!(
        err(&text).starts_with("vars.yml:8:3: profile name "),
        "{}",
        err(&text)
    );
    let text = with_profiles("  - instance_name: a\n    profile: [db]\n");
    assert_eq!(
        err(&text),
        "vars.yml:17:14: profile must be the name of a profile"
    );
}

#[test]
fn user_data_layers_defaults_then_profile_then_instance() {
    let text = with_profiles(
        "  - instance_name: db-01\n    profile: db\n    user_data:\n      timezone: Europe/Paris\n      runcmd: [instance]\n  - instance_name: web-01\n    profile: db\n",
    )
    .replace(
        "    packages: [postgresql]\n",
        "    packages: [postgresql]\n    user_data:\n      timezone: UTC\n      locale: C.UTF-8\n      runcmd: [profile]\n",
    )
    .replace(
        "kvm_instance_profiles:\n",
        "kvm_cloud_init_defaults:\n  user_data:\n    runcmd: [defaults]\n    locale: en_US.UTF-8\nkvm_instance_profiles:\n",
    );
    let c = p(&text, &[]).unwrap();
    let json = |i: usize| c.instances[i].user_data.to_json();
    assert_eq!(
        json(0),
        serde_json::json!({
            "runcmd": ["defaults", "profile", "instance"],
            "locale": "C.UTF-8",
            "timezone": "Europe/Paris",
        })
    );
    assert_eq!(
        json(1),
        serde_json::json!({ "runcmd": ["defaults", "profile"], "locale": "C.UTF-8", "timezone": "UTC" })
    );
    let db = &c.origins[0].fields;
    let ud = db.iter().find(|f| f.field == "user_data").unwrap();
    assert_eq!(ud.from, "kvm_cloud_init_defaults + profile db + instance");
}

#[test]
fn a_key_kvmprov_sets_in_a_profile_user_data_is_refused_at_its_line() {
    let text = with_profiles(TWO).replace(
        "    packages: [postgresql]\n",
        "    packages: [postgresql]\n    user_data:\n      hostname: x\n",
    );
    assert!(
        err(&text).starts_with("vars.yml:14:7: user_data key `hostname` is set by kvmprov"),
        "{}",
        err(&text)
    );
}

#[test]
fn origins_say_where_each_value_came_from_only_for_instances_with_a_profile() {
    let text = with_profiles(&format!(
        "{TWO}  - instance_name: plain\n    image_name: debian-12\n"
    ))
    .replace(
        "kvm_instance_profiles:\n",
        "kvm_default_firmware: uefi\nkvm_instance_profiles:\n",
    );
    let c = p(&text, &[]).unwrap();
    assert_eq!(c.origins.len(), 2, "plain names no profile");
    let from = |o: &Origins, field: &str| {
        let f = o.fields.iter().find(|f| f.field == field).unwrap();
        (f.value.clone(), f.from.clone())
    };
    let db = &c.origins[0];
    assert_eq!((db.instance.as_str(), db.profile.as_str()), ("db-01", "db"));
    assert_eq!(from(db, "vcpus"), (4.into(), "profile db".into()));
    assert_eq!(from(db, "memory_mib"), (4096.into(), "instance".into()));
    assert_eq!(
        from(db, "disk_size_gib"),
        (20.into(), "built-in default".into())
    );
    assert_eq!(
        from(db, "firmware"),
        ("uefi".into(), "kvm_default_firmware".into())
    );
    assert_eq!(
        from(db, "libvirt_network_name"),
        (
            "default".into(),
            "built-in default (kvm_default_libvirt_network_name)".into()
        )
    );
    assert!(!db
        .fields
        .iter()
        .any(|f| f.field == "instance_name" || f.field == "profile"));
}

#[test]
fn moving_fields_into_a_profile_changes_no_instance_and_no_digest() {
    let with = p(&with_profiles(TWO), &[]).unwrap();
    let text = format!(
        "{BASE}kvm_instance_definitions:\n  - instance_name: db-01\n    image_name: debian-12\n    vcpus: 4\n    memory_mib: 4096\n    packages: [htop]\n  - instance_name: web-01\n    image_name: debian-12\n"
    );
    let without = p(&text, &[]).unwrap();
    assert_eq!(with.instances, without.instances);
    // The instance's serialised form is its config digest: the same text, the same digest.
    assert_eq!(
        serde_json::to_string(&with.instances).unwrap(),
        serde_json::to_string(&without.instances).unwrap()
    );
    assert!(without.origins.is_empty());
}

#[test]
fn a_profile_user_data_file_is_read_beside_the_variables_file_and_layered() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("db.yml"),
        "runcmd: [from-file]\ntimezone: UTC\n",
    )
    .unwrap();
    let text = with_profiles(
        "  - instance_name: db-01\n    profile: db\n    user_data:\n      runcmd: [instance]\n",
    )
    .replace(
        "    packages: [postgresql]\n",
        "    packages: [postgresql]\n    user_data_file: db.yml\n",
    );
    let c = parse(&dir.path().join("vars.yml"), &text, &[]).unwrap();
    assert_eq!(
        c.instances[0].user_data.to_json(),
        serde_json::json!({ "runcmd": ["from-file", "instance"], "timezone": "UTC" })
    );
    // Both in one profile: refused at the profile, as on an instance.
    let both = text.replace(
        "    user_data_file: db.yml\n",
        "    user_data_file: db.yml\n    user_data: {timezone: UTC}\n",
    );
    let e = parse(&dir.path().join("vars.yml"), &both, &[]).unwrap_err();
    assert!(
        e.to_string().ends_with(
            "vars.yml:13:21: user_data and user_data_file cannot be used together: set one"
        ),
        "{e}"
    );
}

/// `check` showed `libvirt_network_name` (from kvm_default_libvirt_network_name) for an
/// instance whose NICs its profile's `nics` lists: a network it is not on.
#[test]
fn regression_origins_showed_the_shorthand_network_of_an_instance_with_nics() {
    let text = with_profiles(TWO).replace(
        "    packages: [postgresql]\n",
        "    packages: [postgresql]\n    nics: [{network: storage}, {bridge: br0}]\n",
    );
    let c = p(&text, &[]).unwrap();
    let db = &c.origins[0];
    assert_eq!(db.instance, "db-01");
    for shorthand in [
        "libvirt_network_name",
        "ipv4_address",
        "mac_address",
        "dns_servers",
    ] {
        assert!(
            !db.fields.iter().any(|f| f.field == shorthand),
            "{shorthand} shown: {:?}",
            db.fields
        );
    }
    let nics = db.fields.iter().find(|f| f.field == "nics").unwrap();
    assert_eq!(nics.from, "profile db");
    assert_eq!(nics.value[1]["bridge"], "br0");
    // web-01 has no nics: its network and where it came from are still shown.
    let web = &c.origins[1];
    assert!(web.fields.iter().any(|f| f.field == "libvirt_network_name"));
}

/// `check --output json` gave a list field left at its built-in default (`disks`, `nics`)
/// the value null: serde leaves an empty list out of the instance's serialised form.
#[test]
fn regression_a_list_fields_built_in_default_was_null_in_the_origins() {
    let c = p(&with_profiles(TWO), &[]).unwrap();
    let db = &c.origins[0];
    for list in ["disks", "nics", "dns_servers", "runcmd"] {
        let f = db.fields.iter().find(|f| f.field == list).unwrap();
        assert_eq!(f.from, "built-in default", "{list}");
        assert_eq!(f.value, serde_json::json!([]), "{list}");
    }
    // Fields without a value stay null.
    let fqdn = db.fields.iter().find(|f| f.field == "fqdn").unwrap();
    assert_eq!(fqdn.value, serde_json::Value::Null);
}
