//! `kvmprov provision [--stage STAGE] [--no-wait]`: the stage `kvm_provision_stage` names (or
//! `--stage`); `full` runs preflight, image-cache, provision and runtime in order.

use crate::config::StageChoice;
use crate::exit::ExitStatus;
use crate::settings::{Session, StageSettings};
use crate::stages;

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "provision";

/// `stage`: `--stage`, else the config's `kvm_provision_stage`; `no_wait`: runtime only
/// starts the domains.
pub fn run(s: &Session, stage: Option<StageChoice>, no_wait: bool) -> ExitStatus {
    let settings = StageSettings::provision(&s.cfg, stage, no_wait);
    let run = stages::run(s, &settings);
    s.printer
        .stages(NAME, s.check, &run.reports, run.error.as_ref());
    ExitStatus::failed_if(run.failed())
}
