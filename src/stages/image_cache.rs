//! Image-cache stage: resolve each used catalog image through Debian's manifests, download
//! what is missing (verified, resumable), and hand the cached versions on to provision.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use kvmprov_hypervisor::{HvError, Hypervisor};
use kvmprov_image::{qcow2, CacheLock, CachedImage, CatalogEntry, Client, ImageError, Resolved};

use crate::config::{CatalogImage, StageChoice};
use crate::plan::{error_chain, run as run_action, Action, Op, Outcome, StageReport, Status};
use crate::stages::{Handoff, Session, StageError};

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
        // The plan of the uploads that follow needs to know what is cached already.
        match &step {
            Step::Download => handoff.pending.push(resolved.image_name.clone()),
            Step::Keep(c) | Step::Verify(c) => {
                handoff.images.insert(c.image_name.clone(), c.clone());
            }
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

/// Pure: what a remote hypervisor's cache pool needs for one image, from what it holds.
/// The record (sidecar) volume is uploaded last, so an image volume without it is an
/// interrupted upload and is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteStep {
    Keep,
    Verify,
    Upload { replace: bool },
}

pub fn plan_remote(
    want_size: u64,
    image_size: Option<u64>,
    has_record: bool,
    verify: bool,
) -> RemoteStep {
    match image_size {
        Some(n) if n == want_size && has_record && verify => RemoteStep::Verify,
        Some(n) if n == want_size && has_record => RemoteStep::Keep,
        Some(_) => RemoteStep::Upload { replace: true },
        None => RemoteStep::Upload { replace: false },
    }
}

/// Put each image this host's instances use into its cache pool. Local hypervisors read the
/// local cache directly: nothing to do. Remote ones get the locally cached file through a
/// libvirt upload stream, checked by size, and re-hashed through a download stream when
/// `kvm_image_cache_verify_on_run` is on (so a remote copy is never trusted on faith).
pub fn distribute(
    s: &Session,
    hv: &kvmprov_hypervisor::Hypervisor,
    images: &std::collections::BTreeMap<String, CachedImage>,
) -> StageReport {
    let mut report = StageReport::new("image-upload");
    if crate::stages::preflight::is_local(&s.cfg.libvirt_uri) {
        return report;
    }
    let cfg = &s.cfg;
    // In a plan, a pool still to be created holds nothing yet: every image is an upload.
    let mut pool_ready = true;
    let pool = match hv.pool_by_path(&cfg.image_cache_path) {
        Ok(Some(p)) if p.active => Ok(p.name),
        Ok(found) => {
            let name = found.map(|p| p.name).unwrap_or_else(|| {
                crate::stages::provision::pool_name_for("images", &cfg.image_cache_path)
            });
            if s.check {
                pool_ready = false;
                Ok(name)
            } else {
                hv.ensure_dir_pool(&name, &cfg.image_cache_path)
                    .map(|_| name)
            }
        }
        Err(e) => Err(e),
    };
    let pool = match pool {
        Ok(p) => p,
        Err(e) => {
            let o = Outcome {
                action: Action::new(
                    "pool",
                    Op::Create,
                    format!("image cache pool for {}", cfg.image_cache_path.display()),
                ),
                status: Status::Failed(error_chain(&e)),
                seconds: 0.0,
            };
            s.printer.outcome(&o);
            report.outcomes.push(o);
            return report;
        }
    };
    for c in cfg.used_images() {
        let action_for = |op, why: String| Action::new(&c.image_name, op, why);
        let Some(img) = images.get(&c.image_name) else {
            let o = Outcome {
                action: action_for(Op::Upload, "not in the local cache".into()),
                status: if s.check {
                    Status::Planned
                } else {
                    Status::Failed(format!("image `{}` is not in the local cache: the image-cache stage did not fetch it", c.image_name))
                },
                seconds: 0.0,
            };
            s.printer.outcome(&o);
            report.outcomes.push(o);
            continue;
        };
        let o = upload_one(s, hv, pool_ready.then_some(pool.as_str()), img, action_for);
        s.printer.outcome(&o);
        report.outcomes.push(o);
    }
    report
}

/// `pool`: `None` when it does not exist yet (a plan only).
fn upload_one(
    s: &Session,
    hv: &kvmprov_hypervisor::Hypervisor,
    pool: Option<&str>,
    img: &CachedImage,
    action_for: impl Fn(Op, String) -> Action,
) -> Outcome {
    let file = img
        .path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let record = format!("{file}.json");
    let host = hv.uri().to_string();
    let observed = match pool {
        Some(pool) => hv
            .volume_file_size(pool, &file)
            .and_then(|size| Ok((size, hv.volume_exists(pool, &record)?))),
        None => Ok((None, false)),
    };
    let (size, has_record) = match observed {
        Ok(o) => o,
        Err(e) => {
            return Outcome {
                action: action_for(Op::Check, format!("look up {file} on {host}")),
                status: Status::Failed(error_chain(&e)),
                seconds: 0.0,
            }
        }
    };
    let step = plan_remote(img.size, size, has_record, s.cfg.verify_on_run);
    let mib = img.size >> 20;
    let action = match &step {
        RemoteStep::Keep => action_for(Op::Keep, format!("{file} on {host} ({mib} MiB)")),
        RemoteStep::Verify => action_for(
            Op::Verify,
            format!("{file} on {host}: re-hashing through a libvirt download stream"),
        ),
        RemoteStep::Upload { replace } => action_for(
            Op::Upload,
            format!(
                "{file} ({mib} MiB) to {host} through a libvirt upload stream{}",
                if *replace {
                    ", replacing an incomplete copy"
                } else {
                    ""
                }
            ),
        ),
    };
    let pool = match pool {
        Some(pool) if !s.check => pool,
        _ => {
            return Outcome {
                action,
                status: Status::Planned,
                seconds: 0.0,
            }
        }
    };
    run_action(action, || -> Result<(), UploadError> {
        let replace = match step {
            RemoteStep::Keep => return Ok(()),
            RemoteStep::Verify => {
                let mut hasher = kvmprov_image::Sha512Writer::default();
                hv.download_volume(pool, &file, &mut hasher)?;
                let got = hasher.hex();
                if got == img.sha512 {
                    return Ok(());
                }
                // Never keep a damaged copy: say so and send a good one.
                eprintln!(
                    "warning: {file} on {host} failed verification (sha512 {}…, expected {}…); uploading it again",
                    &got[..16],
                    &img.sha512[..16.min(img.sha512.len())]
                );
                true
            }
            RemoteStep::Upload { replace } => replace,
        };
        if replace {
            hv.delete_volume(pool, &file)?;
        }
        if hv.volume_exists(pool, &record)? {
            hv.delete_volume(pool, &record)?;
        }
        let human = s.output == crate::plan::OutputFormat::Human;
        let mut bar = Bar::new("uploading", &format!("{} to {host}", img.image_name), human);
        kvmprov_image::Progress::start(&mut bar, Some(img.size), 0);
        let mut last = 0u64;
        hv.upload_file(pool, &file, &img.path, "raw", &mut |done| {
            kvmprov_image::Progress::advance(&mut bar, done - last);
            last = done;
        })?;
        kvmprov_image::Progress::finish(&mut bar);
        let landed = hv.volume_file_size(pool, &file)?.unwrap_or(0);
        if landed != img.size {
            return Err(UploadError::Size {
                file: file.clone(),
                host: host.clone(),
                want: img.size,
                got: landed,
            });
        }
        // The record last: its presence says the image volume is complete.
        let text = serde_json::to_vec_pretty(img).unwrap_or_default();
        hv.upload_volume(pool, &record, &text, "raw")?;
        Ok(())
    })
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Hypervisor(#[from] kvmprov_hypervisor::HvError),
    #[error("{file} on {host} holds {got} bytes after the upload, expected {want}")]
    Size {
        file: String,
        host: String,
        want: u64,
        got: u64,
    },
}

/// `kvmprov image-cache`: the stage on its own (fetch, then upload to remote hypervisors).
pub fn run_all(s: &Session, all: bool) -> Result<Vec<StageReport>, StageError> {
    crate::stages::run_stages_with(s, &[crate::config::StageChoice::ImageCache], all)
}

/// A run that fetches or provisions from the cache holds it shared, so a prune never deletes a
/// version between its download and its use. `None` for plans and for stages that use no image.
pub fn hold_cache(s: &Session, stages: &[StageChoice]) -> Result<Option<CacheLock>, ImageError> {
    let uses_images = stages
        .iter()
        .any(|st| matches!(st, StageChoice::ImageCache | StageChoice::Provision));
    if s.check || !uses_images {
        return Ok(None);
    }
    CacheLock::shared(&s.cfg.image_cache_path).map(Some)
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("another kvmprov run is using the image cache {}; prune when it has finished", .path.display())]
    CacheBusy { path: PathBuf },
    #[error("cannot list the instance pool {}", .path.display())]
    Pool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the backing file of a disk in the instance pool, so nothing is pruned")]
    Header(#[source] qcow2::Qcow2Error),
    #[error(transparent)]
    Hypervisor(#[from] HvError),
}

/// The files under the qcow2 files of a host's instance pool (their backing chains), each with
/// the disk it backs. Disks no domain references any more (kept by `cleanup-force`) count too:
/// deleting their base would ruin them. Local pools are read from the files' qcow2 headers,
/// remote ones through libvirt's volumes.
fn pool_backing(s: &Session, hv: &Hypervisor) -> Result<Vec<(PathBuf, PathBuf)>, PruneError> {
    let pool = &s.cfg.instance_pool_path;
    let mut out = Vec::new();
    if crate::stages::preflight::is_local(hv.uri()) {
        let entries = match std::fs::read_dir(pool) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(PruneError::Pool {
                    path: pool.clone(),
                    source,
                })
            }
        };
        let real = |p: PathBuf| p.canonicalize().unwrap_or(p);
        for entry in entries {
            let entry = entry.map_err(|source| PruneError::Pool {
                path: pool.clone(),
                source,
            })?;
            // Regular files only: kvmprov's state directory and links are not disks of the pool.
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let disk = entry.path();
            let chain = qcow2::backing_chain(disk.clone(), |f| {
                qcow2::backing_file(f).map(|b| b.map(real))
            })
            .map_err(PruneError::Header)?;
            out.extend(chain.into_iter().skip(1).map(|b| (b, disk.clone())));
        }
        return Ok(out);
    }
    let Some(p) = hv.pool_by_path(pool)?.filter(|p| p.active) else {
        return Ok(out);
    };
    hv.refresh_pool(&p.name)?;
    for v in hv.volumes(&p.name)? {
        let chain = qcow2::backing_chain(v.path.clone(), |f| {
            Ok::<_, HvError>(hv.volume_by_path(f)?.and_then(|v| v.backing_path))
        })?;
        out.extend(chain.into_iter().skip(1).map(|b| (b, v.path.clone())));
    }
    Ok(out)
}

/// `kvmprov image-cache prune`: cached versions nothing on the config's hypervisors uses. Kept:
/// every version a domain's disk is (backed by), every version a qcow2 file in an instance pool
/// is backed by, and everything while another run uses the cache (its lock).
pub fn prune(s: &Session, yes: bool) -> Result<Vec<StageReport>, StageError> {
    let fail = |e: &dyn std::error::Error| StageError::new(Vec::new(), e);
    // The locks of every host a run of this config works on, and the cache's own lock, which
    // runs with other pools share: no run is between its download and its use of an image
    // while the prune decides.
    let hosts = s.per_host();
    let _locks = crate::stages::lock_all(&hosts).map_err(|e| fail(&e))?;
    let deleting = yes && !s.check;
    let _cache = if deleting {
        let cache = &s.cfg.image_cache_path;
        match CacheLock::try_exclusive(cache) {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => {
                return Err(fail(&PruneError::CacheBusy {
                    path: cache.clone(),
                }))
            }
            Err(e) => return Err(fail(&e)),
        }
    } else {
        None
    };
    let cached = kvmprov_image::list_cached(&s.cfg.image_cache_path).map_err(|e| fail(&e))?;
    // In use on any hypervisor of the config, with why: one that cannot be asked stops the prune.
    let mut in_use: Vec<(PathBuf, String)> = Vec::new();
    for h in &hosts {
        let hv = h.connect().map_err(|e| fail(&e))?;
        for p in crate::stages::cleanup::paths_in_use(&hv).map_err(|e| fail(&e))? {
            in_use.push((p, "backs a domain's disk".to_string()));
        }
        for (base, disk) in pool_backing(h, &hv).map_err(|e| fail(&e))? {
            in_use.push((base, format!("backs {}", disk.display())));
        }
    }
    s.printer.stage_header("image-cache prune", s.check || !yes);
    let mut report = StageReport::new("image-cache prune");
    for c in cached {
        let canonical = c.path.canonicalize().unwrap_or_else(|_| c.path.clone());
        let why = in_use
            .iter()
            .find(|(p, _)| *p == canonical)
            .map(|(_, why)| why.clone());
        let outcome = match why {
            Some(why) => Outcome {
                action: Action::new(
                    &c.image_name,
                    Op::Keep,
                    format!("{} {why}", c.path.display()),
                ),
                status: Status::Done,
                seconds: 0.0,
            },
            None => {
                let action = Action::new(
                    &c.image_name,
                    Op::Delete,
                    format!("{} is used by no domain or disk", c.path.display()),
                );
                if deleting {
                    run_action(action, || delete_cached(&c.path))
                } else {
                    Outcome {
                        action,
                        status: Status::Planned,
                        seconds: 0.0,
                    }
                }
            }
        };
        s.printer.outcome(&outcome);
        report.outcomes.push(outcome);
    }
    if !yes && s.output == crate::plan::OutputFormat::Human {
        println!("  (nothing deleted: run `kvmprov image-cache prune --yes` to delete the unused versions)");
    }
    Ok(vec![report])
}

/// A cached version, its sidecar and its writer lock (no writer can hold it: the prune holds
/// the cache exclusively, and writers take it shared first).
fn delete_cached(path: &Path) -> Result<(), std::io::Error> {
    std::fs::remove_file(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for extra in [
        kvmprov_image::sidecar_path(path),
        kvmprov_image::writer_lock_path(dir, &name),
    ] {
        match std::fs::remove_file(&extra) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
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

    #[test]
    fn remote_copies_are_trusted_only_with_their_record_and_size() {
        assert_eq!(
            plan_remote(10, None, false, false),
            RemoteStep::Upload { replace: false }
        );
        assert_eq!(plan_remote(10, Some(10), true, false), RemoteStep::Keep);
        assert_eq!(plan_remote(10, Some(10), true, true), RemoteStep::Verify);
        // Killed mid-upload: the record was never written.
        assert_eq!(
            plan_remote(10, Some(10), false, false),
            RemoteStep::Upload { replace: true }
        );
        assert_eq!(
            plan_remote(10, Some(4), true, false),
            RemoteStep::Upload { replace: true }
        );
    }
}
