//! One file per command, each `run(…) -> ExitStatus`; `cli` parses the arguments and calls
//! exactly one of them. A command resolves its own settings from its arguments and the
//! session, calls the stages or the lower modules, and hands what it found to the printer. No
//! command imports another: what two share lives below them (`stages`, `address`, `login`,
//! `output`, …).
//!
//! Adding a command (a day-two verb such as `start`): a file here, its `pub mod` line, a clap
//! variant in `cli::Command` and its arm in `cli`'s one `match`.

pub mod check;
pub mod cleanup;
pub mod completions;
pub mod console;
pub mod image_cache;
pub mod image_cache_prune;
pub mod inventory;
pub mod man;
pub mod ping;
pub mod preflight;
pub mod provision;
pub mod restart;
pub mod runtime;
pub mod schema;
pub mod snapshot;
pub mod snapshot_list;
pub mod ssh;
pub mod start;
pub mod status;
pub mod stop;
