//! Progress of long transfers (image downloads, uploads to remote hypervisors), on the printer's
//! "err" writer: a bar when that is a terminal, a line per 10 % otherwise, nothing in JSON mode.
//!
//! The bar is indicatif's and draws on the process's stderr itself: it exists only when the
//! printer's "err" is that terminal (never in tests), and it redraws in place, sized to the
//! terminal, at its own rate, which a writer without a terminal behind it could not show.

use indicatif::{ProgressBar, ProgressStyle};

use super::Printer;

/// One transfer's progress; `kvmprov_image` drives it through [`kvmprov_image::Progress`].
pub struct Bar {
    verb: &'static str,
    name: String,
    bar: Option<ProgressBar>,
    /// Where the 10 % lines go when `lines`.
    printer: Printer,
    lines: bool,
    total: Option<u64>,
    done: u64,
    last_tenth: u64,
}

impl Bar {
    pub(super) fn new(verb: &'static str, name: &str, printer: &Printer) -> Self {
        let human = printer.human();
        let tty = human && printer.sink.err_is_terminal;
        Bar {
            verb,
            name: name.to_string(),
            bar: tty.then(|| terminal_bar(name)),
            printer: printer.clone(),
            lines: human && !tty,
            total: None,
            done: 0,
            last_tenth: 0,
        }
    }
}

fn terminal_bar(name: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "  {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(name.to_string());
    bar
}

impl kvmprov_image::Progress for Bar {
    fn start(&mut self, total: Option<u64>, resumed_from: u64) {
        self.total = total;
        self.done = resumed_from;
        if let Some(b) = &self.bar {
            b.set_length(total.unwrap_or(0));
            b.set_position(resumed_from);
        }
        if self.lines {
            let from = if resumed_from > 0 {
                format!(", resuming at {} MiB", resumed_from >> 20)
            } else {
                String::new()
            };
            self.printer.note(&format!(
                "  {} {}: {} MiB{from}",
                self.verb,
                self.name,
                total
                    .map(|t| (t >> 20).to_string())
                    .unwrap_or_else(|| "?".into())
            ));
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if let Some(b) = &self.bar {
            b.set_position(self.done);
        }
        if let (true, Some(total)) = (self.lines, self.total) {
            let tenth = (self.done * 10).checked_div(total).unwrap_or(0);
            if tenth > self.last_tenth {
                self.last_tenth = tenth;
                self.printer
                    .note(&format!("  {} {}: {}%", self.verb, self.name, tenth * 10));
            }
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmprov_image::Progress;

    #[test]
    fn json_mode_shows_no_progress() {
        let (printer, printed) = crate::output::capture(crate::output::OutputFormat::Json);
        let mut b = Bar::new("downloading", "debian-12", &printer);
        assert!(b.bar.is_none() && !b.lines);
        b.start(Some(100), 0);
        b.advance(50);
        b.finish();
        assert_eq!(b.last_tenth, 0, "no 10 % lines were counted");
        assert_eq!(
            (printed.out(), printed.err()),
            (String::new(), String::new())
        );
    }

    /// Without a terminal, a line when the transfer starts and one per 10 % on "err" (counted
    /// from zero, so a resumed transfer's first line says where it resumed).
    #[test]
    fn without_a_terminal_progress_is_a_line_per_tenth_on_err() {
        let (printer, printed) = crate::output::capture(crate::output::OutputFormat::Human);
        let mut b = Bar::new("downloading", "debian-12", &printer);
        assert!(b.bar.is_none() && b.lines);
        b.start(Some(100 << 20), 50 << 20);
        b.advance(5 << 20);
        b.advance(6 << 20);
        b.advance(39 << 20);
        b.finish();
        assert_eq!(printed.out(), "");
        assert_eq!(
            printed.err(),
            "  downloading debian-12: 100 MiB, resuming at 50 MiB\n\
             \x20 downloading debian-12: 50%\n\
             \x20 downloading debian-12: 60%\n\
             \x20 downloading debian-12: 100%\n"
        );
    }
}
