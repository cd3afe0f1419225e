//! Changing a defined domain in place: vCPUs, memory, the root disk's size, devices plugged in
//! or out, autostart and kvmprov's metadata. Each call changes the persistent definition and,
//! with `live`, the running guest too (libvirt's AFFECT_CONFIG / AFFECT_LIVE): a change never
//! lives only until the next stop.

use std::path::Path;

use virt_sys::{
    VIR_DOMAIN_AFFECT_CONFIG as CONFIG, VIR_DOMAIN_AFFECT_LIVE as LIVE,
    VIR_DOMAIN_BLOCK_RESIZE_BYTES, VIR_DOMAIN_MEM_MAXIMUM, VIR_DOMAIN_METADATA_ELEMENT,
    VIR_DOMAIN_VCPU_MAXIMUM,
};

use crate::error::lv;
use crate::xml::{self, KvmprovMetadata};
use crate::{HvError, Hypervisor};

/// AFFECT_CONFIG, and AFFECT_LIVE too when the guest runs.
fn impact(live: bool) -> u32 {
    CONFIG | if live { LIVE } else { 0 }
}

impl Hypervisor {
    /// Is the domain marked to start with the hypervisor?
    pub fn autostart(&self, name: &str) -> Result<bool, HvError> {
        self.conn
            .lookup_domain_by_name(name)
            .and_then(|d| d.autostart())
            .map_err(lv(format!("read autostart of domain {name}")))
    }

    /// The guest's vCPUs set to `n`. `max`: the most it may have, raised (or lowered) in the
    /// persistent definition first; the running guest gets `n` only when `live` (a hot-plug
    /// within the maximum it booted with).
    pub fn set_vcpus(&self, name: &str, n: u32, max: u32, live: bool) -> Result<(), HvError> {
        let d = self
            .conn
            .lookup_domain_by_name(name)
            .map_err(lv(format!("look up domain {name}")))?;
        let what = format!("set the vCPUs of domain {name} to {n}");
        // Current never above the maximum: raise the maximum first, lower it last.
        let old_max = d
            .vcpus_flags(CONFIG | VIR_DOMAIN_VCPU_MAXIMUM)
            .map_err(lv(what.clone()))?;
        let set_max = || d.set_vcpus_flags(max, CONFIG | VIR_DOMAIN_VCPU_MAXIMUM);
        let set_current = || d.set_vcpus_flags(n, impact(live));
        if max >= old_max {
            set_max().and_then(|_| set_current())
        } else {
            set_current().and_then(|_| set_max())
        }
        .map_err(lv(what))
    }

    /// The guest's memory set to `mib` (the balloon, when `live`); `max`: the ceiling
    /// (`<memory>`) in the persistent definition.
    pub fn set_memory(&self, name: &str, mib: u64, max: u64, live: bool) -> Result<(), HvError> {
        let d = self
            .conn
            .lookup_domain_by_name(name)
            .map_err(lv(format!("look up domain {name}")))?;
        let what = format!("set the memory of domain {name} to {mib} MiB");
        let kib = |m: u64| m << 10;
        // The ceiling first when it grows, last when it shrinks: current stays below it. The
        // persistent definition's ceiling (a running guest reports the one it booted with).
        let inactive = d
            .xml_desc(virt_sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(lv(what.clone()))?;
        let grows = max >= xml::parse_domain_xml(&inactive)?.max_memory_mib;
        let set_max = || d.set_memory_flags(kib(max), CONFIG | VIR_DOMAIN_MEM_MAXIMUM);
        let set_current = || d.set_memory_flags(kib(mib), impact(live));
        if grows {
            set_max().and_then(|_| set_current())
        } else {
            set_current().and_then(|_| set_max())
        }
        .map_err(lv(what))
    }

    /// Grow the disk at `target` of a running domain to `bytes` (QEMU resizes the image).
    pub fn block_resize(&self, name: &str, target: &str, bytes: u64) -> Result<(), HvError> {
        self.conn
            .lookup_domain_by_name(name)
            .and_then(|d| d.block_resize(target, bytes, VIR_DOMAIN_BLOCK_RESIZE_BYTES))
            .map_err(lv(format!(
                "grow disk {target} of domain {name} to {} GiB",
                bytes >> 30
            )))
    }

    /// Grow the volume at `path` to `bytes` while no guest uses it (libvirt runs qemu-img).
    pub fn resize_volume(&self, path: &Path, bytes: u64) -> Result<(), HvError> {
        let what = format!("grow volume {} to {} GiB", path.display(), bytes >> 30);
        self.conn
            .lookup_storage_vol_by_path(&path.to_string_lossy())
            .and_then(|v| v.resize(bytes, 0))
            .map_err(lv(what))
    }

    /// Plug a device (`<disk>`, `<interface>`) into the definition, and the guest when `live`.
    pub fn attach_device(&self, name: &str, device: &str, live: bool) -> Result<(), HvError> {
        self.conn
            .lookup_domain_by_name(name)
            .and_then(|d| d.attach_device_flags(device, impact(live)))
            .map_err(lv(format!("attach a device to domain {name}")))
    }

    /// Unplug a device from the definition, and from the guest when `live` (the guest is asked
    /// to let go; libvirt waits a few seconds for it).
    pub fn detach_device(&self, name: &str, device: &str, live: bool) -> Result<(), HvError> {
        self.conn
            .lookup_domain_by_name(name)
            .and_then(|d| d.detach_device_flags(device, impact(live)))
            .map_err(lv(format!("detach a device from domain {name}")))
    }

    /// Replace kvmprov's metadata element (what the domain was made from).
    pub fn set_kvmprov_metadata(
        &self,
        name: &str,
        m: &KvmprovMetadata,
        live: bool,
    ) -> Result<(), HvError> {
        self.conn
            .lookup_domain_by_name(name)
            .and_then(|d| {
                d.set_metadata(
                    VIR_DOMAIN_METADATA_ELEMENT as i32,
                    Some(&xml::metadata_update_xml(m)),
                    Some("kvmprov"),
                    Some(xml::METADATA_NS),
                    impact(live),
                )
            })
            .map_err(lv(format!("record the applied config in domain {name}")))
    }
}
