//! How a guest's IPv4 address is found, on any libvirt network, without a guest agent.
//!
//! Debian's genericcloud image has no qemu-guest-agent, and on a bridged network the DHCP
//! server is not libvirt's, so libvirt knows no lease. The sources, in the order tried:
//! - **static**: the address the config gives the guest (network-config v2 in the seed);
//! - **lease**: the libvirt network's DHCP lease for the guest's MAC (libvirt's own DHCP);
//! - **console**: the guest's own announcement: cloud-init prints its network table
//!   (`ci-info: | enp1s0 | True | 192.0.2.7 | … | 52:54:00:… |`) on the serial console, which
//!   kvmprov logs to a file; this works on every network the guest gets an address on;
//! - **neighbour**: the hypervisor's ARP table (`/proc/net/arp`), when it has talked to the guest;
//! - **agent**: qemu-guest-agent, when the image has one.
//!
//! A secondary NIC's address is found the same way, by its own MAC on its own network
//! ([`current_per_nic`]).
//!
//! `plan` (pure) decides which sources can work for an instance on its network, or why none
//! can; `find` asks them in order through a `Probe`, the only part that does I/O.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use kvmprov_hypervisor::{HvError, Hypervisor, NetworkInfo, SshDest};
use serde::Serialize;

use crate::config::{Attachment, Instance, Nic, StaticIpv4};
use crate::console::ConsoleLog;
pub use crate::output::json::NicAddresses;
use crate::ssh;

/// Where an address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Static,
    Lease,
    Console,
    Neighbour,
    Agent,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Lease => "lease",
            Source::Console => "console",
            Source::Neighbour => "neighbour",
            Source::Agent => "agent",
        }
    }
}

/// The sources that can work for one instance, and a sentence saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPlan {
    pub sources: Vec<Source>,
    pub how: String,
}

/// Forward modes in which the guest's NIC sits on a bridge or device libvirt does not manage:
/// the DHCP server, if any, is somebody else's.
fn forwards_outside(mode: Option<&str>) -> bool {
    matches!(
        mode,
        Some("bridge" | "private" | "vepa" | "passthrough" | "hostdev")
    )
}

/// A network's mode as people say it.
pub fn mode_name(net: &NetworkInfo) -> &str {
    net.forward.as_deref().unwrap_or("isolated")
}

/// Pure: which sources can find `inst`'s address on `net`, or why none can (one sentence,
/// naming the network and what would make it work).
pub fn plan(inst: &Instance, net: &NetworkInfo) -> Result<AddressPlan, String> {
    if let Some(st) = &inst.ipv4 {
        return Ok(AddressPlan {
            sources: vec![Source::Static],
            how: format!("static {} (from the config)", st.address),
        });
    }
    let mode = mode_name(net);
    let libvirt_dhcp = net.ipv4.as_ref().and_then(|ip| ip.dhcp_range);
    if let Some((start, end)) = libvirt_dhcp {
        return Ok(AddressPlan {
            sources: vec![
                Source::Lease,
                Source::Console,
                Source::Neighbour,
                Source::Agent,
            ],
            how: format!(
                "DHCP lease from libvirt on `{}` ({mode}, {start}-{end}), else the guest's console announcement",
                net.name
            ),
        });
    }
    if forwards_outside(net.forward.as_deref()) {
        let onto = net
            .bridge
            .as_deref()
            .map(|b| format!(" onto bridge {b}"))
            .unwrap_or_default();
        return Ok(AddressPlan {
            sources: vec![Source::Console, Source::Neighbour, Source::Agent],
            how: format!(
                "announced by the guest on its serial console (network `{}` forwards{onto}; DHCP there is not libvirt's), else the hypervisor's neighbour table",
                net.name
            ),
        });
    }
    Err(format!(
        "network `{}` ({mode}) has no DHCP server and instance {} has no static address, so no address source can work: set ipv4_address on the instance, add <dhcp> to the network (virsh net-edit {}), or use an image whose guest agent reports an address it configures itself",
        net.name, inst.name, net.name
    ))
}

/// The sources to ask when the network could not be examined (or no source can work, which
/// preflight reports): everything that does not need the network's facts.
pub fn plan_or_all(inst: &Instance, net: Option<&NetworkInfo>) -> AddressPlan {
    net.and_then(|n| plan(inst, n).ok())
        .unwrap_or_else(|| AddressPlan {
            sources: match inst.ipv4 {
                Some(_) => vec![Source::Static],
                None => vec![
                    Source::Lease,
                    Source::Console,
                    Source::Neighbour,
                    Source::Agent,
                ],
            },
            how: "every source kvmprov knows".into(),
        })
}

/// Pure: which sources can find the address of `inst`, whose primary NIC sits directly on host
/// bridge `bridge`: libvirt knows no lease there, so the guest's own announcement, as on a
/// libvirt network that forwards onto a bridge.
pub fn plan_on_bridge(inst: &Instance, bridge: &str) -> AddressPlan {
    if let Some(st) = &inst.ipv4 {
        return AddressPlan {
            sources: vec![Source::Static],
            how: format!("static {} (from the config)", st.address),
        };
    }
    AddressPlan {
        sources: vec![Source::Console, Source::Neighbour, Source::Agent],
        how: format!(
            "announced by the guest on its serial console (host bridge {bridge}; DHCP there is not libvirt's), else the hypervisor's neighbour table"
        ),
    }
}

/// The plan for `inst` on its network among `networks` (the hypervisor's, read once per run),
/// or on its host bridge.
pub fn plan_among(inst: &Instance, networks: &[NetworkInfo]) -> AddressPlan {
    match &inst.attach {
        Attachment::Bridge(b) => plan_on_bridge(inst, b),
        Attachment::Network(name) => plan_or_all(inst, networks.iter().find(|n| n.name == *name)),
    }
}

/// Plan and ask once: the guest's address now (for `status`, `ssh` and the inventory).
/// `networks`: the hypervisor's networks.
pub fn current(
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    inst: &Instance,
    pool_path: &Path,
) -> Result<Option<Ipv4Addr>, HvError> {
    let probe = HostProbe::new(hv, inst, pool_path);
    Ok(find(&plan_among(inst, networks), inst, &probe)?.map(|(ip, _)| ip))
}

/// Every NIC's addresses, in device order: IPv4 found through the same sources as the primary
/// NIC's (each keyed by the NIC's MAC). `primary_ipv4`: the primary NIC's, already found by
/// [`current`].
pub fn current_per_nic(
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    inst: &Instance,
    pool_path: &Path,
    primary_ipv4: Option<Ipv4Addr>,
) -> Result<Vec<NicAddresses>, HvError> {
    let mut out = Vec::new();
    for nic in inst.nics() {
        let ipv4 = if nic.primary {
            primary_ipv4
        } else {
            current(hv, networks, &nic_as_primary(inst, &nic), pool_path)?
        };
        out.push(NicAddresses {
            ipv6: nic.ipv6.as_ref().map(|v6| v6.address.addr()),
            network: nic.attach.network().map(str::to_string),
            bridge: nic.attach.bridge().map(str::to_string),
            mac: nic.mac,
            primary: nic.primary,
            ipv4,
        });
    }
    Ok(out)
}

/// `inst` as if `nic` were its primary NIC: what [`plan`] and [`HostProbe`] read (network,
/// static address, MAC), so a secondary NIC's address is found the same way.
pub fn nic_as_primary(inst: &Instance, nic: &Nic) -> Instance {
    Instance {
        attach: nic.attach.clone(),
        ipv4: nic.ipv4.as_ref().map(|v4| StaticIpv4 {
            address: v4.address,
            // Discovery reads only the address; a secondary NIC has no gateway.
            gateway: v4.gateway.unwrap_or(v4.address.addr()),
            dns: v4.dns.clone(),
        }),
        mac: Some(nic.mac.clone()),
        other_nics: Vec::new(),
        primary_nic_index: 0,
        ..inst.clone()
    }
}

/// Pure: the newest IPv4 cloud-init announced on the console for `mac`, from its
/// `Net device info` table (`| Device | Up | Address | Mask | Scope | Hw-Address |`).
pub fn console_announced(text: &str, mac: &str) -> Option<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.split_once("ci-info: |").map(|(_, row)| row))
        .filter_map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            // Device, Up, Address, Mask, Scope, Hw-Address (+ the empty cell after the last |).
            if cells.len() < 6 || cells[1] != "True" || !cells[5].eq_ignore_ascii_case(mac) {
                return None;
            }
            let ip: Ipv4Addr = cells[2].parse().ok()?;
            guest_unicast(ip).then_some(ip)
        })
        .next_back()
}

/// Pure: the IPv4 for `mac` in `/proc/net/arp` (`IP HWtype Flags HWaddress Mask Device`),
/// complete entries only (flags 0x0 is an unanswered request).
pub fn neighbour_ipv4(arp: &str, mac: &str) -> Option<Ipv4Addr> {
    arp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 || f[2] == "0x0" || !f[3].eq_ignore_ascii_case(mac) {
            return None;
        }
        f[0].parse().ok().filter(|ip| guest_unicast(*ip))
    })
}

/// Pure: could `ip` be a guest's own unicast address, one to log in to? Not 0.0.0.0/8 ("this
/// network"), loopback (127/8), link-local (169.254/16: what a guest takes when DHCP failed, not
/// an address kvmprov can route to), multicast (224/4), reserved (240/4) or the broadcast
/// address. The guest writes the console: it must not send kvmprov anywhere else.
pub fn guest_unicast(ip: Ipv4Addr) -> bool {
    !(ip.octets()[0] == 0
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.octets()[0] >= 240)
}

/// The I/O behind the sources. libvirt's errors come back (a lost connection must end a wait
/// at once, not at its deadline); a source that has nothing to say answers `None`.
pub trait Probe {
    fn lease(&self) -> Result<Option<Ipv4Addr>, HvError>;
    fn console(&self) -> Option<Ipv4Addr>;
    fn neighbour(&self) -> Option<Ipv4Addr>;
    fn agent(&self) -> Result<Option<Ipv4Addr>, HvError>;
}

/// Ask the planned sources in order; the first answer wins.
pub fn find(
    plan: &AddressPlan,
    inst: &Instance,
    probe: &dyn Probe,
) -> Result<Option<(Ipv4Addr, Source)>, HvError> {
    for s in &plan.sources {
        let ip = match s {
            Source::Static => inst.ipv4.as_ref().map(|st| st.address.addr()),
            Source::Lease => probe.lease()?,
            Source::Console => probe.console(),
            Source::Neighbour => probe.neighbour(),
            Source::Agent => probe.agent()?,
        };
        if let Some(ip) = ip {
            return Ok(Some((ip, *s)));
        }
    }
    Ok(None)
}

/// The sources as they are on a hypervisor: libvirt for the lease and the agent, the console
/// log file and the ARP table read locally, or over SSH on a remote hypervisor.
pub struct HostProbe<'a> {
    pub hv: &'a Hypervisor,
    pub domain: String,
    /// The libvirt network whose leases to ask; `None` on a host bridge (libvirt has none).
    pub network: Option<String>,
    pub mac: String,
    pub console: ConsoleLog,
    /// The hypervisor is this machine: its ARP table is ours.
    pub local: bool,
    /// The remote hypervisor's SSH destination, to read its ARP table.
    pub remote: Option<SshDest>,
}

impl<'a> HostProbe<'a> {
    pub fn new(hv: &'a Hypervisor, inst: &Instance, pool_path: &Path) -> Self {
        HostProbe {
            hv,
            domain: inst.name.clone(),
            network: inst.attach.network().map(str::to_string),
            mac: inst.effective_mac(),
            console: ConsoleLog::on(
                hv.uri(),
                pool_path.join(crate::layout::console_name(&inst.name)),
            ),
            local: kvmprov_hypervisor::uri::is_local(hv.uri()),
            remote: kvmprov_hypervisor::ssh_destination(hv.uri()),
        }
    }

    fn read_remote(&self, argv: &[&str]) -> Option<String> {
        let dest = self.remote.as_ref()?;
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        match ssh::hypervisor_run(dest, &argv, Duration::from_secs(15)) {
            Ok(o) if o.code == Some(0) => Some(o.stdout),
            _ => None,
        }
    }
}

impl Probe for HostProbe<'_> {
    fn lease(&self) -> Result<Option<Ipv4Addr>, HvError> {
        match &self.network {
            Some(network) => self.hv.dhcp_lease(network, &self.mac),
            None => Ok(None),
        }
    }

    fn console(&self) -> Option<Ipv4Addr> {
        // Read and sanitized as every console reader does; only whole table rows match.
        console_announced(&self.console.tail().ok()?, &self.mac)
    }

    fn neighbour(&self) -> Option<Ipv4Addr> {
        let text = if self.local {
            std::fs::read_to_string("/proc/net/arp").ok()?
        } else {
            self.read_remote(&["cat", "/proc/net/arp"])?
        };
        neighbour_ipv4(&text, &self.mac)
    }

    fn agent(&self) -> Result<Option<Ipv4Addr>, HvError> {
        // No agent in the guest (Debian's image has none) is the usual answer, not an error.
        match self.hv.agent_ipv4(&self.domain, &self.mac) {
            Err(e) if e.is_connection_lost() => Err(e),
            r => Ok(r.ok().flatten()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticIpv4;
    use kvmprov_hypervisor::NetworkIpv4;

    fn inst(ipv4: Option<&str>) -> Instance {
        Instance {
            image_name: "debian-13".into(),
            attach: Attachment::Network("net".into()),
            ipv4: ipv4.map(|a| StaticIpv4 {
                address: a.parse().unwrap(),
                gateway: "192.168.100.1".parse().unwrap(),
                dns: vec![],
            }),
            ..Instance::for_tests("app-01")
        }
    }

    fn net(forward: Option<&str>, dhcp: bool) -> NetworkInfo {
        NetworkInfo {
            name: "net".into(),
            active: true,
            autostart: false,
            bridge: Some("br0".into()),
            forward: forward.map(String::from),
            ipv4: Some(NetworkIpv4 {
                address: "192.168.100.1".parse().unwrap(),
                prefix: 24,
                dhcp_range: dhcp.then(|| {
                    (
                        "192.168.100.2".parse().unwrap(),
                        "192.168.100.254".parse().unwrap(),
                    )
                }),
            }),
        }
    }

    #[test]
    fn static_address_needs_no_source() {
        let p = plan(&inst(Some("192.168.100.50/24")), &net(Some("nat"), false)).unwrap();
        assert_eq!(p.sources, vec![Source::Static]);
    }

    #[test]
    fn libvirt_dhcp_networks_use_the_lease_first() {
        for mode in [Some("nat"), Some("route"), Some("open"), None] {
            let p = plan(&inst(None), &net(mode, true)).unwrap();
            assert_eq!(p.sources[0], Source::Lease, "{mode:?}");
            assert!(p.sources.contains(&Source::Console));
        }
    }

    #[test]
    fn regression_bridged_network_waited_for_a_lease_libvirt_never_has() {
        // Before: every DHCP guest waited for a libvirt lease (or the agent) until the deadline.
        let mut n = net(Some("bridge"), false);
        n.ipv4 = None;
        let p = plan(&inst(None), &n).unwrap();
        assert_eq!(
            p.sources,
            vec![Source::Console, Source::Neighbour, Source::Agent]
        );
        assert!(p.how.contains("bridge br0"), "{}", p.how);
    }

    /// A NIC plugged straight into a host bridge: no libvirt network, no lease; the guest's
    /// console announcement, as on a libvirt network forwarding onto a bridge.
    #[test]
    fn a_dhcp_nic_on_a_host_bridge_is_found_on_the_console() {
        let i = Instance {
            attach: Attachment::Bridge("br0".into()),
            ..inst(None)
        };
        let p = plan_among(&i, &[net(Some("nat"), true)]);
        assert_eq!(
            p.sources,
            vec![Source::Console, Source::Neighbour, Source::Agent]
        );
        assert!(p.how.contains("host bridge br0"), "{}", p.how);
        let i = Instance {
            attach: Attachment::Bridge("br0".into()),
            ..inst(Some("192.0.2.10/24"))
        };
        assert_eq!(plan_among(&i, &[]).sources, vec![Source::Static]);
    }

    #[test]
    fn a_network_without_any_dhcp_is_an_error_naming_the_fixes() {
        for mode in [Some("nat"), Some("route"), Some("open"), None] {
            let e = plan(&inst(None), &net(mode, false)).unwrap_err();
            assert!(e.contains("network `net`"), "{e}");
            assert!(e.contains("ipv4_address"), "{e}");
            assert!(e.contains("<dhcp>"), "{e}");
            assert!(e.contains("guest agent"), "{e}");
        }
    }

    const CONSOLE: &str = "\
[   12.1] cloud-init[512]: Cloud-init v. 25.1.4 running 'init' at Tue, 01 Dec 2026 10:00:00 +0000.
[   12.2] cloud-init[512]: ci-info: ++++++++++++++++++++++++++++++++++++Net device info++++++++++++++++++++++++++++++++++++
[   12.2] cloud-init[512]: ci-info: +--------+------+------------------------------+---------------+--------+-------------------+
[   12.2] cloud-init[512]: ci-info: | Device |  Up  |           Address            |      Mask     | Scope  |     Hw-Address    |
[   12.2] cloud-init[512]: ci-info: +--------+------+------------------------------+---------------+--------+-------------------+
[   12.2] cloud-init[512]: ci-info: | enp1s0 | True |        192.168.100.23        | 255.255.255.0 | global | 52:54:00:ab:cd:ef |
[   12.2] cloud-init[512]: ci-info: | enp1s0 | True | fe80::5054:ff:feab:cdef/64   |       .       |  link  | 52:54:00:ab:cd:ef |
[   12.2] cloud-init[512]: ci-info: |   lo   | True |          127.0.0.1           |   255.0.0.0   |  host  |         .         |
[   12.2] cloud-init[512]: ci-info: | enp2s0 | True |          10.0.0.9            | 255.255.255.0 | global | 52:54:00:00:00:01 |
";

    #[test]
    fn console_announcement_is_read_for_our_mac_only() {
        assert_eq!(
            console_announced(CONSOLE, "52:54:00:AB:CD:EF"),
            Some("192.168.100.23".parse().unwrap())
        );
        assert_eq!(console_announced(CONSOLE, "52:54:00:00:00:02"), None);
        assert_eq!(
            console_announced("no table here", "52:54:00:ab:cd:ef"),
            None
        );
    }

    #[test]
    fn the_newest_announcement_wins() {
        let later = format!(
            "{CONSOLE}ci-info: | enp1s0 | True | 192.168.100.99 | 255.255.255.0 | global | 52:54:00:ab:cd:ef |\n"
        );
        assert_eq!(
            console_announced(&later, "52:54:00:ab:cd:ef"),
            Some("192.168.100.99".parse().unwrap())
        );
    }

    #[test]
    fn neighbour_table_complete_entries_only() {
        let arp = "\
IP address       HW type     Flags       HW address            Mask     Device
192.168.100.7    0x1         0x0         52:54:00:ab:cd:ef     *        br0
192.168.100.23   0x1         0x2         52:54:00:ab:cd:ef     *        br0
";
        assert_eq!(
            neighbour_ipv4(arp, "52:54:00:AB:CD:EF"),
            Some("192.168.100.23".parse().unwrap())
        );
        assert_eq!(neighbour_ipv4(arp, "52:54:00:00:00:00"), None);
    }

    struct Fixed(Option<Ipv4Addr>, Option<Ipv4Addr>);
    impl Probe for Fixed {
        fn lease(&self) -> Result<Option<Ipv4Addr>, HvError> {
            Ok(self.0)
        }
        fn console(&self) -> Option<Ipv4Addr> {
            self.1
        }
        fn neighbour(&self) -> Option<Ipv4Addr> {
            None
        }
        fn agent(&self) -> Result<Option<Ipv4Addr>, HvError> {
            Ok(None)
        }
    }

    #[test]
    fn find_tries_sources_in_plan_order() {
        let i = inst(None);
        let p = plan(&i, &net(Some("nat"), true)).unwrap();
        let a: Ipv4Addr = "192.168.100.5".parse().unwrap();
        let b: Ipv4Addr = "192.168.100.6".parse().unwrap();
        let f = |probe: Fixed| find(&p, &i, &probe).unwrap();
        assert_eq!(f(Fixed(Some(a), Some(b))), Some((a, Source::Lease)));
        assert_eq!(f(Fixed(None, Some(b))), Some((b, Source::Console)));
        assert_eq!(f(Fixed(None, None)), None);
    }

    struct Lost;
    impl Probe for Lost {
        fn lease(&self) -> Result<Option<Ipv4Addr>, HvError> {
            Err(HvError::Invalid {
                what: "read DHCP leases".into(),
                reason: "the connection to libvirtd was lost".into(),
            })
        }
        fn console(&self) -> Option<Ipv4Addr> {
            Some("192.168.100.9".parse().unwrap())
        }
        fn neighbour(&self) -> Option<Ipv4Addr> {
            None
        }
        fn agent(&self) -> Result<Option<Ipv4Addr>, HvError> {
            Ok(None)
        }
    }

    #[test]
    fn a_libvirt_error_ends_the_search_instead_of_waiting_it_out() {
        // A lost libvirtd must fail the wait at once (the faults test restarts it mid-run).
        let i = inst(None);
        let p = plan(&i, &net(Some("nat"), true)).unwrap();
        assert!(find(&p, &i, &Lost).is_err());
    }

    /// The console address parser took `0.0.0.0` (and any other non-unicast address a guest
    /// printed in its network table) as the guest's address.
    #[test]
    fn regression_console_address_parser_accepted_0_0_0_0() {
        let mac = "52:54:00:ab:cd:ef";
        let row = |ip: &str| {
            format!("ci-info: | enp1s0 | True | {ip} | 255.255.255.0 | global | {mac} |\n")
        };
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.8.9.10",
            "169.254.3.4",
            "224.0.0.1",
            "239.1.2.3",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert_eq!(console_announced(&row(bad), mac), None, "{bad}");
            let arp = format!(
                "IP address HW type Flags HW address Mask Device\n{bad} 0x1 0x2 {mac} * virbr0\n"
            );
            assert_eq!(neighbour_ipv4(&arp, mac), None, "{bad}");
        }
        assert_eq!(
            console_announced(&row("192.168.122.7"), mac),
            Some(Ipv4Addr::new(192, 168, 122, 7))
        );
        // A bad row after a good one does not hide the good one.
        let text = format!("{}{}", row("10.0.0.5"), row("0.0.0.0"));
        assert_eq!(
            console_announced(&text, mac),
            Some(Ipv4Addr::new(10, 0, 0, 5))
        );
    }
}
