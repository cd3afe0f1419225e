//! Networks, and the DHCP leases libvirt's networks hand out (the crate's only FFI call).

use std::ffi::{CStr, CString};
use std::net::Ipv4Addr;

use serde::Serialize;
use virt::network::Network;

use crate::error::{infos_of_listed, lv};
use crate::xml::{self, NetworkIpv4};
use crate::{HvError, Hypervisor};

#[derive(Debug, Clone, Serialize)]
pub struct NetworkInfo {
    pub name: String,
    pub active: bool,
    pub autostart: bool,
    pub bridge: Option<String>,
    /// `nat`, `route`, `bridge`, ...; `None` for an isolated network.
    pub forward: Option<String>,
    pub ipv4: Option<NetworkIpv4>,
}

/// One DHCP lease as libvirt reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    ip: String,
    /// Unix seconds; 0 means the lease never expires.
    expiry: i64,
}

impl Hypervisor {
    /// All networks, active and inactive, sorted by name.
    pub fn networks(&self) -> Result<Vec<NetworkInfo>, HvError> {
        let listed = self
            .conn
            .list_all_networks(0)
            .map_err(self.lv("list networks"))?;
        infos_of_listed(listed, |o| network_info(self, o), |i| &i.name)
    }

    /// Start a defined network; a network that is already active is left alone.
    pub fn start_network(&self, name: &str) -> Result<(), HvError> {
        let n = self
            .conn
            .lookup_network_by_name(name)
            .map_err(self.lv(format!("look up network {name}")))?;
        if n.is_active().map_err(self.lv(format!("network {name}")))? {
            return Ok(());
        }
        n.create().map_err(self.lv(format!("start network {name}")))
    }

    /// The IPv4 address the network's DHCP server leased to `mac`, if any. With several
    /// leases (an earlier guest with the same MAC), the newest one.
    pub fn dhcp_lease(&self, network: &str, mac: &str) -> Result<Option<Ipv4Addr>, HvError> {
        let what = format!("read DHCP leases of {mac} on network {network}");
        let net = self
            .conn
            .lookup_network_by_name(network)
            .map_err(self.lv(format!("look up network {network}")))?;
        let mac_c = CString::new(mac).map_err(|_| HvError::Invalid {
            what: what.clone(),
            reason: "the MAC address contains a NUL byte".into(),
        })?;
        let leases = dhcp_leases(&net, &mac_c).map_err(self.lv(what))?;
        Ok(newest_ipv4(&leases))
    }
}

/// The DHCP leases libvirt knows for `mac` on `net`. virt 0.5 has no wrapper for
/// `virNetworkGetDHCPLeases`: this is the crate's only direct FFI call.
fn dhcp_leases(net: &Network, mac: &CStr) -> Result<Vec<Lease>, virt::error::Error> {
    let mut leases: *mut virt_sys::virNetworkDHCPLeasePtr = std::ptr::null_mut();
    // SAFETY: `net` is a live handle for the whole call and `mac` is NUL-terminated. On
    // success libvirt stores in `leases` a malloc'ed array of `n` lease pointers we own.
    let n =
        unsafe { virt_sys::virNetworkGetDHCPLeases(net.as_ptr(), mac.as_ptr(), &mut leases, 0) };
    if n < 0 {
        return Err(virt::error::Error::last_error());
    }
    let mut out = Vec::new();
    for i in 0..n as usize {
        // SAFETY: i < n; each element is a lease (or null) we read, then free exactly once.
        unsafe {
            let lease = *leases.add(i);
            if lease.is_null() {
                continue;
            }
            let ipv4 = (*lease).type_ == virt_sys::VIR_IP_ADDR_TYPE_IPV4 as std::os::raw::c_int;
            if ipv4 && !(*lease).ipaddr.is_null() {
                out.push(Lease {
                    ip: CStr::from_ptr((*lease).ipaddr)
                        .to_string_lossy()
                        .into_owned(),
                    expiry: (*lease).expirytime,
                });
            }
            virt_sys::virNetworkDHCPLeaseFree(lease);
        }
    }
    // SAFETY: the array itself was allocated by libvirt with malloc (free(NULL) is a no-op).
    unsafe { libc::free(leases.cast()) };
    Ok(out)
}

/// The address of the newest lease. Stale leases of an earlier guest with the same MAC can
/// outlive it (the lease file survives daemon restarts); expiry 0 means "never" and wins.
fn newest_ipv4(leases: &[Lease]) -> Option<Ipv4Addr> {
    leases
        .iter()
        .filter_map(|l| {
            let ip = l.ip.parse::<Ipv4Addr>().ok()?;
            let expiry = if l.expiry == 0 { i64::MAX } else { l.expiry };
            Some((expiry, ip))
        })
        .max_by_key(|(expiry, _)| *expiry)
        .map(|(_, ip)| ip)
}

fn network_info(hv: &Hypervisor, n: &Network) -> Result<NetworkInfo, HvError> {
    let name = n.name().map_err(lv("read network name"))?;
    let what = format!("read network {name}");
    let facts = xml::parse_network_xml(&n.xml_desc(0).map_err(hv.lv(what.clone()))?)?;
    Ok(NetworkInfo {
        active: n.is_active().map_err(hv.lv(what.clone()))?,
        autostart: n.autostart().map_err(hv.lv(what))?,
        bridge: facts.bridge,
        forward: facts.forward,
        ipv4: facts.ipv4,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: &str, expiry: i64) -> Lease {
        Lease {
            ip: ip.into(),
            expiry,
        }
    }

    #[test]
    fn regression_stale_dhcp_lease_of_an_earlier_guest_loses_to_the_newest() {
        assert_eq!(newest_ipv4(&[]), None);
        let leases = [
            lease("192.168.122.10", 1000),
            lease("192.168.122.11", 3000),
            lease("192.168.122.12", 2000),
        ];
        assert_eq!(newest_ipv4(&leases), Some(Ipv4Addr::new(192, 168, 122, 11)));
        // A lease that never expires beats any dated one; junk is skipped.
        let leases = [
            lease("192.168.122.11", 3000),
            lease("192.168.122.20", 0),
            lease("not-an-ip", 9999),
        ];
        assert_eq!(newest_ipv4(&leases), Some(Ipv4Addr::new(192, 168, 122, 20)));
    }
}
