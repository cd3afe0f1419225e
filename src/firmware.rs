//! The firmware a declared instance boots with, as the domain XML and the observed domain name
//! it. (Its MAC is `Instance::effective_mac`, in the config, where duplicates are refused.)

use std::path::Path;

use kvmprov_hypervisor::Firmware;

use crate::config::{FirmwareChoice, Instance};
use crate::layout::nvram_name;

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
