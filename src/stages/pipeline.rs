//! Provision and runtime in one run (`full`, applying): one pipeline per instance. An instance
//! is started, waited for and snapshotted as soon as its own disk, seed and domain exist, so
//! early guests boot while later disks are made, and starts do not queue behind the last disk.
//!
//! What is done once per host (observing, the pools, the operator key, the networks) comes
//! first. At most `--jobs` instances are being provisioned at once; waiting for a guest is idle
//! and holds no such slot (as in the runtime stage alone). An instance whose provision failed
//! is not started: its runtime line says so, the others go on. The output still reads stage
//! after stage: runtime's lines are held until provision's are all printed.

use kvmprov_hypervisor::{HvError, Hypervisor};

use super::error::StageError;
use super::handoff::Handoff;
use super::{provision, runtime};
use crate::parallel::pipeline;
use crate::report::{Outcome, StageReport};
use crate::settings::{Session, Stage};

/// What the runtime half gives for one instance: its outcomes, or why it could not look.
type Ran = Result<Vec<Outcome>, HvError>;

/// The provision stage's result, then the runtime stage's (report, error, or both: the
/// instances done before one could not be looked at are kept).
pub fn provision_then_runtime(
    s: &Session,
    hv: &Hypervisor,
    handoff: &Handoff,
) -> Vec<Result<StageReport, StageError>> {
    let uri = &s.cfg.libvirt_uri;
    s.printer
        .stage_header(&handoff.header(Stage::Provision.as_str(), uri), s.check);
    let host = match provision::prepare(s, hv, handoff) {
        Ok(host) => host,
        Err(e) => return vec![Err(StageError::Provision(e))],
    };
    if host.stopped() {
        return vec![Ok(host.finish(Vec::new()))];
    }
    let runner = runtime::Runner::new(s, hv, handoff);
    let held = s.printer.held();
    let results = pipeline(
        host.instances(),
        (runtime::workers(s), s.jobs),
        |item| host.apply(item),
        || held.release(&handoff.header(Stage::Runtime.as_str(), uri), s.check),
        |(inst, _), made| -> Ran {
            if made.failed() {
                let o = runtime::not_started(inst);
                held.outcome(&o);
                return Ok(vec![o]);
            }
            let Ok(runner) = &runner else {
                return Ok(Vec::new());
            };
            let seen = runtime::observe(hv, inst)?;
            Ok(runner.apply(inst, &seen, &|o| held.outcome(o)))
        },
    );
    let (made, ran): (Vec<Outcome>, Vec<Ran>) = results.into_iter().unzip();
    let mut out = vec![Ok(host.finish(made))];
    out.extend(runtime_done(runner.err(), ran));
    out
}

/// The runtime half's report and, when it could not set out or look at an instance, the
/// first such error after it.
fn runtime_done(setup: Option<HvError>, ran: Vec<Ran>) -> Vec<Result<StageReport, StageError>> {
    let mut report = StageReport::new("runtime");
    let mut error = setup;
    for r in ran {
        match r {
            Ok(outcomes) => report.outcomes.extend(outcomes),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    let mut out = Vec::new();
    if error.is_none() || !report.outcomes.is_empty() {
        out.push(Ok(report));
    }
    if let Some(e) = error {
        out.push(Err(StageError::Runtime(e)));
    }
    out
}
