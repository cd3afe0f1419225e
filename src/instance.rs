//! What a declared instance's settings become on the hypervisor where the config leaves them
//! open: its MAC address and its firmware. Provision defines the domain with these, drift and
//! the address lookup compare against them.

use std::path::Path;

use kvmprov_hypervisor::{xml, Firmware};

use crate::config::{FirmwareChoice, Instance};
use crate::layout::nvram_name;

/// The instance's MAC: the configured one, else one derived from its name (stable across runs).
pub fn mac_of(inst: &Instance) -> String {
    inst.mac.clone().unwrap_or_else(|| xml::mac_for(&inst.name))
}

/// The firmware an instance boots with, as the domain XML gets it.
pub fn firmware_of(inst: &Instance, pool_path: &Path) -> Firmware {
    match inst.firmware {
        FirmwareChoice::Bios => Firmware::Bios,
        FirmwareChoice::Uefi => Firmware::Uefi {
            secure_boot: inst.secure_boot,
            nvram: pool_path.join(nvram_name(&inst.name)),
        },
    }
}

/// How `ObservedDomain::firmware` names an instance's firmware.
pub fn firmware_label(inst: &Instance) -> &'static str {
    match (inst.firmware, inst.secure_boot) {
        (FirmwareChoice::Bios, _) => "bios",
        (FirmwareChoice::Uefi, false) => "uefi",
        (FirmwareChoice::Uefi, true) => "uefi+secure-boot",
    }
}
