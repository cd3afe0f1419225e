//! Where things live on a hypervisor: an instance's files in the instance pool and the names
//! of kvmprov's libvirt pools. Provision creates these files, cleanup deletes exactly these,
//! runtime and the address lookup read the console log.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::state;

/// The instance's qcow2 overlay disk.
pub fn disk_name(instance: &str) -> String {
    format!("{instance}.qcow2")
}

/// An instance's data disk volume. `_` cannot occur in an instance name, so no data disk can
/// take the name of another instance's root disk (with `-`, `web` + `data` would be the root
/// disk of an instance `web-data`).
pub fn data_disk_name(instance: &str, disk: &str) -> String {
    format!("{instance}_{disk}.qcow2")
}

/// The instance's cloud-init seed ISO.
pub fn seed_name(instance: &str) -> String {
    format!("{instance}-seed.iso")
}

/// The instance's serial console log.
pub fn console_name(instance: &str) -> String {
    format!("{instance}-console.log")
}

/// A UEFI guest's variable store (libvirt creates it from the firmware's template).
pub fn nvram_name(instance: &str) -> String {
    format!("{instance}_VARS.fd")
}

/// The libvirt pool name for a directory (`prefix`: `images` or `instances`); an existing pool
/// with that path wins over this name wherever one is looked up.
pub fn pool_name_for(prefix: &str, path: &Path) -> String {
    let digest = crate::digest::sha256_hex(path.as_os_str().as_encoded_bytes());
    format!("kvmprov-{prefix}-{}", &digest[..8])
}

/// The files cleanup may delete for an instance: its disk, seed, console log, UEFI variable
/// store, pinned key and its declared data disks (only these: an undeclared data disk volume
/// is never named here, so never deleted).
pub fn instance_files(cfg: &Config, instance: &str) -> Vec<PathBuf> {
    let pool = &cfg.instance_pool_path;
    let dir = state::state_dir(pool);
    let mut files = vec![
        pool.join(disk_name(instance)),
        pool.join(seed_name(instance)),
        pool.join(console_name(instance)),
        pool.join(nvram_name(instance)),
    ];
    files.extend(state::host_key_files(&dir, &cfg.libvirt_uri, instance));
    files.extend(data_disk_files(cfg, instance));
    files
}

/// The instance's declared data disks' files, in the instance pool.
pub fn data_disk_files(cfg: &Config, instance: &str) -> Vec<PathBuf> {
    cfg.instance(instance)
        .map(|i| {
            i.disks
                .iter()
                .map(|d| {
                    cfg.instance_pool_path
                        .join(data_disk_name(instance, &d.name))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_disk_never_takes_a_root_disks_name() {
        assert_eq!(data_disk_name("web", "data"), "web_data.qcow2");
        assert_ne!(data_disk_name("web", "data"), disk_name("web-data"));
        assert!(crate::config::valid_instance_name("web_data").is_err());
    }
}
