//! Image-cache stage: resolve each used catalog image through Debian's manifests, download
//! what is missing (verified, resumable) into the local cache once per run ([`fetch`]), and
//! hand the cached versions on to provision. On each hypervisor the stage ([`run`]) then puts
//! them into a remote hypervisor's cache pool ([`upload`]).

mod upload;

use kvmprov_image::{CacheLock, CachedImage, CatalogEntry, Client, ImageError, Resolved};

use std::convert::Infallible;

use kvmprov_hypervisor::Hypervisor;

use crate::config::CatalogImage;
use crate::report::{error_chain, run as run_action, Action, Op, Outcome, StageReport};
use crate::settings::{Session, Stage};
use crate::stages::handoff::Handoff;

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
    // The image host's label: shown only sanitized.
    let version = crate::output::sanitize(r.version.as_deref().unwrap_or("unversioned"), false);
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

/// The stage on one hypervisor: the images this run cached, uploaded to a remote one's cache
/// pool (a local hypervisor reads the local cache; the run does not call this for it). It
/// cannot fail as a whole: an image that cannot be uploaded is a failed line.
pub fn run(s: &Session, hv: &Hypervisor, handoff: &Handoff) -> Result<StageReport, Infallible> {
    Ok(upload::distribute(s, hv, &handoff.images))
}

/// The images, once per run, into the local cache (the caller holds the lock); `all`: the
/// whole catalog, not only the images instances use. An image that cannot be resolved or
/// fetched is a failed line.
pub fn fetch(s: &Session, all: bool, handoff: &mut Handoff) -> StageReport {
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
    report
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
    let step = match kvmprov_image::lookup(cache, &resolved.file_name, &resolved.sha512) {
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
                    s.printer.warning(&format!(
                        "cached image {} failed verification ({}); moved aside to {}",
                        c.path.display(),
                        error_chain(&e),
                        aside.display()
                    ));
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
    // The image crate creates the cache directory (and checks it) itself.
    let mut progress = s.printer.progress("downloading", &r.image_name);
    kvmprov_image::download(client, &s.cfg.image_cache_path, r, &mut progress)
}

/// A run that fetches or provisions from the cache holds it shared, so a prune never deletes a
/// version between its download and its use. `None` for plans and for stages that use no image.
pub fn hold_cache(s: &Session, stages: &[Stage]) -> Result<Option<CacheLock>, HoldCacheError> {
    let uses_images = stages
        .iter()
        .any(|st| matches!(st, Stage::ImageCache | Stage::Provision));
    if s.check || !uses_images {
        return Ok(None);
    }
    // Also without preflight (`provision --stage provision`, `image-cache`): root writes into
    // the cache only when nobody else can write it or a directory above it.
    kvmprov_safefs::check_tree(&s.cfg.image_cache_path)?;
    Ok(Some(CacheLock::shared(&s.cfg.image_cache_path)?))
}

/// Why a run could not hold the image cache.
#[derive(Debug, thiserror::Error)]
pub enum HoldCacheError {
    /// Another user can write the cache directory or one above it (the message names it).
    #[error(transparent)]
    Unsafe(#[from] kvmprov_safefs::FsError),
    #[error(transparent)]
    Image(#[from] ImageError),
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

    /// The image host's JSON `version` label was printed with its escape sequences (a title
    /// set, the screen cleared). Now sanitized wherever it is shown.
    #[test]
    fn regression_image_version_label_printed_escape_sequences() {
        let r = Resolved {
            image_name: "debian-12".into(),
            download_url: "http://mirror/d.qcow2".into(),
            sha512: "ab".repeat(64),
            version: Some("20241004-1890\x1b]0;owned\x07\x1b[2J\x7f".into()),
            file_name: "d.qcow2".into(),
            source: "json".into(),
        };
        let line = plan_one(&r, &Step::Download).reason;
        assert!(line.starts_with("20241004-1890\\x7f sha512:"), "{line:?}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
}
