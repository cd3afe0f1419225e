//! `kvmprov completions SHELL`: a completion script for the shell, from the argument parser.

use std::io::Write;

use crate::exit::ExitStatus;
use crate::output::Printer;

/// `cli` is the whole command line's parser (`cli::Cli::command()`), handed in so that no
/// command depends on `cli`.
pub fn run(printer: &Printer, shell: clap_complete::Shell, cli: &mut clap::Command) -> ExitStatus {
    // Rendered into memory first: `clap_complete::generate` panics when its writer fails (a
    // closed pipe, a full disk); writing ourselves turns that into an error and exit 1.
    let mut script = Vec::new();
    clap_complete::generate(shell, cli, "kvmprov", &mut script);
    match printer.out().write_all(&script) {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            printer.error(&format!("cannot write: {e}"));
            ExitStatus::Failure
        }
    }
}
