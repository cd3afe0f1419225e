//! Waiting for a guest: its address (asked again before every attempt), TCP 22, an SSH login
//! with the pinned host key, then cloud-init. Every wait has a deadline and says, when it gives
//! up, what it was waiting for and the last console lines.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use kvmprov_hypervisor::{Hypervisor, NetworkInfo, SshDest};

use super::RuntimeError;
use crate::address;
use crate::cloud_init::{logged_in, parse_wait_output, CloudInitStatus, WAIT_COMMAND};
use crate::config::Instance;
use crate::console::ConsoleLog;
use crate::layout::console_name;
use crate::login::Login;
use crate::process::CommandOutput;
use crate::settings::Session;
use crate::ssh::{self, SshTarget};

/// How often we look again while waiting.
const POLL: Duration = Duration::from_millis(250);

/// The most one login session may take: the login (a guest busy booting on a loaded host can
/// take longer than 30 s), then [`WAIT_COMMAND`]'s minute and `cloud-init status`. A session
/// that runs out is tried again until the deadline.
const SESSION: Duration = Duration::from_secs(150);

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

/// A login attempt's answer: what the session returned and when it logged in, or why it did
/// not get in.
type Attempt<T> = Result<(T, Instant), String>;

/// Find the address, wait for port 22 on it, log in; the address is asked again before every
/// attempt, so a stale lease or an old announcement never pins a dead address. `attempt`
/// answers what the session returned and when it logged in, or the reason it failed.
fn login_loop<T>(
    plan: &address::AddressPlan,
    inst: &Instance,
    probe: &dyn address::Probe,
    w: &Waits,
    mut port_open: impl FnMut(Ipv4Addr) -> bool,
    mut attempt: impl FnMut(Ipv4Addr) -> Result<Attempt<T>, RuntimeError>,
) -> Result<(LoggedIn, T), LoginWait> {
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
        if opened.is_none() {
            // The -v log's timestamps are each step's time (the boot benchmark reads them).
            tracing::info!(
                "{}: port 22 open at {ip} after {:.1}s",
                inst.name,
                start.elapsed().as_secs_f64()
            );
            opened = Some(Instant::now());
        }
        let t = Instant::now();
        let result = attempt(ip).map_err(LoginWait::Failed)?;
        attempts += 1;
        tracing::debug!(
            "{}: ssh attempt at {ip}: {} after {:.2}s",
            inst.name,
            match &result {
                Ok(_) => "logged in",
                Err(e) => e,
            },
            t.elapsed().as_secs_f64()
        );
        match result {
            Ok((answer, at)) => {
                // The session may have gone on after the login (the wait for cloud-init): the
                // login's own time is when it came in.
                let at = at.clamp(t, Instant::now());
                tracing::info!(
                    "{}: ssh login at {ip} after {:.1}s",
                    inst.name,
                    at.duration_since(start).as_secs_f64()
                );
                let (_, source, t_addr) = found.unwrap_or((ip, source, Duration::ZERO));
                let l = LoggedIn {
                    addr: ip,
                    source,
                    t_addr,
                    port_open: opened.unwrap_or(t),
                    ssh_ok: at,
                    login: at.duration_since(t),
                    attempts,
                };
                return Ok((l, answer));
            }
            Err(e) => last_error = e,
        }
        std::thread::sleep(POLL.min(w.poll));
    }
}

/// One login attempt's verdict: the session's output and when it logged in (its first line
/// came), or the reason to try again. An attempt that ran out of time is tried again until the
/// deadline.
fn login_attempt(
    out: Result<CommandOutput, ssh::SshError>,
) -> Result<Attempt<CommandOutput>, RuntimeError> {
    match out {
        Ok(out) if logged_in(&out) => {
            let at = out.first_stdout.unwrap_or_else(Instant::now);
            Ok(Ok((out, at)))
        }
        Ok(out) => Ok(Err(out.stderr.trim().to_string())),
        Err(e @ ssh::SshError::Timeout { .. }) => Ok(Err(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Wait until the guest answers over SSH and cloud-init is done; returns a one-line summary.
/// `networks`: the hypervisor's, to find the address with.
pub(super) fn wait_ready(
    s: &Session,
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    inst: &Instance,
) -> Result<String, RuntimeError> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(s.cfg.runtime_timeout_seconds);
    let login = Login::new(s, inst)?;
    let jump = login.jump();
    let timeout = |what: String| timeout(s, inst, what);

    // The address, TCP 22 on it, then SSH with the pinned key. The address is asked again
    // before every attempt: a stale lease or an old announcement must not pin a dead address.
    let plan = address::plan_among(inst, networks);
    let probe = address::HostProbe::new(hv, inst, &s.cfg.instance_pool_path);
    let waits = Waits {
        deadline,
        // Remote sources are read over SSH: ask them less often.
        poll: if jump.is_some() {
            Duration::from_secs(2)
        } else {
            POLL
        },
        // Through a hypervisor, the SSH attempts are the port check.
        check_port: jump.is_none(),
    };
    let logged_in = login_loop(
        &plan,
        inst,
        &probe,
        &waits,
        |ip| ssh::tcp_open(IpAddr::V4(ip), 22, Duration::from_secs(2)),
        |ip| ssh_attempt(&login, ip, deadline),
    );
    let (logged_in, session) = match logged_in {
        Ok(l) => l,
        Err(LoginWait::Failed(e)) => return Err(e),
        Err(LoginWait::Deadline(what)) => {
            return Err(timeout(what.describe(login.user(), &plan.how)));
        }
    };
    wait_cloud_init(
        &login.target(logged_in.addr)?,
        inst,
        session,
        deadline,
        &timeout,
    )?;
    // What the boot cost the host, read at this moment (the boot benchmark compares it with
    // other tools' domains). Only a log fact: a failed read does not fail a ready guest.
    let cpu = match hv.cpu_seconds(&inst.name) {
        Ok(s) => format!(", guest CPU {s:.1}s"),
        Err(e) => format!(", guest CPU unknown ({e})"),
    };
    tracing::info!(
        "{}: cloud-init done after {:.1}s{cpu}",
        inst.name,
        start.elapsed().as_secs_f64()
    );
    Ok(summary(&logged_in, jump, start))
}

/// One SSH login at `ip` that goes on to wait for cloud-init ([`WAIT_COMMAND`], see
/// [`login_attempt`]). ssh exits 255 while sshd is not up yet (or still offers a host key
/// other than ours).
fn ssh_attempt(
    login: &Login,
    ip: Ipv4Addr,
    deadline: Instant,
) -> Result<Attempt<CommandOutput>, RuntimeError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    login_attempt(ssh::ssh_run(
        &login.target(ip)?,
        WAIT_COMMAND,
        remaining.min(SESSION),
    ))
}

/// Until cloud-init is done (degraded counts, with a warning) or the deadline, from what the
/// login's session (`first`) found; a new session each time it was not done yet.
fn wait_cloud_init(
    target: &SshTarget,
    inst: &Instance,
    first: CommandOutput,
    deadline: Instant,
    timeout: &dyn Fn(String) -> RuntimeError,
) -> Result<(), RuntimeError> {
    let mut out = first;
    loop {
        match parse_wait_output(&out) {
            CloudInitStatus::Done => return Ok(()),
            CloudInitStatus::Degraded(d) => {
                tracing::warn!("{}: cloud-init finished degraded: {d}", inst.name);
                return Ok(());
            }
            CloudInitStatus::Error(d) => return Err(RuntimeError::CloudInit(d)),
            CloudInitStatus::Other(d) => {
                tracing::debug!("{}: cloud-init not done yet: {d}", inst.name);
                std::thread::sleep(POLL);
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timeout("cloud-init to finish".to_string()));
        }
        out = ssh::ssh_run(target, WAIT_COMMAND, remaining)?;
    }
}

/// A wait that ran out: what it waited for and the last lines of the guest's console.
fn timeout(s: &Session, inst: &Instance, what: String) -> RuntimeError {
    let console = ConsoleLog::on(
        &s.cfg.libvirt_uri,
        s.cfg.instance_pool_path.join(console_name(&inst.name)),
    );
    RuntimeError::Timeout {
        seconds: s.cfg.runtime_timeout_seconds,
        what,
        console: console.describe(),
        tail: console
            .last_lines(15)
            .lines()
            .map(|l| format!("        {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The one line a ready guest gets: where, from which source, how long each step took.
fn summary(l: &LoggedIn, jump: Option<&SshDest>, start: Instant) -> String {
    let ssh_after_port = l.ssh_ok.duration_since(l.port_open);
    // Through a hypervisor there is no separate port check: the wait counts from the address.
    let since = match jump {
        Some(j) => format!("after the address appeared (through {})", j.display()),
        None => "after port 22 opened".to_string(),
    };
    format!(
        // The attempts and the last login's own time tell kvmprov's waiting from the guest's.
        "ready at {}: address ({}) after {:.0}s, ssh {:.1}s {since} ({} attempt{}, \
         the login {:.1}s), cloud-init done after {:.0}s",
        l.addr,
        l.source.as_str(),
        l.t_addr.as_secs_f64(),
        ssh_after_port.as_secs_f64(),
        l.attempts,
        if l.attempts == 1 { "" } else { "s" },
        l.login.as_secs_f64(),
        start.elapsed().as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::inst;
    use super::*;
    use kvmprov_hypervisor::HvError;
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
            how: format!("DHCP lease on `{}`", i.attach.name()),
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
        let (l, ()) = login_loop(
            &nat_plan(&i),
            &i,
            &probe,
            &waits(10),
            |_| true,
            |ip| {
                tried.push(ip);
                Ok(if ip == Ipv4Addr::new(192, 168, 122, 20) {
                    Ok(((), Instant::now()))
                } else {
                    Err("Host key verification failed.".to_string())
                })
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
        let (l, _) = login_loop(
            &nat_plan(&i),
            &i,
            &probe,
            &waits(10),
            |_| true,
            |ip| {
                n += 1;
                login_attempt(if n == 1 {
                    Err(ssh::SshError::Timeout {
                        user: "debian".into(),
                        addr: IpAddr::V4(ip),
                        seconds: 30,
                    })
                } else {
                    Ok(CommandOutput {
                        code: Some(0),
                        stdout: format!("{}\n", crate::cloud_init::LOGGED_IN),
                        stderr: String::new(),
                        first_stdout: None,
                    })
                })
            },
        )
        .unwrap();
        assert_eq!(l.attempts, 2);
        assert_eq!(l.addr, Ipv4Addr::new(192, 168, 122, 20));
    }

    /// The wait logged in with `true`, then opened a second session for cloud-init: each SSH
    /// session cost a booting TCG guest ~1.5 s of CPU (measured: five logins, 7.6 s). The login's
    /// session now waits itself; a guest it found done gets no second session.
    #[test]
    fn regression_the_wait_logged_in_twice() {
        let done = r#"{"v1": {"datasource": "x", "errors": [], "recoverable_errors": {}}}"#;
        let session = login_attempt(Ok(CommandOutput {
            code: Some(0),
            stdout: format!("{}\n{done}", crate::cloud_init::LOGGED_IN),
            stderr: String::new(),
            first_stdout: None,
        }))
        .unwrap()
        .unwrap()
        .0;
        // A second session would go to this unreachable address and fail; none is opened.
        let nowhere = SshTarget {
            user: "debian".into(),
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            identity: "/nonexistent/id".into(),
            known_hosts: "/nonexistent/known_hosts".into(),
            jump: None,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let started = Instant::now();
        wait_cloud_init(&nowhere, &inst(None), session, deadline, &|what| {
            panic!("waited for {what}")
        })
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        // ssh's own refusal is no login: tried again.
        let refused = login_attempt(Ok(CommandOutput {
            code: Some(255),
            stdout: String::new(),
            stderr: "Permission denied (publickey).".into(),
            first_stdout: None,
        }));
        assert_eq!(
            refused.unwrap().unwrap_err(),
            "Permission denied (publickey)."
        );
    }

    #[test]
    fn a_login_that_cannot_start_ssh_fails_at_once() {
        let err = login_attempt(Err(ssh::SshError::Spawn(std::io::Error::from(
            std::io::ErrorKind::NotFound,
        ))));
        assert!(matches!(
            err,
            Err(RuntimeError::Ssh(ssh::SshError::Spawn(_)))
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
        match login_loop(
            &nat_plan(&i),
            &i,
            &never,
            &w(),
            |_| false,
            |_| Ok(Ok(((), Instant::now()))),
        ) {
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
            |_| Ok(Err::<((), Instant), _>("Connection refused".into())),
        ) {
            Err(LoginWait::Deadline(a)) => {
                assert!(a
                    .describe("debian", "")
                    .contains("last ssh error: Connection refused"))
            }
            r => panic!("{r:?}"),
        }
    }
}
