//! `kvmprov snapshot create|revert|delete NAME SNAP`: one snapshot of one declared instance,
//! on the instance's hypervisor. The decision is `crate::snapshot::plan`'s; this file observes,
//! locks (only when it changes something) and applies.
//!
//! `revert` throws away what the guest's disks got since the snapshot, so it is only planned
//! unless `--yes` is given (like cleanup without `kvm_cleanup_confirmed`): the plan is printed
//! and the exit status is 0.

use kvmprov_hypervisor::{xml, DomainState, HvError, Hypervisor};

use crate::config::{valid_snapshot_name, Instance};
use crate::exit::ExitStatus;
use crate::lock::RunLock;
use crate::report::{run as run_action, Action, Op, Outcome, StageReport};
use crate::settings::Session;
use crate::snapshot::{plan, Observed, UefiFacts, Verb};
use crate::stages::StageError;

/// The command's name in its `--output json` envelope.
pub fn name(verb: Verb) -> &'static str {
    match verb {
        Verb::Create => "snapshot create",
        Verb::Revert => "snapshot revert",
        Verb::Delete => "snapshot delete",
    }
}

/// The usage error for a name that is not a declared instance (exit 2, nothing asked).
pub fn run(s: &Session, verb: Verb, name: &str, snap: &str, yes: bool) -> ExitStatus {
    let command = self::name(verb);
    let Some(inst) = s.cfg.instance(name) else {
        s.printer
            .failure(Some(command), &s.cfg.undeclared(name).to_string());
        return ExitStatus::Usage;
    };
    if let Err(m) = valid_snapshot_name(snap) {
        let e = format!("snapshot name `{snap}` {m}");
        s.printer.failure(Some(command), &e);
        return ExitStatus::Usage;
    }
    let s = &s.for_host(&inst.libvirt_uri);
    let plan_only = s.check || (verb == Verb::Revert && !yes);
    s.printer.stage_header(command, plan_only);
    let result = on_host(s, inst, verb, snap, plan_only);
    let (reports, error) = match result {
        Ok(o) => {
            s.printer.outcome(&o);
            let mut r = StageReport::new("snapshot");
            r.outcomes.push(o);
            (vec![r], None)
        }
        Err(e) => (Vec::new(), Some(e)),
    };
    s.printer
        .stages(command, plan_only, &reports, error.as_ref());
    let failed = error.is_some() || reports.iter().any(StageReport::failed);
    if plan_only && !s.check && !failed {
        s.printer
            .note("nothing was changed: add --yes to revert (the disks' changes since the snapshot are lost)");
    }
    ExitStatus::failed_if(failed)
}

/// Observe the instance, plan, and apply unless only planning (under the hypervisor's lock).
fn on_host(
    s: &Session,
    inst: &Instance,
    verb: Verb,
    snap: &str,
    plan_only: bool,
) -> Result<Outcome, StageError> {
    let _lock = if plan_only {
        None
    } else {
        Some(RunLock::acquire(s)?)
    };
    let uri = &s.cfg.libvirt_uri;
    let connected = |source| StageError::Connect {
        uri: uri.clone(),
        source,
    };
    let hv = s.connect().map_err(connected)?;
    let observed = observe(&hv, inst).map_err(connected)?;
    let action = match plan(verb, &inst.name, uri, snap, &observed) {
        Ok(a) => a,
        Err(why) => {
            let asked = format!("{} snapshot `{snap}`", verb.as_str());
            return Ok(Outcome::failure(
                Action::new(&inst.name, Op::Refuse, asked),
                why,
            ));
        }
    };
    if plan_only {
        return Ok(Outcome::planned(action));
    }
    Ok(run_action(action, || match verb {
        Verb::Create => hv.create_snapshot(&inst.name, snap, "taken by kvmprov snapshot create"),
        Verb::Revert => hv.revert_snapshot(&inst.name, snap),
        Verb::Delete => hv.delete_snapshot(&inst.name, snap),
    }))
}

/// What the hypervisor holds for the instance: the domain, its state and snapshots, and for a
/// UEFI guest the facts that decide whether it can be snapshotted.
fn observe(hv: &Hypervisor, inst: &Instance) -> Result<Observed, HvError> {
    let Some(dom) = hv.domain(&inst.name)? else {
        return Ok(Observed::default());
    };
    let domain_xml = hv.domain_xml(&inst.name)?;
    let uefi = if xml::parse_domain_xml(&domain_xml)?
        .firmware
        .starts_with("uefi")
    {
        Some(UefiFacts {
            libvirt_version: hv.host_info()?.libvirt_version,
            nvram_format: xml::nvram_format(&domain_xml)?.unwrap_or_else(|| "raw".into()),
        })
    } else {
        None
    };
    Ok(Observed {
        defined: true,
        running: dom.state == DomainState::Running,
        snapshots: hv.snapshot_infos(&inst.name)?,
        uefi,
    })
}
