//! Image-cache stage: resolve each used catalog image through Debian's manifests, download
//! what is missing (verified, resumable), and hand the cached versions on to provision.

use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use kvmprov_image::{CachedImage, CatalogEntry, Client, ImageError, Resolved};

use crate::config::CatalogImage;
use crate::plan::{error_chain, run as run_action, Action, Op, Outcome, StageReport, Status};
use crate::stages::{Handoff, RunLock, Session, StageError};

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
            Op::Keep,
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
            format!("{version} sha512:{short}… not cached: {}", r.download_url),
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
            return Outcome {
                action: Action::new(&c.image_name, Op::Check, "resolve the checksum manifest"),
                status: Status::Failed(error_chain(&e)),
                seconds: 0.0,
            }
        }
    };
    let step = match kvmprov_image::lookup(cache, &resolved) {
        Ok(Some(cached)) if s.cfg.verify_on_run => Step::Verify(cached),
        Ok(Some(cached)) => Step::Keep(cached),
        Ok(None) => Step::Download,
        Err(e) => {
            return Outcome {
                action: Action::new(&c.image_name, Op::Check, "look up the cache"),
                status: Status::Failed(error_chain(&e)),
                seconds: 0.0,
            }
        }
    };
    let action = plan_one(&resolved, &step);
    if s.check {
        if matches!(step, Step::Download) {
            handoff.pending.push(resolved.image_name.clone());
        }
        return Outcome {
            action,
            status: Status::Planned,
            seconds: 0.0,
        };
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
    let mut progress = Bar::new(&r.image_name, s.output == crate::plan::OutputFormat::Human);
    kvmprov_image::download(client, &s.cfg.image_cache_path, r, &mut progress)
}

/// Progress: a bar on a terminal, a line per 10 % otherwise.
struct Bar {
    name: String,
    bar: Option<ProgressBar>,
    lines: bool,
    total: Option<u64>,
    done: u64,
    last_tenth: u64,
}

impl Bar {
    fn new(name: &str, human: bool) -> Self {
        let tty = human && std::io::stderr().is_terminal();
        Bar {
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
                "  downloading {}: {} MiB{from}",
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
                eprintln!("  downloading {}: {}%", self.name, tenth * 10);
            }
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// `kvmprov image-cache`: the stage on its own, under the lock.
pub fn run_all(s: &Session, all: bool) -> Result<Vec<StageReport>, StageError> {
    let _lock = if s.check {
        None
    } else {
        Some(RunLock::acquire(s).map_err(|e| StageError::new(Vec::new(), &e))?)
    };
    s.printer.stage_header("image-cache", s.check);
    let mut handoff = Handoff::default();
    run(s, all, &mut handoff)
        .map(|r| vec![r])
        .map_err(|e| StageError::new(Vec::new(), &e))
}

/// `kvmprov image-cache prune`: cached versions no domain's disk is (backed by) on this host.
pub fn prune(s: &Session, yes: bool) -> Result<Vec<StageReport>, StageError> {
    let _lock = RunLock::acquire(s).map_err(|e| StageError::new(Vec::new(), &e))?;
    let fail = |e: &dyn std::error::Error| StageError::new(Vec::new(), e);
    let hv = s.connect().map_err(|e| fail(&e))?;
    let cached = kvmprov_image::list_cached(&s.cfg.image_cache_path).map_err(|e| fail(&e))?;
    let in_use = crate::stages::cleanup::paths_in_use(&hv).map_err(|e| fail(&e))?;
    s.printer.stage_header("image-cache prune", s.check || !yes);
    let mut report = StageReport::new("image-cache prune");
    for c in cached {
        let canonical = c.path.canonicalize().unwrap_or_else(|_| c.path.clone());
        let used = in_use.contains(&canonical);
        let action = if used {
            Action::new(
                &c.image_name,
                Op::Keep,
                format!("{} backs a domain's disk", c.path.display()),
            )
        } else {
            Action::new(
                &c.image_name,
                Op::Delete,
                format!("{} is used by no domain", c.path.display()),
            )
        };
        let outcome = if used {
            Outcome {
                action,
                status: Status::Done,
                seconds: 0.0,
            }
        } else if !yes || s.check {
            Outcome {
                action,
                status: Status::Planned,
                seconds: 0.0,
            }
        } else {
            let sidecar: PathBuf = kvmprov_image::sidecar_path(&c.path);
            run_action(action, || -> Result<(), std::io::Error> {
                std::fs::remove_file(&c.path)?;
                match std::fs::remove_file(&sidecar) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            })
        };
        s.printer.outcome(&outcome);
        report.outcomes.push(outcome);
    }
    if !yes && s.output == crate::plan::OutputFormat::Human {
        println!("  (nothing deleted: run `kvmprov image-cache prune --yes` to delete the unused versions)");
    }
    Ok(vec![report])
}
