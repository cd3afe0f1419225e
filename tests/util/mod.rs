//! What the binary's integration tests share: running kvmprov as a user would, and reading
//! what it printed.

use std::process::{Command, Output};

/// The kvmprov binary with `args`, without the caller's `KVMPROV_LOG`.
pub fn kvmprov(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvmprov"))
        .args(args)
        .env_remove("KVMPROV_LOG")
        .output()
        .expect("run kvmprov")
}

/// stdout then stderr, as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
