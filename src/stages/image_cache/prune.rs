//! `kvmprov image-cache prune`: the cached versions nothing on the config's hypervisors uses,
//! listed, and deleted with `--yes`.

use std::path::{Path, PathBuf};

use kvmprov_hypervisor::{HvError, Hypervisor};
use kvmprov_image::{qcow2, CacheLock};

use crate::domains::paths_in_use;
use crate::host::is_local;
use crate::lock::lock_all;
use crate::plan::{run as run_action, Action, Op, Outcome, StageReport};
use crate::run::StageError;
use crate::settings::Session;

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
    if is_local(hv.uri()) {
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
    let _locks = lock_all(&hosts).map_err(|e| fail(&e))?;
    let deleting = yes && !s.check;
    let _cache = if deleting {
        let cache = &s.cfg.image_cache_path;
        // Root deletes in the cache only when nobody else can write it or above it.
        kvmprov_safefs::check_tree(cache).map_err(|e| fail(&e))?;
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
        for p in paths_in_use(&hv).map_err(|e| fail(&e))? {
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
