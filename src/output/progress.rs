//! Progress of long transfers (image downloads, uploads to remote hypervisors), on stderr:
//! a bar on a terminal, a line per 10 % otherwise, nothing in JSON mode.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// One transfer's progress; `kvmprov_image` drives it through [`kvmprov_image::Progress`].
pub struct Bar {
    verb: &'static str,
    name: String,
    bar: Option<ProgressBar>,
    lines: bool,
    total: Option<u64>,
    done: u64,
    last_tenth: u64,
}

impl Bar {
    pub(super) fn new(verb: &'static str, name: &str, human: bool) -> Self {
        let tty = human && std::io::stderr().is_terminal();
        Bar {
            verb,
            name: name.to_string(),
            bar: tty.then(|| terminal_bar(name)),
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
            super::note(&format!(
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
                super::note(&format!("  {} {}: {}%", self.verb, self.name, tenth * 10));
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
        let mut b = Bar::new("downloading", "debian-12", false);
        assert!(b.bar.is_none() && !b.lines);
        b.start(Some(100), 0);
        b.advance(50);
        assert_eq!(b.last_tenth, 0, "no 10 % lines were counted");
    }
}
