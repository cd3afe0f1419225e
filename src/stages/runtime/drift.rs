//! Drift applied (`kvm_drift_apply_confirmed=true`), one guest at a time.
//!
//! Each declared domain kvmprov made is compared with the config and planned
//! ([`crate::drift::plan`]). The guests whose plan is all `live` (or that are off) are changed
//! first, without a restart. Then the guests that need a restart go `kvm_drift_max_unavailable`
//! at a time: their changes made (persistent, and live where they can be), a graceful restart,
//! and the wait until each is SSH-ready with cloud-init done, before the next ones go down. A
//! guest that does not come back stops the rollout on its hypervisor: the guests after it are
//! left untouched and say so, and the run exits 1. The record in each changed domain's
//! metadata takes the applied values, so the next run sees no drift for them.
//!
//! Recreate steps (`kvm_drift_recreate_confirmed` too) take their guest down in the same
//! rollout: powered off gracefully, its domain undefined and its seed (with a new root disk:
//! its overlay; with new firmware: its NVRAM) deleted by cleanup's rules, then made again by
//! provision's code for a missing instance (data disks kept and attached, a new seed whose new
//! host key is pinned before the domain exists), started and waited for. Both other stages'
//! parts come through [`Remake`], which the stage runner supplies (no stage imports another).
//! Without that confirmation each such guest gets one line naming it.

use kvmprov_hypervisor::xml::{self, DataDiskSpec, ObservedDomain};
use kvmprov_hypervisor::{HvError, Hypervisor, NetworkInfo};

use super::{lifecycle, RuntimeError};
use crate::config::{Attachment, Instance};
use crate::drift::plan::{self, Edit, How, Removal, Step};
use crate::drift::{self as fields, record_after};
use crate::host::resolve_domain_type;
use crate::layout::{data_disk_name, disk_name, pool_name_for};
use crate::parallel::parallel;
use crate::report::{Action, Op, Outcome, Status};
use crate::settings::Session;

/// One guest with drift kvmprov can apply.
struct Pending<'a> {
    inst: &'a Instance,
    observed: ObservedDomain,
    steps: Vec<Step>,
    /// Its plan has a `restart` step and it runs.
    restart: bool,
    /// It is re-created (confirmed recreate steps): what goes with its domain.
    recreate: Option<Removal>,
}

impl Pending<'_> {
    /// It goes down: one of the guests `kvm_drift_max_unavailable` counts.
    fn down(&self) -> bool {
        self.restart || self.recreate.is_some()
    }
}

/// What re-creating a guest needs of the other stages, on this hypervisor: cleanup removes,
/// provision makes. The stage runner supplies it (`crate::stages::recreate`).
pub trait Remake: Sync {
    /// Whether `inst` can be made again (with a new root disk when `disk`): asked before
    /// anything is removed, so a guest that could not come back is left as it is. `Err`: why
    /// not, one sentence.
    fn creatable(&self, inst: &Instance, disk: bool) -> Result<(), String>;
    /// The declared instance `name`, its guest off, undefined and `files` of it deleted by
    /// cleanup's rules; the lines (printed).
    fn remove(&self, name: &str, files: &[std::path::PathBuf]) -> Result<Vec<Outcome>, HvError>;
    /// `inst` made again as provision makes a missing instance (a new root disk when `disk`);
    /// its line (printed).
    fn make(&self, inst: &Instance, disk: bool) -> Outcome;
}

/// The rollout's lines, and the instances runtime must leave alone afterwards (their
/// rollout failed: waiting for them again would only wait out the deadline again).
pub struct Rollout {
    pub outcomes: Vec<Outcome>,
    pub failed: Vec<String>,
}

/// Plan every declared domain and apply the plans (see the module's comment).
pub fn rollout(
    s: &Session,
    hv: &Hypervisor,
    remake: &dyn Remake,
    networks: &[NetworkInfo],
    emit: &dyn Fn(&Outcome),
) -> Result<Rollout, HvError> {
    let cfg = &s.cfg;
    let (domain_type, _) =
        resolve_domain_type(cfg.domain_type, &hv.host_info()?).map_err(|reason| {
            HvError::Invalid {
                what: "choose the domain type".into(),
                reason,
            }
        })?;
    let mut pending = Vec::new();
    let mut reported = Vec::new();
    for inst in &cfg.instances {
        if hv.domain(&inst.name)?.is_none() {
            continue;
        }
        let mut d = xml::parse_domain_xml(&hv.domain_xml(&inst.name)?)?;
        d.autostart = hv.autostart(&inst.name)?;
        let Some((m, recorded)) = d
            .metadata
            .as_ref()
            .and_then(|m| Some((m, m.fields.as_ref()?)))
        else {
            continue;
        };
        let wanted = fields::instance_fields(cfg, inst, domain_type, &m.instance_id);
        let changes = fields::diff(recorded, &wanted, &m.instance_id);
        let steps = plan::plan(&changes, &plan::Facts::of(&d, cfg));
        if plan::recreate_pending(&steps) {
            reported.push(not_recreated(inst, &steps));
        }
        let (apply, restart) = plan::applicable(&steps);
        if apply.is_empty() {
            continue;
        }
        let restart = restart && d.running;
        let recreate = plan::removal(&steps);
        pending.push(Pending {
            inst,
            observed: d,
            steps,
            restart,
            recreate,
        });
    }
    let mut out = Rollout {
        outcomes: Vec::new(),
        failed: Vec::new(),
    };
    let push = |o: Outcome, out: &mut Rollout| {
        emit(&o);
        if o.failed() {
            out.failed.push(o.action.target.clone());
        }
        out.outcomes.push(o);
    };
    for o in reported {
        push(o, &mut out);
    }
    // Lines the guests' workers printed themselves (a recreate's removal and creation): kept.
    let printed = |lines: Vec<Outcome>, out: &mut Rollout| {
        for o in lines {
            if o.failed() {
                out.failed.push(o.action.target.clone());
            }
            out.outcomes.push(o);
        }
    };
    // In place first: no guest goes down for these.
    for p in pending.iter().filter(|p| !p.down()) {
        let (lines, o) = apply_one(s, hv, networks, remake, p);
        printed(lines, &mut out);
        push(o, &mut out);
    }
    let restarting: Vec<&Pending> = pending.iter().filter(|p| p.down()).collect();
    let batch = usize::try_from(cfg.drift_max_unavailable)
        .unwrap_or(1)
        .max(1);
    let mut stopped_by: Option<String> = None;
    for group in restarting.chunks(batch) {
        if let Some(who) = &stopped_by {
            for p in group {
                let o = Outcome::done(
                    Action::new(
                        &p.inst.name,
                        Op::Skip,
                        format!(
                            "drift not applied: the rollout on this hypervisor stopped because {who} did not come back; this guest is untouched"
                        ),
                    )
                    .with_drift(p.steps.clone()),
                );
                push(o, &mut out);
            }
            continue;
        }
        let done = parallel(group, group.len(), |p| {
            apply_one(s, hv, networks, remake, p)
        });
        for (lines, o) in done {
            printed(lines, &mut out);
            if o.failed() && stopped_by.is_none() {
                stopped_by = Some(o.action.target.clone());
            }
            push(o, &mut out);
        }
    }
    Ok(out)
}

/// The one line of a guest whose recreate steps are only reported: which ones, and the
/// variables that apply them.
fn not_recreated(inst: &Instance, steps: &[Step]) -> Outcome {
    let waiting: Vec<Step> = steps
        .iter()
        .filter(|s| s.how == How::Recreate && s.edit == Edit::None)
        .cloned()
        .collect();
    let mut names: Vec<&str> = waiting.iter().map(|s| s.field.as_str()).collect();
    names.dedup();
    Outcome::done(
        Action::new(
            &inst.name,
            Op::Skip,
            format!(
                "not re-created: {} need the guest re-created; {}",
                names.join(", "),
                plan::RECREATE_HINT
            ),
        )
        .with_drift(waiting),
    )
}

/// One guest's plan applied: its changes, its restart when it needs one (or its recreate),
/// its new record. Returns the lines printed on the way (a recreate's), and its own line.
fn apply_one(
    s: &Session,
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    remake: &dyn Remake,
    p: &Pending,
) -> (Vec<Outcome>, Outcome) {
    let started = std::time::Instant::now();
    let (apply, _) = plan::applicable(&p.steps);
    let listed: Vec<String> = p.steps.iter().map(Step::describe).collect();
    let mut action = Action::new(
        &p.inst.name,
        Op::Apply,
        format!("drift applied: {}", listed.join("; ")),
    )
    .with_drift(p.steps.clone());
    let mut lines = Vec::new();
    let result = (|| -> Result<Option<lifecycle::graceful::Restarted>, RuntimeError> {
        if let Some(removal) = p.recreate {
            return recreate(s, hv, networks, remake, p, removal, &mut lines).map(Some);
        }
        let mut targets = p.observed.disk_targets.clone();
        for step in &apply {
            apply_edit(s, hv, p, step, &mut targets)?;
        }
        let restarted = if p.restart {
            Some(lifecycle::graceful::restart(s, hv, networks, p.inst)?)
        } else {
            None
        };
        // The record takes what was applied: the next run sees no drift for it.
        if let Some(m) = &p.observed.metadata {
            let mut m = m.clone();
            m.fields = Some(record_after(m.fields.as_deref().unwrap_or(&[]), &apply));
            let running = p.observed.running || restarted.is_some();
            hv.set_kvmprov_metadata(&p.inst.name, &m, running)?;
        }
        Ok(restarted)
    })();
    let status = match result {
        Ok(restarted) => {
            if let Some(r) = restarted {
                let how = if p.recreate.is_some() {
                    "re-created"
                } else {
                    "restarted"
                };
                action.reason = format!("{}; {how}: {}", action.reason, r.describe());
            } else if !p.observed.running && apply.iter().any(|s| s.how == How::Restart) {
                action.reason = format!(
                    "{}; the guest is off: it takes them at its next start",
                    action.reason
                );
            }
            Status::Done
        }
        Err(e) => Status::Failed(crate::report::error_chain(&e)),
    };
    let o = Outcome {
        action,
        status,
        seconds: started.elapsed().as_secs_f64(),
    };
    (lines, o)
}

/// The guest made anew for its confirmed recreate steps (see the module's comment); `lines`
/// takes the removal's and provision's lines (printed as they happen). Checked first that
/// it can be made again: else it is left untouched.
fn recreate(
    s: &Session,
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    remake: &dyn Remake,
    p: &Pending,
    removal: Removal,
    lines: &mut Vec<Outcome>,
) -> Result<lifecycle::graceful::Restarted, RuntimeError> {
    let name = &p.inst.name;
    remake.creatable(p.inst, removal.root_disk).map_err(|why| {
        RuntimeError::Invalid(format!("not re-created (the guest is untouched): {why}"))
    })?;
    let pool = &s.cfg.instance_pool_path;
    let files = removal.files(pool, name);
    lifecycle::graceful::restart_with(s, hv, networks, p.inst, || {
        let removed = remake.remove(name, &files)?;
        // A file cleanup's rules refuse to delete stops it too: provision would not make it.
        let failed = removed.iter().find_map(|o| {
            let why = failure(o).or((o.action.op == Op::Refuse).then_some("refused"))?;
            Some(format!(
                "{} {}: {why}",
                o.action.op.as_str(),
                o.action.reason
            ))
        });
        lines.extend(removed);
        if let Some(step) = failed {
            return Err(RuntimeError::Invalid(format!(
                "{name} is off and not re-created: removing it failed at {step}"
            )));
        }
        // A kept root disk keeps its size: grown here when the config asks (the plan refuses
        // a shrink).
        if !removal.root_disk {
            for step in &p.steps {
                if let Edit::RootDisk { to_gib } = step.edit {
                    hv.resize_volume(&pool.join(disk_name(name)), to_gib << 30)?;
                }
            }
        }
        let made = remake.make(p.inst, removal.root_disk);
        let failed = failure(&made).map(str::to_string);
        lines.push(made);
        if let Some(why) = failed {
            return Err(RuntimeError::Invalid(format!(
                "{name} is not defined again: {why}"
            )));
        }
        if s.cfg.domain_autostart {
            hv.set_autostart(name, true)?;
        }
        Ok(())
    })
}

/// One step: live where the plan says so and the guest runs, always in the persistent
/// definition. `targets`: the disk targets taken so far (a disk added takes the next free one).
fn apply_edit(
    s: &Session,
    hv: &Hypervisor,
    p: &Pending,
    step: &Step,
    targets: &mut Vec<String>,
) -> Result<(), RuntimeError> {
    let name = &p.inst.name;
    let d = &p.observed;
    let live = d.running && step.how == How::Live;
    let cfg = &s.cfg;
    match &step.edit {
        Edit::Vcpus { to } if live => hv.set_vcpus(name, *to, d.max_vcpus, true)?,
        Edit::Vcpus { to } => hv.set_vcpus(name, *to, *to, false)?,
        Edit::Memory { to_mib } if live => hv.set_memory(name, *to_mib, d.max_memory_mib, true)?,
        Edit::Memory { to_mib } => hv.set_memory(name, *to_mib, *to_mib, false)?,
        Edit::RootDisk { to_gib } => {
            let bytes = to_gib << 30;
            if d.running {
                hv.block_resize(name, "vda", bytes)?;
            } else {
                hv.resize_volume(&cfg.instance_pool_path.join(disk_name(name)), bytes)?;
            }
        }
        Edit::DiskAdded { name: disk } => {
            let Some(dd) = p.inst.disks.iter().find(|x| &x.name == disk) else {
                return Err(RuntimeError::Invalid(format!(
                    "data disk {disk} of {name} is not in the config"
                )));
            };
            if d.serial_disks.iter().any(|(serial, _, _)| serial == disk) {
                return Ok(());
            }
            let volume = data_disk_name(name, disk);
            let pool = instance_pool(s, hv)?;
            if !hv.volume_exists(&pool, &volume)? {
                hv.create_volume(&pool, &volume, dd.size_gib << 30, "qcow2")?;
            }
            let target = xml::free_target(targets);
            targets.push(target.clone());
            let spec = DataDiskSpec {
                path: cfg.instance_pool_path.join(&volume),
                serial: disk.clone(),
            };
            hv.attach_device(name, &xml::data_disk_xml(&spec, &target), d.running)?;
        }
        Edit::DiskRemoved { name: disk } => {
            if let Some((serial, target, source)) =
                d.serial_disks.iter().find(|(serial, _, _)| serial == disk)
            {
                let spec = DataDiskSpec {
                    path: source.clone(),
                    serial: serial.clone(),
                };
                hv.detach_device(name, &xml::data_disk_xml(&spec, target), d.running)?;
            }
        }
        Edit::NicAdded { mac } => {
            if d.macs.iter().any(|m| m.eq_ignore_ascii_case(mac)) {
                return Ok(());
            }
            let Some(nic) = p
                .inst
                .nics()
                .into_iter()
                .find(|n| n.mac.eq_ignore_ascii_case(mac))
            else {
                return Err(RuntimeError::Invalid(format!(
                    "NIC {mac} of {name} is not in the config"
                )));
            };
            let spec = xml::InterfaceSpec {
                source: match nic.attach {
                    Attachment::Network(n) => xml::InterfaceSource::Network(n),
                    Attachment::Bridge(b) => xml::InterfaceSource::Bridge(b),
                },
                mac: nic.mac,
                model: nic.model.as_str().to_string(),
            };
            hv.attach_device(name, xml::interfaces_xml(&[spec]).trim(), d.running)?;
        }
        Edit::NicRemoved { mac, network } => {
            if d.macs.iter().any(|m| m.eq_ignore_ascii_case(mac)) {
                let spec = xml::InterfaceSpec::virtio_on(network, mac);
                // libvirt finds the NIC by its MAC; the model need not match.
                let x = xml::interfaces_xml(&[spec]).replace("      <model type='virtio'/>\n", "");
                hv.detach_device(name, x.trim(), d.running)?;
            }
        }
        Edit::Autostart { on } => hv.set_autostart(name, *on)?,
        // A recreate is the whole guest's ([`recreate`]), never one step's.
        Edit::Recreate { .. } | Edit::None => {}
    }
    Ok(())
}

/// Why `o` failed, if it did.
fn failure(o: &Outcome) -> Option<&str> {
    match &o.status {
        Status::Failed(why) => Some(why),
        _ => None,
    }
}

/// The libvirt pool that holds the instance directory (as provision named or found it).
fn instance_pool(s: &Session, hv: &Hypervisor) -> Result<String, HvError> {
    let path = &s.cfg.instance_pool_path;
    Ok(match hv.pool_by_path(path)? {
        Some(p) => p.name,
        None => pool_name_for("instances", path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::Change;

    /// Without the recreate confirmation a guest's recreate steps make one line, naming the
    /// fields once and the variables that apply them; a step kvmprov applies is not in it.
    #[test]
    fn unconfirmed_recreate_steps_are_one_line_naming_the_variables() {
        let change = |field: &str, old: &str, new: &str| Change {
            field: field.into(),
            old: old.into(),
            new: new.into(),
        };
        let steps = plan::plan(
            &[
                change("vcpus", "1", "2"),
                change("firmware", "bios", "uefi"),
                change("ipv4_address", "", "10.0.0.5/24"),
            ],
            &plan::Facts::RUNNING_FOR_TESTS,
        );
        let o = not_recreated(&Instance::for_tests("app-01"), &steps);
        assert_eq!(o.action.op, Op::Skip);
        assert_eq!(
            o.action.reason,
            format!(
                "not re-created: firmware, ipv4_address need the guest re-created; {}",
                plan::RECREATE_HINT
            )
        );
        let fields: Vec<&str> = o.action.drift.iter().map(|s| s.field.as_str()).collect();
        assert_eq!(fields, ["firmware", "ipv4_address"]);
        assert!(!o.failed());
    }
}
