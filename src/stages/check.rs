//! `kvmprov check`: the variables file validated offline, summarised.

use crate::cli::{EXIT_OK, EXIT_USAGE};
use crate::stages::Session;

/// The file was validated when the session was made: what is left is to show it.
pub fn run(s: &Session) -> i32 {
    if s.printer.config(&s.cfg) {
        EXIT_OK
    } else {
        EXIT_USAGE
    }
}
