//! The drift plan, pure: per drifted field, old → new and how applying it works.
//!
//! - `live`: the running guest changes, no restart (a vCPU or memory within the maximum the
//!   guest booted with, a data disk or NIC plugged in or out, autostart);
//! - `restart`: the persistent definition changes, then a graceful restart (more vCPUs or
//!   memory than the guest booted with; a bigger root disk, because the guest grows its root
//!   file system at boot: Debian's cloud-initramfs-growroot and cloud-init's growpart);
//! - `recreate`: only a new root disk or a new cloud-init seed can carry it (image, firmware,
//!   domain type, addresses, login, packages, user_data, …): reported, and applied (the guest
//!   re-created, its data disks kept) only with `kvm_drift_recreate_confirmed` too;
//! - `refused`: never done, with the reason (a shrink).

use serde::Serialize;

use super::{disk_records, Change};

/// How a drifted field is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    Live,
    Restart,
    Recreate,
    Refused,
}

impl How {
    pub fn as_str(self) -> &'static str {
        match self {
            How::Live => "live",
            How::Restart => "restart",
            How::Recreate => "recreate",
            How::Refused => "refused",
        }
    }
}

/// What applying one step does (what the apply code matches on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Edit {
    Vcpus {
        to: u32,
    },
    Memory {
        to_mib: u64,
    },
    RootDisk {
        to_gib: u64,
    },
    DiskAdded {
        name: String,
    },
    DiskRemoved {
        name: String,
    },
    NicAdded {
        mac: String,
    },
    NicRemoved {
        mac: String,
        network: String,
    },
    Autostart {
        on: bool,
    },
    /// The guest re-created (`kvm_drift_recreate_confirmed`): a new seed and domain, and a new
    /// root disk when `new_disk`; `firmware`: its NVRAM goes too.
    Recreate {
        new_disk: bool,
        firmware: bool,
    },
    /// Not applied by kvmprov (refused; recreate without its confirmation).
    None,
}

/// One drifted field (or one data disk or NIC of a list field) and how it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub field: String,
    pub old: String,
    pub new: String,
    pub how: How,
    /// Why this way (the reason a shrink is refused, what a recreate needs).
    pub why: String,
    #[serde(skip)]
    pub edit: Edit,
}

impl Step {
    /// `vcpus 1 → 2 (restart: more than the 1 the guest booted with)`; a secret without values.
    pub fn describe(&self) -> String {
        let what = if super::SECRET.contains(&self.field.as_str())
            || super::DIGESTED.contains(&self.field.as_str())
        {
            format!("{} changed", self.field)
        } else {
            let shown = |v: &str| {
                if v.is_empty() {
                    "(none)".to_string()
                } else {
                    v.to_string()
                }
            };
            format!("{} {} → {}", self.field, shown(&self.old), shown(&self.new))
        };
        format!("{what} ({}: {})", self.how.as_str(), self.why)
    }
}

/// What the planner needs to know of the domain besides its recorded fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub running: bool,
    /// vCPUs now and the most the running guest can take (`<vcpu current>`, `<vcpu>`).
    pub vcpus: u32,
    pub max_vcpus: u32,
    /// The balloon's ceiling, MiB (`<memory>`).
    pub max_memory_mib: u64,
    pub autostart: bool,
    pub want_autostart: bool,
    /// Recreate steps are applied: `kvm_drift_apply_confirmed` and
    /// `kvm_drift_recreate_confirmed` both set.
    pub recreate: bool,
}

impl Facts {
    /// Tests' guest: running, 1 vCPU of 1, 768 MiB, autostart off as wanted, no recreate.
    #[cfg(test)]
    pub const RUNNING_FOR_TESTS: Facts = Facts {
        running: true,
        vcpus: 1,
        max_vcpus: 1,
        max_memory_mib: 768,
        autostart: false,
        want_autostart: false,
        recreate: false,
    };

    /// The facts of an observed domain, and what the config asks (`kvm_domain_autostart`,
    /// both drift confirmations).
    pub fn of(d: &kvmprov_hypervisor::xml::ObservedDomain, cfg: &crate::config::Config) -> Facts {
        Facts {
            running: d.running,
            vcpus: d.vcpus,
            max_vcpus: d.max_vcpus,
            max_memory_mib: d.max_memory_mib,
            autostart: d.autostart,
            want_autostart: cfg.domain_autostart,
            recreate: cfg.drift_apply_confirmed && cfg.drift_recreate_confirmed,
        }
    }
}

/// Fields only a new root disk carries.
const NEW_DISK: &[&str] = &["image_name", "firmware"];

/// The variables that apply recreate steps, as the one sentence that names them.
pub const RECREATE_HINT: &str = "its recreate steps are applied only with -e kvm_drift_apply_confirmed=true -e kvm_drift_recreate_confirmed=true (make provision-drift-recreate; data disks are kept)";

/// A recreate step: applied when confirmed (`facts.recreate`), else reported with `why`.
fn recreate(c: &Change, facts: &Facts, why: &str) -> Step {
    let field = c.field.as_str();
    if !facts.recreate {
        return step(c, How::Recreate, why, Edit::None);
    }
    let new_disk = NEW_DISK.contains(&field);
    let done = if new_disk {
        "the guest is re-created: a new root disk from the image, a new seed and domain; its data disks are kept"
    } else {
        "the guest is re-created: a new seed and domain on its kept disks"
    };
    step(
        c,
        How::Recreate,
        done,
        Edit::Recreate {
            new_disk,
            firmware: field == "firmware",
        },
    )
}

/// Pure: the plan of `changes` (drift of the recorded fields) on a domain with `facts`.
pub fn plan(changes: &[Change], facts: &Facts) -> Vec<Step> {
    let mut steps = Vec::new();
    for c in changes {
        match c.field.as_str() {
            "vcpus" => steps.push(vcpus(c, facts)),
            "memory_mib" => steps.push(memory(c, facts)),
            "disk_size_gib" => steps.push(root_disk(c)),
            "disks" => steps.extend(data_disks(c)),
            "nics" => steps.extend(nics(c, facts)),
            f => steps.push(recreate(
                c,
                facts,
                if NEW_DISK.contains(&f) {
                    "only a new root disk carries it: cleanup with kvm_cleanup_remove_instance_disks=true, then provision"
                } else {
                    "only a new domain with a new cloud-init seed carries it: cleanup, then provision (the disks are kept)"
                },
            )),
        }
    }
    if facts.autostart != facts.want_autostart {
        steps.push(Step {
            field: "autostart".into(),
            old: facts.autostart.to_string(),
            new: facts.want_autostart.to_string(),
            how: How::Live,
            why: "kvm_domain_autostart".into(),
            edit: Edit::Autostart {
                on: facts.want_autostart,
            },
        });
    }
    steps
}

fn step(c: &Change, how: How, why: &str, edit: Edit) -> Step {
    Step {
        field: c.field.clone(),
        old: c.old.clone(),
        new: c.new.clone(),
        how,
        why: why.to_string(),
        edit,
    }
}

/// A number the record holds; a value kvmprov did not write counts as none.
fn number(v: &str) -> Option<u64> {
    v.trim().parse().ok()
}

fn vcpus(c: &Change, f: &Facts) -> Step {
    let Some(to) = number(&c.new).and_then(|n| u32::try_from(n).ok()) else {
        return step(c, How::Refused, "not a number", Edit::None);
    };
    let edit = Edit::Vcpus { to };
    if !f.running {
        step(
            c,
            How::Restart,
            "the guest is off: it gets them at its next start",
            edit,
        )
    } else if to > f.vcpus && to <= f.max_vcpus {
        step(
            c,
            How::Live,
            "hot-plugged, within the guest's maximum",
            edit,
        )
    } else if to < f.vcpus {
        step(
            c,
            How::Restart,
            "kvmprov does not unplug vCPUs from a running guest",
            edit,
        )
    } else {
        let why = format!("more than the {} the guest booted with", f.max_vcpus);
        step(c, How::Restart, &why, edit)
    }
}

fn memory(c: &Change, f: &Facts) -> Step {
    let Some(to_mib) = number(&c.new) else {
        return step(c, How::Refused, "not a number", Edit::None);
    };
    let edit = Edit::Memory { to_mib };
    if !f.running {
        step(
            c,
            How::Restart,
            "the guest is off: it gets it at its next start",
            edit,
        )
    } else if to_mib <= f.max_memory_mib {
        step(
            c,
            How::Live,
            "the balloon, within the guest's maximum",
            edit,
        )
    } else {
        let why = format!(
            "more than the {} MiB the guest booted with",
            f.max_memory_mib
        );
        step(c, How::Restart, &why, edit)
    }
}

fn root_disk(c: &Change) -> Step {
    match (number(&c.old), number(&c.new)) {
        (Some(old), Some(new)) if new > old => step(
            c,
            How::Restart,
            "the disk grows now; the guest grows its root file system when it boots",
            Edit::RootDisk { to_gib: new },
        ),
        (Some(_), Some(_)) => step(
            c,
            How::Refused,
            "kvmprov never shrinks a disk: the file system on it would lose data",
            Edit::None,
        ),
        _ => step(c, How::Refused, "not a number", Edit::None),
    }
}

/// A data disk record's name: its first word.
fn disk_name(record: &str) -> &str {
    record.split(' ').next().unwrap_or("")
}

fn data_disks(c: &Change) -> Vec<Step> {
    let (old, new) = (disk_records(&c.old), disk_records(&c.new));
    let mut steps = Vec::new();
    let one = |old: &str, new: &str, how, why: &str, edit| Step {
        field: "disks".into(),
        old: old.to_string(),
        new: new.to_string(),
        how,
        why: why.to_string(),
        edit,
    };
    for o in &old {
        match new.iter().find(|n| disk_name(n) == disk_name(o)) {
            None => steps.push(one(
                o,
                "",
                How::Live,
                "unplugged; its volume is kept (cleanup with kvm_cleanup_remove_instance_disks=true deletes it)",
                Edit::DiskRemoved {
                    name: disk_name(o).to_string(),
                },
            )),
            Some(n) if n != o => steps.push(one(
                o,
                n,
                How::Refused,
                "kvmprov never resizes or reformats a data disk: change the volume and its file system by hand, or delete it",
                Edit::None,
            )),
            Some(_) => {}
        }
    }
    for n in &new {
        if !old.iter().any(|o| disk_name(o) == disk_name(n)) {
            steps.push(one(
                "",
                n,
                How::Live,
                "a new volume, hot-plugged; the guest sees it by its serial (cloud-init formats and mounts only at first boot)",
                Edit::DiskAdded {
                    name: disk_name(n).to_string(),
                },
            ));
        }
    }
    steps
}

/// The MAC in a recorded NIC (`1: network storage, mac 52:54:00:…, DHCPv4`).
fn nic_mac(record: &str) -> &str {
    record
        .split(", ")
        .find_map(|p| p.strip_prefix("mac "))
        .unwrap_or("")
}

/// The libvirt network in a recorded NIC.
fn nic_network(record: &str) -> &str {
    nic_body(record)
        .split(", ")
        .find_map(|p| p.strip_prefix("network "))
        .unwrap_or("")
}

/// A recorded NIC without its position: moving in the list is no change of the NIC.
fn nic_body(record: &str) -> &str {
    record.split_once(": ").map_or(record, |(_, b)| b)
}

fn nics(c: &Change, facts: &Facts) -> Vec<Step> {
    let (old, new) = (disk_records(&c.old), disk_records(&c.new));
    let mut steps = Vec::new();
    let one = |old: &str, new: &str, how, why: &str, edit| Step {
        field: "nics".into(),
        old: old.to_string(),
        new: new.to_string(),
        how,
        why: why.to_string(),
        edit,
    };
    for o in &old {
        match new.iter().find(|n| nic_mac(n) == nic_mac(o)) {
            None => steps.push(one(
                o,
                "",
                How::Live,
                "unplugged",
                Edit::NicRemoved {
                    mac: nic_mac(o).to_string(),
                    network: nic_network(o).to_string(),
                },
            )),
            Some(n) if nic_body(n) != nic_body(o) => steps.push(Step {
                old: o.to_string(),
                new: n.to_string(),
                ..recreate(
                    c,
                    facts,
                    "the guest's network-config is in its cloud-init seed: cleanup, then provision",
                )
            }),
            Some(_) => {}
        }
    }
    for n in &new {
        if !old.iter().any(|o| nic_mac(o) == nic_mac(n)) {
            steps.push(one(
                "",
                n,
                How::Live,
                "hot-plugged; the guest sees it by its MAC (its addresses come with a new seed only)",
                Edit::NicAdded {
                    mac: nic_mac(n).to_string(),
                },
            ));
        }
    }
    steps
}

/// The steps kvmprov applies (live and restart; recreate when confirmed), and whether the
/// guest must restart.
pub fn applicable(steps: &[Step]) -> (Vec<&Step>, bool) {
    let apply: Vec<&Step> = steps
        .iter()
        .filter(|s| match s.how {
            How::Live | How::Restart => true,
            How::Recreate => s.edit != Edit::None,
            How::Refused => false,
        })
        .collect();
    let restart = apply.iter().any(|s| s.how == How::Restart);
    (apply, restart)
}

/// Recreate steps that are only reported (their confirmation not given).
pub fn recreate_pending(steps: &[Step]) -> bool {
    steps
        .iter()
        .any(|s| s.how == How::Recreate && s.edit == Edit::None)
}

/// What re-creating a guest removes besides its domain: its seed always, its root disk and
/// NVRAM when the steps ask. Its data disks, console log and pinned host key never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Removal {
    /// A new root disk (a [`NEW_DISK`] field changed): the overlay goes.
    pub root_disk: bool,
    /// The firmware changed: the UEFI variable store goes (libvirt makes it anew, or none).
    pub nvram: bool,
}

/// Pure: the removal the confirmed recreate steps of one guest need (`None`: no recreate is
/// applied).
pub fn removal(steps: &[Step]) -> Option<Removal> {
    let mut out = None;
    for s in steps {
        if let Edit::Recreate { new_disk, firmware } = s.edit {
            let r: &mut Removal = out.get_or_insert_with(Removal::default);
            r.root_disk |= new_disk;
            r.nvram |= firmware;
        }
    }
    out
}

impl Removal {
    /// The files of `instance` in the instance pool `pool` that go (seed, then overlay and
    /// NVRAM when asked).
    pub fn files(&self, pool: &std::path::Path, instance: &str) -> Vec<std::path::PathBuf> {
        use crate::layout::{disk_name, nvram_name, seed_name};
        let mut files = vec![pool.join(seed_name(instance))];
        if self.root_disk {
            files.push(pool.join(disk_name(instance)));
        }
        if self.nvram {
            files.push(pool.join(nvram_name(instance)));
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(field: &str, old: &str, new: &str) -> Change {
        Change {
            field: field.into(),
            old: old.into(),
            new: new.into(),
        }
    }

    const RUNNING: Facts = Facts::RUNNING_FOR_TESTS;

    fn hows(steps: &[Step]) -> Vec<(&str, How)> {
        steps.iter().map(|s| (s.field.as_str(), s.how)).collect()
    }

    #[test]
    fn more_vcpus_and_memory_than_the_guest_booted_with_take_a_restart() {
        let steps = plan(
            &[
                change("vcpus", "1", "2"),
                change("memory_mib", "768", "1024"),
            ],
            &RUNNING,
        );
        assert_eq!(
            hows(&steps),
            vec![("vcpus", How::Restart), ("memory_mib", How::Restart)]
        );
        assert_eq!(steps[0].edit, Edit::Vcpus { to: 2 });
        assert_eq!(
            steps[1].describe(),
            "memory_mib 768 → 1024 (restart: more than the 768 MiB the guest booted with)"
        );
        assert!(applicable(&steps).1);
    }

    #[test]
    fn within_the_maximum_vcpus_and_memory_are_live() {
        let roomy = Facts {
            max_vcpus: 4,
            max_memory_mib: 2048,
            ..RUNNING
        };
        let steps = plan(
            &[
                change("vcpus", "1", "2"),
                change("memory_mib", "768", "1024"),
            ],
            &roomy,
        );
        assert_eq!(
            hows(&steps),
            vec![("vcpus", How::Live), ("memory_mib", How::Live)]
        );
        assert!(!applicable(&steps).1);
        // Fewer vCPUs: never unplugged live.
        let fewer = plan(&[change("vcpus", "2", "1")], &Facts { vcpus: 2, ..roomy });
        assert_eq!(fewer[0].how, How::Restart);
    }

    #[test]
    fn the_root_disk_grows_with_a_restart_and_a_shrink_is_refused_with_the_reason() {
        let grow = plan(&[change("disk_size_gib", "4", "6")], &RUNNING);
        assert_eq!(grow[0].how, How::Restart);
        assert_eq!(grow[0].edit, Edit::RootDisk { to_gib: 6 });
        let shrink = plan(&[change("disk_size_gib", "6", "4")], &RUNNING);
        assert_eq!(shrink[0].how, How::Refused);
        assert!(
            shrink[0].describe().contains("never shrinks"),
            "{:?}",
            shrink[0]
        );
        assert!(applicable(&shrink).0.is_empty());
    }

    #[test]
    fn data_disks_and_nics_added_or_removed_are_live_and_a_resize_is_refused() {
        let disks = change(
            "disks",
            r#"["data 1 GiB raw","old 1 GiB raw"]"#,
            r#"["data 2 GiB raw","new 1 GiB ext4 on /srv"]"#,
        );
        let nics = change(
            "nics",
            r#"["1: network a, mac 52:54:00:00:00:01, DHCPv4","2: network b, mac 52:54:00:00:00:02, DHCPv4"]"#,
            r#"["1: network a, mac 52:54:00:00:00:01, static 10.0.0.5/24","2: network c, mac 52:54:00:00:00:03, DHCPv4"]"#,
        );
        let steps = plan(&[disks, nics], &RUNNING);
        let edits: Vec<(How, &Edit)> = steps.iter().map(|s| (s.how, &s.edit)).collect();
        assert_eq!(
            edits,
            vec![
                (How::Refused, &Edit::None),
                (How::Live, &Edit::DiskRemoved { name: "old".into() }),
                (How::Live, &Edit::DiskAdded { name: "new".into() }),
                (How::Recreate, &Edit::None),
                (
                    How::Live,
                    &Edit::NicRemoved {
                        mac: "52:54:00:00:00:02".into(),
                        network: "b".into()
                    }
                ),
                (
                    How::Live,
                    &Edit::NicAdded {
                        mac: "52:54:00:00:00:03".into()
                    }
                ),
            ]
        );
    }

    #[test]
    fn seed_and_image_fields_need_a_recreate_and_secrets_show_no_values() {
        let steps = plan(
            &[
                change("image_name", "debian-12", "debian-13"),
                change("password", "0123456789abcdef", "fedcba9876543210"),
            ],
            &RUNNING,
        );
        assert_eq!(
            hows(&steps),
            vec![("image_name", How::Recreate), ("password", How::Recreate)]
        );
        assert!(steps[0].why.contains("root disk"));
        let shown = steps[1].describe();
        assert!(shown.starts_with("password changed (recreate"), "{shown}");
        assert!(!shown.contains("0123"), "{shown}");
        assert!(applicable(&steps).0.is_empty());
    }

    #[test]
    fn autostart_is_compared_with_the_domain_and_applied_live() {
        let steps = plan(
            &[],
            &Facts {
                want_autostart: true,
                ..RUNNING
            },
        );
        assert_eq!(hows(&steps), vec![("autostart", How::Live)]);
        assert_eq!(steps[0].edit, Edit::Autostart { on: true });
        assert!(plan(&[], &RUNNING).is_empty());
    }

    #[test]
    fn a_guest_that_is_off_takes_vcpus_and_memory_at_its_next_start() {
        let off = Facts {
            running: false,
            ..RUNNING
        };
        let steps = plan(&[change("vcpus", "1", "2")], &off);
        assert_eq!(steps[0].how, How::Restart);
        assert!(steps[0].why.contains("next start"));
    }

    #[test]
    fn recreate_steps_are_applicable_only_with_their_confirmation() {
        let changes = [
            change("firmware", "bios", "uefi"),
            change("packages", "[]", r#"["jq"]"#),
        ];
        let reported = plan(&changes, &RUNNING);
        assert!(applicable(&reported).0.is_empty());
        assert!(recreate_pending(&reported));
        assert_eq!(removal(&reported), None);
        assert!(reported[0].why.contains("cleanup"), "{:?}", reported[0]);

        let confirmed = plan(
            &changes,
            &Facts {
                recreate: true,
                ..RUNNING
            },
        );
        assert_eq!(
            hows(&confirmed),
            vec![("firmware", How::Recreate), ("packages", How::Recreate)]
        );
        let (apply, restart) = applicable(&confirmed);
        assert_eq!(apply.len(), 2);
        assert!(!restart, "a recreate is not a restart");
        assert!(!recreate_pending(&confirmed));
        assert_eq!(
            confirmed[0].describe(),
            "firmware bios → uefi (recreate: the guest is re-created: a new root disk from the image, a new seed and domain; its data disks are kept)"
        );
        assert_eq!(
            removal(&confirmed),
            Some(Removal {
                root_disk: true,
                nvram: true
            })
        );
    }

    #[test]
    fn a_recreate_removes_the_seed_and_only_for_image_or_firmware_the_root_disk_never_a_data_disk()
    {
        let facts = Facts {
            recreate: true,
            ..RUNNING
        };
        let files = |changes: &[Change]| {
            removal(&plan(changes, &facts)).map(|r| r.files(std::path::Path::new("/p"), "app"))
        };
        let p = |f: &str| std::path::PathBuf::from(format!("/p/{f}"));
        assert_eq!(
            files(&[change("packages", "[]", r#"["jq"]"#)]),
            Some(vec![p("app-seed.iso")])
        );
        let nic = change(
            "nics",
            r#"["1: network a, mac 52:54:00:00:00:01, DHCPv4"]"#,
            r#"["1: network a, mac 52:54:00:00:00:01, static 10.0.0.5/24"]"#,
        );
        assert_eq!(files(&[nic]), Some(vec![p("app-seed.iso")]));
        assert_eq!(
            files(&[change("image_name", "debian-12", "debian-13")]),
            Some(vec![p("app-seed.iso"), p("app.qcow2")])
        );
        assert_eq!(
            files(&[
                change("user", "debian", "ops"),
                change("firmware", "uefi", "bios"),
                change(
                    "disks",
                    r#"["data 1 GiB raw"]"#,
                    r#"["data 1 GiB raw","new 1 GiB raw"]"#
                ),
            ]),
            Some(vec![p("app-seed.iso"), p("app.qcow2"), p("app_VARS.fd")])
        );
        // No recreate step: nothing is removed.
        assert_eq!(files(&[change("vcpus", "1", "2")]), None);
    }
}
