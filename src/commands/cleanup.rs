//! `kvmprov cleanup`: the declared instances removed (only planned unless
//! `kvm_cleanup_confirmed=true`), on every hypervisor the config names, one after the other.
//!
//! Not through the stage runner: cleanup is never part of a run of the other stages. Like the
//! day-two verbs it goes through `stages::hosts::each_hypervisor`: a host's lock only when it
//! really deletes, and the next host when one fails.

use crate::exit::ExitStatus;
use crate::settings::Session;
use crate::stages::{self, cleanup, StageError};

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "cleanup";

pub fn run(s: &Session) -> ExitStatus {
    // One host after the other (cleanup's output is read host by host).
    let run = stages::hosts::each_hypervisor(s, 1, cleanup::dry_run, |h, hv, handoff| {
        cleanup::run(h, hv, handoff).map_err(StageError::Cleanup)
    });
    s.printer
        .stages(NAME, s.check, &run.reports, run.error.as_ref());
    ExitStatus::failed_if(run.failed())
}
