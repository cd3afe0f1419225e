//! Everything kvmprov prints, and nothing else: results, action lines, warnings, errors and
//! progress. (clap prints its own help and usage errors, and `-v` logs go through `tracing` to
//! stderr.)
//!
//! The stages and commands hand over values (outcomes as they happen, then a command's result)
//! to a [`Printer`]; this layer decides how they look and writes them into the printer's two
//! writers, "out" and "err": the process's stdout and stderr in the binary, buffers in tests.
//! Human mode streams a line per action and ends with a summary table; `--output json` prints one
//! document, an envelope (`command`, `ok`, `error`) around the command's payload ([`json`]). In
//! both modes "err" carries the same diagnostics: warnings, progress lines, and every error (the
//! envelope repeats the error for scripts).
//!
//! - this module: [`Printer`] (what goes to which writer, when, in which order) and [`Held`]
//! - [`human`]: the text renderings (action lines, the summary table, `check`, `ping`, `status`)
//! - [`json`]: the envelope and each command's payload, every string in it sanitized
//! - [`progress`]: the download and upload progress (a bar on a terminal, else 10 % lines)
//! - [`untrusted`]: the one sanitizer for text from guests and image hosts

pub mod human;
pub mod json;
pub mod progress;
pub mod untrusted;

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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

/// One of a printer's two writers, shared by the threads that print through it.
type Writer = Mutex<Box<dyn Write + Send>>;

/// Where a printer's text goes.
struct Sink {
    out: Writer,
    err: Writer,
    /// `err` is a terminal: progress bars are drawn only there.
    err_is_terminal: bool,
}

/// Prints outcomes as they come (human mode) and each command's result at its end, into its
/// "out" writer (results) and "err" writer (diagnostics). Cloning is cheap: clones share the
/// writers, so lines from parallel workers never interleave within a line.
#[derive(Clone)]
pub struct Printer {
    format: OutputFormat,
    sink: Arc<Sink>,
}

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Printer {
    /// A printer onto the process's stdout and stderr.
    pub fn new(format: OutputFormat) -> Self {
        let err_is_terminal = io::stderr().is_terminal();
        Printer::build(format, io::stdout(), io::stderr(), err_is_terminal)
    }

    /// A printer onto writers of the caller's (buffers in tests). `err` counts as no terminal.
    pub fn with_writers(
        format: OutputFormat,
        out: impl Write + Send + 'static,
        err: impl Write + Send + 'static,
    ) -> Self {
        Printer::build(format, out, err, false)
    }

    fn build(
        format: OutputFormat,
        out: impl Write + Send + 'static,
        err: impl Write + Send + 'static,
        err_is_terminal: bool,
    ) -> Self {
        Printer {
            format,
            sink: Arc::new(Sink {
                out: Mutex::new(Box::new(out)),
                err: Mutex::new(Box::new(err)),
                err_is_terminal,
            }),
        }
    }

    fn human(&self) -> bool {
        self.format == OutputFormat::Human
    }

    /// `text` on "out" as it is, flushed.
    fn out_text(&self, text: &str) {
        write_flushed(&self.sink.out, text);
    }

    /// `text` and a newline on "err".
    fn err_line(&self, text: &str) {
        write_flushed(&self.sink.err, &format!("{text}\n"));
    }

    pub fn stage_header(&self, stage: &str, check: bool) {
        if self.human() {
            self.out_text(&format!("{}\n", human::stage_header(stage, check)));
        }
    }

    pub fn outcome(&self, o: &Outcome) {
        if self.human() {
            // One write, then a flush: lines from parallel workers appear whole and as they
            // finish, not when a buffer fills.
            self.out_text(&format!("{}\n", human::render_line(o)));
        }
    }

    /// Outcome lines of a stage that runs alongside the one before it: held back until that
    /// stage's lines are all printed (see [`Held::release`]).
    pub fn held(&self) -> Held {
        Held {
            printer: self.clone(),
            lines: Mutex::new(Some(Vec::new())),
        }
    }

    /// A line for people after a plan (what to run to really do it); not part of the JSON.
    pub fn advice(&self, text: &str) {
        if self.human() {
            self.out_text(&format!("  {text}\n"));
        }
    }

    /// Progress of a long transfer: `verb` (`downloading`) and what (`debian-12`).
    pub fn progress(&self, verb: &'static str, name: &str) -> progress::Bar {
        progress::Bar::new(verb, name, self)
    }

    /// `kvmprov check`: the resolved configuration. False when it cannot be rendered or written.
    pub fn config(&self, cfg: &Config) -> bool {
        if self.human() {
            self.out_text(&human::config(cfg));
            return true;
        }
        self.envelope("check", None, Payload::Config { config: cfg })
    }

    /// `kvmprov ping`: each hypervisor's answer, or why it did not answer ("err", both modes).
    pub fn hypervisors(&self, probes: &[Probe]) {
        for p in probes {
            if let Some(e) = &p.error {
                self.error(e);
                if let Some(hint) = &p.hint {
                    self.note(hint);
                }
            } else if self.human() {
                self.out_text(&human::probe(p));
            }
        }
        if !self.human() {
            let errors: Vec<&str> = probes.iter().filter_map(|p| p.error.as_deref()).collect();
            let error = (!errors.is_empty()).then(|| errors.join("; "));
            self.envelope(
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
            self.out_text(&human::status_table(rows, several_hosts));
            return;
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        self.envelope("status", error, Payload::Instances { instances: rows });
    }

    /// `kvmprov snapshot list`: a table (or the document); `errors` were said already.
    pub fn snapshots(&self, rows: &[json::InstanceSnapshots], errors: &[String]) {
        if self.human() {
            self.out_text(&human::snapshot_table(rows));
            return;
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        self.envelope(
            "snapshot list",
            error,
            Payload::Snapshots { instances: rows },
        );
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
            self.out_text(&human::render_summary(reports, check));
        }
        if let Some(e) = fatal {
            self.error(e);
        }
        if !self.human() {
            let failed = fatal.is_some() || reports.iter().any(StageReport::failed);
            let payload = Payload::Stages {
                check,
                stages: reports,
            };
            self.envelope_with(command, !failed, fatal.map(str::to_string), payload);
        }
    }

    /// A command that could not start (the variables file is invalid): the error on "err" and,
    /// for scripts, an envelope without payload.
    pub fn failure(&self, command: Option<&str>, e: &str) {
        self.error(e);
        if let (false, Some(command)) = (self.human(), command) {
            self.envelope(command, Some(e.to_string()), Payload::None);
        }
    }

    /// One JSON document on "out"; `ok` unless there is an error. False if it cannot be rendered
    /// or written.
    fn envelope(&self, command: &str, error: Option<String>, payload: Payload) -> bool {
        self.envelope_with(command, error.is_none(), error, payload)
    }

    fn envelope_with(&self, command: &str, ok: bool, error: Option<String>, p: Payload) -> bool {
        let doc = match json::render(command, ok, error, p) {
            Ok(doc) => doc,
            Err(e) => {
                self.error(&format!("cannot render the result as JSON: {e}"));
                return false;
            }
        };
        match self.document(&doc) {
            Ok(()) => true,
            Err(e) => {
                self.error(&format!("cannot write the result: {e}"));
                false
            }
        }
    }

    /// A document on "out" as it is, ending with a newline: kvmprov's JSON, or one in a format
    /// of its own (Ansible's inventory, the JSON Schema). Unlike the lines of a run, the document
    /// is the command's result: a failure to write it is the caller's to report.
    pub fn document(&self, text: &str) -> io::Result<()> {
        let newline = if text.ends_with('\n') { "" } else { "\n" };
        let mut out = lock(&self.sink.out);
        out.write_all(text.as_bytes())?;
        out.write_all(newline.as_bytes())?;
        out.flush()
    }

    /// "out" as a writer, for renderers that write into one (completions, the man page).
    pub fn out(&self) -> Out<'_> {
        Out(self)
    }

    /// `error: …` on "err" (both modes).
    pub fn error(&self, text: &str) {
        // Errors carry paths and text from guests, image hosts and other processes.
        self.err_line(&format!("error: {}", untrusted::sanitize(text, true)));
    }

    /// `warning: …` on "err" (both modes): something went wrong and was handled.
    pub fn warning(&self, text: &str) {
        // Errors carry paths and text from guests, image hosts and other processes.
        self.err_line(&format!("warning: {}", untrusted::sanitize(text, true)));
    }

    /// A line on "err" as it is (both modes): a hint after an error, what a run is waiting for.
    pub fn note(&self, text: &str) {
        self.err_line(&untrusted::sanitize(text, true));
    }
}

/// A printer's "out" writer as an [`io::Write`]; each call takes the writer's lock, so a
/// renderer holding one never keeps the printer's own lines waiting.
pub struct Out<'a>(&'a Printer);

impl Write for Out<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0.sink.out).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        lock(&self.0.sink.out).flush()
    }
}

fn lock(writer: &Writer) -> MutexGuard<'_, Box<dyn Write + Send>> {
    // A thread that panicked while printing left whole lines or none: the writer is usable.
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `text` in one write, then a flush. A failed write is dropped: a closed stdout or stderr
/// (`kvmprov provision | head -1`) must not stop a run half-way (`println!` panicked there);
/// the exit status still says how the run went.
fn write_flushed(writer: &Writer, text: &str) {
    let mut w = lock(writer);
    let _ = w.write_all(text.as_bytes()).and_then(|()| w.flush());
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

/// A printer into buffers, for tests that check what is printed, byte for byte.
#[cfg(test)]
pub(crate) fn capture(format: OutputFormat) -> (Printer, Captured) {
    let captured = Captured::default();
    let printer = Printer::with_writers(
        format,
        Shared(captured.out.clone()),
        Shared(captured.err.clone()),
    );
    (printer, captured)
}

/// What a [`capture`] printer wrote.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Captured {
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

#[cfg(test)]
impl Captured {
    pub(crate) fn out(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub(crate) fn err(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }
}

/// A buffer that several writers (and the test reading it) share.
#[cfg(test)]
struct Shared(Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
