//! `kvmprov inventory`: an Ansible inventory of the declared instances that are running and have
//! an address, as a dynamic inventory (`--list` JSON with `_meta.hostvars`, `--host NAME`) or a
//! static YAML file.
//!
//! [`gather`] asks the hypervisors (the only I/O, through the same address lookup and SSH target
//! `status` and `ssh` use); [`model`] turns those facts into hosts and groups (pure); [`render`]
//! writes the result in Ansible's formats. Ansible then logs in exactly the way kvmprov
//! does: operator key, the pinned host key with `StrictHostKeyChecking=yes`, and the hop through
//! a remote hypervisor.

pub mod model;
pub mod render;

use std::collections::BTreeMap;

use kvmprov_hypervisor::DomainState;

pub use model::{build, Facts, Inventory};
pub use render::{host_json, to_json, to_yaml, Format};

use crate::address;
use crate::config::{did_you_mean, Instance};
use crate::exit::ExitStatus;
use crate::login::Login;
use crate::parallel::parallel;
use crate::report::error_chain;
use crate::settings::Session;
use crate::ssh::SshTarget;

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
    let mut f = fact(inst, uri, login);
    let listed = !inst.other_nics.is_empty() || inst.attach.bridge().is_some();
    if f.login.is_ok() && listed {
        if let (Ok(nets), Ok(t)) = (networks, &f.login) {
            let primary = match t.addr {
                std::net::IpAddr::V4(a) => Some(a),
                std::net::IpAddr::V6(_) => None,
            };
            // A failed look-up of the other NICs leaves the host in: Ansible reaches it at
            // ansible_host all the same.
            if let Ok(nics) =
                address::current_per_nic(hv, nets, inst, &s.cfg.instance_pool_path, primary)
            {
                f.nics = nics;
            }
        }
    }
    f
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
        attach: inst.attach.clone(),
        libvirt_uri: uri.to_string(),
        nics: Vec::new(),
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
            s.printer.error(&format!(
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
        s.printer
            .note(&format!("kvmprov inventory: {name} left out: {reason}"));
    }
    // Ansible's formats, not kvmprov's `--output json` envelope: Ansible reads them.
    let written = s.printer.document(&match (host, format) {
        (Some(name), _) => format!("{:#}", host_json(&inv, name)),
        (None, Format::Json) => format!("{:#}", to_json(&inv)),
        (None, Format::Yaml) => to_yaml(&inv),
    });
    if let Err(e) = written {
        s.printer.error(&format!("cannot write: {e}"));
        return ExitStatus::Failure;
    }
    if errors.is_empty() {
        ExitStatus::Success
    } else {
        for e in &errors {
            s.printer.error(e);
        }
        ExitStatus::Failure
    }
}
