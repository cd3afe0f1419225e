//! `kvmprov cleanup`: the declared instances removed (only planned unless
//! `kvm_cleanup_confirmed=true`), on every hypervisor the config names, one after the other.
//!
//! The command drives the hosts itself rather than through the stage runner: cleanup is never
//! part of a run of the other stages, takes a host's lock only when it really deletes, and goes
//! on to the next host when one fails.

use crate::exit::ExitStatus;
use crate::lock::RunLock;
use crate::report::StageReport;
use crate::settings::Session;
use crate::stages::{self, cleanup, Handoff, StageError};

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "cleanup";

pub fn run(s: &Session) -> ExitStatus {
    let hosts = s.per_host();
    let handoff = Handoff {
        several_hosts: hosts.len() > 1,
        ..Handoff::default()
    };
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for h in &hosts {
        match on_host(h, &handoff) {
            Ok(r) => reports.push(r),
            Err(e) => errors.push(e.on_host(handoff.several_hosts, &h.cfg.libvirt_uri)),
        }
    }
    let run = stages::RunReport {
        reports,
        error: StageError::of_hosts(errors),
    };
    s.printer
        .stages(NAME, s.check, &run.reports, run.error.as_ref());
    ExitStatus::failed_if(run.failed())
}

/// One hypervisor: locked when cleanup really deletes, connected, cleaned up.
fn on_host(s: &Session, handoff: &Handoff) -> Result<StageReport, StageError> {
    let _lock = if cleanup::dry_run(s) {
        None
    } else {
        Some(RunLock::acquire(s)?)
    };
    let hv = s.connect().map_err(|source| StageError::Connect {
        uri: s.cfg.libvirt_uri.clone(),
        source,
    })?;
    cleanup::run(s, &hv, handoff).map_err(StageError::Cleanup)
}
