//! The `network-config` (version 2) document: one entry per NIC, each matched by its MAC
//! (whatever name the guest's kernel gives it). Only the primary NIC carries default routes, so
//! the guest has exactly one default route whatever its other networks' DHCP servers say.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{json, Map, Value};

/// How a NIC gets its IPv4 address. The NIC is matched by MAC, whatever the guest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkSpec {
    Dhcp {
        mac: String,
    },
    Static {
        mac: String,
        /// `address/prefix`, e.g. `192.168.122.50/24`.
        address: String,
        /// The default route's next hop (only the primary NIC has one).
        gateway: Option<Ipv4Addr>,
        dns: Vec<Ipv4Addr>,
    },
}

impl NetworkSpec {
    fn mac(&self) -> &str {
        match self {
            NetworkSpec::Dhcp { mac } | NetworkSpec::Static { mac, .. } => mac,
        }
    }
}

/// A static IPv6 address of a NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Static {
    /// `address/prefix`, e.g. `fd77::10/64`.
    pub address: String,
    /// The IPv6 default route's next hop (only the primary NIC has one).
    pub gateway: Option<Ipv6Addr>,
}

/// One NIC of the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicNetwork {
    pub ipv4: NetworkSpec,
    pub ipv6: Option<Ipv6Static>,
    /// The NIC kvmprov reaches the guest on: the only one whose DHCP routes are used.
    pub primary: bool,
}

impl NicNetwork {
    /// The only NIC of a one-NIC guest.
    pub fn only(ipv4: NetworkSpec) -> NicNetwork {
        NicNetwork {
            ipv4,
            ipv6: None,
            primary: true,
        }
    }
}

/// The `ethernets` entries: `primary` for the primary NIC (the name a one-NIC guest has always
/// had), `nicN` for the others (N: the position among the NICs). A NIC without a static IPv4
/// address uses DHCPv4; router advertisements are left to the kernel's default (accepted, the
/// guest does not forward).
pub(crate) fn document(nics: &[NicNetwork]) -> Value {
    let mut ethernets = Map::new();
    for (i, nic) in nics.iter().enumerate() {
        let id = if nic.primary {
            "primary".to_string()
        } else {
            format!("nic{i}")
        };
        ethernets.insert(id, ethernet(nic));
    }
    json!({
        "version": 2,
        "ethernets": ethernets,
    })
}

fn ethernet(nic: &NicNetwork) -> Value {
    let mut e = Map::new();
    e.insert("match".into(), json!({ "macaddress": nic.ipv4.mac() }));
    let mut addresses: Vec<Value> = Vec::new();
    let mut routes: Vec<Value> = Vec::new();
    let mut dns_servers: Vec<String> = Vec::new();
    match &nic.ipv4 {
        NetworkSpec::Dhcp { .. } => {
            e.insert("dhcp4".into(), json!(true));
            if !nic.primary {
                // A second DHCP server's default route would compete with the primary's.
                e.insert("dhcp4-overrides".into(), json!({ "use-routes": false }));
            }
        }
        NetworkSpec::Static {
            address,
            gateway,
            dns,
            ..
        } => {
            e.insert("dhcp4".into(), json!(false));
            addresses.push(json!(address));
            if let Some(gw) = gateway {
                routes.push(json!({ "to": "0.0.0.0/0", "via": gw.to_string() }));
            }
            dns_servers.extend(dns.iter().map(Ipv4Addr::to_string));
        }
    }
    if let Some(v6) = &nic.ipv6 {
        addresses.push(json!(v6.address));
        if let Some(gw) = v6.gateway {
            routes.push(json!({ "to": "::/0", "via": gw.to_string() }));
        }
    }
    if !addresses.is_empty() {
        e.insert("addresses".into(), Value::from(addresses));
    }
    if !routes.is_empty() {
        e.insert("routes".into(), Value::from(routes));
    }
    if !dns_servers.is_empty() {
        e.insert("nameservers".into(), json!({ "addresses": dns_servers }));
    }
    Value::Object(e)
}
