//! The facts kvmprov reads from a libvirt network's XML.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::{child, children, parse};
use crate::HvError;

/// A libvirt network's IPv4 side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkIpv4 {
    /// The host's address on the network (the guests' gateway).
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// The first DHCP range, inclusive; `None` without a DHCP server.
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
}

/// The facts of a network's XML.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkFacts {
    pub bridge: Option<String>,
    /// `nat`, `route`, `bridge`, ...; `None` for an isolated network.
    pub forward: Option<String>,
    pub ipv4: Option<NetworkIpv4>,
}

fn netmask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    // A netmask is contiguous ones then zeros.
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// Parse a network's XML: bridge, forward mode, and the first IPv4 `<ip>` with its DHCP range.
pub fn parse_network_xml(xml: &str) -> Result<NetworkFacts, HvError> {
    let doc = parse("network XML", xml)?;
    let root = doc.root_element();
    let ipv4 = children(root, "ip")
        .filter(|ip| ip.attribute("family").unwrap_or("ipv4") == "ipv4")
        .find_map(|ip| {
            let address: Ipv4Addr = ip.attribute("address")?.parse().ok()?;
            let prefix = match (ip.attribute("prefix"), ip.attribute("netmask")) {
                (Some(p), _) => p.parse().ok().filter(|p| *p <= 32)?,
                (None, Some(m)) => netmask_prefix(m.parse().ok()?)?,
                (None, None) => return None,
            };
            let dhcp_range = child(ip, "dhcp")
                .and_then(|d| child(d, "range"))
                .and_then(|r| {
                    Some((
                        r.attribute("start")?.parse().ok()?,
                        r.attribute("end")?.parse().ok()?,
                    ))
                });
            Some(NetworkIpv4 {
                address,
                prefix,
                dhcp_range,
            })
        });
    Ok(NetworkFacts {
        bridge: child(root, "bridge")
            .and_then(|b| b.attribute("name"))
            .map(String::from),
        forward: child(root, "forward").map(|f| f.attribute("mode").unwrap_or("nat").to_string()),
        ipv4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let x = "<network><name>default</name><forward mode='nat'/><bridge name='virbr0'/>\
                 <ip family='ipv6' address='fd00::1' prefix='64'/>\
                 <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>\
                 <range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip></network>";
        let f = parse_network_xml(x).unwrap();
        assert_eq!(f.bridge.as_deref(), Some("virbr0"));
        assert_eq!(f.forward.as_deref(), Some("nat"));
        assert_eq!(
            f.ipv4,
            Some(NetworkIpv4 {
                address: Ipv4Addr::new(192, 168, 122, 1),
                prefix: 24,
                dhcp_range: Some((
                    Ipv4Addr::new(192, 168, 122, 2),
                    Ipv4Addr::new(192, 168, 122, 254)
                )),
            })
        );
        let f = parse_network_xml(
            "<network><name>iso</name><ip address='10.0.0.1' prefix='16'/></network>",
        )
        .unwrap();
        assert_eq!(f.forward, None);
        assert_eq!(f.bridge, None);
        assert_eq!(f.ipv4.as_ref().map(|i| i.prefix), Some(16));
        assert_eq!(f.ipv4.and_then(|i| i.dhcp_range), None);
        // A non-contiguous netmask is not a prefix.
        let f =
            parse_network_xml("<network><ip address='10.0.0.1' netmask='255.0.255.0'/></network>")
                .unwrap();
        assert_eq!(f.ipv4, None);
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(netmask_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(netmask_prefix(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(netmask_prefix(Ipv4Addr::new(255, 255, 0, 255)), None);
    }
}
