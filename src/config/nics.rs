//! An instance's NICs: the checks of its `nics:` list into resolved [`Nic`]s. The one-NIC
//! shorthand (`libvirt_network_name`, `ipv4_address`, `mac_address`, …) stays the
//! instance's primary NIC in [`Instance`](super::Instance)'s own fields; a `nics:` list fills
//! those from its primary entry and lists the others beside.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;

use super::diagnostics::Locator;
use super::raw::{InstanceDefinition, NicDefinition, NicModel};
use super::resolved::{effective_mac, Attachment, Nic, NicIpv4, StaticIpv4, StaticIpv6};
use super::validate::{host_address, parse_mac, parse_static, valid_simple_name};
use super::ConfigError;

/// An instance's NICs as resolved: the primary one in the shape of the one-NIC shorthand (what
/// [`Instance`](super::Instance) keeps in its own fields) and the others.
pub(super) struct ResolvedNics {
    pub attach: Attachment,
    pub ipv4: Option<StaticIpv4>,
    pub mac: Option<String>,
    pub ipv6: Option<StaticIpv6>,
    pub model: NicModel,
    pub primary_index: usize,
    pub others: Vec<Nic>,
}

/// What earlier NICs (of this and earlier instances) took: addresses and MACs are unique.
pub(super) trait TakenAddresses {
    fn take_ipv4(&mut self, ip: Ipv4Addr) -> bool;
    fn take_ipv6(&mut self, ip: Ipv6Addr) -> bool;
    /// `Err(owner)` when `mac` is already `owner`'s.
    fn take_mac(&mut self, mac: &str, owner: &str) -> Result<(), String>;
}

/// The shorthand fields, which `nics` replaces.
pub(super) const SHORTHAND: &[&str] = &[
    "libvirt_network_name",
    "ipv4_address",
    "ipv4_gateway",
    "dns_servers",
    "mac_address",
];

/// Resolves `d.nics` (non-empty). `at` locates the instance.
pub(super) fn resolve(
    at: Locator,
    d: &InstanceDefinition,
    taken: &mut dyn TakenAddresses,
) -> Result<ResolvedNics, ConfigError> {
    let list = at.key("nics");
    if let Some(field) = SHORTHAND.iter().find(|f| at.key(f).is_set()) {
        return Err(at.key(field).error(format!(
            "{field} is the one-NIC shorthand and cannot be used together with nics: describe every NIC in nics"
        )));
    }
    let marked: Vec<usize> = (0..d.nics.len()).filter(|i| d.nics[*i].primary).collect();
    if let Some(second) = marked.get(1) {
        return Err(list
            .index(*second)
            .key("primary")
            .error("only one NIC can be primary"));
    }
    let primary_index = marked.first().copied().unwrap_or(0);
    let mut primary = None;
    let mut others = Vec::new();
    for (i, n) in d.nics.iter().enumerate() {
        let nic = resolve_nic(
            list.index(i),
            &d.instance_name,
            i,
            i == primary_index,
            n,
            taken,
        )?;
        if i == primary_index {
            primary = Some((nic, n));
        } else {
            others.push(nic);
        }
    }
    let Some((p, raw)) = primary else {
        return Err(list.error("nics must list at least one NIC"));
    };
    let ipv4 = match &raw.ipv4_address {
        Some(addr) => Some(
            parse_static(addr, raw.ipv4_gateway.as_deref(), &raw.dns_servers)
                .map_err(|(field, m)| list.index(primary_index).key(field).error(m))?,
        ),
        None => None,
    };
    Ok(ResolvedNics {
        attach: p.attach,
        ipv4,
        mac: raw.mac.as_deref().map(str::to_ascii_lowercase),
        ipv6: p.ipv6,
        model: p.model,
        primary_index,
        others,
    })
}

fn resolve_nic(
    at: Locator,
    instance: &str,
    index: usize,
    primary: bool,
    n: &NicDefinition,
    taken: &mut dyn TakenAddresses,
) -> Result<Nic, ConfigError> {
    let attach = attachment(at, index, n)?;
    let configured = n
        .mac
        .as_deref()
        .map(parse_mac)
        .transpose()
        .map_err(|m| at.key("mac").error(m))?;
    // The primary NIC keeps the instance's MAC: a domain made from the shorthand does not
    // drift when its NIC moves into a list.
    let mac = match (&configured, primary) {
        (Some(m), _) => m.clone(),
        (None, true) => effective_mac(None, instance),
        (None, false) => kvmprov_hypervisor::xml::mac_for_nic(instance, index),
    };
    if let Err(owner) = taken.take_mac(&mac, instance) {
        let (field, how) = match configured {
            Some(_) => ("mac", "its mac"),
            None => (attach.kind(), "its derived MAC"),
        };
        return Err(at.key(field).error(format!(
            "NIC {index} of instance `{instance}`: {how} {mac} is already the MAC of {owner}; set a distinct mac"
        )));
    }
    if !primary {
        for field in ["ipv4_gateway", "ipv6_gateway"] {
            if at.key(field).is_set() {
                return Err(at.key(field).error(format!(
                    "{field}: only the primary NIC has a gateway (the one default route); route other networks from inside the guest"
                )));
            }
        }
    }
    let ipv4 = nic_ipv4(at, n, primary, taken)?;
    let ipv6 = nic_ipv6(at, n, taken)?;
    Ok(Nic {
        attach,
        mac,
        ipv4,
        ipv6,
        model: n.model,
        primary,
    })
}

/// The NIC's `network` or `bridge`: exactly one, a valid name.
fn attachment(at: Locator, index: usize, n: &NicDefinition) -> Result<Attachment, ConfigError> {
    match (&n.network, &n.bridge) {
        (Some(net), None) => {
            valid_simple_name(net).map_err(|m| at.key("network").error(format!("network {m}")))?;
            Ok(Attachment::Network(net.clone()))
        }
        (None, Some(br)) => {
            valid_bridge_name(br).map_err(|m| at.key("bridge").error(format!("bridge {m}")))?;
            Ok(Attachment::Bridge(br.clone()))
        }
        (Some(_), Some(_)) => Err(at.key("bridge").error(format!(
            "NIC {index} names both a network and a bridge: a NIC sits on a libvirt network or directly on a host bridge, so keep one of them"
        ))),
        (None, None) => Err(at.error(format!(
            "NIC {index} names neither a network nor a bridge: set `network: NAME` (a libvirt network) or `bridge: NAME` (a host bridge)"
        ))),
    }
}

/// A Linux interface name as `ip link` takes it: 1–15 bytes (IFNAMSIZ), here of
/// `A-Z a-z 0-9 - _ .`, not `.` first (no `.`/`..`, which are no names under /sys/class/net).
fn valid_bridge_name(name: &str) -> Result<(), String> {
    valid_simple_name(name)?;
    if name.len() > 15 {
        return Err(format!(
            "`{name}` is longer than a Linux interface name can be (15 characters)"
        ));
    }
    Ok(())
}

fn nic_ipv4(
    at: Locator,
    n: &NicDefinition,
    primary: bool,
    taken: &mut dyn TakenAddresses,
) -> Result<Option<NicIpv4>, ConfigError> {
    let Some(addr) = &n.ipv4_address else {
        if !n.dns_servers.is_empty() {
            return Err(at
                .key("dns_servers")
                .error("dns_servers need a static ipv4_address"));
        }
        if n.ipv4_gateway.is_some() {
            return Err(at
                .key("ipv4_gateway")
                .error("ipv4_gateway needs a static ipv4_address"));
        }
        return Ok(None);
    };
    let v4 = if primary {
        NicIpv4::from(
            &parse_static(addr, n.ipv4_gateway.as_deref(), &n.dns_servers)
                .map_err(|(field, m)| at.key(field).error(m))?,
        )
    } else {
        let address = host_address(addr).map_err(|m| at.key("ipv4_address").error(m))?;
        let mut dns = Vec::new();
        for s in &n.dns_servers {
            dns.push(s.parse::<Ipv4Addr>().map_err(|_| {
                at.key("dns_servers")
                    .error(format!("`{s}` is not an IPv4 address"))
            })?);
        }
        NicIpv4 {
            address,
            gateway: None,
            dns,
        }
    };
    if !taken.take_ipv4(v4.address.addr()) {
        return Err(at.key("ipv4_address").error(format!(
            "ipv4_address {} is used by another NIC",
            v4.address.addr()
        )));
    }
    Ok(Some(v4))
}

fn nic_ipv6(
    at: Locator,
    n: &NicDefinition,
    taken: &mut dyn TakenAddresses,
) -> Result<Option<StaticIpv6>, ConfigError> {
    let Some(addr) = &n.ipv6_address else {
        if n.ipv6_gateway.is_some() {
            return Err(at
                .key("ipv6_gateway")
                .error("ipv6_gateway needs a static ipv6_address"));
        }
        return Ok(None);
    };
    let address = ipv6_host_address(addr).map_err(|m| at.key("ipv6_address").error(m))?;
    let gateway = match &n.ipv6_gateway {
        Some(g) => {
            let gw: Ipv6Addr = g.parse().map_err(|_| {
                at.key("ipv6_gateway")
                    .error(format!("`{g}` is not an IPv6 address"))
            })?;
            // A router's link-local address (fe80::1) is a common next hop.
            let link_local = (gw.segments()[0] & 0xffc0) == 0xfe80;
            if gw == address.addr() || !(address.contains(&gw) || link_local) {
                return Err(at.key("ipv6_gateway").error(format!(
                    "gateway `{gw}` must be another address inside {} or a link-local address",
                    address.trunc()
                )));
            }
            Some(gw)
        }
        None => None,
    };
    if !taken.take_ipv6(address.addr()) {
        return Err(at.key("ipv6_address").error(format!(
            "ipv6_address {} is used by another NIC",
            address.addr()
        )));
    }
    Ok(Some(StaticIpv6 { address, gateway }))
}

/// `fd77::10/64`: a global or unique-local unicast address with its prefix.
fn ipv6_host_address(address: &str) -> Result<Ipv6Net, String> {
    let net: Ipv6Net = address
        .parse()
        .map_err(|_| format!("`{address}` is not an IPv6 address with prefix, like fd77::10/64"))?;
    if !(16..=128).contains(&net.prefix_len()) {
        return Err(format!(
            "prefix /{} is not usable for a host (use /16 to /128)",
            net.prefix_len()
        ));
    }
    let a = net.addr();
    let link_local = (a.segments()[0] & 0xffc0) == 0xfe80;
    if a.is_loopback() || a.is_multicast() || a.is_unspecified() || link_local {
        return Err(format!(
            "`{a}` is not a global or unique-local unicast address"
        ));
    }
    if net.prefix_len() < 127 && a == net.network() {
        return Err(format!(
            "`{a}` is the subnet-router anycast address of {}",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse, Config};

    const HEAD: &str = "\
kvm_image_cache_path: /srv/images
kvm_instance_disk_pool_path: /srv/instances
kvm_cloud_image_catalog:
  - image_name: debian-12
    image_url: http://127.0.0.1:1/d.qcow2
    image_checksum_manifest_url: http://127.0.0.1:1/SHA512SUMS
kvm_instance_definitions:
";

    fn p(instances: &str) -> Result<Config, String> {
        parse(Path::new("vars.yml"), &format!("{HEAD}{instances}"), &[]).map_err(|e| e.to_string())
    }

    fn err(instances: &str) -> String {
        match p(instances) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    /// The commented `nics:` example in the shipped variables file, uncommented, is valid.
    #[test]
    fn the_shipped_example_of_nics_parses_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("vars/kvm-provisioning.yml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut block = String::new();
        let mut inside = false;
        for line in text.lines() {
            inside = inside || line == "  # - instance_name: db-02";
            if inside {
                match line.strip_prefix("  # ") {
                    Some(rest) => block.push_str(&format!("  {rest}\n")),
                    None => break,
                }
            }
        }
        assert!(block.contains("nics:"), "{block}");
        let c = p(&block).unwrap();
        let nics = c.instances[0].nics();
        assert_eq!(nics.len(), 3);
        assert_eq!(nics[2].attach, Attachment::Bridge("br0".into()));
    }

    #[test]
    fn a_list_of_one_nic_is_the_shorthand() {
        let short = p("  - {instance_name: db-01, image_name: debian-12, libvirt_network_name: lan, ipv4_address: 10.0.0.5/24}\n").unwrap();
        let list = p("  - instance_name: db-01\n    image_name: debian-12\n    nics:\n      - {network: lan, ipv4_address: 10.0.0.5/24}\n").unwrap();
        assert_eq!(short.instances, list.instances);
        // The same serialised form: the config digest of existing domains does not change.
        assert_eq!(
            serde_json::to_string(&short.instances[0]).unwrap(),
            serde_json::to_string(&list.instances[0]).unwrap()
        );
    }

    #[test]
    fn several_nics_resolve_in_device_order_with_stable_macs() {
        let c = p("  - instance_name: db-01
    image_name: debian-12
    nics:
      - network: default
      - network: storage
        ipv4_address: 10.77.0.10/24
        ipv6_address: fd77::10/64
        model: e1000e
")
        .unwrap();
        let i = &c.instances[0];
        let nics = i.nics();
        assert_eq!(nics.len(), 2);
        assert!(nics[0].primary && !nics[1].primary);
        assert_eq!(nics[0].mac, kvmprov_hypervisor::xml::mac_for("db-01"));
        assert_eq!(
            nics[1].mac,
            kvmprov_hypervisor::xml::mac_for_nic("db-01", 1)
        );
        let v4 = nics[1].ipv4.as_ref().unwrap();
        assert_eq!(v4.address.to_string(), "10.77.0.10/24");
        assert_eq!(v4.gateway, None);
        assert_eq!(
            nics[1].ipv6.as_ref().unwrap().address.to_string(),
            "fd77::10/64"
        );
        assert_eq!(nics[1].model, NicModel::E1000e);
        assert_eq!(c.required_networks(), vec!["default", "storage"]);
    }

    #[test]
    fn the_primary_nic_can_be_another_than_the_first() {
        let c = p("  - instance_name: db-01
    image_name: debian-12
    nics:
      - network: storage
      - network: lan
        primary: true
        ipv4_address: 10.0.0.5/24
        ipv6_address: 2001:db8::5/64
        ipv6_gateway: fe80::1
")
        .unwrap();
        let i = &c.instances[0];
        assert_eq!(i.attach, Attachment::Network("lan".into()));
        assert_eq!(i.primary_nic_index, 1);
        assert_eq!(i.effective_mac(), kvmprov_hypervisor::xml::mac_for("db-01"));
        assert_eq!(i.ipv4.as_ref().unwrap().gateway.to_string(), "10.0.0.1");
        assert_eq!(i.ipv6.as_ref().unwrap().gateway, "fe80::1".parse().ok());
        let nics = i.nics();
        assert_eq!(nics[0].attach, Attachment::Network("storage".into()));
        assert_eq!(
            nics[0].mac,
            kvmprov_hypervisor::xml::mac_for_nic("db-01", 0)
        );
        assert!(nics[1].primary);
    }

    #[test]
    fn the_shorthand_and_a_list_together_are_refused_at_the_shorthand_key() {
        let e = err("  - instance_name: db-01
    image_name: debian-12
    mac_address: 52:54:00:00:00:01
    nics:
      - network: default
");
        assert!(
            e.starts_with("vars.yml:10:18: mac_address is the one-NIC shorthand"),
            "{e}"
        );
    }

    #[test]
    fn one_mac_on_two_nics_is_refused() {
        let e = err("  - instance_name: db-01
    image_name: debian-12
    nics:
      - {network: default, mac: '52:54:00:00:00:01'}
      - {network: storage, mac: '52:54:00:00:00:01'}
");
        assert!(e.starts_with("vars.yml:12:"), "{e}");
        assert!(
            e.contains("52:54:00:00:00:01 is already the MAC of another NIC of `db-01`"),
            "{e}"
        );
        // Against another instance's derived MAC, too.
        let e = err(&format!(
            "  - {{instance_name: web-01, image_name: debian-12}}
  - instance_name: db-01
    image_name: debian-12
    nics:
      - network: default
      - {{network: storage, mac: '{}'}}
",
            kvmprov_hypervisor::xml::mac_for("web-01")
        ));
        assert!(e.contains("is already the MAC of instance `web-01`"), "{e}");
    }

    #[test]
    fn gateways_belong_to_the_primary_nic_only() {
        let e = err("  - instance_name: db-01
    image_name: debian-12
    nics:
      - network: default
      - {network: storage, ipv4_address: 10.77.0.10/24, ipv4_gateway: 10.77.0.1}
");
        assert!(e.starts_with("vars.yml:12:"), "{e}");
        assert!(e.contains("only the primary NIC has a gateway"), "{e}");
        let e = err("  - instance_name: db-01
    image_name: debian-12
    nics:
      - {network: default, primary: true}
      - {network: storage, primary: true}
");
        assert!(e.contains("only one NIC can be primary"), "{e}");
    }

    #[test]
    fn a_nic_can_sit_directly_on_a_host_bridge() {
        let c = p("  - instance_name: db-01
    image_name: debian-12
    nics:
      - network: default
      - bridge: br0
        ipv4_address: 192.0.2.10/24
")
        .unwrap();
        let nics = c.instances[0].nics();
        assert_eq!(nics[1].attach, Attachment::Bridge("br0".into()));
        assert_eq!(
            nics[1].mac,
            kvmprov_hypervisor::xml::mac_for_nic("db-01", 1)
        );
        assert_eq!(
            nics[1].describe(),
            format!("bridge br0, mac {}, static 192.0.2.10/24", nics[1].mac)
        );
        assert_eq!(c.required_networks(), vec!["default"]);
        assert_eq!(c.required_bridges(), vec!["br0"]);
        let json = serde_json::to_value(&c.instances[0]).unwrap();
        assert_eq!(json["other_nics"][0]["bridge"], "br0");
        assert!(json["other_nics"][0].get("network").is_none());
    }

    /// The primary NIC, too: kvmprov then reaches the guest on the bridge.
    #[test]
    fn the_primary_nic_can_sit_on_a_host_bridge() {
        let c = p("  - instance_name: edge-01
    image_name: debian-12
    nics:
      - bridge: br0
")
        .unwrap();
        let i = &c.instances[0];
        assert_eq!(i.attach, Attachment::Bridge("br0".into()));
        assert_eq!(
            i.effective_mac(),
            kvmprov_hypervisor::xml::mac_for("edge-01")
        );
        assert!(c.required_networks().is_empty());
        let json = serde_json::to_value(i).unwrap();
        assert_eq!(json["bridge"], "br0");
        assert!(json.get("network").is_none());
    }

    /// A network instance's serialised form (its config digest) is what it was before
    /// bridges: `"network":"…"` in the same place.
    #[test]
    fn a_network_instance_serialises_as_before_bridges() {
        let c = p("  - {instance_name: web-01, image_name: debian-12}\n").unwrap();
        let text = serde_json::to_string(&c.instances[0]).unwrap();
        assert!(
            text.contains(r#""disk_size_gib":20,"network":"default","ipv4":null"#),
            "{text}"
        );
    }

    #[test]
    fn a_nic_names_exactly_one_of_network_and_bridge() {
        let e = err("  - instance_name: db-01
    image_name: debian-12
    nics:
      - network: default
      - {network: lan, bridge: br0}
");
        assert!(
            e.starts_with("vars.yml:12:32: NIC 1 names both a network and a bridge"),
            "{e}"
        );
        let e = err("  - instance_name: db-01
    image_name: debian-12
    nics:
      - network: default
      - mac: '52:54:00:00:00:07'
");
        assert!(e.starts_with("vars.yml:12:"), "{e}");
        assert!(
            e.contains("NIC 1 names neither a network nor a bridge"),
            "{e}"
        );
        let e = err("  - instance_name: db-01
    image_name: debian-12
    nics:
      - bridge: br0-with-a-long-name
");
        assert!(e.starts_with("vars.yml:11:"), "{e}");
        assert!(e.contains("longer than a Linux interface name"), "{e}");
        let e = err("  - instance_name: db-01
    image_name: debian-12
    nics:
      - bridge: ../eth0
");
        assert!(e.contains("bridge may contain only"), "{e}");
    }

    #[test]
    fn bad_ipv6_addresses_are_refused_with_their_line() {
        for (value, says) in [
            ("fd77::10", "is not an IPv6 address with prefix"),
            (
                "fe80::10/64",
                "is not a global or unique-local unicast address",
            ),
            ("fd77::/64", "subnet-router anycast"),
        ] {
            let e = err(&format!(
                "  - instance_name: db-01
    image_name: debian-12
    nics:
      - {{network: default, ipv6_address: '{value}'}}
"
            ));
            assert!(e.starts_with("vars.yml:11:"), "{e}");
            assert!(e.contains(says), "{e}");
        }
        let e = err("  - instance_name: db-01
    image_name: debian-12
    nics:
      - {network: default, ipv6_address: 'fd77::10/64', ipv6_gateway: 'fd78::1'}
");
        assert!(
            e.contains("must be another address inside fd77::/64"),
            "{e}"
        );
        let e = err("  - instance_name: a
    image_name: debian-12
    nics: [{network: default, ipv6_address: 'fd77::10/64'}]
  - instance_name: b
    image_name: debian-12
    nics: [{network: default, ipv6_address: 'fd77::10/64'}]
");
        assert!(
            e.contains("ipv6_address fd77::10 is used by another NIC"),
            "{e}"
        );
    }
}
