//! `kvmprov runtime [--no-wait]`: start the declared domains, wait for SSH and cloud-init, take
//! the snapshots. The runtime stage alone.

use crate::exit::ExitStatus;
use crate::settings::{Session, Stage, StageSettings};
use crate::stages;

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "runtime";

/// `no_wait`: only start the domains.
pub fn run(s: &Session, no_wait: bool) -> ExitStatus {
    let settings = StageSettings {
        no_wait,
        ..StageSettings::only(Stage::Runtime)
    };
    let run = stages::run(s, &settings);
    s.printer
        .stages(NAME, s.check, &run.reports, run.error.as_ref());
    ExitStatus::failed_if(run.failed())
}
