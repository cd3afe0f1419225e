//! Storage XML: the `dir` pools and volumes kvmprov creates, and what it reads back from them.

use std::path::{Path, PathBuf};

use roxmltree::Node;

use super::{child, esc, p, parse};
use crate::HvError;

/// A `dir` storage pool.
pub fn pool_xml(name: &str, path: &Path) -> String {
    format!(
        "<pool type='dir'>\n  <name>{}</name>\n  <target>\n    <path>{}</path>\n  </target>\n</pool>\n",
        esc(name),
        p(path)
    )
}

/// A qcow2 overlay volume on a backing image. Mode 0600: qemu gets it through libvirt's
/// ownership handling, nobody else needs to read a guest's disk.
pub fn overlay_volume_xml(
    name: &str,
    capacity: u64,
    backing: &Path,
    backing_format: &str,
) -> String {
    format!(
        "<volume>
  <name>{}</name>
  <capacity unit='bytes'>{capacity}</capacity>
  <target>
    <format type='qcow2'/>
    <permissions><mode>0600</mode></permissions>
  </target>
  <backingStore>
    <path>{}</path>
    <format type='{}'/>
  </backingStore>
</volume>
",
        esc(name),
        p(backing),
        esc(backing_format)
    )
}

/// A plain volume of `capacity` bytes (for uploads), mode 0600.
pub fn raw_volume_xml(name: &str, capacity: u64, format: &str) -> String {
    format!(
        "<volume>
  <name>{}</name>
  <capacity unit='bytes'>{capacity}</capacity>
  <allocation unit='bytes'>0</allocation>
  <target>
    <format type='{}'/>
    <permissions><mode>0600</mode></permissions>
  </target>
</volume>
",
        esc(name),
        esc(format)
    )
}

/// A storage pool's target directory (`None` for pools without one, e.g. rbd).
pub fn parse_pool_path(xml: &str) -> Result<Option<PathBuf>, HvError> {
    let doc = parse("storage pool XML", xml)?;
    Ok(child(doc.root_element(), "target")
        .and_then(|t| child(t, "path"))
        .and_then(|p| p.text())
        .map(|t| PathBuf::from(t.trim())))
}

/// The facts of a volume's XML that `virStorageVolGetInfo` does not give.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeFacts {
    /// `qcow2`, `raw`, `iso`, ...
    pub format: Option<String>,
    /// The backing file of a qcow2 overlay.
    pub backing_path: Option<PathBuf>,
}

/// Parse a volume's XML: its format and backing file.
pub fn parse_volume_xml(xml: &str) -> Result<VolumeFacts, HvError> {
    let doc = parse("storage volume XML", xml)?;
    let root = doc.root_element();
    let format_of = |n: Node| {
        child(n, "format")
            .and_then(|f| f.attribute("type"))
            .map(String::from)
    };
    Ok(VolumeFacts {
        format: child(root, "target").and_then(format_of),
        backing_path: child(root, "backingStore")
            .and_then(|b| child(b, "path"))
            .and_then(|p| p.text())
            .map(|t| PathBuf::from(t.trim())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use roxmltree::Document;

    #[test]
    fn builders_escape_and_round_trip() {
        let x = overlay_volume_xml("a&b.qcow2", 1 << 30, Path::new("/c/<b>.qcow2"), "qcow2");
        let f = parse_volume_xml(&x).unwrap();
        assert_eq!(f.format.as_deref(), Some("qcow2"));
        assert_eq!(f.backing_path, Some(PathBuf::from("/c/<b>.qcow2")));
        let doc = Document::parse(&x).unwrap();
        assert_eq!(
            child(doc.root_element(), "name").unwrap().text(),
            Some("a&b.qcow2")
        );

        let x = raw_volume_xml("seed'.iso", 5, "raw");
        assert_eq!(parse_volume_xml(&x).unwrap().format.as_deref(), Some("raw"));
        assert_eq!(parse_volume_xml(&x).unwrap().backing_path, None);

        let x = pool_xml("kp&<", Path::new("/srv/a'b"));
        assert_eq!(
            parse_pool_path(&x).unwrap(),
            Some(PathBuf::from("/srv/a'b"))
        );
    }
}
