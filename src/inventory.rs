//! `kvmprov inventory`: an Ansible inventory of the declared instances that are running and have
//! an address, as a dynamic inventory (`--list` JSON with `_meta.hostvars`, `--host NAME`) or a
//! static YAML file.
//!
//! `gather` asks the hypervisors (the only I/O, through the same address lookup and SSH target
//! `status` and `ssh` use); `build` turns those facts into hosts and groups (pure); `to_json`,
//! `host_json` and `to_yaml` render the result. Ansible then logs in exactly the way kvmprov
//! does: operator key, the pinned host key with `StrictHostKeyChecking=yes`, and the hop through
//! a remote hypervisor.

use kvmprov_hypervisor::DomainState;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use crate::address;
use crate::config::{did_you_mean, Instance};
use crate::exit::ExitStatus;
use crate::login::Login;
use crate::output;
use crate::parallel::parallel;
use crate::plan::error_chain;
use crate::settings::Session;
use crate::ssh::{shell_words, SshTarget};

/// What kvmprov found out about one declared instance.
#[derive(Debug, Clone)]
pub struct Facts {
    pub name: String,
    pub image: String,
    pub network: String,
    pub libvirt_uri: String,
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
        for group in [
            group_name("image", &f.image),
            group_name("hypervisor", &hypervisor_name(&f.libvirt_uri)),
            group_name("network", &f.network),
        ] {
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

/// The dynamic-inventory document (`--list`): every group, `all` as their parent, and the host
/// variables in `_meta` so Ansible does not call `--host` once per host.
pub fn to_json(inv: &Inventory) -> Value {
    let mut doc = serde_json::Map::new();
    doc.insert(
        "_meta".into(),
        json!({ "hostvars": serde_json::to_value(&inv.hosts).unwrap_or_default() }),
    );
    doc.insert(
        "all".into(),
        json!({ "children": inv.groups.keys().collect::<Vec<_>>() }),
    );
    for (group, hosts) in &inv.groups {
        doc.insert(group.clone(), json!({ "hosts": hosts }));
    }
    Value::Object(doc)
}

/// `--host NAME`: the host's variables, `{}` when it is not in the inventory (Ansible's rule).
pub fn host_json(inv: &Inventory, name: &str) -> Value {
    inv.hosts
        .get(name)
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or_else(|| json!({}))
}

/// A static inventory in Ansible's YAML format. Every value is written as a JSON string, which
/// is a valid YAML double-quoted scalar: no value can turn into a number, a boolean or syntax.
pub fn to_yaml(inv: &Inventory) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut y = String::from(
        "# Ansible inventory of kvmprov's instances (`kvmprov inventory --format yaml`).\nall:\n",
    );
    if inv.hosts.is_empty() {
        y.push_str("  hosts: {}\n");
        return y;
    }
    y.push_str("  hosts:\n");
    for (name, vars) in &inv.hosts {
        y.push_str(&format!("    {}:\n", q(name)));
        // Through serde, so the file always has the same variables as the JSON document.
        if let Ok(Value::Object(vars)) = serde_json::to_value(vars) {
            for (key, value) in vars {
                y.push_str(&format!(
                    "      {key}: {}\n",
                    q(value.as_str().unwrap_or_default())
                ));
            }
        }
    }
    y.push_str("  children:\n");
    for (group, hosts) in &inv.groups {
        y.push_str(&format!("    {group}:\n      hosts:\n"));
        for h in hosts {
            y.push_str(&format!("        {}: {{}}\n", q(h)));
        }
    }
    y
}

/// Output of `kvmprov inventory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Ansible's dynamic-inventory JSON.
    Json,
    /// A static inventory file in Ansible's YAML format.
    Yaml,
}

/// One instance on its hypervisor: whether it runs, its address, how to log in. `networks`:
/// the hypervisor's, read once for all its instances.
fn facts(
    s: &Session,
    hv: &kvmprov_hypervisor::Hypervisor,
    networks: &Result<Vec<kvmprov_hypervisor::NetworkInfo>, String>,
    inst: &Instance,
) -> Facts {
    let uri = &s.cfg.libvirt_uri;
    let login = match hv.domain(&inst.name) {
        Err(e) => Err(error_chain(&e)),
        Ok(None) => Err(format!(
            "not defined on {uri} (`kvmprov provision` creates it)"
        )),
        Ok(Some(d)) if d.state != DomainState::Running => Err(format!(
            "{} on {uri}, not running (`kvmprov runtime` starts it)",
            format!("{:?}", d.state).to_lowercase()
        )),
        Ok(Some(_)) => match networks.as_ref().map_err(Clone::clone).and_then(|nets| {
            address::current(hv, nets, inst, &s.cfg.instance_pool_path)
                .map_err(|e| error_chain(&e))
        }) {
            Err(e) => Err(e),
            Ok(None) => Err(format!(
                "running on {uri} but has no IPv4 address yet (`kvmprov status` shows when it has one)"
            )),
            Ok(Some(addr)) => login_at(s, inst, addr),
        },
    };
    fact(inst, uri, login)
}

/// How to log in to `inst` at `addr`, or why kvmprov cannot.
fn login_at(s: &Session, inst: &Instance, addr: std::net::Ipv4Addr) -> Result<SshTarget, String> {
    Login::new(s, inst)
        .map_err(|e| error_chain(&e))?
        .target(addr)
        .map_err(|e| error_chain(&e))
}

fn fact(inst: &Instance, uri: &str, login: Result<SshTarget, String>) -> Facts {
    Facts {
        name: inst.name.clone(),
        image: inst.image_name.clone(),
        network: inst.network.clone(),
        libvirt_uri: uri.to_string(),
        login,
    }
}

/// The facts of every instance in `s`, each hypervisor asked in parallel, in declaration order;
/// and the hypervisors that could not be reached.
pub fn gather(s: &Session) -> (Vec<Facts>, Vec<String>) {
    let hosts = s.per_host();
    let per_host = parallel(&hosts, hosts.len(), |h| match h.connect() {
        Ok(hv) => {
            let networks = hv.networks().map_err(|e| error_chain(&e));
            Ok(parallel(&h.cfg.instances, 8, |i| {
                facts(h, &hv, &networks, i)
            }))
        }
        Err(e) => {
            let why = format!("cannot reach {}: {}", h.cfg.libvirt_uri, error_chain(&e));
            let all = h
                .cfg
                .instances
                .iter()
                .map(|i| fact(i, &h.cfg.libvirt_uri, Err(why.clone())))
                .collect();
            Err((all, why))
        }
    });
    let mut found: BTreeMap<String, Facts> = BTreeMap::new();
    let mut errors = Vec::new();
    for result in per_host {
        let list = match result {
            Ok(list) => list,
            Err((list, why)) => {
                errors.push(why);
                list
            }
        };
        found.extend(list.into_iter().map(|f| (f.name.clone(), f)));
    }
    let ordered = s
        .cfg
        .instances
        .iter()
        .filter_map(|i| found.remove(&i.name))
        .collect();
    (ordered, errors)
}

/// `kvmprov inventory [--list | --host NAME] [--format json|yaml]`.
pub fn run(s: &Session, host: Option<&str>, format: Format) -> ExitStatus {
    if let Some(name) = host {
        if s.cfg.instance(name).is_none() {
            let names: Vec<&str> = s.cfg.instances.iter().map(|i| i.name.as_str()).collect();
            output::error(&format!(
                "`{name}` is not a declared instance{}",
                did_you_mean(name, &names)
            ));
            return ExitStatus::Usage;
        }
    }
    // `--host` asks only that instance's hypervisor (`hosts()` follows the instances).
    let mut cfg = s.cfg.clone();
    if let Some(name) = host {
        cfg.instances.retain(|i| i.name == name);
    }
    let s = s.with_config(cfg);
    let (facts, errors) = gather(&s);
    let inv = build(&facts);
    for (name, reason) in &inv.skipped {
        output::note(&format!("kvmprov inventory: {name} left out: {reason}"));
    }
    // Ansible's formats, not kvmprov's `--output json` envelope: Ansible reads them.
    output::document(&match (host, format) {
        (Some(name), _) => format!("{:#}", host_json(&inv, name)),
        (None, Format::Json) => format!("{:#}", to_json(&inv)),
        (None, Format::Yaml) => to_yaml(&inv),
    });
    if errors.is_empty() {
        ExitStatus::Success
    } else {
        for e in &errors {
            output::error(e);
        }
        ExitStatus::Failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::PathBuf;

    fn target(addr: [u8; 4], jump: Option<&str>) -> SshTarget {
        SshTarget {
            user: "debian".into(),
            addr: IpAddr::V4(Ipv4Addr::from(addr)),
            identity: PathBuf::from("/pool/.kvmprov/id_ed25519"),
            known_hosts: PathBuf::from("/pool/.kvmprov/app-01.x.known_hosts"),
            jump: jump.and_then(kvmprov_hypervisor::ssh_destination),
        }
    }

    fn f(name: &str, image: &str, uri: &str, login: Result<SshTarget, String>) -> Facts {
        Facts {
            name: name.into(),
            image: image.into(),
            network: "default".into(),
            libvirt_uri: uri.into(),
            login,
        }
    }

    fn sample() -> Inventory {
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
    fn dynamic_json_has_meta_hostvars_and_all() {
        let doc = to_json(&sample());
        assert_eq!(
            doc["_meta"]["hostvars"]["app-01"]["ansible_host"],
            "192.168.122.50"
        );
        assert_eq!(doc["image_debian_12"]["hosts"], json!(["app-01"]));
        let children = doc["all"]["children"].as_array().unwrap();
        assert_eq!(children.len(), 5);
        assert!(doc.get("web-01").is_none());
        assert_eq!(host_json(&sample(), "db-01")["ansible_user"], "debian");
        assert_eq!(host_json(&sample(), "web-01"), json!({}));
    }

    #[test]
    fn empty_inventory_is_still_valid() {
        let inv = build(&[]);
        assert_eq!(
            to_json(&inv),
            json!({"_meta": {"hostvars": {}}, "all": {"children": []}})
        );
        assert!(to_yaml(&inv).ends_with("all:\n  hosts: {}\n"));
    }

    /// The YAML file read back (with the YAML parser kvmprov uses) holds the same hosts, values
    /// and groups as the JSON document.
    #[test]
    fn yaml_is_the_same_inventory() {
        let inv = sample();
        let y = to_yaml(&inv);
        let root = marked_yaml::parse_yaml(0, &y).unwrap();
        let all = root.as_mapping().unwrap().get_mapping("all").unwrap();
        let hosts = all.get_mapping("hosts").unwrap();
        for (name, vars) in &inv.hosts {
            let h = hosts.get_mapping(name).unwrap();
            let doc = serde_json::to_value(vars).unwrap();
            for (k, v) in doc.as_object().unwrap() {
                assert_eq!(
                    h.get_scalar(k).unwrap().as_str(),
                    v.as_str().unwrap(),
                    "{k}"
                );
            }
        }
        let children = all.get_mapping("children").unwrap();
        for (group, members) in &inv.groups {
            let g = children
                .get_mapping(group)
                .unwrap()
                .get_mapping("hosts")
                .unwrap();
            let listed: Vec<&str> = g.keys().map(|k| k.as_str()).collect();
            assert_eq!(listed, *members);
        }
    }

    #[test]
    fn yaml_values_cannot_change_type_or_break_out() {
        let mut t = target([10, 0, 0, 1], None);
        t.user = "yes".into();
        // ssh takes no control character in a path (refused before it gets here): the line
        // break rides in the hypervisor URI instead.
        let uri = "qemu:///system\": x\n  evil: 1";
        let inv = build(&[f("123", "debian-12", uri, Ok(t))]);
        let y = to_yaml(&inv);
        let root = marked_yaml::parse_yaml(0, &y).unwrap();
        let h = root
            .as_mapping()
            .unwrap()
            .get_mapping("all")
            .unwrap()
            .get_mapping("hosts")
            .unwrap()
            .get_mapping("123")
            .unwrap();
        assert_eq!(h.get_scalar("ansible_user").unwrap().as_str(), "yes");
        assert_eq!(h.get_scalar("kvmprov_libvirt_uri").unwrap().as_str(), uri);
        assert!(h.get_node("evil").is_none());
        assert!(y.contains("ansible_user: \"yes\""), "{y}");
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
