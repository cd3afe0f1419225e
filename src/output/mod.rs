//! Everything kvmprov prints, and nothing else: the one place that writes to stdout and stderr.
//!
//! The stages and commands hand over values (outcomes as they happen, then a command's result);
//! this layer decides how they look. Human mode streams a line per action and ends with a summary
//! table; `--output json` prints one document, an envelope (`command`, `ok`, `error`) around the
//! command's payload ([`json`]). In both modes stderr carries the same diagnostics: warnings,
//! progress, and every error (the envelope repeats the error for scripts).
//!
//! - [`human`]: the text renderings (action lines, the summary table, `check`, `ping`, `status`)
//! - [`json`]: the envelope and each command's payload
//! - [`progress`]: the download and upload progress (a bar on a terminal, else 10 % lines)
//! - [`untrusted`]: the one sanitizer for text from guests and image hosts

pub mod human;
pub mod json;
pub mod progress;
pub mod untrusted;

use std::io::Write;
use std::sync::{Mutex, PoisonError};

use crate::config::Config;
use crate::report::{error_chain, Outcome, StageReport};

pub use json::{Payload, Probe};
pub use untrusted::sanitize;

/// How results are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Human,
    Json,
}

/// Prints outcomes as they come (human mode) and each command's result at its end.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    format: OutputFormat,
}

impl Printer {
    pub fn new(format: OutputFormat) -> Self {
        Printer { format }
    }

    fn human(&self) -> bool {
        self.format == OutputFormat::Human
    }

    pub fn stage_header(&self, stage: &str, check: bool) {
        if self.human() {
            println!("{}", human::stage_header(stage, check));
        }
    }

    pub fn outcome(&self, o: &Outcome) {
        if self.human() {
            println!("{}", human::render_line(o));
            // Lines from parallel workers appear as they finish, not when the buffer fills.
            let _ = std::io::stdout().flush();
        }
    }

    /// Outcome lines of a stage that runs alongside the one before it: held back until that
    /// stage's lines are all printed (see [`Held::release`]).
    pub fn held(&self) -> Held {
        Held {
            printer: *self,
            lines: Mutex::new(Some(Vec::new())),
        }
    }

    /// A line for people after a plan (what to run to really do it); not part of the JSON.
    pub fn advice(&self, text: &str) {
        if self.human() {
            println!("  {text}");
        }
    }

    /// Progress of a long transfer: `verb` (`downloading`) and what (`debian-12`).
    pub fn progress(&self, verb: &'static str, name: &str) -> progress::Bar {
        progress::Bar::new(verb, name, self.human())
    }

    /// `kvmprov check`: the resolved configuration. False when it cannot be rendered.
    pub fn config(&self, cfg: &Config) -> bool {
        if self.human() {
            print!("{}", human::config(cfg));
            return true;
        }
        self.document("check", None, Payload::Config { config: cfg })
    }

    /// `kvmprov ping`: each hypervisor's answer, or why it did not answer (stderr, both modes).
    pub fn hypervisors(&self, probes: &[Probe]) {
        for p in probes {
            if let Some(e) = &p.error {
                error(e);
                if let Some(hint) = &p.hint {
                    note(hint);
                }
            } else if self.human() {
                print!("{}", human::probe(p));
            }
        }
        if !self.human() {
            let errors: Vec<&str> = probes.iter().filter_map(|p| p.error.as_deref()).collect();
            let error = (!errors.is_empty()).then(|| errors.join("; "));
            self.document(
                "ping",
                error,
                Payload::Hypervisors {
                    hypervisors: probes,
                },
            );
        }
    }

    /// `kvmprov status`: the table (or the list) of instances; `errors` were said already.
    pub fn instances(&self, rows: &[json::InstanceStatus], several_hosts: bool, errors: &[String]) {
        if self.human() {
            print!("{}", human::status_table(rows, several_hosts));
            return;
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        self.document("status", error, Payload::Instances { instances: rows });
    }

    /// The end of a stage command (`provision`, `cleanup`, `image-cache prune`, …): the summary
    /// table or the document, and the error that stopped the run, if one did (typed up to here,
    /// shown as its cause chain).
    pub fn stages<E: std::error::Error>(
        &self,
        command: &str,
        check: bool,
        reports: &[StageReport],
        fatal: Option<&E>,
    ) {
        let fatal = fatal.map(|e| error_chain(e));
        let fatal = fatal.as_deref();
        if self.human() {
            print!("{}", human::render_summary(reports, check));
        }
        if let Some(e) = fatal {
            error(e);
        }
        if !self.human() {
            let failed = fatal.is_some() || reports.iter().any(StageReport::failed);
            let payload = Payload::Stages {
                check,
                stages: reports,
            };
            self.document_with(command, !failed, fatal.map(str::to_string), payload);
        }
    }

    /// A command that could not start (the variables file is invalid): the error on stderr and,
    /// for scripts, an envelope without payload.
    pub fn failure(&self, command: Option<&str>, e: &str) {
        error(e);
        if let (false, Some(command)) = (self.human(), command) {
            self.document(command, Some(e.to_string()), Payload::None);
        }
    }

    /// One JSON document on stdout; `ok` unless there is an error. False if it cannot be rendered.
    fn document(&self, command: &str, error: Option<String>, payload: Payload) -> bool {
        self.document_with(command, error.is_none(), error, payload)
    }

    fn document_with(&self, command: &str, ok: bool, error: Option<String>, p: Payload) -> bool {
        // The error carries paths and text from guests, image hosts and other processes.
        let error = error.map(|e| untrusted::sanitize(&e, true));
        match json::render(command, ok, error, p) {
            Ok(doc) => {
                println!("{doc}");
                true
            }
            Err(e) => {
                self::error(&format!("cannot render the result as JSON: {e}"));
                false
            }
        }
    }
}

/// Lines held back, so that stages that overlap in time still read one after the other: the
/// runtime stage's lines wait until the provision stage's are printed, then appear as they come.
pub struct Held {
    printer: Printer,
    /// `None` once released.
    lines: Mutex<Option<Vec<Outcome>>>,
}

impl Held {
    pub fn outcome(&self, o: &Outcome) {
        // Printed under the lock, so no line overtakes one held before it.
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        match lines.as_mut() {
            Some(held) => held.push(o.clone()),
            None => self.printer.outcome(o),
        }
    }

    /// The stage's header and the lines held so far; later lines are printed as they come.
    pub fn release(&self, header: &str, check: bool) {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        self.printer.stage_header(header, check);
        for o in lines.take().unwrap_or_default() {
            self.printer.outcome(&o);
        }
    }
}

/// A document in a format of its own (Ansible's inventory, the JSON Schema), as it is.
pub fn document(text: &str) {
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
}

/// stdout itself, for writers that render into one (completions, the man page).
pub fn stdout() -> std::io::Stdout {
    std::io::stdout()
}

/// `error: …` on stderr (both modes).
pub fn error(text: &str) {
    // Errors carry paths and text from guests, image hosts and other processes.
    eprintln!("error: {}", untrusted::sanitize(text, true));
}

/// `warning: …` on stderr (both modes): something went wrong and was handled.
pub fn warning(text: &str) {
    // Errors carry paths and text from guests, image hosts and other processes.
    eprintln!("warning: {}", untrusted::sanitize(text, true));
}

/// A line on stderr as it is (both modes): a hint after an error, what a run is waiting for.
pub fn note(text: &str) {
    eprintln!("{}", untrusted::sanitize(text, true));
}
