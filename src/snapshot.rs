//! Snapshots of declared instances, decided without I/O: what `kvmprov snapshot create`,
//! `revert` and `delete` would do to one instance given what the hypervisor holds, and whether
//! a hypervisor can snapshot a UEFI guest at all (also asked by preflight for `snapshot_name`).
//!
//! Snapshots are libvirt's internal ones: the disks' state inside their qcow2 files and, for a
//! running guest, its memory. A UEFI guest's variable store (NVRAM) must be a qcow2 file too,
//! which libvirt supports from 10.10 (`kvmprov_hypervisor::UEFI_SNAPSHOT_LIBVIRT`).

use kvmprov_hypervisor::{takes_uefi_snapshots, uefi_snapshot_libvirt, SnapshotInfo};

use crate::report::{Action, Op};

/// What a `kvmprov snapshot` verb does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Revert,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Revert => "revert",
            Verb::Delete => "delete",
        }
    }
}

/// A UEFI guest's facts that decide whether libvirt can snapshot it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiFacts {
    /// The hypervisor's libvirt, as `HostInfo::libvirt_version` (`9.0.0`).
    pub libvirt_version: String,
    /// The format of the domain's NVRAM (`raw`, `qcow2`).
    pub nvram_format: String,
}

/// What the hypervisor holds for one instance.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub defined: bool,
    pub running: bool,
    pub snapshots: Vec<SnapshotInfo>,
    /// `Some` for a domain that boots with UEFI.
    pub uefi: Option<UefiFacts>,
}

/// Why the libvirt on `uri` cannot snapshot the UEFI guest `instance`, if it cannot: the one
/// sentence names the version and what would work.
pub fn uefi_refusal(instance: &str, uri: &str, libvirt_version: &str) -> Option<String> {
    (!takes_uefi_snapshots(libvirt_version)).then(|| {
        format!(
            "{instance} boots with UEFI, and libvirt {libvirt_version} on {uri} takes no internal snapshots of UEFI guests: libvirt {} or newer (Debian 13 has 11.3) takes them, with the qcow2 NVRAM kvmprov gives UEFI instances with snapshot_name there; or use firmware: bios",
            uefi_snapshot_libvirt()
        )
    })
}

/// The action of `verb` for snapshot `snap` of `instance` on `uri`: `Ok` what to do, `Err` why
/// it cannot be done, one sentence.
pub fn plan(
    verb: Verb,
    instance: &str,
    uri: &str,
    snap: &str,
    o: &Observed,
) -> Result<Action, String> {
    let refuse = |why: String| Err(why);
    if !o.defined {
        return refuse(format!(
            "{instance} is not defined on {uri}: provision it first"
        ));
    }
    let existing = o.snapshots.iter().find(|s| s.facts.name == snap);
    let names = || {
        let names: Vec<&str> = o.snapshots.iter().map(|s| s.facts.name.as_str()).collect();
        if names.is_empty() {
            "it has none".to_string()
        } else {
            format!("it has {}", names.join(", "))
        }
    };
    match (verb, existing) {
        (Verb::Create, Some(_)) => refuse(format!(
            "{instance} already has a snapshot `{snap}`: delete it first or choose another name"
        )),
        (Verb::Create, None) => {
            if let Some(u) = &o.uefi {
                if let Some(why) = uefi_refusal(instance, uri, &u.libvirt_version) {
                    return refuse(why);
                }
                if u.nvram_format != "qcow2" {
                    return refuse(format!(
                        "{instance} boots with UEFI and its NVRAM is {}: libvirt snapshots a UEFI guest only with a qcow2 NVRAM, which kvmprov gives UEFI instances with snapshot_name on libvirt {} or newer; set snapshot_name and re-create the domain (cleanup, then provision)",
                        u.nvram_format,
                        uefi_snapshot_libvirt()
                    ));
                }
            }
            let what = if o.running {
                "running: disks and memory"
            } else {
                "shut off: disks"
            };
            Ok(Action::new(
                instance,
                Op::Snapshot,
                format!("take snapshot `{snap}` ({what})"),
            ))
        }
        (Verb::Revert | Verb::Delete, None) => refuse(format!(
            "{instance} has no snapshot `{snap}` on {uri} ({})",
            names()
        )),
        (Verb::Revert, Some(s)) => {
            let (then, after) = if s.facts.state == "running" {
                ("while running", "it runs on from that moment")
            } else {
                ("while shut off", "it is shut off, as it was then")
            };
            Ok(Action::new(
                instance,
                Op::Revert,
                format!(
                    "revert to snapshot `{snap}` (taken {then}): what its disks got since is lost; {after}"
                ),
            ))
        }
        (Verb::Delete, Some(_)) => Ok(Action::new(
            instance,
            Op::Delete,
            format!("delete snapshot `{snap}` (the guest keeps its current state)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use kvmprov_hypervisor::xml::SnapshotFacts;

    use super::*;

    fn snap(name: &str, state: &str) -> SnapshotInfo {
        SnapshotInfo {
            facts: SnapshotFacts {
                name: name.into(),
                description: None,
                state: state.into(),
                created: Some(1),
            },
            current: false,
        }
    }

    fn defined(snapshots: Vec<SnapshotInfo>) -> Observed {
        Observed {
            defined: true,
            running: true,
            snapshots,
            uefi: None,
        }
    }

    const URI: &str = "qemu:///system";

    #[test]
    fn each_verb_on_a_bios_guest() {
        let o = defined(vec![snap("base", "running")]);
        let a = plan(Verb::Create, "app-01", URI, "next", &o).unwrap();
        assert_eq!((a.op, a.target.as_str()), (Op::Snapshot, "app-01"));
        assert!(a.reason.contains("disks and memory"), "{}", a.reason);
        let a = plan(Verb::Revert, "app-01", URI, "base", &o).unwrap();
        assert_eq!(a.op, Op::Revert);
        assert!(a.reason.contains("it runs on"), "{}", a.reason);
        let a = plan(Verb::Delete, "app-01", URI, "base", &o).unwrap();
        assert_eq!(a.op, Op::Delete);
        let stopped = defined(vec![snap("cold", "shutoff")]);
        let a = plan(Verb::Revert, "app-01", URI, "cold", &stopped).unwrap();
        assert!(a.reason.contains("shut off"), "{}", a.reason);
    }

    #[test]
    fn refusals_say_why_in_one_sentence() {
        let o = defined(vec![snap("base", "running")]);
        let e = plan(Verb::Create, "app-01", URI, "base", &o).unwrap_err();
        assert!(e.contains("already has a snapshot `base`"), "{e}");
        let e = plan(Verb::Revert, "app-01", URI, "gone", &o).unwrap_err();
        assert!(e.contains("no snapshot `gone`"), "{e}");
        assert!(e.contains("it has base"), "{e}");
        let e = plan(Verb::Delete, "app-01", URI, "gone", &defined(vec![])).unwrap_err();
        assert!(e.contains("it has none"), "{e}");
        let e = plan(Verb::Create, "app-01", URI, "x", &Observed::default()).unwrap_err();
        assert!(e.contains("not defined on qemu:///system"), "{e}");
    }

    #[test]
    fn uefi_guests_need_libvirt_10_10_and_a_qcow2_nvram() {
        let uefi = |v: &str, f: &str| Observed {
            uefi: Some(UefiFacts {
                libvirt_version: v.into(),
                nvram_format: f.into(),
            }),
            ..defined(vec![])
        };
        let e = plan(Verb::Create, "app-01", URI, "s", &uefi("9.0.0", "raw")).unwrap_err();
        assert!(e.contains("libvirt 9.0.0 on qemu:///system"), "{e}");
        assert!(e.contains("libvirt 10.10.0 or newer"), "{e}");
        let e = plan(Verb::Create, "app-01", URI, "s", &uefi("11.3.0", "raw")).unwrap_err();
        assert!(e.contains("its NVRAM is raw"), "{e}");
        assert!(e.contains("set snapshot_name and re-create"), "{e}");
        assert!(plan(Verb::Create, "app-01", URI, "s", &uefi("11.3.0", "qcow2")).is_ok());
        assert_eq!(uefi_refusal("a", URI, "10.10.0"), None);
    }
}
