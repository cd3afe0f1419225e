//! `kvmprov status` (a table of the declared instances) and `kvmprov ssh NAME`.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use crate::cli::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::config::Instance;
use crate::guest::{self, SshTarget};
use crate::output::{self, json::InstanceStatus};
use crate::plan::error_chain;
use crate::stages::Session;
use crate::state;
use kvmprov_hypervisor::{HvError, Hypervisor};

/// The guest's current IPv4, from the sources its network allows (`address.rs`).
pub fn address(s: &Session, hv: &Hypervisor, inst: &Instance) -> Result<Option<Ipv4Addr>, HvError> {
    Ok(crate::address::current(hv, inst, &s.cfg.instance_pool_path)?.map(|(ip, _)| ip))
}

/// How kvmprov logs in to `inst` at `addr`: its operator key, the pinned host key (written as a
/// known_hosts file for `addr`) and the hop through a remote hypervisor. `s` is the session of
/// the instance's own hypervisor (`Session::for_host`).
pub fn ssh_target(s: &Session, inst: &Instance, addr: Ipv4Addr) -> Result<SshTarget, String> {
    let dir = state::state_dir(&s.cfg.instance_pool_path);
    let key = state::operator_key(&dir, false)
        .map_err(|e| error_chain(&e))?
        .ok_or_else(|| {
            format!(
                "no operator key in {}: was `{}` provisioned by kvmprov?",
                dir.display(),
                inst.name
            )
        })?;
    let known_hosts =
        state::known_hosts_for(&dir, &inst.libvirt_uri, &inst.name, &addr.to_string())
            .map_err(|e| error_chain(&e))?;
    Ok(SshTarget {
        user: s.cfg.cloud_init.user.clone(),
        addr: IpAddr::V4(addr),
        identity: key.private_path,
        known_hosts,
        jump: kvmprov_hypervisor::ssh_destination(&s.cfg.libvirt_uri),
    })
}

fn row(s: &Session, hv: &Hypervisor, inst: &Instance) -> Result<InstanceStatus, HvError> {
    let Some(dom) = hv.domain(&inst.name)? else {
        return Ok(InstanceStatus {
            name: inst.name.clone(),
            host: s.cfg.libvirt_uri.clone(),
            state: "not defined".into(),
            domain_type: "-".into(),
            image: "-".into(),
            ip: None,
            ssh_ready: false,
            snapshots: Vec::new(),
        });
    };
    let observed = kvmprov_hypervisor::xml::parse_domain_xml(&hv.domain_xml(&inst.name)?)?;
    let running = dom.state == kvmprov_hypervisor::DomainState::Running;
    let ip = if running { address(s, hv, inst)? } else { None };
    let remote = kvmprov_hypervisor::ssh_destination(&s.cfg.libvirt_uri).is_some();
    let ssh_ready = match ip {
        Some(a) if remote || guest::tcp_open(IpAddr::V4(a), 22, Duration::from_secs(1)) => {
            ssh_target(s, inst, a)
                .ok()
                .and_then(|t| guest::ssh_run(&t, "true", Duration::from_secs(8)).ok())
                .is_some_and(|o| o.code == Some(0))
        }
        _ => false,
    };
    Ok(InstanceStatus {
        name: inst.name.clone(),
        host: s.cfg.libvirt_uri.clone(),
        state: format!("{:?}", dom.state).to_lowercase(),
        domain_type: observed.domain_type.unwrap_or_else(|| "-".into()),
        image: observed
            .metadata
            .map(|m| {
                format!("{} {}", m.image_name, m.image_version.unwrap_or_default())
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|| "-".into()),
        ip: ip.map(|a| a.to_string()),
        ssh_ready,
        snapshots: hv.snapshots(&inst.name)?,
    })
}

/// The rows of one hypervisor's instances.
fn host_rows(s: &Session) -> Result<Vec<InstanceStatus>, String> {
    let hv = s.connect().map_err(|e| error_chain(&e))?;
    crate::stages::parallel(&s.cfg.instances, 8, |i| row(s, &hv, i))
        .into_iter()
        .collect::<Result<Vec<InstanceStatus>, HvError>>()
        .map_err(|e| error_chain(&e))
}

pub fn run(s: &Session) -> i32 {
    let hosts = s.per_host();
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    // Hosts in parallel; one that is down is reported and the others are still shown.
    for (h, result) in hosts
        .iter()
        .zip(crate::stages::parallel(&hosts, hosts.len(), host_rows))
    {
        match result {
            Ok(r) => rows.extend(r),
            Err(e) => {
                let e = format!("{}: {e}", h.cfg.libvirt_uri);
                output::error(&e);
                errors.push(e);
            }
        }
    }
    s.printer.instances(&rows, hosts.len() > 1, &errors);
    if errors.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// Replace this process with `ssh` to the instance (interactive unless a command is given).
pub fn ssh(s: &Session, name: &str, command: &[String]) -> i32 {
    let Some(inst) = s.cfg.instance(name) else {
        let names: Vec<&str> = s.cfg.instances.iter().map(|i| i.name.as_str()).collect();
        output::error(&format!(
            "`{name}` is not a declared instance (declared: {}){}",
            names.join(", "),
            crate::config::did_you_mean(name, &names)
        ));
        return EXIT_USAGE;
    };
    let s = &s.for_host(&inst.libvirt_uri);
    let addr = match s.connect().and_then(|hv| address(s, &hv, inst)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            output::error(&format!(
                "`{name}` has no IPv4 address yet (is it running? try `kvmprov status`)"
            ));
            return EXIT_FAILED;
        }
        Err(e) => {
            output::error(&error_chain(&e));
            return EXIT_FAILED;
        }
    };
    let target = match ssh_target(s, inst, addr) {
        Ok(t) => t,
        Err(e) => {
            output::error(&e);
            return EXIT_FAILED;
        }
    };
    let mut cmd = Command::new("ssh");
    if command.is_empty() {
        // Interactive: allocate a terminal; BatchMode stays on (keys only, no prompts).
        cmd.arg("-t");
    }
    cmd.args(target.args(10));
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    let err = cmd.exec();
    output::error(&format!("cannot run ssh: {err}"));
    EXIT_FAILED
}
