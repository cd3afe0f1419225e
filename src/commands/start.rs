//! `kvmprov start [NAME…]`: start declared instances that are not running and wait until each is
//! ready (address, SSH with the pinned host key, cloud-init done).
//! No names: every declared instance; an undeclared name changes nothing (exit 2).

use std::time::Duration;

use crate::exit::ExitStatus;
use crate::settings::Session;
use crate::stages::runtime::lifecycle::{Settings, Verb};

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "start";

pub fn run(s: &Session, names: &[String]) -> ExitStatus {
    let cfg = match s.cfg.select(names) {
        Ok(cfg) => cfg,
        Err(e) => {
            s.printer.failure(Some(NAME), &e.to_string());
            return ExitStatus::Usage;
        }
    };
    let settings = Settings {
        verb: Verb::Start,
        force: false,
        // Not used by `start`: its wait is kvm_runtime_timeout_seconds.
        timeout: Duration::ZERO,
    };
    let s = s.with_config(cfg);
    let (reports, error) = crate::stages::hosts::run_verb(&s, &settings);
    s.printer.stages(NAME, s.check, &reports, error.as_ref());
    ExitStatus::failed_if(error.is_some() || reports.iter().any(|r| r.failed()))
}
