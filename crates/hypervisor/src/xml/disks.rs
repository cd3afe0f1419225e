//! Data disks in the domain XML: each a qcow2 file on virtio-blk with a `<serial>`, so the
//! guest names it `/dev/disk/by-id/virtio-<serial>` whatever order the devices come in.

use std::fmt::Write;
use std::path::PathBuf;

use super::{esc, p};

/// virtio-blk carries at most 20 bytes of serial (`VIRTIO_BLK_ID_BYTES`); QEMU cuts the rest.
pub const MAX_SERIAL_LEN: usize = 20;

/// One data disk of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDiskSpec {
    /// The qcow2 volume's file.
    pub path: PathBuf,
    /// The serial the guest sees (at most [`MAX_SERIAL_LEN`] bytes: the config layer checks).
    pub serial: String,
}

/// The target device of the `index`-th data disk: `vdb`, `vdc`, … (`vda` is the root disk).
/// The guest may name them otherwise; the serial is what identifies a disk.
fn target_dev(index: usize) -> String {
    let mut name = String::new();
    // vdb … vdz, then vdaa, vdab, … as libvirt counts.
    let mut n = index + 1;
    loop {
        name.insert(0, char::from(b'a' + (n % 26) as u8));
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("vd{name}")
}

/// The first data disk target (`vdb`, `vdc`, …) none of `used` takes: where a disk plugged
/// into a defined domain goes.
pub fn free_target(used: &[String]) -> String {
    (0..)
        .map(target_dev)
        .find(|t| !used.contains(t))
        .unwrap_or_else(|| target_dev(0))
}

/// One data disk's `<disk>` element at `target`: what is attached to (or detached from) a
/// defined domain.
pub fn data_disk_xml(d: &DataDiskSpec, target: &str) -> String {
    format!(
        "<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2' discard='unmap'/>
  <source file='{}'/>
  <target dev='{}' bus='virtio'/>
  <serial>{}</serial>
</disk>
",
        p(&d.path),
        esc(target),
        esc(&d.serial)
    )
}

/// The `<disk>` elements of the data disks, in order, indented for the domain's `<devices>`.
pub fn data_disks_xml(disks: &[DataDiskSpec]) -> String {
    let mut x = String::new();
    for (i, d) in disks.iter().enumerate() {
        for line in data_disk_xml(d, &target_dev(i)).lines() {
            let _ = writeln!(x, "    {line}");
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use roxmltree::Document;

    #[test]
    fn targets_follow_the_root_disk() {
        assert_eq!(target_dev(0), "vdb");
        assert_eq!(target_dev(24), "vdz");
        assert_eq!(target_dev(25), "vdaa");
    }

    #[test]
    fn each_disk_has_its_serial_and_file() {
        let x = data_disks_xml(&[
            DataDiskSpec {
                path: "/p/a_data.qcow2".into(),
                serial: "data".into(),
            },
            DataDiskSpec {
                path: "/p/a_<raw>.qcow2".into(),
                serial: "raw".into(),
            },
        ]);
        let text = format!("<devices>{x}</devices>");
        let doc = Document::parse(&text).unwrap();
        let disks: Vec<_> = doc
            .root_element()
            .children()
            .filter(|n| n.is_element())
            .collect();
        assert_eq!(disks.len(), 2);
        let serial = |n: roxmltree::Node| {
            n.children()
                .find(|c| c.has_tag_name("serial"))
                .and_then(|s| s.text())
                .map(String::from)
        };
        assert_eq!(serial(disks[0]).as_deref(), Some("data"));
        assert_eq!(serial(disks[1]).as_deref(), Some("raw"));
        assert!(x.contains("/p/a_&lt;raw&gt;.qcow2"), "{x}");
        assert!(x.contains("<target dev='vdc' bus='virtio'/>"), "{x}");
    }

    #[test]
    fn a_hot_plugged_disk_takes_the_first_free_target_and_keeps_its_serial() {
        let used: Vec<String> = ["vda", "vdb", "vdd", "sda"].map(String::from).to_vec();
        assert_eq!(free_target(&used), "vdc");
        let x = data_disk_xml(
            &DataDiskSpec {
                path: "/p/a_extra.qcow2".into(),
                serial: "extra".into(),
            },
            "vdc",
        );
        let doc = Document::parse(&x).unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "disk");
        assert!(
            x.contains("<target dev='vdc' bus='virtio'/>") && x.contains("<serial>extra</serial>"),
            "{x}"
        );
    }
}
