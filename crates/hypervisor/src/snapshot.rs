//! Snapshots of a domain beyond taking one (`Hypervisor::create_snapshot`, in `domain`): list
//! with their facts, revert, delete; and which libvirt can snapshot a UEFI guest at all.
//!
//! kvmprov's snapshots are libvirt's internal ones (in the qcow2 disks, with the memory of a
//! running guest): no files of their own, so cleanup removes them with the domain (undefine
//! drops their metadata, deleting the disk drops their data).

use serde::Serialize;
use virt::domain::Domain;
use virt::domain_snapshot::DomainSnapshot;

use crate::error::lv;
use crate::xml::{self, SnapshotFacts};
use crate::{HvError, Hypervisor};

/// The first libvirt that takes, reverts and deletes internal snapshots of a UEFI guest: 10.9
/// takes them when the NVRAM is qcow2 (before, "internal snapshots of a VM with pflash based
/// firmware are not supported"), 10.10 fixed reverting to them and deleting them (NEWS).
pub const UEFI_SNAPSHOT_LIBVIRT: (u32, u32, u32) = (10, 10, 0);

/// Whether libvirt `version` (`"11.3.0"`, as `HostInfo::libvirt_version`) snapshots UEFI
/// guests whose NVRAM is qcow2. An unreadable version counts as too old.
pub fn takes_uefi_snapshots(version: &str) -> bool {
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next(), parts.next().unwrap_or(Ok(0))) {
        (Some(Ok(a)), Some(Ok(b)), Ok(c)) => (a, b, c) >= UEFI_SNAPSHOT_LIBVIRT,
        _ => false,
    }
}

/// `UEFI_SNAPSHOT_LIBVIRT` as people write it (`10.10.0`).
pub fn uefi_snapshot_libvirt() -> String {
    let (a, b, c) = UEFI_SNAPSHOT_LIBVIRT;
    format!("{a}.{b}.{c}")
}

/// One snapshot of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    #[serde(flatten)]
    pub facts: SnapshotFacts,
    /// libvirt's current snapshot of the domain (the last taken or reverted to).
    pub current: bool,
}

impl Hypervisor {
    fn snapshot_of(
        &self,
        d: &Domain,
        name: &str,
        snapshot: &str,
    ) -> Result<DomainSnapshot, HvError> {
        Domain::lookup_snapshot_by_name(d, snapshot, 0)
            .map_err(lv(format!("look up snapshot {snapshot} of domain {name}")))
    }

    /// The domain's snapshots with their facts, oldest first (then by name).
    pub fn snapshot_infos(&self, name: &str) -> Result<Vec<SnapshotInfo>, HvError> {
        let d = self
            .conn
            .lookup_domain_by_name(name)
            .map_err(lv(format!("look up domain {name}")))?;
        let mut out = Vec::new();
        for s in d
            .list_all_snapshots(0)
            .map_err(lv(format!("list snapshots of domain {name}")))?
        {
            let what = format!("read a snapshot of domain {name}");
            let facts = xml::parse_snapshot_xml(&s.xml_desc(0).map_err(lv(what.clone()))?)?;
            let current = s.is_current(0).map_err(lv(what))?;
            out.push(SnapshotInfo { facts, current });
        }
        out.sort_by(|a, b| (a.facts.created, &a.facts.name).cmp(&(b.facts.created, &b.facts.name)));
        Ok(out)
    }

    /// Bring the domain back to the snapshot: its disks, and for a snapshot of a running guest
    /// its memory, so the guest runs on from that moment (a snapshot of a shut-off guest leaves
    /// it shut off).
    pub fn revert_snapshot(&self, name: &str, snapshot: &str) -> Result<(), HvError> {
        let d = self
            .conn
            .lookup_domain_by_name(name)
            .map_err(lv(format!("look up domain {name}")))?;
        self.snapshot_of(&d, name, snapshot)?
            .revert(0)
            .map_err(lv(format!("revert domain {name} to snapshot {snapshot}")))
    }

    /// Delete one snapshot (its metadata and its data in the disks); its children, if any,
    /// keep theirs.
    pub fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<(), HvError> {
        let d = self
            .conn
            .lookup_domain_by_name(name)
            .map_err(lv(format!("look up domain {name}")))?;
        self.snapshot_of(&d, name, snapshot)?
            .delete(0)
            .map_err(lv(format!("delete snapshot {snapshot} of domain {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uefi_snapshots_from_libvirt_10_10() {
        for old in ["9.0.0", "10.9.0", "10.9.99", "", "x.y.z", "10"] {
            assert!(!takes_uefi_snapshots(old), "{old}");
        }
        for new in ["10.10.0", "11.3.0", "12.0.0", "10.10"] {
            assert!(takes_uefi_snapshots(new), "{new}");
        }
        assert_eq!(uefi_snapshot_libvirt(), "10.10.0");
    }
}
