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
/// store and pinned key.
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
    files
}
