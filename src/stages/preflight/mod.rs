//! Preflight: is this hypervisor ready for our instances? One line per check.
//!
//! [`probes`] gather the observation (I/O); [`plan`] is pure and decides, for each check,
//! whether it passes, needs a fix kvmprov may apply (create a directory, start a network, grant
//! the qemu user traverse access with an ACL) or fails with the exact remedy; [`fixes`]
//! applies those fixes.

mod fixes;
pub mod plan;
mod probes;

use kvmprov_hypervisor::{HvError, Hypervisor};

use plan::{plan, Observed, Verdict};
use probes::blocked_dirs;

use crate::report::{Action, Op, Outcome, StageReport};
use crate::settings::Session;

/// The stage on one host. It comes first: it reads nothing from the stages.
pub fn run(s: &Session, hv: &Hypervisor) -> Result<StageReport, HvError> {
    let observed = probes::observe(s, hv)?;
    let mut report = StageReport::new("preflight");
    for (action, verdict) in plan(&s.cfg, &observed) {
        let outcome = outcome(s, hv, &observed, action, verdict);
        s.printer.outcome(&outcome);
        report.outcomes.push(outcome);
    }
    // A directory created just now may still block the qemu user: check again.
    let checkable = observed.local || observed.remote.is_some();
    if !s.check && checkable && report.outcomes.iter().any(|o| o.action.op == Op::Create) {
        for path in [&s.cfg.image_cache_path, &s.cfg.instance_pool_path] {
            let blocked = match (&observed.remote, observed.host.qemu_ids) {
                (Some(dest), Some(ids)) => {
                    probes::remote_blocked_dirs(dest, ids, path).unwrap_or_default()
                }
                (Some(_), None) => Vec::new(),
                (None, _) => blocked_dirs(&observed.qemu_user, path),
            };
            if blocked.is_empty() {
                continue;
            }
            let (action, verdict) = plan::access_check(
                path.display().to_string(),
                &observed.qemu_user,
                &blocked,
                observed.remote.as_ref(),
                s.cfg.auto_fix_pool_access,
            );
            let outcome = outcome(s, hv, &observed, action, verdict);
            s.printer.outcome(&outcome);
            report.outcomes.push(outcome);
        }
    }
    Ok(report)
}

/// A check's outcome: passed, failed, a fix planned (`--check`) or applied.
fn outcome(
    s: &Session,
    hv: &Hypervisor,
    observed: &Observed,
    action: Action,
    verdict: Verdict,
) -> Outcome {
    match verdict {
        Verdict::Pass => Outcome::done(action),
        Verdict::Fail(why) => Outcome::failure(action, why),
        Verdict::Apply(_) if s.check => Outcome::planned(action),
        Verdict::Apply(fix) => {
            crate::report::run(action, || fixes::apply(hv, observed.remote.as_ref(), &fix))
        }
    }
}
