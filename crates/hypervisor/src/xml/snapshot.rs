//! What kvmprov reads from a snapshot's XML (`virDomainSnapshotGetXMLDesc`), and the facts of
//! a domain's NVRAM that decide whether libvirt can snapshot it at all.

use roxmltree::Node;
use serde::Serialize;

use super::{child, parse};
use crate::HvError;

/// One snapshot of a domain, as `snapshot list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotFacts {
    pub name: String,
    pub description: Option<String>,
    /// The domain's state when it was taken (`running`, `shutoff`, …): a `running` snapshot
    /// holds the memory, and reverting to it leaves the guest running.
    pub state: String,
    /// Seconds since the epoch.
    pub created: Option<i64>,
}

/// The facts of a `<domainsnapshot>` document.
pub fn parse_snapshot_xml(xml: &str) -> Result<SnapshotFacts, HvError> {
    let doc = parse("snapshot", xml)?;
    let root = doc.root_element();
    let text = |name: &str| {
        child(root, name)
            .and_then(|n: Node| n.text())
            .map(|t| t.trim().to_string())
    };
    Ok(SnapshotFacts {
        name: text("name").unwrap_or_default(),
        description: text("description").filter(|d| !d.is_empty()),
        state: text("state").unwrap_or_else(|| "unknown".into()),
        created: text("creationTime").and_then(|t| t.parse().ok()),
    })
}

/// The format of a domain's UEFI variable store as its XML says (`<nvram format='qcow2'>`);
/// `None` for a domain without NVRAM; `raw` when the element names none (libvirt's default).
pub fn nvram_format(domain_xml: &str) -> Result<Option<String>, HvError> {
    let doc = parse("domain", domain_xml)?;
    let nvram = child(doc.root_element(), "os").and_then(|os| child(os, "nvram"));
    Ok(nvram.map(|n| n.attribute("format").unwrap_or("raw").to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_libvirt_writes_back() {
        let x = "<domainsnapshot>\n  <name>base</name>\n  <description>after first boot</description>\n  <state>running</state>\n  <creationTime>1765100000</creationTime>\n  <memory snapshot='internal'/>\n  <domain type='qemu'><name>app-01</name><description>not this</description></domain>\n</domainsnapshot>";
        let f = parse_snapshot_xml(x).unwrap();
        assert_eq!(
            f,
            SnapshotFacts {
                name: "base".into(),
                description: Some("after first boot".into()),
                state: "running".into(),
                created: Some(1_765_100_000),
            }
        );
        let f = parse_snapshot_xml("<domainsnapshot><name>x</name></domainsnapshot>").unwrap();
        assert_eq!(
            (f.state.as_str(), f.created, f.description),
            ("unknown", None, None)
        );
        assert!(parse_snapshot_xml("<domainsnapshot>").is_err());
    }

    #[test]
    fn nvram_format_is_raw_unless_the_domain_says_otherwise() {
        let dom = |os: &str| format!("<domain><name>a</name><os>{os}</os><devices/></domain>");
        assert_eq!(nvram_format(&dom("<type>hvm</type>")).unwrap(), None);
        assert_eq!(
            nvram_format(&dom("<nvram>/p/a_VARS.fd</nvram>"))
                .unwrap()
                .as_deref(),
            Some("raw")
        );
        assert_eq!(
            nvram_format(&dom(
                "<nvram template='/p/t.qcow2' templateFormat='qcow2' format='qcow2'>/p/a_VARS.fd</nvram>"
            ))
            .unwrap()
            .as_deref(),
            Some("qcow2")
        );
    }
}
