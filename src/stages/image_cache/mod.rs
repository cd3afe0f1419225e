//! Image-cache stage: resolve each used catalog image through Debian's manifests, download
//! what is missing (verified, resumable), and hand the cached versions on to provision.
//! [`upload`] then puts them into remote hypervisors' cache pools; [`prune`] removes cached
//! versions nothing uses.

mod prune;
mod upload;

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use kvmprov_image::{CacheLock, CachedImage, CatalogEntry, Client, ImageError, Resolved};

pub use prune::prune;
pub use upload::distribute;

use crate::config::CatalogImage;
use crate::plan::{error_chain, run as run_action, Action, Op, Outcome, StageReport};
use crate::run::Handoff;
use crate::settings::{Session, Stage};

/// What to do with one image, decided from what the manifest says and the cache holds.
#[derive(Debug, Clone)]
pub enum Step {
    Keep(CachedImage),
    Verify(CachedImage),
    Download,
}

/// Pure: the action line for one image.
pub fn plan_one(r: &Resolved, step: &Step) -> Action {
    let short = &r.sha512[..16.min(r.sha512.len())];
    let version = r.version.as_deref().unwrap_or("unversioned");
    match step {
        Step::Keep(c) => Action::new(
            &r.image_name,
            Op::Ok,
            format!("cached {version} sha512:{short}… ({})", c.path.display()),
        ),
        Step::Verify(_) => Action::new(
            &r.image_name,
            Op::Verify,
            format!(
                "cached {version} sha512:{short}…, re-hashing (kvm_image_cache_verify_on_run=true)"
            ),
        ),
        Step::Download => Action::new(
            &r.image_name,
            Op::Download,
            format!(
                "{version} sha512:{short}… not cached: {}",
                kvmprov_image::redact_url(&r.download_url)
            ),
        ),
    }
}

fn entry(c: &CatalogImage) -> CatalogEntry {
    CatalogEntry {
        image_name: c.image_name.clone(),
        image_url: c.image_url.clone(),
        checksum_manifest_url: c.image_checksum_manifest_url.clone(),
        pinned_sha512: c.image_sha512.clone(),
    }
}

/// The stage, as part of a run (the caller holds the lock).
pub fn run(s: &Session, all: bool, handoff: &mut Handoff) -> Result<StageReport, ImageError> {
    let cfg = &s.cfg;
    let images: Vec<&CatalogImage> = if all {
        cfg.catalog.iter().collect()
    } else {
        cfg.used_images()
    };
    let client = Client::new();
    let mut report = StageReport::new("image-cache");
    for c in images {
        let outcome = one(s, &client, c, handoff);
        s.printer.outcome(&outcome);
        report.outcomes.push(outcome);
    }
    Ok(report)
}

fn one(s: &Session, client: &Client, c: &CatalogImage, handoff: &mut Handoff) -> Outcome {
    let cache = &s.cfg.image_cache_path;
    let resolved = match kvmprov_image::resolve(client, &entry(c)) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::failure(
                Action::new(&c.image_name, Op::Check, "resolve the checksum manifest"),
                error_chain(&e),
            )
        }
    };
    let step = match kvmprov_image::lookup(cache, &resolved) {
        Ok(Some(cached)) if s.cfg.verify_on_run => Step::Verify(cached),
        Ok(Some(cached)) => Step::Keep(cached),
        Ok(None) => Step::Download,
        Err(e) => {
            return Outcome::failure(
                Action::new(&c.image_name, Op::Check, "look up the cache"),
                error_chain(&e),
            )
        }
    };
    let action = plan_one(&resolved, &step);
    if s.check {
        // The plan of the uploads that follow needs to know what is cached already.
        match &step {
            Step::Download => handoff.pending.push(resolved.image_name.clone()),
            Step::Keep(c) | Step::Verify(c) => {
                handoff.images.insert(c.image_name.clone(), c.clone());
            }
        }
        return Outcome::planned(action);
    }
    let mut result: Option<CachedImage> = None;
    let outcome = run_action(action, || -> Result<(), ImageError> {
        let cached = match step {
            Step::Keep(c) => c,
            Step::Verify(c) => match kvmprov_image::verify(&c.path, &c.sha512) {
                Ok(()) => c,
                Err(e) => {
                    // Never keep a damaged file: move it aside, say so, fetch a good copy.
                    let aside = kvmprov_image::quarantine(&c.path)?;
                    tracing::warn!(
                        "{}: {}; moved to {}, downloading again",
                        c.path.display(),
                        error_chain(&e),
                        aside.display()
                    );
                    eprintln!(
                        "warning: cached image {} failed verification ({}); moved aside to {}",
                        c.path.display(),
                        error_chain(&e),
                        aside.display()
                    );
                    download(s, client, &resolved)?
                }
            },
            Step::Download => download(s, client, &resolved)?,
        };
        result = Some(cached);
        Ok(())
    });
    if let Some(cached) = result {
        handoff.images.insert(cached.image_name.clone(), cached);
    }
    outcome
}

fn download(s: &Session, client: &Client, r: &Resolved) -> Result<CachedImage, ImageError> {
    std::fs::create_dir_all(&s.cfg.image_cache_path).map_err(|source| ImageError::Io {
        path: s.cfg.image_cache_path.clone(),
        source,
    })?;
    let mut progress = Bar::new(
        "downloading",
        &r.image_name,
        s.output == crate::plan::OutputFormat::Human,
    );
    kvmprov_image::download(client, &s.cfg.image_cache_path, r, &mut progress)
}

/// Progress: a bar on a terminal, a line per 10 % otherwise.
struct Bar {
    verb: &'static str,
    name: String,
    bar: Option<ProgressBar>,
    lines: bool,
    total: Option<u64>,
    done: u64,
    last_tenth: u64,
}

impl Bar {
    fn new(verb: &'static str, name: &str, human: bool) -> Self {
        let tty = human && std::io::stderr().is_terminal();
        Bar {
            verb,
            name: name.to_string(),
            bar: None,
            lines: human && !tty,
            total: None,
            done: 0,
            last_tenth: 0,
        }
        .with_tty(tty)
    }

    fn with_tty(mut self, tty: bool) -> Self {
        if tty {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "  {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.name.clone());
            self.bar = Some(bar);
        }
        self
    }
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
            eprintln!(
                "  {} {}: {} MiB{from}",
                self.verb,
                self.name,
                total
                    .map(|t| (t >> 20).to_string())
                    .unwrap_or_else(|| "?".into())
            );
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
                eprintln!("  {} {}: {}%", self.verb, self.name, tenth * 10);
            }
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// A run that fetches or provisions from the cache holds it shared, so a prune never deletes a
/// version between its download and its use. `None` for plans and for stages that use no image.
pub fn hold_cache(s: &Session, stages: &[Stage]) -> Result<Option<CacheLock>, ImageError> {
    let uses_images = stages
        .iter()
        .any(|st| matches!(st, Stage::ImageCache | Stage::Provision));
    if s.check || !uses_images {
        return Ok(None);
    }
    CacheLock::shared(&s.cfg.image_cache_path).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_plan_line_showed_url_credentials() {
        let r = Resolved {
            image_name: "debian-12".into(),
            download_url: "https://kvm:pa55word@mirror.example/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2?token=t0ps3cret".into(),
            sha512: "ab".repeat(64),
            version: None,
            file_name: "debian-12-genericcloud-amd64-abababababababab.qcow2".into(),
            source: "sha512sums".into(),
        };
        let line = plan_one(&r, &Step::Download).reason;
        assert!(
            !line.contains("pa55word") && !line.contains("t0ps3cret"),
            "{line}"
        );
        assert!(line.contains("https://***@mirror.example/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2?***"), "{line}");
    }
}
