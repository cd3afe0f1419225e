//! Drift's recreate, put together from the stages that own each part: cleanup removes the
//! guest's domain and files by its rules, provision makes the instance again as it makes a
//! missing one. The runtime stage's rollout decides when (one guest at a time) through
//! [`Remake`]; this file only hands it those parts, so no stage imports another.

use std::path::PathBuf;
use std::sync::OnceLock;

use kvmprov_hypervisor::{HvError, Hypervisor};

use super::handoff::Handoff;
use super::runtime::drift::Remake;
use super::{cleanup, provision};
use crate::config::Instance;
use crate::report::{error_chain, Outcome};
use crate::settings::Session;

/// The parts on one hypervisor. Provision is prepared (observed, planned, its state opened) at
/// the first guest that needs it: a rollout that re-creates nothing never prepares it.
pub struct Remaker<'a> {
    s: &'a Session,
    hv: &'a Hypervisor,
    handoff: &'a Handoff,
    prepared: OnceLock<Result<provision::Prepared<'a>, String>>,
}

impl<'a> Remaker<'a> {
    pub fn new(s: &'a Session, hv: &'a Hypervisor, handoff: &'a Handoff) -> Self {
        Remaker {
            s,
            hv,
            handoff,
            prepared: OnceLock::new(),
        }
    }

    fn prepared(&self) -> Result<&provision::Prepared<'a>, String> {
        self.prepared
            .get_or_init(|| {
                provision::prepare(self.s, self.hv, self.handoff).map_err(|e| error_chain(&e))
            })
            .as_ref()
            .map_err(|why| format!("provision could not be prepared: {why}"))
    }
}

impl Remake for Remaker<'_> {
    fn creatable(&self, inst: &Instance, disk: bool) -> Result<(), String> {
        self.prepared()?.creatable(inst, disk)
    }

    fn remove(&self, name: &str, files: &[PathBuf]) -> Result<Vec<Outcome>, HvError> {
        cleanup::remove_for_recreate(&self.s.cfg, self.hv, name, files, &|o| {
            self.s.printer.outcome(o)
        })
    }

    fn make(&self, inst: &Instance, disk: bool) -> Outcome {
        match self.prepared() {
            Ok(p) => p.recreate(inst, disk),
            // Not reached: `creatable` prepared it first, or refused.
            Err(why) => Outcome::failure(
                crate::report::Action::new(&inst.name, crate::report::Op::Create, "not made again"),
                why,
            ),
        }
    }
}
