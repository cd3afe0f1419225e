//! Drift: which config fields changed since a domain was defined.
//!
//! When kvmprov defines a domain it records in the domain's metadata the fields the instance
//! was made from ([`instance_fields`]); later runs compare that record with the config, field
//! by field ([`diff`]). Secrets, and the commands and packages (which can carry tokens and are
//! readable by any local user through libvirt's read-only socket, `virsh -r dumpxml`, while the
//! seed holding them is 0600), are recorded only as a salted digest, and a change of one is
//! reported without values.

pub mod plan;

use kvmprov_hypervisor::xml::DomainType;
use sha2::{Digest, Sha256};

use crate::config::{Config, DataDisk, Instance};
use crate::firmware::firmware_label;

/// Fields recorded as a digest: a change says only that it changed.
const SECRET: &[&str] = &["password", "ssh_authorized_keys"];

/// Fields recorded as a digest although not secrets by name: a change says only that it
/// changed. Older kvmprov versions recorded them in clear text (a JSON list).
const DIGESTED: &[&str] = &["packages", "runcmd", "user_data"];

/// Fields that shaped the instance's disk: applying a change takes a new disk.
const ON_DISK: &[&str] = &["image_name", "disk_size_gib"];

/// SHA-256 rounds of a secret's digest: readers of the domain XML get no cheap test of
/// password guesses.
const SECRET_ROUNDS: u32 = 10_000;

/// The fields an instance is made from, as (name, value), in the config's own names: what a
/// domain's metadata records and drift compares. Add a config field here and it is recorded
/// and compared. Not here: `snapshot_name` and the hypervisor, which do not shape the
/// domain. `salt` (the domain's instance-id) salts the secrets' digests.
pub fn instance_fields(
    cfg: &Config,
    inst: &Instance,
    domain_type: DomainType,
    salt: &str,
) -> Vec<(&'static str, String)> {
    let ci = &cfg.cloud_init;
    let ipv4 = inst.ipv4.as_ref();
    let ipv6 = inst.ipv6.as_ref();
    vec![
        ("image_name", inst.image_name.clone()),
        ("vcpus", inst.vcpus.to_string()),
        ("memory_mib", inst.memory_mib.to_string()),
        ("disk_size_gib", inst.disk_size_gib.to_string()),
        ("domain_type", domain_type.as_str().to_string()),
        ("firmware", firmware_label(inst).to_string()),
        (
            "libvirt_network_name",
            inst.attach.network().unwrap_or_default().to_string(),
        ),
        // The primary NIC's host bridge, when it sits on one instead of a network.
        (
            "bridge",
            inst.attach.bridge().unwrap_or_default().to_string(),
        ),
        ("mac_address", inst.effective_mac()),
        (
            "ipv4_address",
            ipv4.map(|s| s.address.to_string()).unwrap_or_default(),
        ),
        (
            "ipv4_gateway",
            ipv4.map(|s| s.gateway.to_string()).unwrap_or_default(),
        ),
        (
            "dns_servers",
            ipv4.map(|s| list(s.dns.iter().map(|d| d.to_string())))
                .unwrap_or_default(),
        ),
        (
            "ipv6_address",
            ipv6.map(|s| s.address.to_string()).unwrap_or_default(),
        ),
        (
            "ipv6_gateway",
            ipv6.and_then(|s| s.gateway)
                .map(|g| g.to_string())
                .unwrap_or_default(),
        ),
        ("nic_model", inst.nic_model.as_str().to_string()),
        // The other NICs with their positions: one added, removed, moved or changed shows.
        (
            "nics",
            list(
                inst.nics()
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| !n.primary)
                    .map(|(i, n)| format!("{i}: {}", n.describe())),
            ),
        ),
        ("packages", digest_list(salt, inst.packages.iter().cloned())),
        ("runcmd", digest_list(salt, inst.runcmd.iter().cloned())),
        // The operator's cloud-config can carry tokens (write_files, apt proxies): a digest.
        (
            "user_data",
            if inst.user_data.is_empty() {
                String::new()
            } else {
                secret_digest(salt, &inst.user_data.to_json().to_string())
            },
        ),
        ("fqdn", inst.fqdn.clone().unwrap_or_default()),
        ("disks", list(inst.disks.iter().map(DataDisk::record))),
        ("user", ci.user.clone()),
        // Whichever source gives the password (plain, file, hash): a salted digest of it.
        (
            "password",
            cfg.password
                .as_ref()
                .map(|p| secret_digest(salt, &p.drift_material()))
                .unwrap_or_default(),
        ),
        (
            "ssh_authorized_keys",
            if ci.ssh_authorized_keys.is_empty() {
                String::new()
            } else {
                secret_digest(salt, &ci.ssh_authorized_keys.join("\n"))
            },
        ),
        (
            "ssh_password_authentication",
            ci.ssh_password_authentication.to_string(),
        ),
    ]
}

/// A list as one value: JSON, so items with commas or spaces stay apart. Empty: "".
fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        String::new()
    } else {
        serde_json::Value::from(items).to_string()
    }
}

/// A list recorded as a digest of its JSON form ([`list`]); empty stays "" (nothing to hide).
fn digest_list(salt: &str, items: impl Iterator<Item = String>) -> String {
    let text = list(items);
    if text.is_empty() {
        text
    } else {
        secret_digest(salt, &text)
    }
}

/// A salted, stretched digest of a secret (16 hex digits): enough to notice a change.
fn secret_digest(salt: &str, secret: &str) -> String {
    let mut d = Sha256::new()
        .chain_update(b"kvmprov secret\0")
        .chain_update(salt.as_bytes())
        .chain_update(b"\0")
        .chain_update(secret.as_bytes())
        .finalize();
    for _ in 0..SECRET_ROUNDS {
        d = Sha256::digest(d);
    }
    hex::encode(&d[..8])
}

/// One field that differs between the record and the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub field: String,
    /// As recorded when the domain was defined.
    pub old: String,
    /// As the config says now.
    pub new: String,
}

impl Change {
    /// `disk_size_gib 20 → 40`; a secret only as `password changed`.
    pub fn describe(&self) -> String {
        if SECRET.contains(&self.field.as_str()) || DIGESTED.contains(&self.field.as_str()) {
            return format!("{} changed", self.field);
        }
        if self.field == "disks" {
            return describe_disks(&self.old, &self.new);
        }
        let shown = |v: &str| {
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.to_string()
            }
        };
        format!("{} {} → {}", self.field, shown(&self.old), shown(&self.new))
    }
}

/// Fields added to the record after domains were first recorded, with the value every domain
/// made before them had: no data disks, no host bridge, no other NICs, no user_data, no fqdn, no IPv6, virtio.
/// An older record without them compares as that value, so a change made since is drift.
const ADDED_LATER: &[(&str, &str)] = &[
    ("disks", ""),
    ("bridge", ""),
    ("nics", ""),
    ("user_data", ""),
    ("fqdn", ""),
    ("ipv6_address", ""),
    ("ipv6_gateway", ""),
    ("nic_model", "virtio"),
];

/// Pure: the recorded fields whose value the config no longer has, in the config's order.
/// A field only one side knows (added or dropped by another kvmprov version) is not compared,
/// nothing says what it was, unless its value before it was recorded is known
/// ([`ADDED_LATER`]). `salt` (the domain's instance-id) digests what an older kvmprov
/// recorded in clear text, so it compares with today's digests.
pub fn diff(recorded: &[(String, String)], wanted: &[(&str, String)], salt: &str) -> Vec<Change> {
    wanted
        .iter()
        .filter_map(|(name, new)| {
            let old = match recorded.iter().find(|(n, _)| n == name) {
                Some((_, old)) => old.as_str(),
                None => match ADDED_LATER.iter().find(|(n, _)| n == name) {
                    Some((_, before)) => *before,
                    None => return None,
                },
            };
            // A clear-text list (JSON, `[`…) from an older kvmprov; a digest is 16 hex digits.
            let old = if DIGESTED.contains(name) && old.starts_with('[') {
                secret_digest(salt, old)
            } else {
                old.to_string()
            };
            (old != *new).then(|| Change {
                field: name.to_string(),
                old,
                new: new.clone(),
            })
        })
        .collect()
}

/// The items of a recorded list field (`disks`, `nics`: JSON lists; "" is none).
fn disk_records(v: &str) -> Vec<String> {
    if v.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(v).unwrap_or_else(|_| vec![v.to_string()])
    }
}

/// The record after `applied` steps of a plan: each applied field takes its new value; in a
/// list field (`disks`, `nics`) only the items added or removed, so an item whose change was
/// not applied (a refused resize) stays as recorded and is still drift next time.
pub fn record_after(
    recorded: &[(String, String)],
    applied: &[&plan::Step],
) -> Vec<(String, String)> {
    let mut out = recorded.to_vec();
    for step in applied {
        // Not recorded: autostart is read from the domain itself.
        if step.field == "autostart" {
            continue;
        }
        let value = match out.iter_mut().find(|(n, _)| *n == step.field) {
            Some((_, v)) => v,
            None => {
                out.push((step.field.clone(), String::new()));
                &mut out.last_mut().expect("just pushed").1
            }
        };
        match step.field.as_str() {
            "disks" | "nics" => {
                let mut items = disk_records(value);
                if step.new.is_empty() {
                    items.retain(|i| *i != step.old);
                } else {
                    items.push(step.new.clone());
                }
                *value = list(items.into_iter());
            }
            _ => *value = step.new.clone(),
        }
    }
    out
}

/// The data disks added, removed or changed between two recorded `disks` values (JSON lists
/// of [`DataDisk::record`]s, each starting with the disk's name).
fn describe_disks(old: &str, new: &str) -> String {
    let name = |r: &str| r.split(' ').next().unwrap_or("").to_string();
    let (old, new) = (disk_records(old), disk_records(new));
    let mut out = Vec::new();
    for o in &old {
        match new.iter().find(|n| name(n) == name(o)) {
            None => out.push(format!("data disk {o} removed")),
            Some(n) if n != o => out.push(format!("data disk {o} → {n}")),
            Some(_) => {}
        }
    }
    for n in &new {
        if !old.iter().any(|o| name(o) == name(n)) {
            out.push(format!("data disk {n} added"));
        }
    }
    out.join("; ")
}

/// What applying `changes` takes: the domain is never changed in place.
pub fn remedy(changes: &[Change]) -> &'static str {
    // A data disk kept under its name but changed (resized, formatted otherwise): re-creating
    // the domain attaches the kept volume as it is, so that advice would never clear the drift.
    let disk_changed = changes
        .iter()
        .any(|c| c.field == "disks" && describe_disks(&c.old, &c.new).contains(" → "));
    if disk_changed {
        "kvmprov never resizes or reformats a data disk: change the volume and its file system by hand, or delete it (cleanup with kvm_cleanup_remove_instance_disks=true, which deletes the root disk too), then provision"
    } else if changes.iter().any(|c| ON_DISK.contains(&c.field.as_str())) {
        "to apply, re-create the instance with a new disk (cleanup with kvm_cleanup_remove_instance_disks=true, then provision)"
    } else {
        "to apply, re-create the domain (cleanup, then provision: the disk is kept and boots with a new cloud-init seed)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(extra: &str, password: &str) -> Config {
        let text = format!(
            "kvm_image_cache_path: /c\nkvm_instance_disk_pool_path: /p\n\
             kvm_cloud_image_catalog:\n  - {{image_name: d, image_url: http://x/a.qcow2, image_checksum_manifest_url: http://x/S}}\n\
             kvm_cloud_init_defaults:\n  password: \"{password}\"\n  ssh_authorized_keys: [\"ssh-ed25519 AAAA op@x\"]\n\
             kvm_instance_definitions:\n  - instance_name: app-01\n    image_name: d\n{extra}"
        );
        crate::config::parse(Path::new("t.yml"), &text, &[]).unwrap()
    }

    const SALT: &str = "app-01-1";

    fn fields(c: &Config) -> Vec<(&'static str, String)> {
        instance_fields(c, &c.instances[0], DomainType::Qemu, SALT)
    }

    fn recorded(c: &Config) -> Vec<(String, String)> {
        fields(c)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect()
    }

    #[test]
    fn changes_of_fields_outside_the_domain_xml_are_named_with_old_and_new_values() {
        let before = cfg("", "old-secret");
        let after = cfg(
            "    ipv4_address: 192.168.122.60/24\n    disk_size_gib: 40\n    packages: [nginx, \"a b\"]\n    runcmd: [\"echo hi\"]\n",
            "old-secret",
        );
        let changes = diff(&recorded(&before), &fields(&after), SALT);
        let described: Vec<String> = changes.iter().map(Change::describe).collect();
        assert_eq!(
            described,
            vec![
                "disk_size_gib 20 → 40",
                "ipv4_address (none) → 192.168.122.60/24",
                "ipv4_gateway (none) → 192.168.122.1",
                r#"dns_servers (none) → ["192.168.122.1"]"#,
                "packages changed",
                "runcmd changed",
            ]
        );
        assert!(remedy(&changes).contains("new disk"));
        assert_eq!(diff(&recorded(&after), &fields(&after), SALT), vec![]);
        // A domain type chosen differently (kvm now) is drift too.
        let kvm = instance_fields(&after, &after.instances[0], DomainType::Kvm, "app-01-1");
        let changes = diff(&recorded(&after), &kvm, SALT);
        assert_eq!(changes[0].describe(), "domain_type qemu → kvm");
        assert!(remedy(&changes).contains("the disk is kept"));
    }

    /// Data disks added, removed and resized are each named, old → new; a domain recorded
    /// before data disks existed had none, so a disk added since is reported too.
    #[test]
    fn data_disks_added_removed_and_resized_are_named() {
        let disks = |list: &str| cfg(&format!("    disks: [{list}]\n"), "pw");
        let before = disks("{name: data, size_gib: 10, filesystem: ext4, mount: /srv/data}, {name: old, size_gib: 1}");
        let after = disks("{name: data, size_gib: 20, filesystem: ext4, mount: /srv/data}, {name: new, size_gib: 2}");
        let changes = diff(&recorded(&before), &fields(&after), SALT);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(
            changes[0].describe(),
            "data disk data 10 GiB ext4 on /srv/data → data 20 GiB ext4 on /srv/data; data disk old 1 GiB raw removed; data disk new 2 GiB raw added"
        );
        // Re-creating the domain would attach the kept volume at its old size.
        assert!(
            remedy(&changes).contains("never resizes"),
            "{}",
            remedy(&changes)
        );
        // Recorded by a kvmprov without data disks: no `disks` field.
        let mut older = recorded(&cfg("", "pw"));
        older.retain(|(n, _)| n != "disks");
        let changes = diff(&older, &fields(&before), SALT);
        assert_eq!(
            changes[0].describe(),
            "data disk data 10 GiB ext4 on /srv/data added; data disk old 1 GiB raw added"
        );
        assert_eq!(diff(&older, &fields(&cfg("", "pw")), SALT), vec![]);
    }

    /// A domain recorded before user_data, fqdn, IPv6, NIC models and several NICs existed
    /// (a record without those fields) reported "matches the config" when any of them was
    /// added to its instance since: the change was never applied and never said.
    #[test]
    fn regression_fields_added_later_were_never_compared_for_older_domains() {
        let plain = cfg("", "pw");
        let mut older = recorded(&plain);
        older.retain(|(n, _)| !ADDED_LATER.iter().any(|(added, _)| added == n));
        assert_eq!(diff(&older, &fields(&plain), SALT), vec![]);
        let changed = cfg(
            "    fqdn: app-01.example.com\n    user_data: {timezone: UTC}\n    nics:\n      - {network: default, ipv6_address: 'fd00::5/64', model: e1000e}\n      - network: storage\n",
            "pw",
        );
        let fields: Vec<String> = diff(&older, &fields(&changed), SALT)
            .into_iter()
            .map(|c| c.field)
            .collect();
        for f in ["ipv6_address", "nic_model", "nics", "user_data", "fqdn"] {
            assert!(fields.iter().any(|x| x == f), "{f} in {fields:?}");
        }
    }

    #[test]
    fn nics_added_removed_or_changed_are_named() {
        let one = cfg("", "pw");
        let two = cfg(
            "    nics:\n      - network: default\n      - {network: storage, ipv4_address: 10.77.0.10/24, ipv6_address: 'fd77::10/64'}\n",
            "pw",
        );
        let mac1 = kvmprov_hypervisor::xml::mac_for_nic("app-01", 1);
        let added: Vec<String> = diff(&recorded(&one), &fields(&two), SALT)
            .iter()
            .map(Change::describe)
            .collect();
        assert_eq!(
            added,
            vec![format!(
                r#"nics (none) → ["1: network storage, mac {mac1}, static 10.77.0.10/24, static fd77::10/64"]"#
            )]
        );
        let removed = diff(&recorded(&two), &fields(&one), SALT);
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].new, "");
        // The primary NIC's own IPv6 address and model are fields of their own.
        let primary_v6 = cfg(
            "    nics:\n      - {network: default, ipv6_address: 'fd00::5/64', model: e1000e}\n",
            "pw",
        );
        let changed: Vec<String> = diff(&recorded(&one), &fields(&primary_v6), SALT)
            .iter()
            .map(Change::describe)
            .collect();
        assert_eq!(
            changed,
            vec![
                "ipv6_address (none) → fd00::5/64",
                "nic_model virtio → e1000e"
            ]
        );
    }

    /// After a plan is applied the record says what the domain now is: no drift is left but
    /// what was not applied (a refused data disk resize stays drift).
    #[test]
    fn the_record_after_applying_leaves_only_what_was_not_applied() {
        let before = cfg(
            "    vcpus: 1\n    disks: [{name: data, size_gib: 1}, {name: old, size_gib: 1}]\n",
            "pw",
        );
        let after = cfg(
            "    vcpus: 2\n    disks: [{name: data, size_gib: 2}, {name: new, size_gib: 1}]\n",
            "pw",
        );
        let changes = diff(&recorded(&before), &fields(&after), SALT);
        let facts = plan::Facts {
            running: true,
            vcpus: 1,
            max_vcpus: 1,
            max_memory_mib: 2048,
            autostart: false,
            want_autostart: false,
            recreate: false,
        };
        let steps = plan::plan(&changes, &facts);
        let (applied, restart) = plan::applicable(&steps);
        assert!(restart);
        let now = record_after(&recorded(&before), &applied);
        let left: Vec<String> = diff(&now, &fields(&after), SALT)
            .iter()
            .map(Change::describe)
            .collect();
        assert_eq!(left, ["data disk data 1 GiB raw → data 2 GiB raw"]);
    }

    #[test]
    fn a_nic_moved_from_a_network_to_a_host_bridge_is_drift() {
        let on_net = cfg(
            "    nics:\n      - network: default\n      - network: storage\n",
            "pw",
        );
        let on_bridge = cfg(
            "    nics:\n      - network: default\n      - bridge: storage\n",
            "pw",
        );
        let mac1 = kvmprov_hypervisor::xml::mac_for_nic("app-01", 1);
        let moved: Vec<String> = diff(&recorded(&on_net), &fields(&on_bridge), SALT)
            .iter()
            .map(Change::describe)
            .collect();
        assert_eq!(
            moved,
            vec![format!(
                r#"nics ["1: network storage, mac {mac1}, DHCPv4"] → ["1: bridge storage, mac {mac1}, DHCPv4"]"#
            )]
        );
        // The primary NIC: the network it left and the bridge it joined.
        let primary = cfg("    nics:\n      - bridge: br0\n", "pw");
        let moved: Vec<String> = diff(&recorded(&cfg("", "pw")), &fields(&primary), SALT)
            .iter()
            .map(Change::describe)
            .collect();
        assert_eq!(
            moved,
            vec![
                "libvirt_network_name default → (none)",
                "bridge (none) → br0"
            ]
        );
        // A domain recorded before bridges existed has no `bridge` field: no false drift.
        let mut older = recorded(&cfg("", "pw"));
        older.retain(|(n, _)| n != "bridge");
        assert!(diff(&older, &fields(&cfg("", "pw")), SALT).is_empty());
    }

    #[test]
    fn secrets_are_recorded_as_salted_digests_and_reported_without_values() {
        let before = cfg("", "old-secret");
        let after = cfg("", "new-secret");
        for (_, v) in fields(&before) {
            assert!(!v.contains("old-secret") && !v.contains("AAAA"), "{v}");
        }
        let changes = diff(&recorded(&before), &fields(&after), SALT);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].describe(), "password changed");
        // The same password under another instance-id digests differently.
        let other = instance_fields(&before, &before.instances[0], DomainType::Qemu, "app-01-2");
        let pw = |f: Vec<(&'static str, String)>| {
            f.into_iter()
                .find(|(n, _)| *n == "password")
                .map(|(_, v)| v)
        };
        assert_ne!(pw(fields(&before)), pw(other));
        assert_eq!(pw(fields(&before)).map(|v| v.len()), Some(16));
    }

    #[test]
    fn fields_only_one_side_knows_are_not_compared() {
        let c = cfg("", "s");
        let mut rec = recorded(&c);
        rec.retain(|(n, _)| n != "runcmd");
        rec.push(("retired_field".into(), "x".into()));
        assert_eq!(diff(&rec, &fields(&c), SALT), vec![]);
    }

    /// `runcmd` and `packages` were recorded in clear text in the domain XML's metadata, which
    /// any local user reads through libvirt's read-only socket, while the seed is 0600. Now
    /// digests; a domain recorded in clear text by an older kvmprov still compares, without
    /// false drift.
    #[test]
    fn regression_runcmd_and_packages_were_readable_in_the_domain_xml() {
        let c = cfg(
            "    packages: [nginx]\n    runcmd: [\"curl -H 'Token: s3cr3t' http://x\"]\n",
            "s",
        );
        let rec = recorded(&c);
        for (name, v) in &rec {
            assert!(
                !v.contains("s3cr3t") && !v.contains("nginx"),
                "{name} recorded in clear text: {v}"
            );
        }
        let value = |name: &str| rec.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(value("runcmd").len(), 16);
        assert_eq!(value("packages").len(), 16);
        // As an older kvmprov recorded them: clear JSON lists. Same config: no drift.
        let mut old = rec.clone();
        for (n, v) in old.iter_mut() {
            match n.as_str() {
                "packages" => *v = r#"["nginx"]"#.into(),
                "runcmd" => *v = r#"["curl -H 'Token: s3cr3t' http://x"]"#.into(),
                _ => {}
            }
        }
        assert_eq!(diff(&old, &fields(&c), SALT), vec![]);
        // A changed runcmd against the old clear text is drift, named without values.
        let changed = cfg("    packages: [nginx]\n    runcmd: [\"true\"]\n", "s");
        let d = diff(&old, &fields(&changed), SALT);
        assert_eq!(
            d.iter().map(Change::describe).collect::<Vec<_>>(),
            vec!["runcmd changed"]
        );
    }

    /// `cfg` with the password lines and instance lines given.
    fn cfg_with(dir: &Path, password: &str, instance: &str) -> Config {
        let text = format!(
            "kvm_image_cache_path: /c\nkvm_instance_disk_pool_path: /p\n\
             kvm_cloud_image_catalog:\n  - {{image_name: d, image_url: http://x/a.qcow2, image_checksum_manifest_url: http://x/S}}\n\
             kvm_cloud_init_defaults:\n{password}\
             kvm_instance_definitions:\n  - instance_name: app-01\n    image_name: d\n{instance}"
        );
        crate::config::parse(&dir.join("t.yml"), &text, &[]).unwrap()
    }

    #[test]
    fn password_sources_user_data_and_fqdn_are_compared_without_values() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "same-secret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let plain = cfg_with(dir.path(), "  password: same-secret\n", "");
        let file = cfg_with(dir.path(), "  password_file: pw\n", "");
        // The same password from a file: nothing to re-create.
        assert_eq!(diff(&recorded(&plain), &fields(&file), SALT), vec![]);
        let hash = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/";
        let hashed = cfg_with(dir.path(), &format!("  password_hash: '{hash}'\n"), "");
        let changes = diff(&recorded(&file), &fields(&hashed), SALT);
        assert_eq!(
            changes.iter().map(Change::describe).collect::<Vec<_>>(),
            vec!["password changed"]
        );
        for (_, v) in fields(&hashed).iter().chain(fields(&file).iter()) {
            assert!(!v.contains("same-secret") && !v.contains("saltsalt"), "{v}");
        }
        let with_ud = cfg_with(
            dir.path(),
            "",
            "    fqdn: app-01.example.com\n    user_data:\n      write_files: [{path: /etc/t, content: \"token s3cr3t\"}]\n",
        );
        let changes = diff(&recorded(&plain), &fields(&with_ud), SALT);
        let described: Vec<String> = changes.iter().map(Change::describe).collect();
        assert_eq!(
            described,
            vec![
                "user_data changed",
                "fqdn (none) → app-01.example.com",
                "password changed"
            ]
        );
        for (_, v) in fields(&with_ud) {
            assert!(!v.contains("s3cr3t"), "{v}");
        }
    }
}
