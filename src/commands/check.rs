//! `kvmprov check`: the variables file validated offline, summarised.

use crate::exit::ExitStatus;
use crate::settings::Session;

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "check";

/// The file was validated when the session was made: what is left is to show it.
pub fn run(s: &Session) -> ExitStatus {
    if s.printer.config(&s.cfg) {
        ExitStatus::Success
    } else {
        ExitStatus::Usage
    }
}
