//! The operator's terminal in raw mode for an interactive session (`console`): every key goes
//! to the guest as typed, and the terminal is put back as it was on every way out — the guard
//! dropped (a return, an error, a panic unwinding), and SIGINT/SIGTERM, whose handler exits the
//! process without unwinding and so calls [`restore`] itself.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Mutex, PoisonError};

use rustix::termios::{tcgetattr, tcsetattr, OptionalActions, Termios};

/// The settings raw mode replaced, while it is on (for [`restore`]).
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Raw mode on standard input, while this lives.
pub struct RawMode {
    _private: (),
}

impl RawMode {
    /// Switch standard input's terminal to raw mode (no echo, no line editing, no signals from
    /// keys: Ctrl+C goes to the guest).
    pub fn enable() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let fd = stdin.as_fd();
        let before = tcgetattr(fd)?;
        let mut raw = before.clone();
        raw.make_raw();
        *SAVED.lock().unwrap_or_else(PoisonError::into_inner) = Some(before);
        if let Err(e) = tcsetattr(fd, OptionalActions::Flush, &raw) {
            restore();
            return Err(e.into());
        }
        Ok(RawMode { _private: () })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Put standard input's terminal back as it was before raw mode, if raw mode is on; once.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(t) = saved {
        let stdin = io::stdin();
        let fd: BorrowedFd<'_> = stdin.as_fd();
        let _ = tcsetattr(fd, OptionalActions::Now, &t);
    }
}
