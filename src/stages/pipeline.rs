//! Provision and runtime in one run (`full`, applying): one pipeline per instance. An instance
//! is started, waited for and snapshotted as soon as its own disk, seed and domain exist, so
//! early guests boot while later disks are made, and starts do not queue behind the last disk.
//!
//! What is done once per host (observing, the pools, the operator key, the networks) comes
//! first. At most `--jobs` instances are being provisioned at once; waiting for a guest is idle
//! and holds no such slot (as in the runtime stage alone). An instance whose provision failed
//! is not started: its runtime line says so, the others go on. The output still reads stage
//! after stage: runtime's lines are held until provision's are all printed.

use kvmprov_hypervisor::HvError;

use super::{provision, runtime, HostRun, StageDone};
use crate::parallel::pipeline;
use crate::plan::{error_chain, Outcome, StageReport};
use crate::run::Handoff;
use crate::settings::Stage;

/// What the runtime half gives for one instance: its outcomes, or why it could not look.
type Ran = Result<Vec<Outcome>, HvError>;

impl HostRun<'_> {
    /// The provision stage's result, then the runtime stage's (report, error, or both: the
    /// instances done before one could not be looked at are kept).
    pub(super) fn provision_then_runtime(&self, handoff: &Handoff, label: bool) -> Vec<StageDone> {
        let (Some(hv), true) = (&self.hv, self.going()) else {
            return Vec::new();
        };
        let s = self.s;
        s.printer
            .stage_header(&self.header(Stage::Provision.as_str(), label), s.check);
        let host = match provision::prepare(s, hv, handoff) {
            Ok(host) => host,
            Err(e) => return vec![self.done(Stage::Provision, Err(error_chain(&e)), label)],
        };
        if host.stopped() {
            return vec![self.done(Stage::Provision, Ok(host.finish(Vec::new())), label)];
        }
        let runner = runtime::Runner::new(s, hv);
        let held = s.printer.held();
        let results = pipeline(
            host.instances(),
            (runtime::workers(s), s.jobs),
            |item| host.apply(item),
            || held.release(&self.header(Stage::Runtime.as_str(), label), s.check),
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
        let mut out = vec![self.done(Stage::Provision, Ok(host.finish(made)), label)];
        out.extend(self.runtime_done(runner.err(), ran, label));
        out
    }

    /// The runtime half's report and, when it could not set out or look at an instance, the
    /// first such error after it.
    fn runtime_done(
        &self,
        setup: Option<HvError>,
        ran: Vec<Ran>,
        label: bool,
    ) -> Vec<StageDone> {
        let mut report = StageReport::new("runtime");
        let mut error = setup.map(|e| error_chain(&e));
        for r in ran {
            match r {
                Ok(outcomes) => report.outcomes.extend(outcomes),
                Err(e) => {
                    error.get_or_insert_with(|| error_chain(&e));
                }
            }
        }
        let mut out = Vec::new();
        if error.is_none() || !report.outcomes.is_empty() {
            out.push(self.done(Stage::Runtime, Ok(report), label));
        }
        if let Some(e) = error {
            out.push(self.done(Stage::Runtime, Err(e), label));
        }
        out
    }
}
