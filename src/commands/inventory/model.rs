//! The inventory itself, pure: which declared instances are in it (running, with an address,
//! a login kvmprov can make), their host variables and their groups (per image, hypervisor,
//! network and host bridge).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::address::NicAddresses;
use crate::config::Attachment;
use crate::report::error_chain;
use crate::ssh::{shell_words, SshTarget};

/// What kvmprov found out about one declared instance.
#[derive(Debug, Clone)]
pub struct Facts {
    pub name: String,
    pub image: String,
    /// What the primary NIC is plugged into.
    pub attach: Attachment,
    pub libvirt_uri: String,
    /// Every NIC's addresses, for an instance with several NICs or one on a host bridge (else
    /// empty).
    pub nics: Vec<NicAddresses>,
    /// How to log in, or why the instance is not in the inventory.
    pub login: Result<SshTarget, String>,
}

/// One host's variables, as Ansible reads them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostVars {
    pub ansible_host: String,
    pub ansible_user: String,
    /// Left out when Ansible would pass it to ssh altered (`%`, `"`, `\\`, `$` in the path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ansible_ssh_private_key_file: Option<String>,
    pub ansible_ssh_common_args: String,
    /// The hypervisor the instance lives on (for `delegate_to`-style plays on it).
    pub kvmprov_libvirt_uri: String,
    /// Every NIC (network, MAC, addresses) of an instance with several; `ansible_host` is the
    /// primary NIC's address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kvmprov_nics: Vec<NicAddresses>,
}

/// The inventory: hosts with their variables, groups with their members, and the declared
/// instances left out with the reason.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub hosts: BTreeMap<String, HostVars>,
    pub groups: BTreeMap<String, Vec<String>>,
    pub skipped: Vec<(String, String)>,
}

/// Pure: the inventory of the instances kvmprov can log in to.
pub fn build(facts: &[Facts]) -> Inventory {
    let mut inv = Inventory::default();
    for f in facts {
        let target = match &f.login {
            Ok(t) => t,
            Err(reason) => {
                inv.skipped.push((f.name.clone(), reason.clone()));
                continue;
            }
        };
        let vars = match host_vars(f, target) {
            Ok(v) => v,
            Err(reason) => {
                inv.skipped.push((f.name.clone(), reason));
                continue;
            }
        };
        inv.hosts.insert(f.name.clone(), vars);
        let mut groups = vec![
            group_name("image", &f.image),
            group_name("hypervisor", &hypervisor_name(&f.libvirt_uri)),
            group_name(f.attach.kind(), f.attach.name()),
        ];
        // An instance is in the group of every network and host bridge one of its NICs is on.
        for n in &f.nics {
            let g = match (&n.network, &n.bridge) {
                (_, Some(b)) => group_name("bridge", b),
                (Some(net), None) => group_name("network", net),
                (None, None) => continue,
            };
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        for group in groups {
            inv.groups.entry(group).or_default().push(f.name.clone());
        }
    }
    inv
}

fn host_vars(f: &Facts, t: &SshTarget) -> Result<HostVars, String> {
    // Ansible adds its own options (ControlMaster, the user, the key file); these are kvmprov's
    // own pinned options (`SshTarget::pinned_options`, the ones its ssh uses), which make
    // Ansible's ssh trust only the key kvmprov generated for this guest.
    let mut args = Vec::new();
    for o in t.pinned_options().map_err(|e| error_chain(&e))? {
        args.push("-o".to_string());
        args.push(o);
    }
    let key = t.identity.display().to_string();
    Ok(HostVars {
        ansible_host: t.addr.to_string(),
        ansible_user: t.user.clone(),
        // Ansible writes it as `-o IdentityFile="<path>"` unescaped: only a path that reads back
        // the same; the escaped IdentityFile in the common arguments covers any other.
        ansible_ssh_private_key_file: (!key.contains(['"', '\\', '%', '$'])).then_some(key),
        ansible_ssh_common_args: shell_words(&args),
        kvmprov_libvirt_uri: f.libvirt_uri.clone(),
        kvmprov_nics: f.nics.clone(),
    })
}

/// An Ansible group name: `prefix_name`, lower case, every character outside `[a-z0-9_]`
/// replaced by `_` (Ansible warns about `-` and `.` in group names). Two names that differ only
/// there (`debian-12`, `debian.12`) share a group.
pub fn group_name(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    format!("{prefix}_{clean}")
}

/// The host part of a libvirt URI (user and port dropped: the same machine), `localhost` for
/// URIs without one (`qemu:///system`, `test:///default`).
pub fn hypervisor_name(uri: &str) -> String {
    kvmprov_hypervisor::uri::LibvirtUri::parse(uri)
        .and_then(|u| u.host)
        .unwrap_or("localhost")
        .to_string()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::PathBuf;

    /// For the rendering tests, which render these fixtures.
    pub(crate) use super::build;

    pub(crate) fn target(addr: [u8; 4], jump: Option<&str>) -> SshTarget {
        SshTarget {
            user: "debian".into(),
            addr: IpAddr::V4(Ipv4Addr::from(addr)),
            identity: PathBuf::from("/pool/.kvmprov/id_ed25519"),
            known_hosts: PathBuf::from("/pool/.kvmprov/app-01.x.known_hosts"),
            jump: jump.and_then(kvmprov_hypervisor::ssh_destination),
        }
    }

    pub(crate) fn f(name: &str, image: &str, uri: &str, login: Result<SshTarget, String>) -> Facts {
        Facts {
            name: name.into(),
            image: image.into(),
            attach: Attachment::Network("default".into()),
            libvirt_uri: uri.into(),
            nics: vec![],
            login,
        }
    }

    pub(crate) fn sample() -> Inventory {
        build(&[
            f(
                "app-01",
                "debian-12",
                "qemu:///system",
                Ok(target([192, 168, 122, 50], None)),
            ),
            f(
                "db-01",
                "debian-13",
                "qemu+ssh://admin@hv2.example.org/system",
                Ok(target(
                    [192, 168, 122, 7],
                    Some("qemu+ssh://admin@hv2.example.org/system"),
                )),
            ),
            f(
                "web-01",
                "debian-12",
                "qemu:///system",
                Err("shutoff on qemu:///system, not running".into()),
            ),
        ])
    }

    #[test]
    fn groups_per_image_hypervisor_and_network() {
        let inv = sample();
        let groups: Vec<(&str, Vec<&str>)> = inv
            .groups
            .iter()
            .map(|(g, h)| (g.as_str(), h.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            groups,
            vec![
                ("hypervisor_hv2_example_org", vec!["db-01"]),
                ("hypervisor_localhost", vec!["app-01"]),
                ("image_debian_12", vec!["app-01"]),
                ("image_debian_13", vec!["db-01"]),
                ("network_default", vec!["app-01", "db-01"]),
            ]
        );
    }

    #[test]
    fn instances_without_login_are_left_out_with_the_reason() {
        let inv = sample();
        assert!(!inv.hosts.contains_key("web-01"));
        assert_eq!(
            inv.skipped,
            vec![(
                "web-01".to_string(),
                "shutoff on qemu:///system, not running".to_string()
            )]
        );
    }

    #[test]
    fn host_vars_pin_the_host_key_and_use_the_operator_key() {
        let inv = sample();
        let v = &inv.hosts["app-01"];
        assert_eq!(v.ansible_host, "192.168.122.50");
        assert_eq!(v.ansible_user, "debian");
        assert_eq!(
            v.ansible_ssh_private_key_file.as_deref(),
            Some("/pool/.kvmprov/id_ed25519")
        );
        assert_eq!(
            v.ansible_ssh_common_args,
            "-o 'IdentityFile=\"/pool/.kvmprov/id_ed25519\"' -o 'IdentitiesOnly=yes' -o 'StrictHostKeyChecking=yes' -o 'UserKnownHostsFile=\"/pool/.kvmprov/app-01.x.known_hosts\"' -o 'GlobalKnownHostsFile=/dev/null'"
        );
        assert_eq!(v.kvmprov_libvirt_uri, "qemu:///system");
    }

    #[test]
    fn guests_behind_a_remote_hypervisor_get_its_proxy_command() {
        let inv = sample();
        let args = &inv.hosts["db-01"].ansible_ssh_common_args;
        // Quoted as one word for Ansible's shlex split, the same command kvmprov's ssh uses.
        let proxy = target(
            [192, 168, 122, 7],
            Some("qemu+ssh://admin@hv2.example.org/system"),
        )
        .proxy_option()
        .unwrap()
        .unwrap();
        assert!(
            args.ends_with(&format!(" -o {}", shell_words(&[proxy]))),
            "{args}"
        );
        assert!(
            args.contains(
                "\"ProxyCommand=ssh -o 'BatchMode=yes' -l admin -W '%h:%p' -- hv2.example.org\""
            ),
            "{args}"
        );
    }

    /// Issue 23 item 13, in the inventory: Ansible split `ansible_ssh_common_args` into words
    /// and ssh read `UserKnownHostsFile=/srv/vm` and a relative `pool/…`, never the pinned file,
    /// for a pool path with a space; a `%` was expanded as a token. Split as Ansible splits
    /// (POSIX shell words), then read back by the real `ssh -G`.
    #[test]
    fn regression_inventory_ssh_args_broke_pinning_for_a_pool_path_with_space_or_percent() {
        let kh = "/srv/vm pool 100%/.kvmprov/app-01.x.known_hosts";
        let mut t = target([192, 168, 122, 50], None);
        t.known_hosts = kh.into();
        t.identity = "/srv/vm pool 100%/.kvmprov/id_ed25519".into();
        let inv = build(&[f("app-01", "debian-12", "qemu:///system", Ok(t))]);
        let v = &inv.hosts["app-01"];
        // Ansible would write it as `IdentityFile="…100%…"`, which ssh reads as a token.
        assert_eq!(v.ansible_ssh_private_key_file, None);
        let words = shlex::split(&v.ansible_ssh_common_args).unwrap();
        let Ok(out) = std::process::Command::new("ssh")
            .args(["-G", "-F", "/dev/null"])
            .args(&words)
            .arg("debian@192.168.122.50")
            .stdin(std::process::Stdio::null())
            .output()
        else {
            eprintln!("skipped: no ssh client here");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let read = text
            .lines()
            .find_map(|l| l.strip_prefix("userknownhostsfile "));
        assert_eq!(read, Some(kh), "{text}");
        assert!(
            text.lines()
                .any(|l| l == "identityfile /srv/vm pool 100%%/.kvmprov/id_ed25519"),
            "{text}"
        );
    }

    #[test]
    fn group_names_are_sanitised() {
        assert_eq!(group_name("image", "debian-12"), "image_debian_12");
        assert_eq!(group_name("image", "Deb.Ian_13"), "image_deb_ian_13");
        assert_eq!(group_name("network", "br0"), "network_br0");
    }

    #[test]
    fn hypervisor_names_from_uris() {
        for (uri, want) in [
            ("qemu:///system", "localhost"),
            ("test:///default", "localhost"),
            ("qemu+ssh://admin@hv1/system", "hv1"),
            (
                "qemu+ssh://hv1.example.org:2222/system?keyfile=/k",
                "hv1.example.org",
            ),
            ("qemu+ssh://root@[fd00::1]:22/system", "fd00::1"),
        ] {
            assert_eq!(hypervisor_name(uri), want, "{uri}");
        }
    }
}
