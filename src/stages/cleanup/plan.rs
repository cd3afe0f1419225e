//! Cleanup's plan, pure: which steps the declared instances get and which of their files may
//! go; and the order in which a plan is applied (stop at an instance's first failure, look
//! again before any deletion).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kvmprov_hypervisor::{DomainState, HvError};

use crate::config::Config;
use crate::domains::DomainFacts;
use crate::layout::data_disk_files;
use crate::report::{run as run_action, Action, Op, Outcome};

/// How long a guest gets to shut down cleanly before it is destroyed.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A file cleanup might delete.
#[derive(Debug, Clone)]
pub struct FileFacts {
    pub instance: String,
    pub path: PathBuf,
    /// `None`: does not exist (or is a dangling link: then `dangling` is set).
    pub real: Option<PathBuf>,
    pub dangling: bool,
    /// `path` itself is a symbolic link (to `real`): only the link may go, never its target.
    pub link: bool,
    /// A volume in the instance pool of a remote hypervisor (deleted through libvirt, which
    /// unlinks the pool's own directory entry and never follows a symlink out of the pool).
    pub remote: bool,
}

/// What cleanup saw.
#[derive(Debug, Clone)]
pub struct Observed {
    pub domains: Vec<DomainFacts>,
    pub files: Vec<FileFacts>,
    pub pool_real: PathBuf,
    pub cache_real: PathBuf,
}

/// A step of the cleanup plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Skip,
    Stop,
    /// `ours`: kvmprov created the domain (its managed-save image may go with it).
    Undefine {
        ours: bool,
    },
    /// Remove the name `path` (a link as the link). `real`: what it resolves to, which no
    /// active domain may use at the time of the deletion.
    Delete {
        path: PathBuf,
        real: PathBuf,
    },
    /// A remote instance-pool volume: its name, and its path as the hypervisor names it.
    DeleteVolume {
        name: String,
        path: PathBuf,
    },
    Refuse,
}

impl Step {
    /// The file an active domain must not use when a deleting step runs.
    fn deletes(&self) -> Option<&Path> {
        match self {
            Step::Delete { real: path, .. } | Step::DeleteVolume { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Pure: the plan. Scope is exactly the declared names.
pub fn plan(cfg: &Config, o: &Observed) -> Vec<(Action, Step)> {
    let declared: Vec<&str> = cfg.instances.iter().map(|i| i.name.as_str()).collect();
    let mut out = Vec::new();
    for name in &declared {
        let domain = o
            .domains
            .iter()
            .find(|d| d.name.as_bytes() == name.as_bytes());
        out.extend(domain_steps(name, domain));
    }
    if !cfg.cleanup_remove_disks {
        out.extend(kept_data_disks(cfg, o));
        return out;
    }
    let foreign = foreign_files(&declared, o);
    out.extend(o.files.iter().filter_map(|f| file_step(f, o, &foreign)));
    out
}

/// Files other (undeclared) domains use: never deleted.
fn foreign_files<'a>(declared: &[&str], o: &'a Observed) -> Vec<&'a PathBuf> {
    o.domains
        .iter()
        .filter(|d| !declared.iter().any(|n| n.as_bytes() == d.name.as_bytes()))
        .flat_map(|d| d.files.iter())
        .collect()
}

/// Pure: drift's recreate of the declared instance `name` (its guest already off): its
/// domain's steps and the deletion of only `files` of it, each by the same rules as a
/// cleanup with disks. The caller names the files (`drift::plan::Removal`): never a data disk.
pub fn plan_recreate(
    cfg: &Config,
    o: &Observed,
    name: &str,
    files: &[PathBuf],
) -> Vec<(Action, Step)> {
    let declared: Vec<&str> = cfg.instances.iter().map(|i| i.name.as_str()).collect();
    if !declared.iter().any(|n| n.as_bytes() == name.as_bytes()) {
        return Vec::new();
    }
    let domain = o
        .domains
        .iter()
        .find(|d| d.name.as_bytes() == name.as_bytes());
    let mut out = domain_steps(name, domain);
    let foreign = foreign_files(&declared, o);
    out.extend(
        o.files
            .iter()
            .filter(|f| f.instance == name && files.contains(&f.path))
            .filter_map(|f| file_step(f, o, &foreign)),
    );
    out
}

/// Pure: a line for each existing data disk of the declared instances, which a cleanup without
/// the disk opt-in keeps (the root disk is kept too, as it always was, without a line).
fn kept_data_disks(cfg: &Config, o: &Observed) -> Vec<(Action, Step)> {
    let mut out = Vec::new();
    for inst in &cfg.instances {
        for path in data_disk_files(cfg, &inst.name) {
            let exists = o
                .files
                .iter()
                .any(|f| f.path == path && (f.real.is_some() || f.dangling));
            if exists {
                out.push((
                    Action::new(
                        &inst.name,
                        Op::Skip,
                        format!(
                            "data disk {} kept: removed only with kvm_cleanup_remove_instance_disks=true (make cleanup-force-disks)",
                            path.display()
                        ),
                    ),
                    Step::Skip,
                ));
            }
        }
    }
    out
}

/// Pure: what happens to a declared instance's domain (`None`: libvirt has none).
fn domain_steps(name: &str, domain: Option<&DomainFacts>) -> Vec<(Action, Step)> {
    let Some(d) = domain else {
        return vec![(
            Action::new(name, Op::Skip, "no such domain in libvirt"),
            Step::Skip,
        )];
    };
    let mut out = Vec::new();
    let foreign = if d.ours {
        ""
    } else {
        ", not created by kvmprov (no kvmprov metadata)"
    };
    // Crashed too: with on_crash=preserve its qemu still holds the disks.
    if d.state != DomainState::ShutOff {
        out.push((
            Action::new(
                name,
                Op::Stop,
                format!(
                    "{:?}{foreign}: shut down (destroy after {}s)",
                    d.state,
                    SHUTDOWN_GRACE.as_secs()
                ),
            ),
            Step::Stop,
        ));
    }
    let reason = if d.ours {
        "declared instance: undefine with snapshot metadata and managed-save image (NVRAM kept)"
            .to_string()
    } else {
        format!("declared instance{foreign}: undefine with snapshot metadata; its NVRAM and managed-save image are kept")
    };
    out.push((
        Action::new(name, Op::Undefine, reason),
        Step::Undefine { ours: d.ours },
    ));
    out
}

/// Pure: what happens to one of an instance's files (`None`: it does not exist). `foreign`:
/// the files undeclared domains use.
fn file_step(f: &FileFacts, o: &Observed, foreign: &[&PathBuf]) -> Option<(Action, Step)> {
    let shown = f.path.display().to_string();
    let Some(real) = &f.real else {
        return f.dangling.then(|| {
            (
                Action::new(
                    &f.instance,
                    Op::Refuse,
                    format!("{shown} is a dangling symlink: left alone"),
                ),
                Step::Refuse,
            )
        });
    };
    let refusal = if !real.starts_with(&o.pool_real) {
        Some(format!(
            "{shown} resolves to {} outside the instance pool {}",
            real.display(),
            o.pool_real.display()
        ))
    } else if real.starts_with(&o.cache_real) {
        Some(format!(
            "{shown} resolves to {} in the image cache",
            real.display()
        ))
    } else if foreign.contains(&real) {
        Some(format!("{shown} is used by another (undeclared) domain"))
    } else {
        None
    };
    Some(match refusal {
        Some(why) => (Action::new(&f.instance, Op::Refuse, why), Step::Refuse),
        // libvirt's vol-delete unlinks the volume's own path in the pool (a symlink as the
        // link, never its target), so the line names that path.
        None if f.remote => (
            Action::new(
                &f.instance,
                Op::Delete,
                format!("{shown} (volume on the hypervisor; a symlink goes as the link)"),
            ),
            Step::DeleteVolume {
                name: f
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                path: f.path.clone(),
            },
        ),
        // A link is removed as the link: the line says so, and names what stays.
        None if f.link => (
            Action::new(
                &f.instance,
                Op::Delete,
                format!(
                    "{shown} (a symlink to {}: only the link is removed)",
                    real.display()
                ),
            ),
            Step::Delete {
                path: f.path.clone(),
                real: real.clone(),
            },
        ),
        None => (
            Action::new(&f.instance, Op::Delete, shown),
            Step::Delete {
                path: f.path.clone(),
                real: real.clone(),
            },
        ),
    })
}

/// Pure: the active (not shut off) domains among `domains` that use `file`.
pub fn active_users<'a>(domains: &'a [DomainFacts], file: &Path) -> Vec<&'a str> {
    domains
        .iter()
        .filter(|d| d.state != DomainState::ShutOff && d.files.iter().any(|f| f == file))
        .map(|d| d.name.as_str())
        .collect()
}

/// Apply a plan, reporting each outcome to `emit` as it comes. `exec` performs one step of an
/// instance; `domains_now` observes the domains again. After a failed step the instance's
/// remaining steps are skipped and said so; before a file is deleted, the domains are looked
/// at again and an active one using the file stops the deletion (a declared domain whose stop
/// failed, or one started since the plan).
pub fn apply(
    plan: Vec<(Action, Step)>,
    dry: bool,
    mut exec: impl FnMut(&str, &Step) -> Result<(), CleanupError>,
    mut domains_now: impl FnMut() -> Result<Vec<DomainFacts>, CleanupError>,
    mut emit: impl FnMut(&Outcome),
) -> Vec<Outcome> {
    let mut failed: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (action, step) in plan {
        let target = action.target.clone();
        let outcome = match &step {
            Step::Skip => Outcome::done(action),
            Step::Refuse if dry => Outcome::planned(action),
            Step::Refuse => Outcome::done(action),
            _ if dry => Outcome::planned(action),
            _ if failed.contains(&target) => Outcome::done(Action::new(
                &target,
                Op::Skip,
                format!(
                    "skipped: an earlier step failed ({} {})",
                    action.op.as_str(),
                    action.reason
                ),
            )),
            step => run_action(action, || {
                if let Some(file) = step.deletes() {
                    let domains = domains_now()?;
                    let users = active_users(&domains, file);
                    if !users.is_empty() {
                        return Err(CleanupError::InUse {
                            path: file.to_path_buf(),
                            domains: users.join(", "),
                        });
                    }
                }
                exec(&target, step)
            }),
        };
        if outcome.failed() {
            failed.push(target);
        }
        emit(&outcome);
        out.push(outcome);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    #[error("{} is used by active domain {domains}: not deleted (stop it first)", path.display())]
    InUse { path: PathBuf, domains: String },
    #[error(transparent)]
    Delete(#[from] kvmprov_safefs::FsError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Status;

    fn cfg(remove: bool) -> Config {
        let text = format!(
            "kvm_image_cache_path: /c\nkvm_instance_disk_pool_path: /p\nkvm_cleanup_remove_instance_disks: {remove}\n\
             kvm_cloud_image_catalog:\n  - {{image_name: d, image_url: http://x/a.qcow2, image_checksum_manifest_url: http://x/S}}\n\
             kvm_instance_definitions:\n  - {{instance_name: app-01, image_name: d}}\n  - {{instance_name: gone, image_name: d}}\n"
        );
        crate::config::parse(Path::new("t.yml"), &text, &[]).unwrap()
    }

    fn dom(name: &str, state: DomainState, files: &[&str]) -> DomainFacts {
        DomainFacts {
            name: name.into(),
            state,
            files: files.iter().map(PathBuf::from).collect(),
            ours: true,
        }
    }

    fn file(inst: &str, path: &str, real: Option<&str>) -> FileFacts {
        FileFacts {
            instance: inst.into(),
            path: path.into(),
            real: real.map(PathBuf::from),
            dangling: false,
            link: false,
            remote: false,
        }
    }

    fn observed(files: Vec<FileFacts>) -> Observed {
        Observed {
            domains: vec![
                dom("app-01", DomainState::Running, &["/p/app-01.qcow2"]),
                dom("app-0", DomainState::Running, &["/p/app-0.qcow2"]),
                dom("APP-01", DomainState::Running, &["/p/shared.qcow2"]),
            ],
            files,
            pool_real: "/p".into(),
            cache_real: "/c".into(),
        }
    }

    #[test]
    fn scope_is_exact_names() {
        let p = plan(&cfg(false), &observed(vec![]));
        let targets: Vec<(&str, Op)> = p.iter().map(|(a, _)| (a.target.as_str(), a.op)).collect();
        assert_eq!(
            targets,
            vec![
                ("app-01", Op::Stop),
                ("app-01", Op::Undefine),
                ("gone", Op::Skip)
            ]
        );
    }

    #[test]
    fn disks_only_when_asked_and_only_inside_the_pool() {
        let files = vec![
            file("app-01", "/p/app-01.qcow2", Some("/p/app-01.qcow2")),
            file("app-01", "/p/app-01-seed.iso", Some("/etc/passwd")),
            file("app-01", "/p/app-01-console.log", Some("/c/debian.qcow2")),
            file("gone", "/p/gone.qcow2", Some("/p/shared.qcow2")),
            file("gone", "/p/gone-seed.iso", None),
        ];
        assert!(plan(&cfg(false), &observed(files.clone()))
            .iter()
            .all(|(a, _)| a.op != Op::Delete && a.op != Op::Refuse));
        let p = plan(&cfg(true), &observed(files));
        let steps: Vec<&Step> = p.iter().map(|(_, s)| s).collect();
        assert!(steps.contains(&&Step::Delete {
            path: "/p/app-01.qcow2".into(),
            real: "/p/app-01.qcow2".into()
        }));
        let refused: Vec<&str> = p
            .iter()
            .filter(|(a, _)| a.op == Op::Refuse)
            .map(|(a, _)| a.reason.as_str())
            .collect();
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused[0].contains("outside the instance pool"));
        assert!(refused[1].contains("image cache") || refused[1].contains("outside"));
        assert!(refused[2].contains("another (undeclared) domain"));
    }

    /// Data disks are named by the plan: kept (with a line) without the disk opt-in, deleted
    /// with it; a data disk volume the config does not declare is never named.
    #[test]
    fn data_disks_are_kept_without_the_opt_in_and_deleted_with_it() {
        let cfg = |remove: bool| {
            let text = format!(
                "kvm_image_cache_path: /c\nkvm_instance_disk_pool_path: /p\nkvm_cleanup_remove_instance_disks: {remove}\n\
                 kvm_cloud_image_catalog:\n  - {{image_name: d, image_url: http://x/a.qcow2, image_checksum_manifest_url: http://x/S}}\n\
                 kvm_instance_definitions:\n  - instance_name: app-01\n    image_name: d\n    disks: [{{name: data, size_gib: 1}}]\n"
            );
            crate::config::parse(Path::new("t.yml"), &text, &[]).unwrap()
        };
        let files = |c: &Config| -> Vec<FileFacts> {
            crate::layout::instance_files(c, "app-01")
                .iter()
                .map(|p| {
                    let p = p.to_str().unwrap();
                    file("app-01", p, Some(p))
                })
                .collect()
        };
        let keep = cfg(false);
        assert!(files(&keep)
            .iter()
            .any(|f| f.path == Path::new("/p/app-01_data.qcow2")));
        let p = plan(&keep, &observed(files(&keep)));
        let kept: Vec<&str> = p
            .iter()
            .filter(|(a, _)| a.op == Op::Skip)
            .map(|(a, _)| a.reason.as_str())
            .collect();
        assert_eq!(
            kept,
            vec!["data disk /p/app-01_data.qcow2 kept: removed only with kvm_cleanup_remove_instance_disks=true (make cleanup-force-disks)"]
        );
        assert!(p.iter().all(|(a, _)| a.op != Op::Delete));
        let remove = cfg(true);
        let p = plan(&remove, &observed(files(&remove)));
        assert!(p.iter().any(|(_, s)| *s
            == Step::Delete {
                path: "/p/app-01_data.qcow2".into(),
                real: "/p/app-01_data.qcow2".into()
            }));
    }

    /// Drift's recreate: the domain undefined and only the files asked for deleted, by the
    /// disk rules (a seed that is a link out of the pool is refused); the data disk, console
    /// log and the other instance are never named, even with the cleanup disk opt-in set.
    #[test]
    fn a_recreate_removes_only_the_files_asked_for_by_the_cleanup_rules() {
        let text = "kvm_image_cache_path: /c\nkvm_instance_disk_pool_path: /p\nkvm_cleanup_remove_instance_disks: true\n\
             kvm_cloud_image_catalog:\n  - {image_name: d, image_url: http://x/a.qcow2, image_checksum_manifest_url: http://x/S}\n\
             kvm_instance_definitions:\n  - instance_name: app-01\n    image_name: d\n    disks: [{name: data, size_gib: 1}]\n  - {instance_name: gone, image_name: d}\n";
        let c = crate::config::parse(Path::new("t.yml"), text, &[]).unwrap();
        let mut all: Vec<FileFacts> = crate::layout::instance_files(&c, "app-01")
            .iter()
            .map(|p| {
                let p = p.to_str().unwrap();
                file("app-01", p, Some(p))
            })
            .collect();
        all.push(file("gone", "/p/gone.qcow2", Some("/p/gone.qcow2")));
        let mut o = observed(all);
        o.domains[0].state = DomainState::ShutOff;
        let asked: Vec<PathBuf> = vec![
            "/p/app-01-seed.iso".into(),
            "/p/app-01.qcow2".into(),
            "/p/gone.qcow2".into(),
        ];
        let p = plan_recreate(&c, &o, "app-01", &asked);
        let steps: Vec<Step> = p.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(
            steps,
            vec![
                Step::Undefine { ours: true },
                Step::Delete {
                    path: "/p/app-01.qcow2".into(),
                    real: "/p/app-01.qcow2".into()
                },
                Step::Delete {
                    path: "/p/app-01-seed.iso".into(),
                    real: "/p/app-01-seed.iso".into()
                },
            ]
        );
        // The rules hold: a seed resolving out of the pool is refused, not deleted.
        o.files[1].real = Some("/etc/passwd".into());
        let p = plan_recreate(&c, &o, "app-01", &asked);
        assert!(p
            .iter()
            .any(|(a, s)| *s == Step::Refuse && a.reason.contains("outside the instance pool")));
        // An undeclared name: nothing at all.
        assert!(plan_recreate(&c, &o, "APP-01", &asked).is_empty());
    }

    #[test]
    fn shut_off_domain_is_only_undefined() {
        let mut o = observed(vec![]);
        o.domains[0].state = DomainState::ShutOff;
        let ops: Vec<Op> = plan(&cfg(false), &o).iter().map(|(a, _)| a.op).collect();
        assert_eq!(ops, vec![Op::Undefine, Op::Skip]);
    }

    /// Apply `plan` with `fail` failing; returns the outcomes and the steps performed.
    fn apply_with(
        plan: Vec<(Action, Step)>,
        fail: Step,
        domains: Vec<DomainFacts>,
    ) -> (Vec<Outcome>, Vec<(String, Step)>) {
        let mut done = Vec::new();
        let outcomes = apply(
            plan,
            false,
            |name, step| {
                done.push((name.to_string(), step.clone()));
                if *step == fail {
                    Err(CleanupError::Hypervisor(HvError::Invalid {
                        what: format!("destroy domain {name}"),
                        reason: "timed out".into(),
                    }))
                } else {
                    Ok(())
                }
            },
            || Ok(domains.clone()),
            |_| {},
        );
        (outcomes, done)
    }

    #[test]
    fn regression_cleanup_deleted_disk_after_failed_destroy() {
        let mut o = observed(vec![
            file("app-01", "/p/app-01.qcow2", Some("/p/app-01.qcow2")),
            file("gone", "/p/gone.qcow2", Some("/p/gone.qcow2")),
        ]);
        o.domains
            .push(dom("gone", DomainState::ShutOff, &["/p/gone.qcow2"]));
        let (outcomes, done) = apply_with(plan(&cfg(true), &o), Step::Stop, vec![]);
        // The failed destroy is the only step app-01 got; the other instance went on.
        assert_eq!(
            done,
            vec![
                ("app-01".to_string(), Step::Stop),
                ("gone".to_string(), Step::Undefine { ours: true }),
                (
                    "gone".to_string(),
                    Step::Delete {
                        path: "/p/gone.qcow2".into(),
                        real: "/p/gone.qcow2".into()
                    }
                ),
            ]
        );
        let app: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.action.target == "app-01")
            .collect();
        assert_eq!(app.len(), 3, "{outcomes:?}");
        assert!(app[0].failed());
        for o in &app[1..] {
            assert_eq!(o.action.op, Op::Skip, "{o:?}");
            assert!(
                o.action
                    .reason
                    .starts_with("skipped: an earlier step failed"),
                "{o:?}"
            );
        }
        assert!(app[1].action.reason.contains("undefine"));
        assert!(app[2].action.reason.contains("delete /p/app-01.qcow2"));
    }

    #[test]
    fn regression_cleanup_deleted_a_disk_an_active_domain_still_used() {
        // Planned while app-01 was shut off; by the time of the deletion a domain (declared
        // or not) runs on the disk.
        let mut o = observed(vec![file(
            "app-01",
            "/p/app-01.qcow2",
            Some("/p/app-01.qcow2"),
        )]);
        o.domains[0].state = DomainState::ShutOff;
        let now = vec![dom("app-02", DomainState::Paused, &["/p/app-01.qcow2"])];
        let (outcomes, done) = apply_with(plan(&cfg(true), &o), Step::Skip, now);
        assert!(
            !done.iter().any(|(_, s)| matches!(s, Step::Delete { .. })),
            "{done:?}"
        );
        let delete = outcomes.iter().find(|o| o.action.op == Op::Delete).unwrap();
        assert_eq!(
            delete.status,
            Status::Failed(
                "/p/app-01.qcow2 is used by active domain app-02: not deleted (stop it first)"
                    .into()
            )
        );
        // Shut off, it no longer holds the file.
        let off = vec![dom("app-02", DomainState::ShutOff, &["/p/app-01.qcow2"])];
        let (_, done) = apply_with(plan(&cfg(true), &o), Step::Skip, off);
        assert!(done.contains(&(
            "app-01".into(),
            Step::Delete {
                path: "/p/app-01.qcow2".into(),
                real: "/p/app-01.qcow2".into()
            }
        )));
    }

    #[test]
    fn regression_foreign_domain_was_cleaned_up_without_saying_so() {
        let mut o = observed(vec![]);
        o.domains[0].ours = false;
        let p = plan(&cfg(false), &o);
        assert_eq!(p.len(), 3, "{p:?}");
        for (a, _) in &p[..2] {
            assert!(a.reason.contains("not created by kvmprov"), "{a:?}");
        }
        assert!(p[1]
            .0
            .reason
            .contains("NVRAM and managed-save image are kept"));
        assert_eq!(p[1].1, Step::Undefine { ours: false });
        // kvmprov's own domains lose their managed-save image, never their NVRAM.
        let p = plan(&cfg(false), &observed(vec![]));
        assert_eq!(p[1].1, Step::Undefine { ours: true });
        assert!(!p[1].0.reason.contains("not created by kvmprov"));
    }

    #[test]
    fn dry_runs_change_nothing() {
        let o = observed(vec![file(
            "app-01",
            "/p/app-01.qcow2",
            Some("/p/app-01.qcow2"),
        )]);
        let outcomes = apply(
            plan(&cfg(true), &o),
            true,
            |_, s| panic!("ran {s:?}"),
            || panic!("observed"),
            |_| {},
        );
        assert!(outcomes
            .iter()
            .all(|o| o.status != Status::Done || o.action.op == Op::Skip));
    }
}
