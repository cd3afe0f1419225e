//! An instance's NICs as the domain XML and the seed's network-config say them.

use kvmprov_hypervisor::xml::{InterfaceSource, InterfaceSpec};
use kvmprov_seed::{Ipv6Static, NetworkSpec, NicNetwork};

use crate::config::{Attachment, Instance};
use crate::report::{Action, Op};

/// `--check`'s line per NIC of an instance that has several or one on a host bridge (a one-NIC
/// instance on a network: its line already says all): `db-01 nic1  create  network storage,
/// mac …, static 10.77.0.10/24`.
pub(super) fn planned(inst: &Instance) -> Vec<Action> {
    let nics = inst.nics();
    if nics.len() < 2 && inst.attach.bridge().is_none() {
        return Vec::new();
    }
    nics.iter()
        .enumerate()
        .map(|(i, n)| Action::new(format!("{} nic{i}", inst.name), Op::Create, n.describe()))
        .collect()
}

/// The domain's `<interface>`s, in device order.
pub(super) fn interfaces(inst: &Instance) -> Vec<InterfaceSpec> {
    inst.nics()
        .into_iter()
        .map(|n| InterfaceSpec {
            source: match n.attach {
                Attachment::Network(name) => InterfaceSource::Network(name),
                Attachment::Bridge(name) => InterfaceSource::Bridge(name),
            },
            mac: n.mac,
            model: n.model.as_str().to_string(),
        })
        .collect()
}

/// The seed's NICs, in device order: each matched by MAC, the primary one with the gateways.
pub(super) fn seed_networks(inst: &Instance) -> Vec<NicNetwork> {
    inst.nics()
        .into_iter()
        .map(|n| NicNetwork {
            ipv4: match n.ipv4 {
                Some(st) => NetworkSpec::Static {
                    mac: n.mac,
                    address: st.address.to_string(),
                    gateway: st.gateway,
                    dns: st.dns,
                },
                None => NetworkSpec::Dhcp { mac: n.mac },
            },
            ipv6: n.ipv6.map(|v6| Ipv6Static {
                address: v6.address.to_string(),
                gateway: v6.gateway,
            }),
            primary: n.primary,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Nic, NicIpv4, NicModel};

    #[test]
    fn a_one_nic_instance_has_the_interface_and_network_it_always_had() {
        let inst = Instance::for_tests("web-01");
        let mac = kvmprov_hypervisor::xml::mac_for("web-01");
        assert_eq!(
            interfaces(&inst),
            vec![InterfaceSpec::virtio_on("default", &mac)]
        );
        assert_eq!(
            seed_networks(&inst),
            vec![NicNetwork::only(NetworkSpec::Dhcp { mac })]
        );
    }

    #[test]
    fn a_nic_on_a_host_bridge_is_a_bridge_interface_with_a_plan_line() {
        let inst = Instance {
            attach: Attachment::Bridge("br0".into()),
            ..Instance::for_tests("edge-01")
        };
        let mac = kvmprov_hypervisor::xml::mac_for("edge-01");
        assert_eq!(
            interfaces(&inst),
            vec![InterfaceSpec {
                source: InterfaceSource::Bridge("br0".into()),
                mac: mac.clone(),
                model: "virtio".into(),
            }]
        );
        // Matched by MAC and on DHCP, as on a network.
        assert_eq!(
            seed_networks(&inst),
            vec![NicNetwork::only(NetworkSpec::Dhcp { mac: mac.clone() })]
        );
        // One NIC, but on a bridge: `--check` says so on a line of its own.
        let lines = planned(&inst);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].target, "edge-01 nic0");
        assert_eq!(
            lines[0].reason,
            format!("bridge br0, mac {mac}, DHCPv4, primary")
        );
        assert!(planned(&Instance::for_tests("web-01")).is_empty());
    }

    #[test]
    fn the_primary_nic_sits_where_the_config_puts_it() {
        let inst = Instance {
            primary_nic_index: 1,
            other_nics: vec![Nic {
                attach: Attachment::Network("storage".into()),
                mac: "52:54:00:00:00:09".into(),
                ipv4: Some(NicIpv4 {
                    address: "10.77.0.10/24".parse().unwrap(),
                    gateway: None,
                    dns: vec![],
                }),
                ipv6: None,
                model: NicModel::E1000e,
                primary: false,
            }],
            ..Instance::for_tests("db-01")
        };
        let x = interfaces(&inst);
        assert_eq!(x[0].source, InterfaceSource::Network("storage".into()));
        assert_eq!(x[0].model, "e1000e");
        assert_eq!(x[1].source, InterfaceSource::Network("default".into()));
        let s = seed_networks(&inst);
        assert!(!s[0].primary && s[1].primary);
        assert_eq!(
            s[0].ipv4,
            NetworkSpec::Static {
                mac: "52:54:00:00:00:09".into(),
                address: "10.77.0.10/24".into(),
                gateway: None,
                dns: vec![],
            }
        );
    }
}
