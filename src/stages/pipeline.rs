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

/// The provision stage's result, then the runtime stage's (report, error, or both: the
/// runtime half could not set out). An instance whose domain cannot be read (its host lost)
/// fails on its own line, like any step of it, and the others go on.
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
        // Without waiting nothing in runtime is idle: starts are libvirt's (and QEMU's) CPU work
        // like the rest, so `--jobs` bounds them too (a start per instance at once made 100
        // instances on three hosts 1.26x the bare-libvirt bound with `--jobs` in all).
        (
            if handoff.no_wait {
                s.jobs
            } else {
                runtime::workers(s)
            },
            s.jobs,
        ),
        |item| host.apply(item),
        || held.release(&handoff.header(Stage::Runtime.as_str(), uri), s.check),
        |item, made| -> Vec<Outcome> {
            let (inst, _) = item;
            let line = |o: Outcome| {
                held.outcome(&o);
                vec![o]
            };
            if made.failed() {
                return line(runtime::not_started(inst));
            }
            let Ok(runner) = &runner else {
                return Vec::new();
            };
            // A domain provision found and left as it was need not be read again.
            let seen = match host.kept_state(item) {
                Some(state) => runtime::observed(hv, inst, Some(state)),
                None => runtime::observe(hv, inst),
            };
            match seen {
                Ok(seen) => runner.apply(inst, &seen, &|o| held.outcome(o)),
                Err(e) => line(runtime::unobserved(inst, &e)),
            }
        },
    );
    let (made, ran): (Vec<Outcome>, Vec<Vec<Outcome>>) = results.into_iter().unzip();
    let mut out = vec![Ok(host.finish(made))];
    out.extend(runtime_done(runner.err(), ran));
    out
}

/// The runtime half's report, or, when it could not set out, its error.
fn runtime_done(
    setup: Option<HvError>,
    ran: Vec<Vec<Outcome>>,
) -> Vec<Result<StageReport, StageError>> {
    if let Some(e) = setup {
        return vec![Err(StageError::Runtime(e))];
    }
    let mut report = StageReport::new("runtime");
    report.outcomes = ran.into_iter().flatten().collect();
    vec![Ok(report)]
}
