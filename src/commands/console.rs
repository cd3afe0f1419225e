//! `kvmprov console NAME`: the guest's serial console, interactive, through libvirt's console
//! stream on the connection kvmprov already uses (so a remote hypervisor needs no SSH session
//! of the operator's); Ctrl+] ends it. `--log` prints the console log kvmprov keeps instead,
//! sanitized, and `--follow` keeps printing what the guest writes.
//!
//! The interactive session is the operator's terminal talking to the guest: bytes pass through
//! raw both ways, as with `virsh console` or `ssh`. The terminal is in raw mode only while it
//! runs and is put back on every way out ([`crate::terminal`]).

use std::io::{IsTerminal, Read, Write};
use std::sync::{mpsc, Arc};

use kvmprov_hypervisor::{Console, DomainState};

use crate::console::ConsoleLog;
use crate::exit::ExitStatus;
use crate::layout::console_name;
use crate::report::error_chain;
use crate::settings::Session;
use crate::terminal::RawMode;

/// Ctrl+]: the key that ends the session (as in `virsh console` and telnet).
const ESCAPE: u8 = 0x1d;

/// What the session's two readers tell it.
enum Event {
    /// Keys typed, for the guest.
    Keys(Vec<u8>),
    /// Ctrl+], or the end of standard input.
    Escape,
    /// The console closed (the domain stopped) or failed.
    Closed(Option<String>),
}

pub fn run(s: &Session, name: &str, log: bool, follow: bool) -> ExitStatus {
    let inst = match s.cfg.select(&[name.to_string()]) {
        Ok(cfg) => cfg.instances.into_iter().next(),
        Err(e) => {
            s.printer.error(&e.to_string());
            return ExitStatus::Usage;
        }
    };
    let Some(inst) = inst else {
        return ExitStatus::Usage;
    };
    let s = &s.for_host(&inst.libvirt_uri);
    if log {
        return print_log(s, name, follow);
    }
    if !std::io::stdin().is_terminal() {
        s.printer.error(&format!(
            "`kvmprov console {name}` needs a terminal on standard input; `kvmprov console --log {name}` prints the console log (--follow to keep following it)"
        ));
        return ExitStatus::Usage;
    }
    match attach(s, name) {
        Ok(ended) => {
            s.printer.note(&format!("\r\n{ended}"));
            ExitStatus::Success
        }
        Err(e) => {
            s.printer.error(&e);
            ExitStatus::Failure
        }
    }
}

/// `--log`: the log's end, sanitized; `--follow`: then its new lines until interrupted.
fn print_log(s: &Session, name: &str, follow: bool) -> ExitStatus {
    let log = ConsoleLog::on(
        &s.cfg.libvirt_uri,
        s.cfg.instance_pool_path.join(console_name(name)),
    );
    let mut out = s.printer.out();
    let result = if follow {
        // A closed stdout (`| head`) ends the following.
        log.follow(|text| {
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        })
    } else {
        log.tail().map(|text| {
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        })
    };
    match result {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            s.printer
                .error(&format!("the console log of {name}: {}", error_chain(&e)));
            ExitStatus::Failure
        }
    }
}

/// The interactive session, until Ctrl+] or the console closes; how it ended.
fn attach(s: &Session, name: &str) -> Result<String, String> {
    let uri = &s.cfg.libvirt_uri;
    let hv = s.connect().map_err(|e| error_chain(&e))?;
    match hv.domain(name).map_err(|e| error_chain(&e))? {
        None => {
            return Err(format!(
                "{name} is not defined on {uri}: run `kvmprov provision` first"
            ))
        }
        Some(d) if d.state != DomainState::Running => {
            return Err(format!(
                "{name} on {uri} is not running ({:?}): `kvmprov start {name}` starts it",
                d.state
            ))
        }
        Some(_) => {}
    }
    let console = Arc::new(hv.open_console(name).map_err(|e| error_chain(&e))?);
    s.printer.note(&format!(
        "Connected to the serial console of {name} on {uri}. Escape character is ^] (Ctrl+]); press Enter for a prompt."
    ));
    let raw = RawMode::enable().map_err(|e| format!("cannot put the terminal in raw mode: {e}"))?;
    let (tx, rx) = mpsc::channel();
    spawn_guest_reader(Arc::clone(&console), tx.clone());
    spawn_key_reader(tx);
    let ended = loop {
        match rx.recv() {
            Ok(Event::Keys(keys)) => {
                if let Err(e) = console.send(&keys) {
                    break format!("Disconnected from {name}: {}", error_chain(&e));
                }
            }
            Ok(Event::Escape) | Err(_) => break format!("Disconnected from {name}."),
            Ok(Event::Closed(None)) => {
                break format!("The console of {name} closed (the domain stopped?).")
            }
            Ok(Event::Closed(Some(e))) => break format!("The console of {name} failed: {e}"),
        }
    };
    drop(raw);
    console.close();
    // The key reader may still wait for a key: it ends with the process.
    Ok(ended)
}

/// The guest's output straight to the terminal (an interactive terminal session, like ssh).
fn spawn_guest_reader(console: Arc<Console>, tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        loop {
            match console.recv(&mut buf) {
                Ok(0) => {
                    let _ = tx.send(Event::Closed(None));
                    return;
                }
                Ok(n) => {
                    let _ = stdout.write_all(&buf[..n]).and_then(|()| stdout.flush());
                }
                Err(e) => {
                    let _ = tx.send(Event::Closed(Some(error_chain(&e))));
                    return;
                }
            }
        }
    });
}

/// The operator's keys, up to Ctrl+] (which is not sent).
fn spawn_key_reader(tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut stdin = std::io::stdin();
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Event::Escape);
                    return;
                }
                Ok(n) => n,
            };
            let keys = &buf[..n];
            match keys.iter().position(|b| *b == ESCAPE) {
                Some(at) => {
                    if at > 0 {
                        let _ = tx.send(Event::Keys(keys[..at].to_vec()));
                    }
                    let _ = tx.send(Event::Escape);
                    return;
                }
                None => {
                    if tx.send(Event::Keys(keys.to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
}
