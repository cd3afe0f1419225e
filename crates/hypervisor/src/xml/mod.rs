//! What the XML kvmprov exchanges with libvirt looks like: typed specs in, escaped XML out
//! (domains, pools, volumes, snapshots); and the reverse, the facts kvmprov reads back from
//! libvirt's XML (domains for drift detection and cleanup, capabilities, networks, pools,
//! volumes). Pure functions only: no libvirt calls here. One file per object; this one holds
//! what they share (escaping, parsing helpers).

mod capabilities;
mod disks;
mod domain;
mod interfaces;
mod network;
mod snapshot;
mod storage;

use std::path::Path;

use roxmltree::{Document, Node};

use crate::HvError;

pub use capabilities::{dac_baselabel, domain_types, parse_firmware_support, FirmwareSupport};
pub use disks::{data_disk_xml, data_disks_xml, free_target, DataDiskSpec, MAX_SERIAL_LEN};
pub use domain::{
    domain_xml, mac_for, mac_for_nic, metadata_update_xml, metadata_xml, parse_domain_xml,
    snapshot_xml, used_files, DomainSpec, DomainType, Firmware, KvmprovMetadata, ObservedDomain,
    UsedFile, METADATA_NS,
};
pub use interfaces::{interfaces_xml, InterfaceSource, InterfaceSpec};
pub use network::{parse_network_xml, NetworkFacts, NetworkIpv4};
pub use snapshot::{nvram_format, parse_snapshot_xml, SnapshotFacts};
pub use storage::{
    overlay_volume_xml, parse_pool_path, parse_volume_xml, pool_xml, raw_volume_xml, VolumeFacts,
};

/// Escape text for XML content and attribute values (both quote styles).
///
/// Tab, newline and carriage return become character references so they survive attribute
/// value normalization. Characters XML 1.0 cannot carry at all (other control characters,
/// U+FFFE/U+FFFF) become U+FFFD: libvirt would reject the whole document otherwise, and the
/// config layer rejects such names long before they get here.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn p(path: &Path) -> String {
    esc(&path.to_string_lossy())
}

fn parse<'i>(what: &str, xml: &'i str) -> Result<Document<'i>, HvError> {
    Document::parse(xml).map_err(|source| HvError::Xml {
        what: what.to_string(),
        source,
    })
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a, 'i: 'a>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

#[cfg(test)]
mod tests {
    use super::domain::tests::spec;
    use super::*;

    #[test]
    fn characters_xml_cannot_carry_are_replaced() {
        assert_eq!(esc("a\u{0}b\u{1b}c\u{ffff}"), "a\u{fffd}b\u{fffd}c\u{fffd}");
        let x = pool_xml("p\u{7}", Path::new("/d"));
        assert!(Document::parse(&x).is_ok(), "{x}");
    }

    /// `virt-xml-validate` checks against libvirt's own RelaxNG schemas.
    #[test]
    fn validates_with_virt_xml_validate() {
        if std::process::Command::new("virt-xml-validate")
            .arg("--help")
            .output()
            .is_err()
        {
            eprintln!("skipped: virt-xml-validate is not installed (libvirt-clients)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut hostile = spec("a&b'c", DomainType::Kvm);
        hostile.disk_path = "/p/<x>&'\".qcow2".into();
        let cases = [
            ("domain", domain_xml(&spec("app-01", DomainType::Kvm))),
            ("domain", domain_xml(&spec("app-01", DomainType::Qemu))),
            ("domain", domain_xml(&hostile)),
            ("storagepool", pool_xml("kvmprov-x", Path::new("/p"))),
            (
                "storagevol",
                overlay_volume_xml("a.qcow2", 1 << 30, Path::new("/c/b.qcow2"), "qcow2"),
            ),
            ("storagevol", raw_volume_xml("a-seed.iso", 366592, "raw")),
            (
                "domainsnapshot",
                snapshot_xml("baseline", "after first boot"),
            ),
        ];
        for (i, (schema, xml)) in cases.iter().enumerate() {
            let f = dir.path().join(format!("{i}.xml"));
            std::fs::write(&f, xml).unwrap();
            let o = std::process::Command::new("virt-xml-validate")
                .arg(&f)
                .arg(schema)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{schema} #{i} invalid:\n{xml}\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}
