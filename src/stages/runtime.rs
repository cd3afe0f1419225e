//! Runtime stage: start the declared domains, find each guest's address, wait for SSH (pinned
//! host key) and for cloud-init to finish, then take the declared snapshot once.
//! All instances in parallel; every wait has a deadline and says what it was waiting for.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvmprov_hypervisor::{DomainState, HvError, Hypervisor};

use crate::address;
use crate::config::Instance;
use crate::guest::{self, CloudInitStatus, SshTarget};
use crate::plan::{Action, Op, Outcome, StageReport, Status};
use crate::stages::provision::console_name;
use crate::stages::{parallel, Session};
use crate::state;

/// How often we look again while waiting.
const POLL: Duration = Duration::from_millis(250);

/// What runtime will do for one instance, from its observed state (pure).
pub fn plan_instance(
    inst: &Instance,
    state: Option<DomainState>,
    snapshots: &[String],
    wait: bool,
) -> Vec<Action> {
    let name = &inst.name;
    let Some(state) = state else {
        return vec![Action::new(
            name,
            Op::Check,
            "domain not defined: run the provision stage first",
        )];
    };
    let mut actions = Vec::new();
    match state {
        DomainState::Running => {}
        DomainState::Paused => {
            actions.push(Action::new(name, Op::Start, "domain is Paused: resume"))
        }
        other => actions.push(Action::new(name, Op::Start, format!("domain is {other:?}"))),
    }
    if !wait {
        return actions;
    }
    let via = match &inst.ipv4 {
        Some(s) => format!("static {}", s.address.addr()),
        None => format!("DHCP lease on `{}`", inst.network),
    };
    actions.push(Action::new(
        name,
        Op::Wait,
        format!("address ({via}), SSH with pinned host key, cloud-init done"),
    ));
    if let Some(snap) = &inst.snapshot_name {
        if snapshots.iter().any(|s| s == snap) {
            actions.push(Action::new(
                name,
                Op::Keep,
                format!("snapshot `{snap}` exists"),
            ));
        } else {
            actions.push(Action::new(
                name,
                Op::Snapshot,
                format!("take `{snap}` after the checks pass"),
            ));
        }
    }
    actions
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Guest(#[from] guest::GuestError),
    #[error("timed out after {seconds}s waiting for {what}\n      last console lines ({console}):\n{tail}")]
    Timeout {
        seconds: u64,
        what: String,
        console: String,
        tail: String,
    },
    #[error("cloud-init finished with errors: {0}")]
    CloudInit(String),
    #[error("{0}")]
    Invalid(String),
}

pub fn run(s: &Session, hv: &Hypervisor) -> Result<StageReport, HvError> {
    let mut report = StageReport::new("runtime");
    let mut observed = Vec::new();
    for inst in &s.cfg.instances {
        let dom = hv.domain(&inst.name)?;
        let snaps = match &dom {
            Some(_) => hv.snapshots(&inst.name)?,
            None => Vec::new(),
        };
        observed.push((inst, dom.map(|d| d.state), snaps));
    }
    if s.check {
        for (inst, st, snaps) in &observed {
            for action in plan_instance(inst, *st, snaps, !s.no_wait) {
                let o = Outcome {
                    action,
                    status: Status::Planned,
                    seconds: 0.0,
                };
                s.printer.outcome(&o);
                report.outcomes.push(o);
            }
        }
        return Ok(report);
    }
    // Waiting is idle time: every instance gets its own worker.
    let jobs = s.jobs.max(s.cfg.instances.len()).min(64);
    let results = parallel(&observed, jobs, |(inst, st, snaps)| {
        let mut outcomes = Vec::new();
        for action in plan_instance(inst, *st, snaps, !s.no_wait) {
            let failed_before = outcomes.iter().any(Outcome::failed);
            let outcome = if failed_before {
                Outcome {
                    action,
                    status: Status::Failed("skipped: an earlier step failed".into()),
                    seconds: 0.0,
                }
            } else {
                apply(s, hv, inst, action)
            };
            s.printer.outcome(&outcome);
            outcomes.push(outcome);
        }
        outcomes
    });
    report.outcomes.extend(results.into_iter().flatten());
    Ok(report)
}

fn apply(s: &Session, hv: &Hypervisor, inst: &Instance, action: Action) -> Outcome {
    let started = Instant::now();
    let mut action = action;
    let result: Result<(), RuntimeError> = match action.op {
        Op::Start => (|| {
            hv.start(&inst.name)?;
            if s.cfg.domain_autostart {
                hv.set_autostart(&inst.name, true)?;
            }
            Ok(())
        })(),
        Op::Wait => match wait_ready(s, hv, inst) {
            Ok(summary) => {
                action.reason = summary;
                Ok(())
            }
            Err(e) => Err(e),
        },
        Op::Snapshot => {
            let snap = inst.snapshot_name.clone().unwrap_or_default();
            hv.create_snapshot(
                &inst.name,
                &snap,
                "taken by kvmprov after the runtime checks passed",
            )
            .map_err(RuntimeError::from)
        }
        Op::Check => Err(RuntimeError::Invalid(action.reason.clone())),
        _ => Ok(()),
    };
    Outcome {
        action,
        status: match result {
            Ok(()) => Status::Done,
            Err(e) => Status::Failed(crate::plan::error_chain(&e)),
        },
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Wait until the guest answers over SSH and cloud-init is done; returns a one-line summary.
fn wait_ready(s: &Session, hv: &Hypervisor, inst: &Instance) -> Result<String, RuntimeError> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(s.cfg.runtime_timeout_seconds);
    let console = s.cfg.instance_pool_path.join(console_name(&inst.name));
    // Guests of a remote hypervisor sit on its NAT network: reach them through it.
    let jump = kvmprov_hypervisor::ssh_destination(&s.cfg.libvirt_uri);
    let timeout = |what: String| RuntimeError::Timeout {
        seconds: s.cfg.runtime_timeout_seconds,
        what,
        console: match &jump {
            Some(j) => format!("{} on {}", console.display(), j.display()),
            None => console.display().to_string(),
        },
        tail: match &jump {
            Some(j) => guest::remote_console_tail(j, &console, 15),
            None => guest::console_tail(&console, 15),
        }
        .lines()
        .map(|l| format!("        {l}"))
        .collect::<Vec<_>>()
        .join("\n"),
    };

    // The address, TCP 22 on it, then SSH with the pinned key. The address is asked again
    // before every attempt: a stale lease or an old announcement must not pin a dead address.
    let nets = hv.networks()?;
    let plan = address::plan_or_all(inst, nets.iter().find(|n| n.name == inst.network));
    let probe = address::HostProbe::new(hv, inst, &s.cfg.instance_pool_path);
    // Remote sources are read over SSH: ask them less often.
    let poll = if jump.is_some() {
        Duration::from_secs(2)
    } else {
        POLL
    };
    let dir = state::state_dir(&s.cfg.instance_pool_path);
    let identity: PathBuf = state::operator_key(&dir, false)?
        .map(|k| k.private_path)
        .ok_or_else(|| {
            RuntimeError::Invalid(format!(
                "no operator key in {}: the instance was not provisioned by kvmprov",
                dir.display()
            ))
        })?;
    let mut found: Option<(Ipv4Addr, address::Source, Duration)> = None;
    let mut port_open: Option<Instant> = None;
    let mut last_ssh_error = String::new();
    let mut attempts = 0u32;
    let (target, ssh_ok, login) = loop {
        if Instant::now() >= deadline {
            return Err(timeout(match found {
                None => format!("an IPv4 address ({})", plan.how),
                Some((ip, _, _)) if port_open.is_none() => format!("TCP port 22 on {ip}"),
                Some((ip, _, _)) => format!(
                    "SSH login as {}@{ip} with the pinned host key (last ssh error: {})",
                    s.cfg.cloud_init.user,
                    if last_ssh_error.is_empty() {
                        "none"
                    } else {
                        &last_ssh_error
                    }
                ),
            }));
        }
        let Some((ip, source)) = address::find(&plan, inst, &probe)? else {
            std::thread::sleep(poll);
            continue;
        };
        if found.is_none_or(|(old, _, _)| old != ip) {
            if let Some((old, _, _)) = found {
                tracing::info!(
                    "{}: address changed from {old} to {ip} ({})",
                    inst.name,
                    source.as_str()
                );
                port_open = None;
            } else {
                tracing::info!(
                    "{}: address {ip} from the {} after {:.1}s",
                    inst.name,
                    source.as_str(),
                    start.elapsed().as_secs_f64()
                );
            }
            found = Some((ip, source, start.elapsed()));
        }
        // Through a hypervisor, the SSH attempts are the port check.
        if jump.is_none() && !guest::tcp_open(IpAddr::V4(ip), 22, Duration::from_secs(2)) {
            std::thread::sleep(poll);
            continue;
        }
        port_open.get_or_insert_with(Instant::now);
        let target = SshTarget {
            user: s.cfg.cloud_init.user.clone(),
            addr: IpAddr::V4(ip),
            identity: identity.clone(),
            known_hosts: state::known_hosts_for(
                &dir,
                &inst.libvirt_uri,
                &inst.name,
                &ip.to_string(),
            )?,
            jump: jump.clone(),
        };
        // ssh exits 255 while sshd is not up yet (or still offers a host key other than ours).
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = Instant::now();
        let out = guest::ssh_run(&target, "true", remaining.min(Duration::from_secs(30)))?;
        attempts += 1;
        tracing::debug!(
            "{}: ssh attempt exited {:?} after {:.2}s",
            inst.name,
            out.code,
            attempt.elapsed().as_secs_f64()
        );
        if out.code == Some(0) {
            break (target, Instant::now(), attempt.elapsed());
        }
        last_ssh_error = out.stderr.trim().to_string();
        tracing::debug!("{}: ssh not ready: {last_ssh_error}", inst.name);
        std::thread::sleep(POLL);
    };
    let addr = target.addr;
    let (source, t_addr) = found
        .map(|(_, src, t)| (src, t))
        .unwrap_or((address::Source::Static, Duration::ZERO));
    let port_open = port_open.unwrap_or(ssh_ok);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timeout("cloud-init to finish".to_string()));
        }
        let out = guest::ssh_run(&target, "cloud-init status --wait --long", remaining)?;
        match guest::parse_cloud_init_status(&out) {
            CloudInitStatus::Done => break,
            CloudInitStatus::Degraded(d) => {
                tracing::warn!("{}: cloud-init finished degraded: {d}", inst.name);
                break;
            }
            CloudInitStatus::Error(d) => return Err(RuntimeError::CloudInit(d)),
            CloudInitStatus::Other(d) => {
                tracing::debug!("{}: cloud-init not done yet: {d}", inst.name);
                std::thread::sleep(POLL);
            }
        }
    }
    let ssh_after_port = ssh_ok.duration_since(port_open);
    // Through a hypervisor there is no separate port check: the wait counts from the address.
    let since = match &jump {
        Some(j) => format!("after the address appeared (through {})", j.display()),
        None => "after port 22 opened".to_string(),
    };
    Ok(format!(
        // The attempts and the last login's own time tell kvmprov's waiting from the guest's.
        "ready at {addr}: address ({}) after {:.0}s, ssh {:.1}s {since} ({attempts} attempt{}, \
         the login {:.1}s), cloud-init done after {:.0}s",
        source.as_str(),
        t_addr.as_secs_f64(),
        ssh_after_port.as_secs_f64(),
        if attempts == 1 { "" } else { "s" },
        login.as_secs_f64(),
        start.elapsed().as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(snapshot: Option<&str>) -> Instance {
        Instance {
            name: "a".into(),
            image_name: "debian-12".into(),
            vcpus: 1,
            memory_mib: 512,
            disk_size_gib: 4,
            network: "default".into(),
            ipv4: None,
            mac: None,
            snapshot_name: snapshot.map(String::from),
            packages: vec![],
            runcmd: vec![],
            libvirt_uri: "qemu:///system".into(),
            firmware: crate::config::FirmwareChoice::Bios,
            secure_boot: false,
        }
    }

    #[test]
    fn stopped_domain_is_started_then_waited_for_then_snapshotted() {
        let ops: Vec<Op> =
            plan_instance(&inst(Some("base")), Some(DomainState::ShutOff), &[], true)
                .into_iter()
                .map(|a| a.op)
                .collect();
        assert_eq!(ops, vec![Op::Start, Op::Wait, Op::Snapshot]);
    }

    #[test]
    fn existing_snapshot_is_kept_and_running_domain_not_restarted() {
        let ops: Vec<Op> = plan_instance(
            &inst(Some("base")),
            Some(DomainState::Running),
            &["base".into()],
            true,
        )
        .into_iter()
        .map(|a| a.op)
        .collect();
        assert_eq!(ops, vec![Op::Wait, Op::Keep]);
    }

    #[test]
    fn no_wait_only_starts() {
        let ops: Vec<Op> =
            plan_instance(&inst(Some("base")), Some(DomainState::ShutOff), &[], false)
                .into_iter()
                .map(|a| a.op)
                .collect();
        assert_eq!(ops, vec![Op::Start]);
    }

    #[test]
    fn paused_domain_is_planned_as_a_resume() {
        let a = plan_instance(&inst(None), Some(DomainState::Paused), &[], false);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].op, Op::Start);
        assert!(a[0].reason.ends_with("resume"), "{}", a[0].reason);
    }

    #[test]
    fn undefined_domain_is_an_error_line() {
        let a = plan_instance(&inst(None), None, &[], true);
        assert_eq!(a.len(), 1);
        assert!(a[0].reason.contains("provision stage"));
    }
}
