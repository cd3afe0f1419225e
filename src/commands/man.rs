//! `kvmprov man [--out-dir DIR]`: the man page (roff) on stdout, or one page per command
//! written into a directory.

use std::path::Path;

use crate::exit::ExitStatus;
use crate::output::Printer;

/// `cli` is the whole command line's parser (`cli::Cli::command()`), handed in so that no
/// command depends on `cli`.
pub fn run(printer: &Printer, cli: clap::Command, out_dir: Option<&Path>) -> ExitStatus {
    let written = match out_dir {
        None => clap_mangen::Man::new(cli).render(&mut printer.out()),
        Some(dir) => clap_mangen::generate_to(cli, dir),
    };
    match written {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            printer.error(&format!("cannot write: {e}"));
            ExitStatus::Failure
        }
    }
}
