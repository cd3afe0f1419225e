//! `kvmprov preflight`: is every hypervisor ready for its instances? The preflight stage alone.

use crate::exit::ExitStatus;
use crate::settings::{Session, Stage, StageSettings};
use crate::stages;

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "preflight";

pub fn run(s: &Session) -> ExitStatus {
    let run = stages::run(s, &StageSettings::only(Stage::Preflight));
    s.printer
        .stages(NAME, s.check, &run.reports, run.error.as_ref());
    ExitStatus::failed_if(run.failed())
}
