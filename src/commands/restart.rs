//! `kvmprov restart [--force] [--timeout SECS] [NAME…]`: reboot declared instances (ACPI), wait
//! for a new boot (another boot id; the old boot's SSH never counts), then until each is ready
//! again. A guest still in its old boot after the timeout fails, or is reset with `--force`.
//! No names: every declared instance; an undeclared name changes nothing (exit 2).

use std::time::Duration;

use crate::exit::ExitStatus;
use crate::settings::Session;
use crate::stages::runtime::lifecycle::{Settings, Verb};

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "restart";

pub fn run(s: &Session, names: &[String], force: bool, timeout: Duration) -> ExitStatus {
    let settings = Settings {
        verb: Verb::Restart,
        force,
        timeout,
    };
    crate::stages::hosts::verb_command(s, NAME, names, &settings)
}
