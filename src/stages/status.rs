//! `kvmprov status` (a table of the declared instances) and `kvmprov ssh NAME`.

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use kvmprov_hypervisor::{HvError, Hypervisor, NetworkInfo};
use serde::Serialize;

use crate::address;
use crate::config::Instance;
use crate::exit::ExitStatus;
use crate::guest;
use crate::login::Login;
use crate::parallel::parallel;
use crate::plan::{error_chain, OutputFormat};
use crate::settings::Session;

#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    /// The hypervisor's libvirt URI.
    pub host: String,
    pub state: String,
    pub domain_type: String,
    pub image: String,
    pub ip: Option<String>,
    pub ssh_ready: bool,
    pub snapshots: Vec<String>,
}

/// `networks`: the hypervisor's, read once for all its instances.
fn row(
    s: &Session,
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    inst: &Instance,
) -> Result<Row, HvError> {
    let Some(dom) = hv.domain(&inst.name)? else {
        return Ok(Row {
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
    let ip = if running {
        address::current(hv, networks, inst, &s.cfg.instance_pool_path)?
    } else {
        None
    };
    let remote = kvmprov_hypervisor::ssh_destination(&s.cfg.libvirt_uri).is_some();
    let ssh_ready = match ip {
        Some(a) if remote || guest::tcp_open(IpAddr::V4(a), 22, Duration::from_secs(1)) => {
            Login::new(s, inst)
                .ok()
                .and_then(|l| l.target(a).ok())
                .and_then(|t| guest::ssh_run(&t, "true", Duration::from_secs(8)).ok())
                .is_some_and(|o| o.code == Some(0))
        }
        _ => false,
    };
    Ok(Row {
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
fn host_rows(s: &Session) -> Result<Vec<Row>, String> {
    let hv = s.connect().map_err(|e| error_chain(&e))?;
    let networks = hv.networks().map_err(|e| error_chain(&e))?;
    parallel(&s.cfg.instances, 8, |i| row(s, &hv, &networks, i))
        .into_iter()
        .collect::<Result<Vec<Row>, HvError>>()
        .map_err(|e| error_chain(&e))
}

pub fn run(s: &Session) -> ExitStatus {
    let hosts = s.per_host();
    let mut rows = Vec::new();
    let mut status = ExitStatus::Success;
    // Hosts in parallel; one that is down is reported and the others are still shown.
    for (h, result) in hosts.iter().zip(parallel(&hosts, hosts.len(), host_rows)) {
        match result {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("error: {}: {e}", h.cfg.libvirt_uri);
                status = ExitStatus::Failure;
            }
        }
    }
    if s.output == OutputFormat::Json {
        println!("{}", serde_json::json!({ "instances": rows }));
        return status;
    }
    println!(
        "{:<16} {:<12} {:<5} {:<26} {:<16} {:<4} snapshots",
        "instance", "state", "type", "image", "ip", "ssh"
    );
    for r in &rows {
        println!(
            "{:<16} {:<12} {:<5} {:<26} {:<16} {:<4} {}",
            r.name,
            r.state,
            r.domain_type,
            r.image,
            r.ip.as_deref().unwrap_or("-"),
            if r.ssh_ready { "yes" } else { "no" },
            if r.snapshots.is_empty() {
                "-".to_string()
            } else {
                r.snapshots.join(",")
            }
        );
        if hosts.len() > 1 {
            println!("{:<16} on {}", "", r.host);
        }
    }
    status
}

/// Replace this process with `ssh` to the instance (interactive unless a command is given).
pub fn ssh(s: &Session, name: &str, command: &[String]) -> ExitStatus {
    let Some(inst) = s.cfg.instance(name) else {
        let names: Vec<&str> = s.cfg.instances.iter().map(|i| i.name.as_str()).collect();
        eprintln!(
            "error: `{name}` is not a declared instance (declared: {}){}",
            names.join(", "),
            crate::config::did_you_mean(name, &names)
        );
        return ExitStatus::Usage;
    };
    let s = &s.for_host(&inst.libvirt_uri);
    let found = s.connect().and_then(|hv| {
        let networks = hv.networks()?;
        address::current(&hv, &networks, inst, &s.cfg.instance_pool_path)
    });
    let addr = match found {
        Ok(Some(a)) => a,
        Ok(None) => {
            eprintln!(
                "error: `{name}` has no IPv4 address yet (is it running? try `kvmprov status`)"
            );
            return ExitStatus::Failure;
        }
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            return ExitStatus::Failure;
        }
    };
    let target = match Login::new(s, inst)
        .map_err(|e| error_chain(&e))
        .and_then(|l| l.target(addr).map_err(|e| error_chain(&e)))
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitStatus::Failure;
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
    eprintln!("error: cannot run ssh: {err}");
    ExitStatus::Failure
}
