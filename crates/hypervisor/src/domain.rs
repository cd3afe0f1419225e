//! Domains: define, start, stop, undefine, snapshots, and the guest agent's addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::Serialize;
use virt::domain::Domain;

use crate::error::{infos_of_listed, lv, none_if_missing};
use crate::xml;
use crate::{HvError, Hypervisor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DomainState {
    Running,
    Paused,
    ShutOff,
    Crashed,
    /// Blocked, shutting down, suspended, no state: treat as "on".
    Other,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainInfo {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    /// Defined (survives a stop), as opposed to transient.
    pub persistent: bool,
}

/// Every domain of a host from one listing, each with its state, persistence and autostart,
/// read by libvirt's filtered listings: a fixed number of calls per host however many
/// domains it has (issue 27: a re-run with everything present made 8 calls per instance).
pub struct DomainListing {
    domains: BTreeMap<String, ListedDomain>,
}

/// One domain as [`Hypervisor::list_domains`] saw it.
pub struct ListedDomain {
    handle: Domain,
    pub state: DomainState,
    pub persistent: bool,
    pub autostart: bool,
}

impl DomainListing {
    pub fn get(&self, name: &str) -> Option<&ListedDomain> {
        self.domains.get(name)
    }
}

impl Hypervisor {
    /// All domains, with state, persistence and autostart: six listings (all, one per state
    /// running / paused / shut off, persistent, autostart), and a state call only for a domain
    /// in none of those states (crashed, suspended, or one whose state changed meanwhile).
    pub fn list_domains(&self) -> Result<DomainListing, HvError> {
        use virt_sys as sys;
        let named =
            |flags: sys::virConnectListAllDomainsFlags| -> Result<BTreeSet<String>, HvError> {
                Ok(self
                    .conn
                    .list_all_domains(flags)
                    .map_err(self.lv("list domains"))?
                    .iter()
                    .filter_map(|d| d.name().ok())
                    .collect())
            };
        let all = self
            .conn
            .list_all_domains(0)
            .map_err(self.lv("list domains"))?;
        let running = named(sys::VIR_CONNECT_LIST_DOMAINS_RUNNING)?;
        let paused = named(sys::VIR_CONNECT_LIST_DOMAINS_PAUSED)?;
        let shutoff = named(sys::VIR_CONNECT_LIST_DOMAINS_SHUTOFF)?;
        let persistent = named(sys::VIR_CONNECT_LIST_DOMAINS_PERSISTENT)?;
        let autostart = named(sys::VIR_CONNECT_LIST_DOMAINS_AUTOSTART)?;
        let mut domains = BTreeMap::new();
        for handle in all {
            let name = handle.name().map_err(lv("read domain name"))?;
            let state = if running.contains(&name) {
                DomainState::Running
            } else if paused.contains(&name) {
                DomainState::Paused
            } else if shutoff.contains(&name) {
                DomainState::ShutOff
            } else {
                let what = format!("read domain {name}");
                match none_if_missing(handle.state().map_err(self.lv(what)))? {
                    Some((state, _reason)) => map_state(state),
                    // Gone since the listing.
                    None => continue,
                }
            };
            let listed = ListedDomain {
                state,
                persistent: persistent.contains(&name),
                autostart: autostart.contains(&name),
                handle,
            };
            domains.insert(name, listed);
        }
        Ok(DomainListing { domains })
    }

    /// A listed domain's persistent definition, as [`Hypervisor::domain_xml`] reads it (no
    /// lookup: the listing holds the domain).
    pub fn listed_domain_xml(&self, name: &str, d: &ListedDomain) -> Result<String, HvError> {
        d.handle
            .xml_desc(0)
            .map_err(self.lv(format!("read XML of domain {name}")))
    }

    /// The domain's state, `None` when there is no such domain: a lookup and the state, where
    /// [`Hypervisor::domain`] reads its persistence too.
    pub fn domain_state(&self, name: &str) -> Result<Option<DomainState>, HvError> {
        let Some(d) = none_if_missing(self.lookup_domain(name))? else {
            return Ok(None);
        };
        let what = format!("read domain {name}");
        Ok(none_if_missing(d.state().map_err(self.lv(what)))?.map(|(s, _)| map_state(s)))
    }

    pub(crate) fn lookup_domain(&self, name: &str) -> Result<Domain, HvError> {
        self.conn
            .lookup_domain_by_name(name)
            .map_err(self.lv(format!("look up domain {name}")))
    }

    /// All domains, running or not, sorted by name.
    pub fn domains(&self) -> Result<Vec<DomainInfo>, HvError> {
        let listed = self
            .conn
            .list_all_domains(0)
            .map_err(self.lv("list domains"))?;
        infos_of_listed(listed, |o| domain_info(self, o), |i| &i.name)
    }

    /// The names of the running (active) domains: one call.
    pub fn active_domain_names(&self) -> Result<BTreeSet<String>, HvError> {
        self.conn
            .list_all_domains(virt_sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            .map_err(self.lv("list domains"))?
            .iter()
            .map(|d| d.name().map_err(lv("read domain name")))
            .collect()
    }

    /// The names of all domains, running or not, sorted: one call, where `domains` costs two
    /// more a domain.
    pub fn domain_names(&self) -> Result<Vec<String>, HvError> {
        let mut out = self
            .conn
            .list_all_domains(0)
            .map_err(self.lv("list domains"))?
            .iter()
            .map(|d| d.name().map_err(lv("read domain name")))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        Ok(out)
    }

    pub fn domain(&self, name: &str) -> Result<Option<DomainInfo>, HvError> {
        match none_if_missing(self.lookup_domain(name))? {
            Some(d) => none_if_missing(domain_info(self, &d)),
            None => Ok(None),
        }
    }

    /// The domain's persistent definition as libvirt stores it.
    pub fn domain_xml(&self, name: &str) -> Result<String, HvError> {
        self.lookup_domain(name)?
            .xml_desc(0)
            .map_err(self.lv(format!("read XML of domain {name}")))
    }

    /// Define (or redefine) a persistent domain.
    pub fn define(&self, xml: &str) -> Result<(), HvError> {
        self.conn
            .define_domain_xml(xml)
            .map(|_| ())
            .map_err(self.lv("define domain"))
    }

    /// Start a shut-off domain; a paused one is resumed (it is active: a start would fail).
    pub fn start(&self, name: &str) -> Result<(), HvError> {
        let d = self.lookup_domain(name)?;
        let what = format!("start domain {name}");
        let (state, _reason) = d.state().map_err(self.lv(what.clone()))?;
        if map_state(state) == DomainState::Paused {
            d.resume()
                .map(|_| ())
                .map_err(self.lv(format!("resume domain {name}")))
        } else {
            d.create().map(|_| ()).map_err(self.lv(what))
        }
    }

    pub fn set_autostart(&self, name: &str, on: bool) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .set_autostart(on)
            .map(|_| ())
            .map_err(self.lv(format!("set autostart of domain {name}")))
    }

    /// Ask the guest to power off (libvirt's default: its agent when one answers, else the
    /// ACPI power button); returns at once.
    pub fn shutdown(&self, name: &str) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .shutdown()
            .map(|_| ())
            .map_err(self.lv(format!("shut down domain {name}")))
    }

    /// Ask the guest to reboot, as `shutdown` asks it to power off (its agent when one
    /// answers, else the ACPI power button, after which libvirt starts it again); returns at
    /// once. A guest that ignores both does not reboot.
    pub fn reboot(&self, name: &str) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .reboot(0)
            .map(|_| ())
            .map_err(lv(format!("reboot domain {name}")))
    }

    /// Reset at once, like the reset button: no guest shutdown.
    pub fn reset(&self, name: &str) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .reset()
            .map(|_| ())
            .map_err(lv(format!("reset domain {name}")))
    }

    /// Power off at once.
    pub fn destroy(&self, name: &str) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .destroy()
            .map(|_| ())
            .map_err(self.lv(format!("destroy domain {name}")))
    }

    /// Undefine with snapshot metadata, always keeping NVRAM (see `undefine_attempts`).
    /// `managed_save`: also remove the managed-save image — only for domains kvmprov created;
    /// for any other domain one is the operator's, and this fails naming
    /// `virsh managedsave-remove`. Disks are left alone.
    pub fn undefine(&self, name: &str, managed_save: bool) -> Result<(), HvError> {
        let d = self.lookup_domain(name)?;
        let what = format!("undefine domain {name}");
        if !managed_save {
            let saved = match d.has_managed_save(0).map_err(self.lv(what.clone())) {
                Ok(saved) => saved,
                // A driver without managed save has none to lose.
                Err(e) if e.is_unsupported() => false,
                Err(e) => return Err(e),
            };
            if saved {
                return Err(HvError::ForeignManagedSave {
                    name: name.to_string(),
                });
            }
        }
        let attempts = undefine_attempts(managed_save);
        let mut last = None;
        for flags in attempts {
            match d.undefine_flags(flags).map_err(self.lv(what.clone())) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_unsupported() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(HvError::Invalid {
            what,
            reason: "no undefine call was tried".into(),
        }))
    }

    /// Snapshot names, sorted.
    pub fn snapshots(&self, name: &str) -> Result<Vec<String>, HvError> {
        let d = self.lookup_domain(name)?;
        let mut out = Vec::new();
        for s in d
            .list_all_snapshots(0)
            .map_err(self.lv(format!("list snapshots of domain {name}")))?
        {
            out.push(s.name().map_err(lv("read snapshot name"))?);
        }
        out.sort();
        Ok(out)
    }

    /// Take a snapshot; atomic, so a failure leaves no half snapshot behind.
    pub fn create_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        description: &str,
    ) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .create_snapshot_xml(
                &xml::snapshot_xml(snapshot, description),
                virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC,
            )
            .map(|_| ())
            .map_err(self.lv(format!("create snapshot {snapshot} of domain {name}")))
    }

    /// The CPU seconds a running domain has used so far. For QEMU that is its process's user
    /// plus system time, all threads (vCPUs, emulation, I/O): under TCG, what a boot costs
    /// the host.
    pub fn cpu_seconds(&self, name: &str) -> Result<f64, HvError> {
        let info = self
            .lookup_domain(name)?
            .info()
            .map_err(lv(format!("read CPU time of domain {name}")))?;
        Ok(info.cpu_time as f64 / 1e9)
    }

    /// The guest agent's IPv4 for the interface with `mac` (needs qemu-guest-agent running).
    pub fn agent_ipv4(&self, name: &str, mac: &str) -> Result<Option<Ipv4Addr>, HvError> {
        let ifaces = self
            .lookup_domain(name)?
            .interface_addresses(virt_sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
            .map_err(self.lv(format!("ask the guest agent of domain {name}")))?;
        Ok(ifaces
            .iter()
            .filter(|i| {
                i.hwaddr
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(mac))
            })
            .flat_map(|i| i.addrs.iter())
            .find_map(|a| a.addr.parse::<Ipv4Addr>().ok()))
    }
}

/// The flags `undefine` tries, most wanted first. NVRAM is always kept
/// (VIR_DOMAIN_UNDEFINE_NVRAM would delete a file outside kvmprov's pools); the managed-save
/// image goes only when asked. When a driver rejects a flag the next set lacks it, newest
/// flag first (KEEP_NVRAM: libvirt 2.3): libvirt then refuses to undefine a domain with NVRAM,
/// snapshots or a managed save rather than delete them.
fn undefine_attempts(managed_save: bool) -> [u32; 4] {
    use virt_sys::{
        VIR_DOMAIN_UNDEFINE_KEEP_NVRAM as KEEP_NVRAM,
        VIR_DOMAIN_UNDEFINE_MANAGED_SAVE as MANAGED_SAVE,
        VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA as SNAPSHOTS,
    };
    let flags = SNAPSHOTS | KEEP_NVRAM | if managed_save { MANAGED_SAVE } else { 0 };
    [
        flags,
        flags & !KEEP_NVRAM,
        flags & !(KEEP_NVRAM | SNAPSHOTS),
        0,
    ]
}

fn domain_info(hv: &Hypervisor, d: &Domain) -> Result<DomainInfo, HvError> {
    let name = d.name().map_err(lv("read domain name"))?;
    let what = format!("read domain {name}");
    let (state, _reason) = d.state().map_err(hv.lv(what.clone()))?;
    Ok(DomainInfo {
        uuid: d.uuid_string().map_err(lv(what.clone()))?,
        state: map_state(state),
        persistent: d.is_persistent().map_err(hv.lv(what))?,
        name,
    })
}

fn map_state(s: virt::domain::DomainStateEnum) -> DomainState {
    use virt::domain::DomainState as S;
    match s {
        virt::enumutil::Enum::Known(S::Running) => DomainState::Running,
        virt::enumutil::Enum::Known(S::Paused) => DomainState::Paused,
        virt::enumutil::Enum::Known(S::Shutoff) => DomainState::ShutOff,
        virt::enumutil::Enum::Known(S::Crashed) => DomainState::Crashed,
        _ => DomainState::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_undefine_deleted_nvram_and_managed_save_it_did_not_make() {
        use virt_sys::{
            VIR_DOMAIN_UNDEFINE_KEEP_NVRAM as KEEP_NVRAM,
            VIR_DOMAIN_UNDEFINE_MANAGED_SAVE as MANAGED_SAVE, VIR_DOMAIN_UNDEFINE_NVRAM as NVRAM,
        };
        for ours in [true, false] {
            let attempts = undefine_attempts(ours);
            assert!(attempts.iter().all(|f| f & NVRAM == 0), "{attempts:?}");
            assert_ne!(attempts[0] & KEEP_NVRAM, 0);
            assert_eq!(attempts[0] & MANAGED_SAVE != 0, ours);
            assert!(attempts.iter().all(|f| f & MANAGED_SAVE == 0 || ours));
        }
    }
}
