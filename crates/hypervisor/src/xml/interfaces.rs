//! A domain's network interfaces: the `<interface>` elements kvmprov writes (a libvirt network
//! or a host bridge, a MAC, a model).

use std::fmt::Write;

use super::esc;

/// What a NIC is plugged into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceSource {
    /// A libvirt network (`<interface type='network'>`), any forward mode.
    Network(String),
    /// A host bridge no libvirt network wraps (`<interface type='bridge'>`).
    Bridge(String),
}

/// One `<interface>` of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub source: InterfaceSource,
    /// Lower case `52:54:00:…` (or the operator's).
    pub mac: String,
    /// QEMU's device model: `virtio`, `e1000e`, …
    pub model: String,
}

impl InterfaceSpec {
    /// A virtio NIC on a libvirt network: what a one-NIC instance has.
    pub fn virtio_on(network: &str, mac: &str) -> InterfaceSpec {
        InterfaceSpec {
            source: InterfaceSource::Network(network.to_string()),
            mac: mac.to_string(),
            model: "virtio".to_string(),
        }
    }
}

/// The `<interface>` elements, in device order (the guest names its NICs in this order).
pub fn interfaces_xml(nics: &[InterfaceSpec]) -> String {
    let mut x = String::new();
    for n in nics {
        let (kind, attr, name) = match &n.source {
            InterfaceSource::Network(name) => ("network", "network", name),
            InterfaceSource::Bridge(name) => ("bridge", "bridge", name),
        };
        let _ = write!(
            x,
            "    <interface type='{kind}'>
      <source {attr}='{}'/>
      <mac address='{}'/>
      <model type='{}'/>
    </interface>
",
            esc(name),
            esc(&n.mac),
            esc(&n.model)
        );
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_and_a_bridge_interface() {
        let x = interfaces_xml(&[
            InterfaceSpec {
                source: InterfaceSource::Network("default".into()),
                mac: "52:54:00:00:00:01".into(),
                model: "virtio".into(),
            },
            InterfaceSpec {
                source: InterfaceSource::Bridge("br0".into()),
                mac: "52:54:00:00:00:02".into(),
                model: "e1000e".into(),
            },
        ]);
        assert!(x.contains("<interface type='network'>\n      <source network='default'/>"));
        assert!(x.contains("<interface type='bridge'>\n      <source bridge='br0'/>"));
        assert!(x.contains("<model type='e1000e'/>"));
    }
}
