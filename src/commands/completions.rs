//! `kvmprov completions SHELL`: a completion script for the shell, from the argument parser.

use crate::exit::ExitStatus;

/// `cli` is the whole command line's parser (`cli::Cli::command()`), handed in so that no
/// command depends on `cli`.
pub fn run(shell: clap_complete::Shell, cli: &mut clap::Command) -> ExitStatus {
    clap_complete::generate(shell, cli, "kvmprov", &mut crate::output::stdout());
    ExitStatus::Success
}
