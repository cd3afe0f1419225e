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
    let settings = Settings {
        verb: Verb::Start,
        force: false,
        // Not used by `start`: its wait is kvm_runtime_timeout_seconds.
        timeout: Duration::ZERO,
    };
    crate::stages::hosts::verb_command(s, NAME, names, &settings)
}
