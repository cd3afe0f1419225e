//! `kvmprov stop [--force] [--timeout SECS] [NAME…]`: shut declared instances down (ACPI), wait
//! up to the timeout for each to power off; one still running then fails the command, or is
//! powered off with `--force`.
//! No names: every declared instance; an undeclared name changes nothing (exit 2).

use std::time::Duration;

use crate::exit::ExitStatus;
use crate::settings::Session;
use crate::stages::runtime::lifecycle::{Settings, Verb};

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "stop";

pub fn run(s: &Session, names: &[String], force: bool, timeout: Duration) -> ExitStatus {
    let settings = Settings {
        verb: Verb::Stop,
        force,
        timeout,
    };
    crate::stages::hosts::verb_command(s, NAME, names, &settings)
}
