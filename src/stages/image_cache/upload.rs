//! Image uploads: each image a remote hypervisor's instances use, put into its cache pool
//! through libvirt (upload streams), checked by size and, with verify-on-run, re-hashed through
//! a download stream. Local hypervisors read the local cache: nothing to upload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kvmprov_hypervisor::uri::is_local;
use kvmprov_hypervisor::{HvError, Hypervisor};
use kvmprov_image::CachedImage;

use crate::layout::pool_name_for;
use crate::output::Printer;
use crate::report::{error_chain, run as run_action, Action, Op, Outcome, StageReport};
use crate::settings::Session;
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
fn same_inode(a: &Path, b: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (std::fs::metadata(a).ok()?, std::fs::metadata(b).ok()?);
    Some(a.dev() == b.dev() && a.ino() == b.ino())
}

/// What `pool` (whose directory on the hypervisor is `pool_path`) holds for `img`.
fn observe_copy(
    hv: &Hypervisor,
    pool: &str,
    pool_path: &Path,
    img: &CachedImage,
    file: &str,
    record: &str,
) -> Result<RemoteCopy, HvError> {
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
    hv: &Hypervisor,
    images: &BTreeMap<String, CachedImage>,
) -> StageReport {
    let mut report = StageReport::new("image-upload");
    if is_local(&s.cfg.libvirt_uri) {
        return report;
    }
    let cfg = &s.cfg;
    let pool = match cache_pool(s, hv) {
        Ok(p) => p,
        Err(e) => {
            let o = Outcome::failure(
                Action::new(
                    "pool",
                    Op::Create,
                    format!("image cache pool for {}", cfg.image_cache_path.display()),
                ),
                error_chain(&e),
            );
            s.printer.outcome(&o);
            report.outcomes.push(o);
            return report;
        }
    };
    for c in cfg.used_images() {
        let action_for = |op, why: String| Action::new(&c.image_name, op, why);
        let o = match images.get(&c.image_name) {
            None if s.check => {
                Outcome::planned(action_for(Op::Upload, "not in the local cache".into()))
            }
            None => Outcome::failure(
                action_for(Op::Upload, "not in the local cache".into()),
                format!(
                    "image `{}` is not in the local cache: the image-cache stage did not fetch it",
                    c.image_name
                ),
            ),
            Some(img) => {
                let pool = pool
                    .as_ref()
                    .map(|(name, path)| (name.as_str(), path.as_path()));
                upload_one(s, hv, pool, img, action_for)
            }
        };
        s.printer.outcome(&o);
        report.outcomes.push(o);
    }
    report
}

/// The cache pool's name and directory on the hypervisor, created when missing; `None` in a
/// plan where it is still to be created (it holds nothing yet: every image is an upload).
fn cache_pool(s: &Session, hv: &Hypervisor) -> Result<Option<(String, PathBuf)>, HvError> {
    let cache = &s.cfg.image_cache_path;
    match hv.pool_by_path(cache)? {
        // Rescanned: on storage shared with the local cache, files downloaded since the last
        // scan are there but unknown to libvirt (an upload would then fail with "volume
        // target path already exists").
        Some(p) if p.active => hv.refresh_pool(&p.name).map(|()| Some((p.name, p.path))),
        found => {
            let (name, path) = found
                .map(|p| (p.name, p.path))
                .unwrap_or_else(|| (pool_name_for("images", cache), cache.clone()));
            if s.check {
                Ok(None)
            } else {
                hv.ensure_dir_pool(&name, cache).map(|_| Some((name, path)))
            }
        }
    }
}

/// `pool`: its name and directory on the hypervisor; `None` when it does not exist yet (a
/// plan only).
fn upload_one(
    s: &Session,
    hv: &Hypervisor,
    pool: Option<(&str, &Path)>,
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
            return Outcome::failure(
                action_for(Op::Check, format!("look up {file} on {host}")),
                error_chain(&e),
            )
        }
    };
    let step = plan_remote(img, &copy, s.cfg.verify_on_run);
    let action = describe(&step, &file, &host, img.size >> 20, action_for);
    let pool = match pool {
        Some((pool, _)) if !s.check => pool,
        _ => return Outcome::planned(action),
    };
    let target = PoolCopy {
        hv,
        pool,
        file,
        record,
        host,
        img,
        printer: s.printer.clone(),
    };
    run_action(action, || target.apply(step))
}

/// Pure: the action line for a step.
fn describe(
    step: &RemoteStep,
    file: &str,
    host: &str,
    mib: u64,
    action_for: impl Fn(Op, String) -> Action,
) -> Action {
    match step {
        RemoteStep::Shared { verify: false } => action_for(
            Op::Ok,
            format!("{file} on {host} is this machine's cached file itself (shared storage): used in place"),
        ),
        RemoteStep::Shared { verify: true } => action_for(
            Op::Verify,
            format!("{file} on {host} is this machine's cached file itself (shared storage): re-hashing through a libvirt download stream, never rewritten"),
        ),
        RemoteStep::Keep => action_for(Op::Ok, format!("{file} on {host} ({mib} MiB)")),
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
    }
}

/// One image's copy in an existing cache pool of a remote hypervisor.
struct PoolCopy<'a> {
    hv: &'a Hypervisor,
    pool: &'a str,
    /// The image volume's name (the cached file's name) and its record's.
    file: String,
    record: String,
    /// The hypervisor's URI, for messages.
    host: String,
    img: &'a CachedImage,
    /// Shows the upload's progress.
    printer: Printer,
}

impl PoolCopy<'_> {
    fn apply(&self, step: RemoteStep) -> Result<(), UploadError> {
        let img = self.img;
        let replace = match step {
            RemoteStep::Keep | RemoteStep::Shared { verify: false } => return Ok(()),
            RemoteStep::Shared { verify: true } => {
                let got = self.rehash()?;
                if got == img.sha512 {
                    return Ok(());
                }
                // Replacing it would delete the source of the upload.
                return Err(UploadError::SharedMismatch {
                    file: self.file.clone(),
                    host: self.host.clone(),
                    got: got[..16].to_string(),
                    want: img.sha512[..16.min(img.sha512.len())].to_string(),
                });
            }
            RemoteStep::Verify => {
                let got = self.rehash()?;
                if got == img.sha512 {
                    return Ok(());
                }
                // Never keep a damaged copy: say so and send a good one.
                self.printer.warning(&format!(
                    "{} on {} failed verification (sha512 {}…, expected {}…); uploading it again",
                    self.file,
                    self.host,
                    &got[..16],
                    &img.sha512[..16.min(img.sha512.len())]
                ));
                true
            }
            RemoteStep::Upload { replace } => replace,
        };
        self.send(replace)
    }

    /// The SHA-512 of the pool's copy, read through a libvirt download stream.
    fn rehash(&self) -> Result<String, HvError> {
        let mut hasher = kvmprov_image::Sha512::default();
        self.hv
            .download_volume(self.pool, &self.file, &mut hasher)?;
        Ok(hasher.hex())
    }

    /// Upload the image (after deleting what `replace`s it), check its size, then its record.
    fn send(&self, replace: bool) -> Result<(), UploadError> {
        let (hv, pool, file, record, img) =
            (self.hv, self.pool, &self.file, &self.record, self.img);
        if replace {
            hv.delete_volume(pool, file)?;
        }
        if hv.volume_exists(pool, record)? {
            hv.delete_volume(pool, record)?;
        }
        let mut bar = self
            .printer
            .progress("uploading", &format!("{} to {}", img.image_name, self.host));
        kvmprov_image::Progress::start(&mut bar, Some(img.size), 0);
        let mut last = 0u64;
        let sent = hv.upload_file(pool, file, &img.path, "raw", &mut |done| {
            kvmprov_image::Progress::advance(&mut bar, done - last);
            last = done;
        })?;
        kvmprov_image::Progress::finish(&mut bar);
        // What the finished stream carried, not a read-back: right after an upload libvirtd
        // refreshes the pool holding its lock, and a volume call then waits for it (one
        // `virStorageVolGetInfo` there once blocked a CI run for 14 minutes). The next run
        // checks the copy's size on the hypervisor before it trusts it.
        let landed = sent.allocation;
        if landed != img.size {
            return Err(UploadError::Size {
                file: file.clone(),
                host: self.host.clone(),
                want: img.size,
                got: landed,
            });
        }
        // The record last: its presence says the image volume is complete.
        let text = serde_json::to_vec_pretty(img).unwrap_or_default();
        hv.upload_volume(pool, record, &text, "raw")?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    #[error("{file} on {host} is this machine's cached file itself and its sha512 is {got}…, not {want}…: left as it is (a new copy would be written onto its own source); run `kvmprov image-cache` again to replace the damaged cached file")]
    SharedMismatch {
        file: String,
        host: String,
        got: String,
        want: String,
    },
    #[error("the upload of {file} to {host} carried {got} bytes, but the cached image has {want}: the cached file changed while it was sent; run `kvmprov image-cache` and then provision again")]
    Size {
        file: String,
        host: String,
        want: u64,
        got: u64,
    },
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
