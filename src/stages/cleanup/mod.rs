//! Cleanup: remove exactly the declared instances, never anything else.
//!
//! The five rules of the replaced Ansible project (`kvm-vm-provisioning`), plus path safety:
//! scope is the declared names compared byte for byte; a declared name missing in libvirt is
//! skipped; undeclared domains are never touched; disks only with
//! `kvm_cleanup_remove_instance_disks=true`, and then only the instance's own files whose real
//! path (symlinks resolved) lies inside the instance pool, is not in the image cache and is
//! used by no other domain; a file that is a symlink is removed as the link, never its target
//! (`unlinkat` on the directory's handle). Without `kvm_cleanup_confirmed=true` nothing
//! changes.
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

use kvmprov_hypervisor::uri::is_local;
use kvmprov_hypervisor::{DomainState, HvError, Hypervisor};
use kvmprov_safefs::Dir;

use plan::{apply, plan, CleanupError, FileFacts, Observed, Step};

use crate::config::Config;
use crate::domains;
use crate::layout::instance_files;
use crate::report::StageReport;
use crate::settings::Session;
use crate::stages::handoff::Handoff;
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
                    link: false,
                    remote: true,
                });
                continue;
            }
            files.push(local_facts(&inst.name, path));
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

/// What a local file of `instance` is: symlinks resolved to decide (a link out of the pool or
/// into the cache is refused by the plan), and whether the name itself is a link (then only the
/// link may go).
fn local_facts(instance: &str, path: PathBuf) -> FileFacts {
    let link = path
        .symlink_metadata()
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    let resolved = path.canonicalize().ok();
    FileFacts {
        instance: instance.to_string(),
        dangling: link && resolved.is_none(),
        real: resolved,
        link,
        path,
        remote: false,
    }
}

/// Remove the name `path` through a handle on its directory (`unlinkat`): a symlink goes as the
/// link, whatever it points to, and a link swapped in since the plan is no different.
fn delete_name(path: &Path) -> Result<(), CleanupError> {
    Dir::remove_at(path)?;
    Ok(())
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
        Step::Delete { path, .. } => delete_name(path),
    }
}

/// The stage on one hypervisor (the caller holds its lock when it applies): observe, plan,
/// and apply unless `--check` or `kvm_cleanup_confirmed` is not set.
pub fn run(s: &Session, hv: &Hypervisor, handoff: &Handoff) -> Result<StageReport, HvError> {
    let observed = observe(&s.cfg, hv)?;
    let dry = dry_run(s);
    let uri = &s.cfg.libvirt_uri;
    s.printer.stage_header(&handoff.header("cleanup", uri), dry);
    let mut report = StageReport::new("cleanup");
    report.host = handoff.host(uri);
    let steps = plan(&s.cfg, &observed);
    report.outcomes = apply(
        steps,
        dry,
        |name, step| exec(hv, &s.cfg, name, step),
        || domains::observe(hv).map_err(CleanupError::from),
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
    Ok(report)
}

/// Drift's recreate (`kvm_drift_recreate_confirmed`): the declared instance `name`, its guest
/// already off, undefined and `files` of it deleted, by this stage's rules and order
/// ([`plan::plan_recreate`]); each line handed to `emit`. The caller holds the host's run lock.
pub fn remove_for_recreate(
    cfg: &Config,
    hv: &Hypervisor,
    name: &str,
    files: &[PathBuf],
    emit: &dyn Fn(&crate::report::Outcome),
) -> Result<Vec<crate::report::Outcome>, HvError> {
    let observed = observe(cfg, hv)?;
    let outcomes = apply(
        plan::plan_recreate(cfg, &observed, name, files),
        false,
        |name, step| exec(hv, cfg, name, step),
        || domains::observe(hv).map_err(CleanupError::from),
        emit,
    );
    // Let libvirt's pool listing forget the deleted files: provision makes them again.
    if let Some(p) = hv.pool_by_path(&cfg.instance_pool_path)? {
        hv.refresh_pool(&p.name)?;
    }
    Ok(outcomes)
}

/// Only a plan: `--check`, or `kvm_cleanup_confirmed` is not set.
pub fn dry_run(s: &Session) -> bool {
    s.check || !s.cfg.cleanup_confirmed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// `<pool>/app-01.qcow2 -> db-old.qcow2` and `<pool>/app-01-console.log ->
    /// .kvmprov/id_ed25519`: a confirmed cleanup with disks printed `delete …/app-01.qcow2`
    /// and deleted `db-old.qcow2` and kvmprov's own private key (the links' targets), leaving
    /// both links. Now the links go, as links, the plan line says so, and the targets stay.
    #[test]
    fn regression_cleanup_deleted_a_symlinks_target() {
        let t = tempfile::tempdir().unwrap();
        let pool = t.path().canonicalize().unwrap().join("pool");
        std::fs::create_dir_all(pool.join(".kvmprov")).unwrap();
        std::fs::write(pool.join("db-old.qcow2"), b"another instance's disk").unwrap();
        std::fs::write(pool.join(".kvmprov/id_ed25519"), b"kvmprov's key").unwrap();
        symlink("db-old.qcow2", pool.join("app-01.qcow2")).unwrap();
        symlink(".kvmprov/id_ed25519", pool.join("app-01-console.log")).unwrap();
        std::fs::write(pool.join("app-01-seed.iso"), b"seed").unwrap();
        let text = format!(
            "kvm_image_cache_path: {cache}\nkvm_instance_disk_pool_path: {pool}\n\
             kvm_cleanup_remove_instance_disks: true\nkvm_cleanup_confirmed: true\n\
             kvm_cloud_image_catalog:\n  - {{image_name: d, image_url: http://x/a.qcow2, image_checksum_manifest_url: http://x/S}}\n\
             kvm_instance_definitions:\n  - {{instance_name: app-01, image_name: d}}\n",
            cache = t.path().join("cache").display(),
            pool = pool.display()
        );
        let cfg = crate::config::parse(Path::new("t.yml"), &text, &[]).unwrap();
        let observed = Observed {
            domains: Vec::new(),
            files: instance_files(&cfg, "app-01")
                .into_iter()
                .map(|p| local_facts("app-01", p))
                .collect(),
            pool_real: pool.clone(),
            cache_real: t.path().join("cache"),
        };
        let outcomes = apply(
            plan(&cfg, &observed),
            false,
            |_, step| match step {
                Step::Delete { path, .. } => delete_name(path),
                _ => Ok(()),
            },
            || Ok(Vec::new()),
            |_| {},
        );
        let lines: Vec<String> = outcomes
            .iter()
            .filter(|o| o.action.op == crate::report::Op::Delete)
            .map(|o| o.action.reason.clone())
            .collect();
        assert!(outcomes.iter().all(|o| !o.failed()), "{outcomes:?}");
        assert_eq!(
            std::fs::read(pool.join("db-old.qcow2")).unwrap(),
            b"another instance's disk"
        );
        assert_eq!(
            std::fs::read(pool.join(".kvmprov/id_ed25519")).unwrap(),
            b"kvmprov's key"
        );
        for gone in ["app-01.qcow2", "app-01-console.log", "app-01-seed.iso"] {
            assert!(
                pool.join(gone).symlink_metadata().is_err(),
                "{gone} is left"
            );
        }
        assert_eq!(
            lines[0],
            format!(
                "{} (a symlink to {}: only the link is removed)",
                pool.join("app-01.qcow2").display(),
                pool.join("db-old.qcow2").display()
            )
        );
        assert_eq!(lines[1], pool.join("app-01-seed.iso").display().to_string());
        assert!(lines[2].contains("a symlink to") && lines[2].contains("id_ed25519"));
    }
}
