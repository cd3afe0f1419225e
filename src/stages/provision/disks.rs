//! An instance's data disks in provision: the pure plan of each (create it, use it as it is,
//! or report that it differs) and its line. A data disk volume that exists is never
//! re-created, resized or wiped: it may hold the only copy of the guest's data.

use std::collections::BTreeMap;

use crate::config::{DataDisk, Instance};
use crate::layout::data_disk_name;
use crate::report::{Action, Op};

/// What provision does with one data disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskPlan {
    /// Missing: created empty with the domain.
    Create,
    /// There, of the configured size: attached as it is.
    Keep,
    /// There, with another virtual size (bytes): attached as it is, the difference reported.
    OtherSize(u64),
    /// Missing although the domain exists: nothing is created (an existing domain is never
    /// changed); re-creating the domain creates it.
    MissingUnderDomain,
}

/// Pure: each of `inst`'s data disks against the instance pool's volumes (name → virtual
/// size); `domain_exists`: the instance's domain is defined already.
pub fn plan_disks<'a>(
    inst: &'a Instance,
    volumes: &BTreeMap<String, u64>,
    domain_exists: bool,
) -> Vec<(&'a DataDisk, DiskPlan)> {
    inst.disks
        .iter()
        .map(|d| {
            let plan = match volumes.get(&data_disk_name(&inst.name, &d.name)) {
                Some(&size) if size == d.size_gib << 30 => DiskPlan::Keep,
                Some(&size) => DiskPlan::OtherSize(size),
                None if domain_exists => DiskPlan::MissingUnderDomain,
                None => DiskPlan::Create,
            };
            (d, plan)
        })
        .collect()
}

/// The line of one data disk's plan.
pub fn describe_disk(inst: &Instance, d: &DataDisk, p: &DiskPlan) -> Action {
    let file = data_disk_name(&inst.name, &d.name);
    let what = format!("data disk {file} ({}, {})", d.summary(), d.by_id());
    match p {
        DiskPlan::Create => Action::new(&inst.name, Op::Create, format!("{what}: missing, created empty")),
        DiskPlan::Keep => Action::new(
            &inst.name,
            Op::Ok,
            format!("{what}: exists, used as it is"),
        ),
        DiskPlan::OtherSize(size) => Action::new(
            &inst.name,
            Op::Drift,
            format!(
                "{what}: exists with {} GiB (config {}), used as it is, never resized by kvmprov",
                size_gib(*size),
                d.size_gib
            ),
        ),
        DiskPlan::MissingUnderDomain => Action::new(
            &inst.name,
            Op::Drift,
            format!("{what}: missing, and the domain exists: created and hot-plugged when drift is applied (kvm_drift_apply_confirmed=true), else when the domain is re-created"),
        ),
    }
}

/// A size in GiB, with a fraction only when it has one.
fn size_gib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        (bytes >> 30).to_string()
    } else {
        format!("{:.2}", bytes as f64 / (1u64 << 30) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Filesystem;

    fn inst() -> Instance {
        Instance {
            disks: vec![
                DataDisk {
                    name: "data".into(),
                    size_gib: 2,
                    filesystem: Some(Filesystem::Ext4),
                    mount: Some("/srv/data".into()),
                    mount_options: None,
                },
                DataDisk {
                    name: "raw".into(),
                    size_gib: 1,
                    filesystem: None,
                    mount: None,
                    mount_options: None,
                },
            ],
            ..Instance::for_tests("db")
        }
    }

    #[test]
    fn missing_disks_are_created_existing_ones_used_as_they_are() {
        let i = inst();
        let none = BTreeMap::new();
        let plans: Vec<DiskPlan> = plan_disks(&i, &none, false)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(plans, vec![DiskPlan::Create, DiskPlan::Create]);
        let line = describe_disk(&i, &i.disks[0], &DiskPlan::Create).reason;
        assert_eq!(
            line,
            "data disk db_data.qcow2 (data 2 GiB ext4 on /srv/data, /dev/disk/by-id/virtio-data): missing, created empty"
        );

        let there = BTreeMap::from([
            ("db_data.qcow2".to_string(), 2u64 << 30),
            ("db_raw.qcow2".to_string(), 3u64 << 30),
        ]);
        let plans: Vec<DiskPlan> = plan_disks(&i, &there, false)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(plans, vec![DiskPlan::Keep, DiskPlan::OtherSize(3 << 30)]);
        let line = describe_disk(&i, &i.disks[1], &plans[1]).reason;
        assert!(line.contains("exists with 3 GiB (config 1)"), "{line}");

        let plans: Vec<DiskPlan> = plan_disks(&i, &none, true)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(plans, vec![DiskPlan::MissingUnderDomain; 2]);
    }
}
