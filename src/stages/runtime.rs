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

/// The deadlines of the login loop.
struct Waits {
    deadline: Instant,
    poll: Duration,
    /// Check TCP 22 before an SSH attempt (not through a hypervisor: there SSH is the check).
    check_port: bool,
}

/// A guest that let us log in.
#[derive(Debug)]
struct LoggedIn {
    addr: Ipv4Addr,
    source: address::Source,
    /// When the address (the one logged in to) was first seen, from the start of the wait.
    t_addr: Duration,
    port_open: Instant,
    ssh_ok: Instant,
    /// How long the successful login itself took.
    login: Duration,
    attempts: u32,
}

/// What the loop was waiting for when the deadline came.
#[derive(Debug, PartialEq, Eq)]
enum Awaited {
    Address,
    Port(Ipv4Addr),
    Login { addr: Ipv4Addr, last_error: String },
}

impl Awaited {
    fn describe(&self, user: &str, how: &str) -> String {
        match self {
            Awaited::Address => format!("an IPv4 address ({how})"),
            Awaited::Port(ip) => format!("TCP port 22 on {ip}"),
            Awaited::Login { addr, last_error } => format!(
                "SSH login as {user}@{addr} with the pinned host key (last ssh error: {})",
                if last_error.is_empty() {
                    "none"
                } else {
                    last_error
                }
            ),
        }
    }
}

#[derive(Debug)]
enum LoginWait {
    Deadline(Awaited),
    Failed(RuntimeError),
}

/// Find the address, wait for port 22 on it, log in; the address is asked again before every
/// attempt, so a stale lease or an old announcement never pins a dead address. `attempt`
/// answers `None` for a login, or the reason it failed.
fn login_loop(
    plan: &address::AddressPlan,
    inst: &Instance,
    probe: &dyn address::Probe,
    w: &Waits,
    mut port_open: impl FnMut(Ipv4Addr) -> bool,
    mut attempt: impl FnMut(Ipv4Addr) -> Result<Option<String>, RuntimeError>,
) -> Result<LoggedIn, LoginWait> {
    let start = Instant::now();
    let mut found: Option<(Ipv4Addr, address::Source, Duration)> = None;
    let mut opened: Option<Instant> = None;
    let mut last_error = String::new();
    let mut attempts = 0u32;
    loop {
        if Instant::now() >= w.deadline {
            return Err(LoginWait::Deadline(match found {
                None => Awaited::Address,
                Some((ip, _, _)) if opened.is_none() => Awaited::Port(ip),
                Some((addr, _, _)) => Awaited::Login { addr, last_error },
            }));
        }
        let Some((ip, source)) = address::find(plan, inst, probe)
            .map_err(|e| LoginWait::Failed(RuntimeError::from(e)))?
        else {
            std::thread::sleep(w.poll);
            continue;
        };
        if found.is_none_or(|(old, _, _)| old != ip) {
            match found {
                Some((old, _, _)) => {
                    tracing::info!(
                        "{}: address changed from {old} to {ip} ({})",
                        inst.name,
                        source.as_str()
                    );
                    opened = None;
                }
                None => tracing::info!(
                    "{}: address {ip} from the {} after {:.1}s",
                    inst.name,
                    source.as_str(),
                    start.elapsed().as_secs_f64()
                ),
            }
            found = Some((ip, source, start.elapsed()));
        }
        if w.check_port && !port_open(ip) {
            std::thread::sleep(w.poll);
            continue;
        }
        opened.get_or_insert_with(Instant::now);
        let t = Instant::now();
        let result = attempt(ip).map_err(LoginWait::Failed)?;
        attempts += 1;
        tracing::debug!(
            "{}: ssh attempt at {ip}: {:?} after {:.2}s",
            inst.name,
            result,
            t.elapsed().as_secs_f64()
        );
        match result {
            None => {
                let (_, source, t_addr) = found.unwrap_or((ip, source, Duration::ZERO));
                return Ok(LoggedIn {
                    addr: ip,
                    source,
                    t_addr,
                    port_open: opened.unwrap_or(t),
                    ssh_ok: Instant::now(),
                    login: t.elapsed(),
                    attempts,
                });
            }
            Some(e) => last_error = e,
        }
        std::thread::sleep(POLL.min(w.poll));
    }
}

/// One login attempt's verdict: `None` when it got in, the reason to try again otherwise. An
/// attempt that ran out of time is tried again until the deadline: a guest busy booting
/// (cloud-init, a loaded host) can take longer than one attempt's 30 s to finish a login.
fn login_attempt(
    out: Result<guest::CommandOutput, guest::GuestError>,
) -> Result<Option<String>, RuntimeError> {
    match out {
        Ok(out) if out.code == Some(0) => Ok(None),
        Ok(out) => Ok(Some(out.stderr.trim().to_string())),
        Err(e @ guest::GuestError::Timeout { .. }) => Ok(Some(e.to_string())),
        Err(e) => Err(e.into()),
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
    let user = s.cfg.cloud_init.user.clone();
    let target_for = |ip: Ipv4Addr| -> Result<SshTarget, RuntimeError> {
        Ok(SshTarget {
            user: user.clone(),
            addr: IpAddr::V4(ip),
            identity: identity.clone(),
            known_hosts: state::known_hosts_for(
                &dir,
                &inst.libvirt_uri,
                &inst.name,
                &ip.to_string(),
            )?,
            jump: jump.clone(),
        })
    };
    let waits = Waits {
        deadline,
        poll,
        // Through a hypervisor, the SSH attempts are the port check.
        check_port: jump.is_none(),
    };
    let login = login_loop(
        &plan,
        inst,
        &probe,
        &waits,
        |ip| guest::tcp_open(IpAddr::V4(ip), 22, Duration::from_secs(2)),
        |ip| {
            // ssh exits 255 while sshd is not up yet (or still offers a host key other
            // than ours).
            let remaining = deadline.saturating_duration_since(Instant::now());
            login_attempt(guest::ssh_run(
                &target_for(ip)?,
                "true",
                remaining.min(Duration::from_secs(30)),
            ))
        },
    );
    let LoggedIn {
        addr: ip,
        source,
        t_addr,
        port_open,
        ssh_ok,
        login,
        attempts,
    } = match login {
        Ok(l) => l,
        Err(LoginWait::Failed(e)) => return Err(e),
        Err(LoginWait::Deadline(what)) => {
            return Err(timeout(what.describe(&user, &plan.how)));
        }
    };
    let target = target_for(ip)?;
    let addr = target.addr;
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
    use std::cell::Cell;

    /// A network whose DHCP server first reports a stale lease (an earlier guest's address,
    /// now another host's: port 22 open, our key refused), then the guest's own.
    struct Leases {
        calls: Cell<u32>,
        stale_for: u32,
    }
    impl address::Probe for Leases {
        fn lease(&self) -> Result<Option<Ipv4Addr>, HvError> {
            self.calls.set(self.calls.get() + 1);
            Ok(Some(if self.calls.get() <= self.stale_for {
                Ipv4Addr::new(192, 168, 122, 10)
            } else {
                Ipv4Addr::new(192, 168, 122, 20)
            }))
        }
        fn console(&self) -> Option<Ipv4Addr> {
            None
        }
        fn neighbour(&self) -> Option<Ipv4Addr> {
            None
        }
        fn agent(&self) -> Result<Option<Ipv4Addr>, HvError> {
            Ok(None)
        }
    }

    fn nat_plan(i: &Instance) -> address::AddressPlan {
        address::AddressPlan {
            sources: vec![address::Source::Lease],
            how: format!("DHCP lease on `{}`", i.network),
        }
    }

    fn waits(seconds: u64) -> Waits {
        Waits {
            deadline: Instant::now() + Duration::from_secs(seconds),
            poll: Duration::from_millis(1),
            check_port: true,
        }
    }

    #[test]
    fn regression_a_stale_lease_pinned_a_dead_address() {
        // Before: once port 22 answered, every SSH attempt went to that first address.
        let i = inst(None);
        let probe = Leases {
            calls: Cell::new(0),
            stale_for: 3,
        };
        let mut tried = Vec::new();
        let l = login_loop(
            &nat_plan(&i),
            &i,
            &probe,
            &waits(10),
            |_| true,
            |ip| {
                tried.push(ip);
                Ok((ip != Ipv4Addr::new(192, 168, 122, 20))
                    .then(|| "Host key verification failed.".to_string()))
            },
        )
        .unwrap();
        assert_eq!(l.addr, Ipv4Addr::new(192, 168, 122, 20));
        assert_eq!(l.source, address::Source::Lease);
        assert!(
            tried.len() >= 2 && tried[0] == Ipv4Addr::new(192, 168, 122, 10),
            "{tried:?}"
        );
        assert_eq!(l.attempts as usize, tried.len());
    }

    #[test]
    fn regression_a_slow_first_login_failed_the_wait_instead_of_retrying() {
        // Before: an SSH attempt that ran out of its 30 s (a guest still busy booting on a
        // loaded host) ended the wait with an error, minutes before the deadline.
        let i = inst(None);
        let probe = Leases {
            calls: Cell::new(0),
            stale_for: 0,
        };
        let mut n = 0;
        let l = login_loop(
            &nat_plan(&i),
            &i,
            &probe,
            &waits(10),
            |_| true,
            |ip| {
                n += 1;
                login_attempt(if n == 1 {
                    Err(guest::GuestError::Timeout {
                        user: "debian".into(),
                        addr: IpAddr::V4(ip),
                        seconds: 30,
                    })
                } else {
                    Ok(guest::CommandOutput {
                        code: Some(0),
                        stdout: String::new(),
                        stderr: String::new(),
                    })
                })
            },
        )
        .unwrap();
        assert_eq!(l.attempts, 2);
        assert_eq!(l.addr, Ipv4Addr::new(192, 168, 122, 20));
    }

    #[test]
    fn a_login_that_cannot_start_ssh_fails_at_once() {
        let err = login_attempt(Err(guest::GuestError::Spawn(std::io::Error::from(
            std::io::ErrorKind::NotFound,
        ))));
        assert!(matches!(
            err,
            Err(RuntimeError::Guest(guest::GuestError::Spawn(_)))
        ));
    }

    #[test]
    fn the_deadline_says_what_was_awaited() {
        let i = inst(None);
        let never = Leases {
            calls: Cell::new(0),
            stale_for: u32::MAX,
        };
        let w = || Waits {
            deadline: Instant::now() + Duration::from_millis(500),
            poll: Duration::from_millis(5),
            check_port: true,
        };
        match login_loop(&nat_plan(&i), &i, &never, &w(), |_| false, |_| Ok(None)) {
            Err(LoginWait::Deadline(a)) => {
                assert_eq!(a, Awaited::Port(Ipv4Addr::new(192, 168, 122, 10)))
            }
            r => panic!("{r:?}"),
        }
        match login_loop(
            &nat_plan(&i),
            &i,
            &never,
            &w(),
            |_| true,
            |_| Ok(Some("Connection refused".into())),
        ) {
            Err(LoginWait::Deadline(a)) => {
                assert!(a
                    .describe("debian", "")
                    .contains("last ssh error: Connection refused"))
            }
            r => panic!("{r:?}"),
        }
    }

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
