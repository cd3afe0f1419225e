//! `kvmprov check`: the variables file validated offline, summarised.

use crate::exit::ExitStatus;
use crate::settings::Session;

/// The file was validated when the session was made: what is left is to show it.
pub fn run(s: &Session) -> ExitStatus {
    if s.printer.config(&s.cfg) {
        ExitStatus::Success
    } else {
        ExitStatus::Usage
    }
}
