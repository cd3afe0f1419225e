//! `kvmprov image-cache prune`: the cached versions nothing on the config's hypervisors uses,
//! listed, and deleted with `--yes`.

use std::path::{Path, PathBuf};

use kvmprov_hypervisor::uri::is_local;
use kvmprov_hypervisor::{HvError, Hypervisor};
use kvmprov_image::{qcow2, CacheLock};

use crate::domains::paths_in_use;
use crate::exit::ExitStatus;
use crate::lock::{lock_all, LockError};
use crate::report::{run as run_action, Action, Op, Outcome, StageReport};
use crate::settings::Session;

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "image-cache prune";

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
    /// Another run holds a hypervisor's lock, or the lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Another user can write the cache directory or one above it (the message names it).
    #[error(transparent)]
    Unsafe(#[from] kvmprov_safefs::FsError),
    /// The cache cannot be locked or listed.
    #[error(transparent)]
    Image(#[from] kvmprov_image::ImageError),
}

/// The files under the qcow2 files of a host's instance pool (their backing chains), each with
/// the disk it backs. Disks no domain references any more (kept by `cleanup-force`) count too:
/// deleting their base would ruin them. libvirt's view of the pool's volumes is used where it
/// has one (it reads the headers itself, and kvmprov then opens nothing a guest could have
/// named); a local directory libvirt has no pool for is read from the headers of its `.qcow2`
/// files only (console logs, seeds and NVRAM are never disks), each opened without following a
/// link or blocking on a FIFO.
fn pool_backing(s: &Session, hv: &Hypervisor) -> Result<Vec<(PathBuf, PathBuf)>, PruneError> {
    let pool = &s.cfg.instance_pool_path;
    let local = is_local(hv.uri());
    let mut out = Vec::new();
    match hv.pool_by_path(pool)?.filter(|p| p.active) {
        Some(p) => {
            hv.refresh_pool(&p.name)?;
            // Locally, real paths: the cache is compared by its real path.
            let real = |p: PathBuf| {
                if local {
                    p.canonicalize().unwrap_or(p)
                } else {
                    p
                }
            };
            for v in hv.volumes(&p.name)? {
                let chain = qcow2::backing_chain(v.path.clone(), |f| {
                    Ok::<_, HvError>(hv.volume_by_path(f)?.and_then(|v| v.backing_path.map(real)))
                })?;
                out.extend(chain.into_iter().skip(1).map(|b| (b, v.path.clone())));
            }
        }
        None if local => out = local_pool_backing(pool)?,
        None => {}
    }
    Ok(out)
}

/// [`pool_backing`] for a local directory libvirt has no pool for.
fn local_pool_backing(pool: &Path) -> Result<Vec<(PathBuf, PathBuf)>, PruneError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(pool) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(PruneError::Pool {
                path: pool.to_path_buf(),
                source,
            })
        }
    };
    let real = |p: PathBuf| p.canonicalize().unwrap_or(p);
    for entry in entries {
        let entry = entry.map_err(|source| PruneError::Pool {
            path: pool.to_path_buf(),
            source,
        })?;
        // Regular `.qcow2` files only: kvmprov's state directory, links, console logs (which a
        // guest writes), seeds and NVRAM stores are not overlays.
        let disk = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file())
            || disk.extension().and_then(|e| e.to_str()) != Some("qcow2")
        {
            continue;
        }
        // A header that cannot be read (a FIFO or link named by a guest-written header, a
        // missing base) ends that chain, as for a domain's disks: the files before it stay
        // protected, and one bad file does not stop the prune.
        let chain = qcow2::backing_chain(disk.clone(), |f| {
            Ok::<_, qcow2::Qcow2Error>(qcow2::backing_file(f).ok().flatten().map(real))
        })
        .map_err(PruneError::Header)?;
        out.extend(chain.into_iter().skip(1).map(|b| (b, disk.clone())));
    }
    Ok(out)
}

/// `yes`: really delete them (unless `--check`).
pub fn run(s: &Session, yes: bool) -> ExitStatus {
    let (reports, error) = match prune(s, yes) {
        Ok(report) => (vec![report], None),
        Err(e) => (Vec::new(), Some(e)),
    };
    s.printer.stages(NAME, s.check, &reports, error.as_ref());
    ExitStatus::failed_if(error.is_some() || reports.iter().any(StageReport::failed))
}

/// Cached versions nothing on the config's hypervisors uses. Kept: every version a domain's
/// disk is (backed by), every version a qcow2 file in an instance pool is backed by, and
/// everything while another run uses the cache (its lock).
fn prune(s: &Session, yes: bool) -> Result<StageReport, PruneError> {
    // The locks of every host a run of this config works on, and the cache's own lock, which
    // runs with other pools share: no run is between its download and its use of an image
    // while the prune decides.
    let hosts = s.per_host();
    let _locks = lock_all(&hosts)?;
    let deleting = yes && !s.check;
    let _cache = if deleting {
        let cache = &s.cfg.image_cache_path;
        // Root deletes in the cache only when nobody else can write it or above it.
        kvmprov_safefs::check_tree(cache)?;
        match CacheLock::try_exclusive(cache)? {
            Some(lock) => Some(lock),
            None => {
                return Err(PruneError::CacheBusy {
                    path: cache.clone(),
                })
            }
        }
    } else {
        None
    };
    let cached = kvmprov_image::list_cached(&s.cfg.image_cache_path)?;
    // In use on any hypervisor of the config, with why: one that cannot be asked stops the prune.
    let mut in_use: Vec<(PathBuf, String)> = Vec::new();
    for h in &hosts {
        let hv = h.connect()?;
        for p in paths_in_use(&hv)? {
            in_use.push((p, "backs a domain's disk".to_string()));
        }
        for (base, disk) in pool_backing(h, &hv)? {
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
            Some(why) => Outcome::done(Action::new(
                &c.image_name,
                Op::Ok,
                format!("{} {why}", c.path.display()),
            )),
            None => {
                let action = Action::new(
                    &c.image_name,
                    Op::Delete,
                    format!("{} is used by no domain or disk", c.path.display()),
                );
                if deleting {
                    run_action(action, || delete_cached(&c.path))
                } else {
                    Outcome::planned(action)
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
    Ok(report)
}

/// A cached version, its sidecar and its writer lock (no writer can hold it: the prune holds
/// the cache exclusively, and writers take it shared first). Each removed as a name in the
/// cache directory: a link as the link.
fn delete_cached(path: &Path) -> Result<(), kvmprov_safefs::FsError> {
    kvmprov_safefs::Dir::remove_at(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("."));
    for extra in [
        kvmprov_image::sidecar_path(path),
        kvmprov_image::writer_lock_path(dir, &name),
    ] {
        kvmprov_safefs::Dir::remove_at(&extra)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A qcow2 header (as a guest can write into its disk or console) whose backing file is a
    /// FIFO made in `dir`: a plain open of it blocks forever.
    fn header_naming_a_fifo(dir: &Path) -> Vec<u8> {
        let fifo = dir.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        crate::domains::tests::qcow2_header(&fifo)
    }

    /// A guest wrote a qcow2 header naming a FIFO into its console log (and a foreign raw disk
    /// in the pool carried one too): prune read every regular file of the pool as a qcow2 and
    /// opened the FIFO, hanging forever. Only `.qcow2` files are read now, and none through a
    /// FIFO or a link.
    #[test]
    fn regression_prune_read_console_logs_and_raw_disks_as_qcow2() {
        let t = tempfile::tempdir().unwrap();
        let h = header_naming_a_fifo(t.path());
        std::fs::write(t.path().join("app-01-console.log"), &h).unwrap();
        std::fs::write(t.path().join("foreign.img"), &h).unwrap();
        let pool = t.path().to_path_buf();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(local_pool_backing(&pool).map_err(|e| e.to_string()));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("prune blocked reading a FIFO named in a guest-written header");
        assert_eq!(got, Ok(vec![]));
    }

    /// A `.qcow2` file in the pool whose guest-written header names a FIFO made the whole prune
    /// stop ("cannot read the backing file …, so nothing is pruned"), printing the guest's path.
    #[test]
    fn regression_one_unreadable_backing_file_stopped_the_whole_prune() {
        let t = tempfile::tempdir().unwrap();
        let h = header_naming_a_fifo(t.path());
        std::fs::write(t.path().join("foreign.qcow2"), &h).unwrap();
        let got = local_pool_backing(t.path()).map_err(|e| e.to_string());
        // The FIFO is not a backing file anything is read from; nothing blocks the prune.
        assert!(got.is_ok(), "{got:?}");
    }

    /// A data disk is a qcow2 without a backing file beside the overlays: it protects no
    /// cached version and stops nothing; the overlay next to it still protects its base.
    #[test]
    fn data_disks_in_the_pool_are_read_as_disks_without_a_base() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base.qcow2");
        std::fs::write(&base, crate::domains::tests::qcow2_header(Path::new(""))).unwrap();
        let pool = t.path().join("pool");
        std::fs::create_dir(&pool).unwrap();
        let mut data = crate::domains::tests::qcow2_header(Path::new(""));
        data[8..20].fill(0); // no backing file
        std::fs::write(pool.join("app-01_data.qcow2"), &data).unwrap();
        std::fs::write(
            pool.join("app-01.qcow2"),
            crate::domains::tests::qcow2_header(&base),
        )
        .unwrap();
        let got = local_pool_backing(&pool).unwrap();
        assert_eq!(
            got,
            vec![(base.canonicalize().unwrap(), pool.join("app-01.qcow2"))]
        );
    }

    #[test]
    fn deleting_a_cached_version_removes_a_link_not_its_target() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside.qcow2");
        std::fs::write(&outside, b"precious").unwrap();
        let cache = t.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        std::os::unix::fs::symlink(&outside, cache.join("d-0123.qcow2")).unwrap();
        delete_cached(&cache.join("d-0123.qcow2")).unwrap();
        assert!(cache.join("d-0123.qcow2").symlink_metadata().is_err());
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    }
}
