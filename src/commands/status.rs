//! `kvmprov status`: a table of the declared instances (state, domain type, image, address,
//! SSH readiness, snapshots, data disks), every hypervisor asked in parallel.

use std::net::IpAddr;
use std::time::Duration;

use kvmprov_hypervisor::{HvError, Hypervisor, NetworkInfo};

use crate::address;
use crate::config::Instance;
use crate::exit::ExitStatus;
use crate::layout::data_disk_name;
use crate::login::Login;
use crate::output::json::{DiskStatus, InstanceStatus};
use crate::parallel::parallel;
use crate::report::error_chain;
use crate::settings::Session;
use crate::ssh;

/// How long `status` lets a guest take to answer on port 22 and to run `true` over SSH before
/// it says "not SSH-ready". The port's 3 s is a TCP connect alone: the guest's kernel, not sshd,
/// completes the handshake, so a guest whose sshd listens answers at once; 3 s only bounds the
/// wait at an address where nothing answers yet (a guest still booting), which is then "not
/// SSH-ready" without the login being tried. The login's 30 s covers sshd and the shell themselves: with 8 s, CI
/// once (2026-12-02) saw a guest reported not ready right after it had answered, while four
/// TCG guests shared two cores; a slow answer costs a few seconds, a wrong "no" sends a user
/// chasing a guest that is fine.
const PORT_TIMEOUT: Duration = Duration::from_secs(3);
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// `networks`: the hypervisor's, read once for all its instances.
fn row(
    s: &Session,
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    inst: &Instance,
) -> Result<InstanceStatus, HvError> {
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
            disks: disks(s, hv, inst)?,
            nics: nic_rows(hv, networks, inst, &s.cfg.instance_pool_path, false, None)?,
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
        Some(a) if remote || ssh::tcp_open(IpAddr::V4(a), 22, PORT_TIMEOUT) => Login::new(s, inst)
            .ok()
            .and_then(|l| l.target(a).ok())
            .and_then(|t| ssh::ssh_run(&t, "true", LOGIN_TIMEOUT).ok())
            .is_some_and(|o| o.code == Some(0)),
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
                // The version came from the image host's manifest: sanitized.
                let version = crate::output::sanitize(&m.image_version.unwrap_or_default(), false);
                format!("{} {version}", m.image_name).trim().to_string()
            })
            .unwrap_or_else(|| "-".into()),
        ip: ip.map(|a| a.to_string()),
        ssh_ready,
        snapshots: hv.snapshots(&inst.name)?,
        disks: disks(s, hv, inst)?,
        nics: nic_rows(hv, networks, inst, &s.cfg.instance_pool_path, running, ip)?,
    })
}

/// The instance's data disks and whether their volumes are there.
fn disks(s: &Session, hv: &Hypervisor, inst: &Instance) -> Result<Vec<DiskStatus>, HvError> {
    inst.disks
        .iter()
        .map(|d| {
            let path = s
                .cfg
                .instance_pool_path
                .join(data_disk_name(&inst.name, &d.name));
            Ok(DiskStatus {
                name: d.name.clone(),
                capacity_bytes: hv.volume_by_path(&path)?.map(|v| v.capacity),
                volume: path.display().to_string(),
                by_id: d.by_id(),
                size_gib: d.size_gib,
                filesystem: d.filesystem.map(|f| f.as_str().to_string()),
                mount: d.mount.as_ref().map(|m| m.display().to_string()),
            })
        })
        .collect()
}

/// The addresses of every NIC of an instance with several (found only while it runs).
fn nic_rows(
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    inst: &Instance,
    pool_path: &std::path::Path,
    running: bool,
    primary_ipv4: Option<std::net::Ipv4Addr>,
) -> Result<Vec<address::NicAddresses>, HvError> {
    // One NIC on a libvirt network: the row says all. On a host bridge: listed, so the bridge shows.
    if inst.other_nics.is_empty() && inst.attach.bridge().is_none() {
        return Ok(Vec::new());
    }
    if running {
        return address::current_per_nic(hv, networks, inst, pool_path, primary_ipv4);
    }
    // Not running: no address, like `ip`.
    Ok(inst
        .nics()
        .into_iter()
        .map(|n| address::NicAddresses {
            ipv4: None,
            ipv6: None,
            network: n.attach.network().map(str::to_string),
            bridge: n.attach.bridge().map(str::to_string),
            mac: n.mac,
            primary: n.primary,
        })
        .collect())
}

/// The rows of one hypervisor's instances.
fn host_rows(s: &Session) -> Result<Vec<InstanceStatus>, String> {
    let hv = s.connect().map_err(|e| error_chain(&e))?;
    let networks = hv.networks().map_err(|e| error_chain(&e))?;
    parallel(&s.cfg.instances, 8, |i| row(s, &hv, &networks, i))
        .into_iter()
        .collect::<Result<Vec<InstanceStatus>, HvError>>()
        .map_err(|e| error_chain(&e))
}

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "status";

pub fn run(s: &Session) -> ExitStatus {
    let hosts = s.per_host();
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    // Hosts in parallel; one that is down is reported and the others are still shown.
    for (h, result) in hosts.iter().zip(parallel(&hosts, hosts.len(), host_rows)) {
        match result {
            Ok(r) => rows.extend(r),
            Err(e) => {
                let e = format!("{}: {e}", h.cfg.libvirt_uri);
                s.printer.error(&e);
                errors.push(e);
            }
        }
    }
    let several_hosts = hosts.len() > 1;
    s.printer.instances(&rows, several_hosts, &errors);
    ExitStatus::failed_if(!errors.is_empty())
}
