//! Cleanup: remove exactly the declared instances, never anything else.
//!
//! The seed's five rules, plus path safety: scope is the declared names compared byte for
//! byte; a declared name missing in libvirt is skipped; undeclared domains are never touched;
//! disks only with `kvm_cleanup_remove_instance_disks=true`, and then only the instance's own
//! files whose real path (symlinks resolved) lies inside the instance pool, is not in the image
//! cache and is used by no other domain. Without `kvm_cleanup_confirmed=true` nothing changes.
//!
//! Applying stops at the first failed step of an instance (its later steps are skipped: an
//! undefine or a disk deletion after a failed destroy would act on a guest that may still
//! run), and a file is deleted only if, just before, no active domain uses it. A declared
//! domain kvmprov did not create (no kvmprov metadata) is cleaned up by the same rules, but
//! says so, and keeps its managed-save image (and, like every domain, its NVRAM).
//!
//! [`plan`] decides (pure); this module observes the hypervisor and performs the steps.

mod plan;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmprov_hypervisor::{DomainState, HvError, Hypervisor};

use plan::{apply, plan, CleanupError, FileFacts, Observed, Step};

use crate::config::Config;
use crate::domains;
use crate::host::is_local;
use crate::layout::instance_files;
use crate::lock::RunLock;
use crate::plan::StageReport;
use crate::run::{host_error, StageError};
use crate::settings::Session;
use plan::SHUTDOWN_GRACE;

fn observe(cfg: &Config, hv: &Hypervisor) -> Result<Observed, HvError> {
    let domains = domains::observe(hv)?;
    let local = is_local(hv.uri());
    let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    // Remote: the instance pool's volumes, as libvirt lists them after a refresh.
    let remote_volumes: Vec<PathBuf> = if local {
        Vec::new()
    } else {
        match hv.pool_by_path(&cfg.instance_pool_path)? {
            Some(p) if p.active => {
                hv.refresh_pool(&p.name)?;
                hv.volumes(&p.name)?.into_iter().map(|v| v.path).collect()
            }
            _ => Vec::new(),
        }
    };
    let mut files = Vec::new();
    for inst in &cfg.instances {
        for path in instance_files(cfg, &inst.name) {
            let in_pool = path.parent() == Some(cfg.instance_pool_path.as_path());
            if !local && in_pool {
                files.push(FileFacts {
                    instance: inst.name.clone(),
                    real: remote_volumes.contains(&path).then(|| path.clone()),
                    path,
                    dangling: false,
                    remote: true,
                });
                continue;
            }
            let is_link = path
                .symlink_metadata()
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false);
            let resolved = path.canonicalize().ok();
            files.push(FileFacts {
                instance: inst.name.clone(),
                dangling: is_link && resolved.is_none(),
                real: resolved,
                path,
                remote: false,
            });
        }
    }
    Ok(Observed {
        domains,
        files,
        pool_real: if local {
            real(&cfg.instance_pool_path)
        } else {
            cfg.instance_pool_path.clone()
        },
        cache_real: if local {
            real(&cfg.image_cache_path)
        } else {
            cfg.image_cache_path.clone()
        },
    })
}

fn stop(hv: &Hypervisor, name: &str) -> Result<(), HvError> {
    let gone = |r: Result<(), HvError>| match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    };
    if let Some(d) = hv.domain(name)? {
        if d.state == DomainState::Running {
            // A guest that ignores ACPI is destroyed after the grace period.
            if gone(hv.shutdown(name)).is_ok() {
                let until = Instant::now() + SHUTDOWN_GRACE;
                while Instant::now() < until {
                    match hv.domain(name)? {
                        // "Shutting down" (Other) is still on: qemu has not exited yet, and an
                        // undefine now would only make the domain transient, still listed.
                        Some(d) if matches!(d.state, DomainState::Running | DomainState::Other) => {
                            std::thread::sleep(Duration::from_millis(500))
                        }
                        _ => break,
                    }
                }
            }
        }
    }
    match hv.domain(name)? {
        Some(d) if d.state != DomainState::ShutOff => gone(hv.destroy(name)),
        _ => Ok(()),
    }
}

/// Perform one step for instance `name`.
fn exec(hv: &Hypervisor, cfg: &Config, name: &str, step: &Step) -> Result<(), CleanupError> {
    let gone = |r: Result<(), HvError>| match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    };
    match step {
        Step::Skip | Step::Refuse => Ok(()),
        Step::Stop => Ok(stop(hv, name)?),
        Step::Undefine { ours } => Ok(gone(hv.undefine(name, *ours))?),
        Step::DeleteVolume { name: volume, .. } => {
            match hv.pool_by_path(&cfg.instance_pool_path)? {
                Some(p) => Ok(gone(hv.delete_volume(&p.name, volume))?),
                None => Ok(()),
            }
        }
        Step::Delete(path) => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CleanupError::Delete {
                path: path.clone(),
                source: e,
            }),
            _ => Ok(()),
        },
    }
}

/// Cleanup on every hypervisor the config names, one after the other.
pub fn run(s: &Session) -> Result<Vec<StageReport>, StageError> {
    let hosts = s.per_host();
    let multi = hosts.len() > 1;
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for h in &hosts {
        match run_host(h, multi) {
            Ok(r) => reports.extend(r),
            Err(e) => {
                reports.extend(e.reports);
                errors.push(host_error(multi, &h.cfg.libvirt_uri, e.error));
            }
        }
    }
    StageError::collect(reports, errors)
}

fn run_host(s: &Session, multi: bool) -> Result<Vec<StageReport>, StageError> {
    let _lock = if s.check || !s.cfg.cleanup_confirmed {
        None
    } else {
        Some(RunLock::acquire(s).map_err(|e| StageError::new(Vec::new(), &e))?)
    };
    let hv = s.connect().map_err(|e| StageError::new(Vec::new(), &e))?;
    let observed = observe(&s.cfg, &hv).map_err(|e| StageError::new(Vec::new(), &e))?;
    let dry = s.check || !s.cfg.cleanup_confirmed;
    let host = multi.then(|| s.cfg.libvirt_uri.clone());
    match &host {
        Some(h) => s.printer.stage_header(&format!("cleanup @ {h}"), dry),
        None => s.printer.stage_header("cleanup", dry),
    }
    let mut report = StageReport::new("cleanup");
    report.host = host;
    let steps = plan(&s.cfg, &observed);
    report.outcomes = apply(
        steps,
        dry,
        |name, step| exec(&hv, &s.cfg, name, step),
        || domains::observe(&hv).map_err(CleanupError::from),
        |o| s.printer.outcome(o),
    );
    if dry && !s.check {
        s.printer.advice("nothing changed: confirm with -e kvm_cleanup_confirmed=true (make cleanup-force), add -e kvm_cleanup_remove_instance_disks=true to delete disks (make cleanup-force-disks)");
    }
    // Let libvirt's pool listing forget deleted files.
    if !dry && s.cfg.cleanup_remove_disks {
        if let Ok(Some(p)) = hv.pool_by_path(&s.cfg.instance_pool_path) {
            let _ = hv.refresh_pool(&p.name);
        }
    }
    Ok(vec![report])
}
