//! Data disks in the user-data: cloud-init's own `fs_setup` (format on first boot, only a
//! disk that holds nothing) and `mounts` (the fstab line), for the disks that have a file
//! system. Raw disks need nothing here: the guest sees them by serial.
//!
//! Why these shapes, from cloud-init's source (`cc_disk_setup`, `cc_mounts`, the same in 22.4
//! and 25.1):
//! - `partition: any` on the whole disk: cloud-init lists the disk and its partitions with
//!   `lsblk` and formats only when none carries a file system of that type; an empty disk gets
//!   it on the whole device. `partition: none` would run `mkfs -F` on every new instance-id,
//!   so a re-created root disk would wipe the data.
//! - `mounts` names the disk by its `/dev/disk/by-id/virtio-<serial>` link: cloud-init keeps an
//!   entry only if its first field is a block device it can find, so `LABEL=`/`UUID=` entries
//!   are dropped ("Ignoring nonexistent named mount"). The serial is as stable as a label.

use serde_json::{json, Value};

/// A data disk cloud-init formats and mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFilesystem {
    /// The guest's stable name of the disk (`/dev/disk/by-id/virtio-<serial>`).
    pub device: String,
    /// The file system's label (at most 16 bytes for ext4: the config layer checks).
    pub label: String,
    /// `ext4`.
    pub filesystem: String,
    /// Where to mount it; `None`: formatted, not mounted.
    pub mount: Option<String>,
    /// fstab options (with `nofail`: a missing disk must not stop the boot).
    pub options: String,
}

/// The `fs_setup` and `mounts` keys for `disks` (none when there is nothing to do).
pub(crate) fn cloud_config(disks: &[DataFilesystem]) -> Vec<(&'static str, Value)> {
    if disks.is_empty() {
        return Vec::new();
    }
    let fs_setup: Vec<Value> = disks
        .iter()
        .map(|d| {
            json!({
                "label": d.label,
                "filesystem": d.filesystem,
                "device": d.device,
                "partition": "any",
                "overwrite": false,
            })
        })
        .collect();
    let mounts: Vec<Value> = disks
        .iter()
        .filter_map(|d| {
            let at = d.mount.as_ref()?;
            Some(json!([d.device, at, d.filesystem, d.options, "0", "2"]))
        })
        .collect();
    let mut out = vec![("fs_setup", Value::Array(fs_setup))];
    if !mounts.is_empty() {
        out.push(("mounts", Value::Array(mounts)));
    }
    out
}
