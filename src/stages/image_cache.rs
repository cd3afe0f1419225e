//! Image-cache stage: resolve each used catalog image through Debian's manifests, download
//! what is missing (verified, resumable), and hand the cached versions on to provision.

use std::path::{Path, PathBuf};

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
                    crate::output::warning(&format!(
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
    std::fs::create_dir_all(&s.cfg.image_cache_path).map_err(|source| ImageError::Io {
        path: s.cfg.image_cache_path.clone(),
        source,
    })?;
    let mut progress = s.printer.progress("downloading", &r.image_name);
    kvmprov_image::download(client, &s.cfg.image_cache_path, r, &mut progress)
}

/// What a remote hypervisor's cache pool holds for one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteCopy {
    /// The size of the image volume's file; `None`: no such volume.
    pub size: Option<u64>,
    /// The record (sidecar) volume exists.
    pub has_record: bool,
    /// The digest the record names, when it was read (only for a volume of the right size).
    pub record_sha512: Option<String>,
    /// The volume is this machine's cached file itself (same device and inode), known only
    /// when the hypervisor is this machine: its pool is the local cache directory.
    pub same_file: Option<bool>,
}

/// Pure: what a remote hypervisor's cache pool needs for one image, from what it holds.
/// The record (sidecar) volume is uploaded last, so an image volume without it is an
/// interrupted upload and is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteStep {
    Keep,
    Verify,
    Upload {
        replace: bool,
    },
    /// The pool is the local cache's storage (the operator machine is the hypervisor, or
    /// both mount one share): the present file is the source, used as it is and never
    /// written; `verify` re-hashes it.
    Shared {
        verify: bool,
    },
}

/// `img`: the local cached file. A copy of the right size whose record names the same digest
/// is kept (on a shared mount it is the local file and its sidecar), anything else replaced;
/// the local file itself is never replaced (it would be deleted, then read).
pub fn plan_remote(img: &CachedImage, copy: &RemoteCopy, verify: bool) -> RemoteStep {
    if copy.same_file == Some(true) {
        return RemoteStep::Shared { verify };
    }
    let intact = copy.size == Some(img.size)
        && copy.has_record
        && copy.record_sha512.as_deref() == Some(img.sha512.as_str());
    match copy.size {
        _ if intact && verify => RemoteStep::Verify,
        _ if intact => RemoteStep::Keep,
        Some(_) => RemoteStep::Upload { replace: true },
        None => RemoteStep::Upload { replace: false },
    }
}

/// The host of a libvirt URI: `qemu+ssh://admin@hv1:2222/system` → `hv1`.
fn uri_host(uri: &str) -> Option<&str> {
    kvmprov_hypervisor::uri::LibvirtUri::parse(uri)?.host
}

/// Does `host` name this machine? True when one of its addresses is a loopback address or
/// can be bound here (only addresses of this machine's interfaces can).
fn is_this_machine(host: &str) -> bool {
    use std::net::{ToSocketAddrs, UdpSocket};
    let Ok(addrs) = (host, 0).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| a.ip().is_loopback() || UdpSocket::bind((a.ip(), 0)).is_ok())
}

/// Are `a` and `b` one file (device and inode)? `None` when either cannot be read.
fn same_inode(a: &std::path::Path, b: &std::path::Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (std::fs::metadata(a).ok()?, std::fs::metadata(b).ok()?);
    Some(a.dev() == b.dev() && a.ino() == b.ino())
}

/// What `pool` (whose directory on the hypervisor is `pool_path`) holds for `img`.
fn observe_copy(
    hv: &kvmprov_hypervisor::Hypervisor,
    pool: &str,
    pool_path: &std::path::Path,
    img: &CachedImage,
    file: &str,
    record: &str,
) -> Result<RemoteCopy, kvmprov_hypervisor::HvError> {
    let size = hv.volume_file_size(pool, file)?;
    let has_record = hv.volume_exists(pool, record)?;
    let record_sha512 = if has_record && size == Some(img.size) {
        let mut text = Vec::new();
        hv.download_volume(pool, record, &mut text)?;
        // Unreadable: not a record kvmprov wrote, so not a copy to trust.
        serde_json::from_slice::<CachedImage>(&text)
            .ok()
            .map(|r| r.sha512)
    } else {
        None
    };
    let same_file = match uri_host(hv.uri()) {
        Some(host) if is_this_machine(host) => same_inode(&pool_path.join(file), &img.path),
        _ => None,
    };
    Ok(RemoteCopy {
        size,
        has_record,
        record_sha512,
        same_file,
    })
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
        // Rescanned: on storage shared with the local cache, files downloaded since the last
        // scan are there but unknown to libvirt (an upload would then fail with "volume
        // target path already exists").
        Ok(Some(p)) if p.active => hv.refresh_pool(&p.name).map(|()| (p.name, p.path)),
        Ok(found) => {
            let (name, path) = found.map(|p| (p.name, p.path)).unwrap_or_else(|| {
                let name = crate::stages::provision::pool_name_for("images", &cfg.image_cache_path);
                (name, cfg.image_cache_path.clone())
            });
            if s.check {
                pool_ready = false;
                Ok((name, path))
            } else {
                hv.ensure_dir_pool(&name, &cfg.image_cache_path)
                    .map(|_| (name, path))
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
        let pool = pool_ready.then_some((pool.0.as_str(), pool.1.as_path()));
        let o = upload_one(s, hv, pool, img, action_for);
        s.printer.outcome(&o);
        report.outcomes.push(o);
    }
    report
}

/// `pool`: its name and directory on the hypervisor; `None` when it does not exist yet (a
/// plan only).
fn upload_one(
    s: &Session,
    hv: &kvmprov_hypervisor::Hypervisor,
    pool: Option<(&str, &std::path::Path)>,
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
        Some((pool, dir)) => observe_copy(hv, pool, dir, img, &file, &record),
        None => Ok(RemoteCopy::default()),
    };
    let copy = match observed {
        Ok(o) => o,
        Err(e) => {
            return Outcome {
                action: action_for(Op::Check, format!("look up {file} on {host}")),
                status: Status::Failed(error_chain(&e)),
                seconds: 0.0,
            }
        }
    };
    let step = plan_remote(img, &copy, s.cfg.verify_on_run);
    let mib = img.size >> 20;
    let action = match &step {
        RemoteStep::Shared { verify: false } => action_for(
            Op::Keep,
            format!("{file} on {host} is this machine's cached file itself (shared storage): used in place"),
        ),
        RemoteStep::Shared { verify: true } => action_for(
            Op::Verify,
            format!("{file} on {host} is this machine's cached file itself (shared storage): re-hashing through a libvirt download stream, never rewritten"),
        ),
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
                    ", replacing an incomplete or different copy"
                } else {
                    ""
                }
            ),
        ),
    };
    let pool = match pool {
        Some((pool, _)) if !s.check => pool,
        _ => {
            return Outcome {
                action,
                status: Status::Planned,
                seconds: 0.0,
            }
        }
    };
    // The SHA-512 of the pool's copy, read through a libvirt download stream.
    let rehash = || -> Result<String, kvmprov_hypervisor::HvError> {
        let mut hasher = kvmprov_image::Sha512::default();
        hv.download_volume(pool, &file, &mut hasher)?;
        Ok(hasher.hex())
    };
    run_action(action, || -> Result<(), UploadError> {
        let replace = match step {
            RemoteStep::Keep | RemoteStep::Shared { verify: false } => return Ok(()),
            RemoteStep::Shared { verify: true } => {
                let got = rehash()?;
                if got == img.sha512 {
                    return Ok(());
                }
                // Replacing it would delete the source of the upload.
                return Err(UploadError::SharedMismatch {
                    file: file.clone(),
                    host: host.clone(),
                    got: got[..16].to_string(),
                    want: img.sha512[..16.min(img.sha512.len())].to_string(),
                });
            }
            RemoteStep::Verify => {
                let got = rehash()?;
                if got == img.sha512 {
                    return Ok(());
                }
                // Never keep a damaged copy: say so and send a good one.
                crate::output::warning(&format!(
                    "{file} on {host} failed verification (sha512 {}…, expected {}…); uploading it again",
                    &got[..16],
                    &img.sha512[..16.min(img.sha512.len())]
                ));
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
        let mut bar = s
            .printer
            .progress("uploading", &format!("{} to {host}", img.image_name));
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
    #[error("{file} on {host} is this machine's cached file itself and its sha512 is {got}…, not {want}…: left as it is (a new copy would be written onto its own source); run `kvmprov image-cache` again to replace the damaged cached file")]
    SharedMismatch {
        file: String,
        host: String,
        got: String,
        want: String,
    },
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
    if !yes {
        s.printer.advice(
            "(nothing deleted: run `kvmprov image-cache prune --yes` to delete the unused versions)",
        );
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

    fn img() -> CachedImage {
        CachedImage {
            image_name: "debian-12".into(),
            path: "/c/debian-12-genericcloud-amd64-0123456789abcdef.qcow2".into(),
            sha512: "0123456789abcdef".repeat(8),
            size: 10,
            version: None,
            url: "http://x".into(),
            cached_at: "0".into(),
        }
    }

    /// A copy of `size` bytes whose record names `digest`.
    fn copy(size: Option<u64>, digest: Option<&str>) -> RemoteCopy {
        RemoteCopy {
            size,
            has_record: digest.is_some(),
            record_sha512: digest.map(String::from),
            same_file: None,
        }
    }

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
    fn remote_copies_are_trusted_only_with_their_record_size_and_digest() {
        let i = img();
        let good = Some(i.sha512.as_str());
        assert_eq!(
            plan_remote(&i, &copy(None, None), false),
            RemoteStep::Upload { replace: false }
        );
        assert_eq!(
            plan_remote(&i, &copy(Some(10), good), false),
            RemoteStep::Keep
        );
        assert_eq!(
            plan_remote(&i, &copy(Some(10), good), true),
            RemoteStep::Verify
        );
        // Killed mid-upload: the record was never written.
        assert_eq!(
            plan_remote(&i, &copy(Some(10), None), false),
            RemoteStep::Upload { replace: true }
        );
        assert_eq!(
            plan_remote(&i, &copy(Some(4), good), false),
            RemoteStep::Upload { replace: true }
        );
        // A record naming another digest (or none readable) is not this image's.
        assert_eq!(
            plan_remote(&i, &copy(Some(10), Some("ff")), false),
            RemoteStep::Upload { replace: true }
        );
        let mut unreadable = copy(Some(10), None);
        unreadable.has_record = true;
        assert_eq!(
            plan_remote(&i, &unreadable, false),
            RemoteStep::Upload { replace: true }
        );
    }

    #[test]
    fn regression_shared_cache_storage_upload_wrote_onto_its_own_source() {
        let i = img();
        // The hypervisor is this machine and its pool is the cache directory: whatever
        // libvirt lists (the image seen by an earlier scan, its sidecar not yet), the file
        // is the source and is neither replaced nor written.
        for (size, has_record) in [(Some(10), false), (None, false), (Some(3), true)] {
            let c = RemoteCopy {
                size,
                has_record,
                record_sha512: None,
                same_file: Some(true),
            };
            assert_eq!(
                plan_remote(&i, &c, false),
                RemoteStep::Shared { verify: false }
            );
            assert_eq!(
                plan_remote(&i, &c, true),
                RemoteStep::Shared { verify: true }
            );
        }
        // A share mounted on both machines (no inode to compare): the file of the right size
        // and the sidecar with the same digest are the present copy.
        assert_eq!(
            plan_remote(&i, &copy(Some(10), Some(i.sha512.as_str())), false),
            RemoteStep::Keep
        );
    }

    #[test]
    fn same_file_is_device_and_inode_not_path() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a.qcow2");
        std::fs::write(&a, b"x").unwrap();
        let link = t.path().join("hard.qcow2");
        std::fs::hard_link(&a, &link).unwrap();
        let copy = t.path().join("copy.qcow2");
        std::fs::copy(&a, &copy).unwrap();
        assert_eq!(same_inode(&a, &link), Some(true));
        assert_eq!(same_inode(&a, &copy), Some(false));
        assert_eq!(same_inode(&a, &t.path().join("missing")), None);
    }

    #[test]
    fn hosts_of_uris_and_this_machine() {
        assert_eq!(uri_host("qemu+ssh://admin@hv1:2222/system"), Some("hv1"));
        assert_eq!(uri_host("qemu+ssh://[fd00::5]:22/system"), Some("fd00::5"));
        assert_eq!(uri_host("qemu+tls://hv2/system?x=1"), Some("hv2"));
        assert_eq!(uri_host("qemu:///system"), None);
        assert!(is_this_machine("127.0.0.1"));
        assert!(is_this_machine("localhost"));
        // TEST-NET-1: documentation addresses, never this machine's.
        assert!(!is_this_machine("192.0.2.1"));
        assert!(!is_this_machine("no-such-host.invalid"));
    }
}
