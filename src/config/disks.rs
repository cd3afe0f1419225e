//! Data disks (`disks:` of an instance): the file's form, the resolved form the stages read,
//! and their checks. A data disk is an empty qcow2 volume `<instance>_<name>.qcow2` in the
//! instance pool (named by `layout::data_disk_name`) whose guest-visible serial is its `name`; with a `filesystem` cloud-init
//! formats it on first boot if it holds none, and mounts it at `mount`.

use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::diagnostics::Locator;
use super::ConfigError;

/// The longest data disk name: an ext4 label holds 16 bytes (the name is the label) and a
/// virtio-blk serial 20 (the name is the serial).
pub const MAX_NAME_LEN: usize = 16;

/// At most this many data disks per instance (`vdb` to `vdq`).
pub const MAX_DISKS: usize = 16;

/// Directories a data disk may not be mounted on (nor below): the guest's own system.
const SYSTEM_DIRS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys",
    "/usr",
];

/// A file system cloud-init makes on a data disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    /// ext4 (`mkfs.ext4`, in every Debian cloud image).
    Ext4,
    /// Refused at check for now: Debian's genericcloud images have no `mkfs.xfs` (xfsprogs),
    /// and cloud-init formats disks before it installs packages.
    Xfs,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

/// One `disks:` entry of an instance.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataDiskDefinition {
    /// 1–16 of `a-z 0-9 -` (not starting with `-`), unique in the instance: the volume is `<instance_name>_<name>.qcow2`, the guest sees it as `/dev/disk/by-id/virtio-<name>`, and a file system on it is labelled `<name>`.
    pub name: String,
    /// Virtual size in GiB, 1–65536 (the volume is thin: it grows as the guest writes).
    #[schemars(range(min = 1, max = 65536))]
    pub size_gib: u64,
    /// `ext4`: made on first boot when the disk holds no file system or partition (an existing one is never touched). Without it the disk is left raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub filesystem: Option<Filesystem>,
    /// Absolute directory to mount the file system on (fstab by label, with `nofail`); needs `filesystem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub mount: Option<PathBuf>,
    /// fstab options, comma-separated; default `defaults`. `nofail` is always added: a missing disk must not stop the boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub mount_options: Option<String>,
}

/// A checked data disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataDisk {
    pub name: String,
    pub size_gib: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount: Option<PathBuf>,
    /// As configured (`None`: `defaults`); [`DataDisk::fstab_options`] adds `nofail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_options: Option<String>,
}

impl DataDisk {
    /// The guest's `/dev/disk/by-id` name of the disk (virtio-blk: `virtio-<serial>`).
    pub fn by_id(&self) -> String {
        format!("/dev/disk/by-id/virtio-{}", self.name)
    }

    /// The fstab options: the configured ones (or `defaults`) with `nofail`.
    pub fn fstab_options(&self) -> String {
        let given = self.mount_options.as_deref().unwrap_or("defaults");
        if given.split(',').any(|o| o == "nofail") {
            given.to_string()
        } else {
            format!("{given},nofail")
        }
    }

    /// What a domain's metadata records of the disk (drift compares it): its summary, and its
    /// mount options when set.
    pub fn record(&self) -> String {
        match &self.mount_options {
            Some(o) => format!("{} ({o})", self.summary()),
            None => self.summary(),
        }
    }

    /// One line for plans and status: `data 10 GiB ext4 on /srv/data`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} {} GiB", self.name, self.size_gib);
        match (&self.filesystem, &self.mount) {
            (Some(fs), Some(m)) => s.push_str(&format!(" {} on {}", fs.as_str(), m.display())),
            (Some(fs), None) => s.push_str(&format!(" {} (not mounted)", fs.as_str())),
            _ => s.push_str(" raw"),
        }
        s
    }
}

/// Check an instance's `disks:` (`at`: the instance).
pub(super) fn resolve(
    at: Locator,
    defs: &[DataDiskDefinition],
) -> Result<Vec<DataDisk>, ConfigError> {
    let list = at.key("disks");
    if defs.len() > MAX_DISKS {
        return Err(list.error(format!(
            "at most {MAX_DISKS} data disks per instance, not {}",
            defs.len()
        )));
    }
    let mut out: Vec<DataDisk> = Vec::new();
    for (i, d) in defs.iter().enumerate() {
        let here = list.index(i);
        check_name(&d.name).map_err(|m| here.key("name").error(m))?;
        if out.iter().any(|o| o.name == d.name) {
            return Err(here
                .key("name")
                .error(format!("data disk `{}` is declared twice", d.name)));
        }
        // cloud-init's mounts module takes `<device>1`, `<device>p1` and `<device>-part1` for
        // the device's first partition: `data1` beside `data` would hide `data`'s mount.
        if let Some(other) = defs.iter().find(|o| {
            ["1", "p1", "-part1"]
                .iter()
                .any(|suffix| d.name == format!("{}{suffix}", o.name))
        }) {
            return Err(here.key("name").error(format!(
                "data disk name `{}` reads as a partition of data disk `{}` to cloud-init: choose another name",
                d.name, other.name
            )));
        }
        if !(1..=65536).contains(&d.size_gib) {
            return Err(here
                .key("size_gib")
                .error("size_gib must be between 1 and 65536"));
        }
        if d.filesystem == Some(Filesystem::Xfs) {
            return Err(here.key("filesystem").error(
                "filesystem xfs is not supported yet: Debian's genericcloud images have no mkfs.xfs (xfsprogs), and cloud-init formats disks before it installs packages; use ext4",
            ));
        }
        if let Some(m) = &d.mount {
            if d.filesystem.is_none() {
                return Err(here
                    .key("mount")
                    .error("mount needs a filesystem (a raw disk cannot be mounted)"));
            }
            check_mount(m).map_err(|e| here.key("mount").error(e))?;
            if out.iter().any(|o| o.mount.as_ref() == Some(m)) {
                return Err(here.key("mount").error(format!(
                    "mount {} is used by another data disk of this instance",
                    m.display()
                )));
            }
        }
        if let Some(o) = &d.mount_options {
            if d.mount.is_none() {
                return Err(here.key("mount_options").error("mount_options needs mount"));
            }
            check_options(o).map_err(|e| here.key("mount_options").error(e))?;
        }
        out.push(DataDisk {
            name: d.name.clone(),
            size_gib: d.size_gib,
            filesystem: d.filesystem,
            mount: d.mount.clone(),
            mount_options: d.mount_options.clone(),
        });
    }
    Ok(out)
}

fn check_name(name: &str) -> Result<(), String> {
    let len = name.len();
    if !(1..=MAX_NAME_LEN).contains(&len) {
        return Err(format!(
            "data disk name must be 1 to {MAX_NAME_LEN} characters long (it is the disk's serial and file system label), not {len}"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || name.starts_with('-')
    {
        return Err(format!(
            "data disk name `{}` may contain only `a-z`, `0-9` and `-` (not first)",
            name.escape_debug()
        ));
    }
    Ok(())
}

fn check_mount(m: &Path) -> Result<(), String> {
    let shown = m.display();
    if !m.is_absolute() {
        return Err(format!("mount `{shown}` must be an absolute path"));
    }
    if m.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || m.to_string_lossy().ends_with('/')
    {
        return Err(format!(
            "mount `{shown}` must be a plain path (no `.`, `..` or trailing `/`)"
        ));
    }
    // fstab separates its fields with white space and has no quoting.
    if m.to_string_lossy()
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "mount `{}` must not contain white space",
            shown.to_string().escape_debug()
        ));
    }
    if m == Path::new("/") || m == Path::new("/var") {
        return Err(format!(
            "mount {shown} would hide the guest's own system files"
        ));
    }
    if let Some(dir) = SYSTEM_DIRS.iter().find(|d| m.starts_with(d)) {
        return Err(format!(
            "mount {shown} is in {dir}, which holds the guest's own system files"
        ));
    }
    Ok(())
}

fn check_options(o: &str) -> Result<(), String> {
    if o.is_empty()
        || o.split(',').any(str::is_empty)
        || !o.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
    {
        return Err(format!(
            "mount_options `{}` must be comma-separated fstab options without white space",
            o.escape_debug()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, options: Option<&str>) -> DataDisk {
        DataDisk {
            name: name.into(),
            size_gib: 1,
            filesystem: Some(Filesystem::Ext4),
            mount: Some("/srv/data".into()),
            mount_options: options.map(String::from),
        }
    }

    #[test]
    fn nofail_is_always_in_the_fstab_options() {
        assert_eq!(disk("d", None).fstab_options(), "defaults,nofail");
        assert_eq!(disk("d", Some("noatime")).fstab_options(), "noatime,nofail");
        assert_eq!(
            disk("d", Some("nofail,noatime")).fstab_options(),
            "nofail,noatime"
        );
    }

    #[test]
    fn names_fit_a_serial_and_a_label() {
        assert!(check_name("data-01").is_ok());
        assert!(check_name("0123456789abcdef").is_ok());
        assert!(check_name("0123456789abcdefg").is_err());
        assert!(check_name("Data").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a_b").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn mounts_stay_out_of_the_system() {
        assert!(check_mount(Path::new("/srv/data")).is_ok());
        assert!(check_mount(Path::new("/var/lib/postgresql")).is_ok());
        for bad in [
            "srv",
            "/",
            "/var",
            "/usr/local",
            "/etc",
            "/srv/a b",
            "/srv/../etc",
            "/srv/",
        ] {
            assert!(check_mount(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_are_one_fstab_field() {
        assert!(check_options("noatime,discard").is_ok());
        for bad in ["", "a,,b", "a b", "a#b", "a\tb"] {
            assert!(check_options(bad).is_err(), "{bad:?}");
        }
    }
}
