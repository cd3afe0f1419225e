//! Runtime stage: start the declared domains, find each guest's address, wait for SSH (pinned
//! host key) and for cloud-init to finish, then take the declared snapshot once.
//! All instances in parallel; every wait has a deadline and says what it was waiting for.
//!
//! [`plan_instance`] is pure; [`wait`] holds the wait for a guest to be ready; [`lifecycle`]
//! the day-two verbs that end with that wait (`start`, `stop`, `restart`).

pub mod drift;
pub mod lifecycle;
mod wait;

use std::time::Instant;

use kvmprov_hypervisor::{DomainState, HvError, Hypervisor, NetworkInfo};

use crate::config::{Attachment, Instance};
use crate::login::LoginError;
use crate::parallel::parallel;
use crate::report::{Action, Op, Outcome, StageReport, Status};
use crate::settings::Session;
use crate::ssh;
use crate::stages::handoff::Handoff;
use crate::state;

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
        None => match &inst.attach {
            Attachment::Network(n) => format!("DHCP lease on `{n}`"),
            Attachment::Bridge(b) => format!("DHCP on host bridge {b}, from the guest's console"),
        },
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
                Op::Ok,
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
    Ssh(#[from] ssh::SshError),
    #[error(transparent)]
    Login(#[from] LoginError),
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

/// `remake`: the other stages' parts drift's recreate needs (see [`drift::Remake`]).
pub fn run(
    s: &Session,
    hv: &Hypervisor,
    handoff: &Handoff,
    remake: &dyn drift::Remake,
) -> Result<StageReport, HvError> {
    let mut report = StageReport::new("runtime");
    let mut observed = Vec::new();
    for inst in &s.cfg.instances {
        observed.push((inst, observe(hv, inst)?));
    }
    if s.check {
        for (inst, seen) in &observed {
            for action in plan_instance(inst, seen.state, &seen.snapshots, !handoff.no_wait) {
                let o = Outcome::planned(action);
                s.printer.outcome(&o);
                report.outcomes.push(o);
            }
        }
        return Ok(report);
    }
    let runner = Runner::new(s, hv, handoff)?;
    if s.cfg.drift_apply_confirmed {
        // Before the waits: a guest restarted by the rollout is then found ready at once.
        let networks = if runner.wait {
            runner.networks.clone()
        } else {
            hv.networks()?
        };
        let rollout = drift::rollout(s, hv, remake, &networks, &|o| s.printer.outcome(o))?;
        report.outcomes.extend(rollout.outcomes);
        observed.clear();
        for inst in &s.cfg.instances {
            if !rollout.failed.contains(&inst.name) {
                observed.push((inst, observe(hv, inst)?));
            }
        }
    }
    let results = parallel(&observed, workers(s), |(inst, seen)| {
        runner.apply(inst, seen, &|o| s.printer.outcome(o))
    });
    report.outcomes.extend(results.into_iter().flatten());
    Ok(report)
}

/// Waiting is idle time: every instance gets its own worker (up to a sane bound).
pub fn workers(s: &Session) -> usize {
    s.jobs.max(s.cfg.instances.len()).min(64)
}

/// One instance's domain as runtime finds it: its state (`None`: not defined) and snapshots
/// (listed only when the instance declares one: only `snapshot_name` reads them).
pub struct Observed {
    state: Option<DomainState>,
    snapshots: Vec<String>,
}

pub fn observe(hv: &Hypervisor, inst: &Instance) -> Result<Observed, HvError> {
    let state = hv.domain_state(&inst.name)?;
    observed(hv, inst, state)
}

/// [`observe`] with the domain's state known already (a listing of the host's domains read
/// it): only the snapshots are read, when the instance declares one.
pub fn observed(
    hv: &Hypervisor,
    inst: &Instance,
    state: Option<DomainState>,
) -> Result<Observed, HvError> {
    let snapshots = match (&state, &inst.snapshot_name) {
        (Some(_), Some(_)) => hv.snapshots(&inst.name)?,
        _ => Vec::new(),
    };
    Ok(Observed { state, snapshots })
}

/// The stage applying on one host: what its instances share.
pub struct Runner<'a> {
    s: &'a Session,
    hv: &'a Hypervisor,
    /// Wait for SSH and cloud-init and take snapshots, or only start (`--no-wait`).
    wait: bool,
    /// Read once for every instance's address lookup.
    networks: Vec<NetworkInfo>,
}

impl<'a> Runner<'a> {
    pub fn new(s: &'a Session, hv: &'a Hypervisor, handoff: &Handoff) -> Result<Self, HvError> {
        let wait = !handoff.no_wait;
        let networks = if wait { hv.networks()? } else { Vec::new() };
        Ok(Runner {
            s,
            hv,
            wait,
            networks,
        })
    }

    /// One instance's plan applied in order, each outcome handed to `emit` as it is known;
    /// after a failed step the rest are skipped.
    pub fn apply(&self, inst: &Instance, seen: &Observed, emit: &dyn Fn(&Outcome)) -> Vec<Outcome> {
        let s = self.s;
        let mut outcomes = Vec::new();
        for action in plan_instance(inst, seen.state, &seen.snapshots, self.wait) {
            let outcome = if outcomes.iter().any(Outcome::failed) {
                Outcome::failure(action, "skipped: an earlier step failed")
            } else {
                apply(s, self.hv, &self.networks, inst, action)
            };
            emit(&outcome);
            outcomes.push(outcome);
        }
        outcomes
    }
}

/// The line of an instance whose domain could not be read (its hypervisor lost, say): it is
/// not started, and the error says why.
pub fn unobserved(inst: &Instance, e: &HvError) -> Outcome {
    Outcome::failure(
        Action::new(&inst.name, Op::Start, "its domain could not be read"),
        crate::report::error_chain(e),
    )
}

/// The line of an instance that the run does not start because its provision failed.
pub fn not_started(inst: &Instance) -> Outcome {
    Outcome::done(Action::new(
        &inst.name,
        Op::Skip,
        "not started: its provision failed",
    ))
}

/// `networks`: the hypervisor's, for the address lookup.
fn apply(
    s: &Session,
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    inst: &Instance,
    action: Action,
) -> Outcome {
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
        Op::Wait => match wait::wait_ready(s, hv, networks, inst) {
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
            Err(e) => Status::Failed(crate::report::error_chain(&e)),
        },
        seconds: started.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn inst(snapshot: Option<&str>) -> Instance {
        Instance {
            memory_mib: 512,
            snapshot_name: snapshot.map(String::from),
            ..Instance::for_tests("a")
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
        assert_eq!(ops, vec![Op::Wait, Op::Ok]);
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
