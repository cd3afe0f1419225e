//! What a hypervisor offers, from libvirt's capabilities and domain capabilities XML.

use roxmltree::Node;
use serde::Serialize;

use super::{child, children, parse};
use crate::HvError;

/// Which x86_64 domain types the capabilities XML offers: (kvm, qemu).
pub fn domain_types(caps: &str) -> Result<(bool, bool), HvError> {
    let doc = parse("capabilities XML", caps)?;
    let (mut kvm, mut qemu) = (false, false);
    for guest in doc.descendants().filter(|n| n.has_tag_name("guest")) {
        let x86 = child(guest, "arch")
            .and_then(|a| a.attribute("name"))
            .is_some_and(|n| n == "x86_64");
        for d in guest.descendants().filter(|n| n.has_tag_name("domain")) {
            match d.attribute("type") {
                Some("kvm") if x86 => kvm = true,
                Some("qemu") if x86 => qemu = true,
                // libvirt's test driver (any arch) stands in for both, so tests can plan.
                Some("test") => {
                    kvm = true;
                    qemu = true;
                }
                _ => {}
            }
        }
    }
    Ok((kvm, qemu))
}

/// The uid:gid qemu runs as, from the DAC security model's base label in the capabilities
/// (`<baselabel type='kvm'>+64055:+64055</baselabel>`): known through libvirt, even remotely.
pub fn dac_baselabel(caps: &str) -> Result<Option<(u32, u32)>, HvError> {
    let doc = parse("capabilities XML", caps)?;
    for sm in doc.descendants().filter(|n| n.has_tag_name("secmodel")) {
        if child(sm, "model").and_then(|m| m.text()) != Some("dac") {
            continue;
        }
        for label in children(sm, "baselabel") {
            let ids = label.text().and_then(|t| {
                let (u, g) = t.trim().split_once(':')?;
                Some((
                    u.trim_start_matches('+').parse().ok()?,
                    g.trim_start_matches('+').parse().ok()?,
                ))
            });
            if ids.is_some() {
                return Ok(ids);
            }
        }
    }
    Ok(None)
}

/// What firmware a hypervisor can boot q35 guests with, from its domain capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct FirmwareSupport {
    /// libvirt found a UEFI firmware descriptor (`<enum name='firmware'><value>efi`).
    pub efi: bool,
    /// A Secure Boot capable loader is installed (`<enum name='secure'><value>yes`).
    pub secure_boot: bool,
    /// The loader images libvirt knows, e.g. `/usr/share/OVMF/OVMF_CODE_4M.ms.fd`.
    pub loaders: Vec<String>,
}

/// Parse `virConnectGetDomainCapabilities` XML for the firmware facts.
pub fn parse_firmware_support(domcaps: &str) -> Result<FirmwareSupport, HvError> {
    let doc = parse("domain capabilities XML", domcaps)?;
    let Some(os) = child(doc.root_element(), "os") else {
        return Ok(FirmwareSupport::default());
    };
    let enum_values = |parent: Node, name: &str| -> Vec<String> {
        children(parent, "enum")
            .filter(|e| e.attribute("name") == Some(name))
            .flat_map(|e| {
                children(e, "value")
                    .filter_map(|v| v.text())
                    .map(|t| t.trim().to_string())
            })
            .collect()
    };
    let loader = child(os, "loader");
    let loaders: Vec<String> = loader
        .map(|l| {
            children(l, "value")
                .filter_map(|v| v.text())
                .map(|t| t.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let efi = enum_values(os, "firmware").iter().any(|v| v == "efi");
    let secure_boot =
        efi && loader.is_some_and(|l| enum_values(l, "secure").iter().any(|v| v == "yes"));
    Ok(FirmwareSupport {
        efi,
        secure_boot,
        loaders,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dac_base_label_from_capabilities() {
        let caps = "<capabilities><host>\
            <secmodel><model>apparmor</model><doi>0</doi></secmodel>\
            <secmodel><model>dac</model><doi>0</doi>\
            <baselabel type='kvm'>+64055:+994</baselabel>\
            <baselabel type='qemu'>+64055:+994</baselabel></secmodel>\
            </host></capabilities>";
        assert_eq!(dac_baselabel(caps).unwrap(), Some((64055, 994)));
        assert_eq!(dac_baselabel("<capabilities/>").unwrap(), None);
    }

    #[test]
    fn firmware_support_from_domain_capabilities() {
        let caps = "<domainCapabilities><os supported='yes'>\
            <enum name='firmware'><value>efi</value></enum>\
            <loader supported='yes'><value>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</value>\
            <value>/usr/share/OVMF/OVMF_CODE_4M.fd</value>\
            <enum name='type'><value>rom</value><value>pflash</value></enum>\
            <enum name='secure'><value>yes</value><value>no</value></enum>\
            </loader></os></domainCapabilities>";
        let f = parse_firmware_support(caps).unwrap();
        assert!(f.efi && f.secure_boot);
        assert_eq!(f.loaders.len(), 2);
        let none = "<domainCapabilities><os supported='yes'>\
            <enum name='firmware'/><loader supported='yes'>\
            <enum name='secure'><value>no</value></enum></loader></os></domainCapabilities>";
        let f = parse_firmware_support(none).unwrap();
        assert!(!f.efi && !f.secure_boot && f.loaders.is_empty());
    }

    #[test]
    fn capabilities_domain_types() {
        let caps = "<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/></arch></guest>\
                    <guest><arch name='i686'><domain type='kvm'/></arch></guest></capabilities>";
        assert_eq!(domain_types(caps).unwrap(), (false, true));
        let caps = "<capabilities><guest><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest></capabilities>";
        assert_eq!(domain_types(caps).unwrap(), (true, true));
        assert_eq!(domain_types("<capabilities/>").unwrap(), (false, false));
    }
}
