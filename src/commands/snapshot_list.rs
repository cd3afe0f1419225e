//! `kvmprov snapshot list [NAME…]`: the snapshots of the declared instances (or of those
//! named), each hypervisor asked in parallel.

use kvmprov_hypervisor::HvError;

use crate::config::Instance;
use crate::exit::ExitStatus;
use crate::output::json::InstanceSnapshots;
use crate::parallel::parallel;
use crate::report::error_chain;
use crate::settings::Session;

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "snapshot list";

/// The rows of one hypervisor's chosen instances.
fn host_rows(s: &Session, chosen: &[&Instance]) -> Result<Vec<InstanceSnapshots>, String> {
    let mine: Vec<&Instance> = chosen
        .iter()
        .copied()
        .filter(|i| s.cfg.instance(&i.name).is_some())
        .collect();
    if mine.is_empty() {
        return Ok(Vec::new());
    }
    let hv = s.connect().map_err(|e| error_chain(&e))?;
    let row = |i: &&Instance| -> Result<InstanceSnapshots, HvError> {
        let defined = hv.domain(&i.name)?.is_some();
        Ok(InstanceSnapshots {
            name: i.name.clone(),
            host: s.cfg.libvirt_uri.clone(),
            defined,
            snapshots: if defined {
                hv.snapshot_infos(&i.name)?
            } else {
                Vec::new()
            },
        })
    };
    mine.iter()
        .map(row)
        .collect::<Result<Vec<_>, HvError>>()
        .map_err(|e| error_chain(&e))
}

pub fn run(s: &Session, names: &[String]) -> ExitStatus {
    // Every name is checked before any hypervisor is asked.
    let mut chosen = Vec::new();
    for name in names {
        match s.cfg.instance(name) {
            Some(i) => chosen.push(i),
            None => {
                let e = s.cfg.undeclared(name).to_string();
                s.printer.failure(Some(NAME), &e);
                return ExitStatus::Usage;
            }
        }
    }
    if names.is_empty() {
        chosen = s.cfg.instances.iter().collect();
    }
    let hosts = s.per_host();
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let results = parallel(&hosts, hosts.len(), |h| host_rows(h, &chosen));
    for (h, result) in hosts.iter().zip(results) {
        match result {
            Ok(r) => rows.extend(r),
            Err(e) => {
                let e = format!("{}: {e}", h.cfg.libvirt_uri);
                s.printer.error(&e);
                errors.push(e);
            }
        }
    }
    // The config's order, whatever order the hosts answered in.
    rows.sort_by_key(|r| chosen.iter().position(|i| i.name == r.name));
    s.printer.snapshots(&rows, &errors);
    ExitStatus::failed_if(!errors.is_empty())
}
