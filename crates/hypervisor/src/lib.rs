//! kvmprov-hypervisor: the only code that talks to libvirt.
//!
//! A thin, typed layer over the `virt` crate: connection and host facts, networks, `dir`
//! storage pools and volumes (qcow2 overlays, uploads through streams), domains and snapshots,
//! DHCP leases. It works the same for `qemu:///system`, `qemu+ssh://host/system` and libvirt's
//! `test:///default` driver. `xml` holds what the generated XML looks like.

pub mod xml;

use std::ffi::{CStr, CString};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Once;

use serde::Serialize;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

/// A libvirt failure, with what we were doing.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("cannot connect to the hypervisor at {uri}: {message}")]
    Connect { uri: String, message: String },
    #[error("{what}: {message}")]
    Libvirt {
        what: String,
        message: String,
        /// libvirt's error number, for `is_not_found`.
        code: Option<u32>,
    },
    #[error("unexpected XML from libvirt: {0}")]
    Xml(String),
}

impl HvError {
    /// The object (domain, network, pool, volume, snapshot) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, HvError::Libvirt { code: Some(c), .. } if NOT_FOUND.contains(c))
    }
}

const NOT_FOUND: &[u32] = &[
    virt_sys::VIR_ERR_NO_DOMAIN,
    virt_sys::VIR_ERR_NO_NETWORK,
    virt_sys::VIR_ERR_NO_STORAGE_POOL,
    virt_sys::VIR_ERR_NO_STORAGE_VOL,
    virt_sys::VIR_ERR_NO_DOMAIN_SNAPSHOT,
];

fn lv(what: impl Into<String>) -> impl FnOnce(virt::error::Error) -> HvError {
    let what = what.into();
    move |e| {
        let code = match e.code() {
            virt::enumutil::Enum::Known(k) => error_number(k),
            virt::enumutil::Enum::Unknown(raw) => Some(raw),
        };
        HvError::Libvirt {
            what,
            message: e.message().trim().to_string(),
            code,
        }
    }
}

/// The raw number of the not-found errors we care about.
fn error_number(k: ErrorNumber) -> Option<u32> {
    Some(match k {
        ErrorNumber::NoDomain => virt_sys::VIR_ERR_NO_DOMAIN,
        ErrorNumber::NoNetwork => virt_sys::VIR_ERR_NO_NETWORK,
        ErrorNumber::NoStoragePool => virt_sys::VIR_ERR_NO_STORAGE_POOL,
        ErrorNumber::NoStorageVolume => virt_sys::VIR_ERR_NO_STORAGE_VOL,
        ErrorNumber::NoDomainSnapshot => virt_sys::VIR_ERR_NO_DOMAIN_SNAPSHOT,
        _ => return None,
    })
}

/// Host facts for `ping` and preflight.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub hostname: String,
    pub libvirt_version: String,
    pub driver: String,
    pub hypervisor_version: String,
    /// Domain type `kvm` offered for x86_64 guests.
    pub kvm: bool,
    /// Domain type `qemu` (TCG) offered for x86_64 guests.
    pub qemu: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkInfo {
    pub name: String,
    pub active: bool,
    pub autostart: bool,
    pub bridge: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolInfo {
    pub name: String,
    pub path: PathBuf,
    pub active: bool,
    pub available_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub name: String,
    pub path: PathBuf,
    pub capacity: u64,
    pub allocation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DomainState {
    Running,
    Paused,
    ShutOff,
    Crashed,
    /// Blocked, shutting down, suspended, no state: treat as "on".
    Other,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainInfo {
    pub name: String,
    pub state: DomainState,
}

/// What `ensure_dir_pool` had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOutcome {
    Existed,
    Started,
    Defined,
}

/// A libvirt connection.
pub struct Hypervisor {
    conn: Connect,
    uri: String,
}

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

impl Hypervisor {
    pub fn connect(uri: &str) -> Result<Self, HvError> {
        // libvirt prints every error to stderr unless told not to; we report them ourselves.
        static QUIET: Once = Once::new();
        QUIET.call_once(virt::error::clear_error_callback);
        let conn = Connect::open(Some(uri)).map_err(|e| HvError::Connect {
            uri: uri.to_string(),
            message: e.message().trim().to_string(),
        })?;
        Ok(Hypervisor {
            conn,
            uri: uri.to_string(),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn host_info(&self) -> Result<HostInfo, HvError> {
        let caps = self.conn.capabilities().map_err(lv("read capabilities"))?;
        let (kvm, qemu) = domain_types(&caps)?;
        Ok(HostInfo {
            hostname: self.conn.hostname().map_err(lv("read host name"))?,
            libvirt_version: version_string(
                self.conn
                    .lib_version()
                    .map_err(lv("read libvirt version"))?,
            ),
            driver: self.conn.driver_type().map_err(lv("read driver type"))?,
            hypervisor_version: version_string(
                self.conn
                    .hyp_version()
                    .map_err(lv("read hypervisor version"))?,
            ),
            kvm,
            qemu,
        })
    }

    pub fn networks(&self) -> Result<Vec<NetworkInfo>, HvError> {
        let nets = self
            .conn
            .list_all_networks(0)
            .map_err(lv("list networks"))?;
        let mut out = Vec::new();
        for n in nets {
            let name = n.name().map_err(lv("read network name"))?;
            let active = n.is_active().map_err(lv(format!("network {name}")))?;
            out.push(NetworkInfo {
                autostart: n.autostart().unwrap_or(false),
                bridge: n.bridge_name().ok(),
                name,
                active,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn start_network(&self, name: &str) -> Result<(), HvError> {
        let n = self
            .conn
            .lookup_network_by_name(name)
            .map_err(lv(format!("look up network {name}")))?;
        n.create().map_err(lv(format!("start network {name}")))
    }

    fn pool_info(p: &StoragePool) -> Result<PoolInfo, HvError> {
        let name = p.name().map_err(lv("read pool name"))?;
        let xml = p.xml_desc(0).map_err(lv(format!("read pool {name}")))?;
        let doc = roxmltree::Document::parse(&xml).map_err(|e| HvError::Xml(e.to_string()))?;
        let path = doc
            .descendants()
            .find(|n| {
                n.has_tag_name("path") && n.parent().is_some_and(|p| p.has_tag_name("target"))
            })
            .and_then(|n| n.text())
            .map(PathBuf::from)
            .unwrap_or_default();
        let active = p.is_active().map_err(lv(format!("pool {name}")))?;
        let available_bytes = if active {
            p.info().map(|i| i.available).unwrap_or(0)
        } else {
            0
        };
        Ok(PoolInfo {
            name,
            path,
            active,
            available_bytes,
        })
    }

    pub fn pool(&self, name: &str) -> Result<Option<PoolInfo>, HvError> {
        match self.conn.lookup_storage_pool_by_name(name) {
            Ok(p) => Ok(Some(Self::pool_info(&p)?)),
            Err(e) => {
                let e = lv(format!("look up pool {name}"))(e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The pool whose target is `path` (paths compared as given, then canonicalized).
    pub fn pool_by_path(&self, path: &Path) -> Result<Option<PoolInfo>, HvError> {
        let want = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        for p in self
            .conn
            .list_all_storage_pools(0)
            .map_err(lv("list storage pools"))?
        {
            let info = Self::pool_info(&p)?;
            if info.path == path || info.path.canonicalize().is_ok_and(|c| c == want) {
                return Ok(Some(info));
            }
        }
        Ok(None)
    }

    /// A started `dir` pool named `name` at `path`: defined, built and started as needed.
    pub fn ensure_dir_pool(&self, name: &str, path: &Path) -> Result<PoolOutcome, HvError> {
        let (pool, outcome) = match self.conn.lookup_storage_pool_by_name(name) {
            Ok(p) => (p, PoolOutcome::Existed),
            Err(_) => {
                let p = self
                    .conn
                    .define_storage_pool_xml(&xml::pool_xml(name, path), 0)
                    .map_err(lv(format!("define pool {name} at {}", path.display())))?;
                p.build(0).map_err(lv(format!("build pool {name}")))?;
                let _ = p.set_autostart(true);
                (p, PoolOutcome::Defined)
            }
        };
        if !pool.is_active().map_err(lv(format!("pool {name}")))? {
            // A run killed between define and build leaves a pool without its directory:
            // building again is harmless when the directory exists.
            if outcome == PoolOutcome::Existed {
                let _ = pool.build(0);
            }
            pool.create(0).map_err(lv(format!("start pool {name}")))?;
            if outcome == PoolOutcome::Existed {
                return Ok(PoolOutcome::Started);
            }
        }
        Ok(outcome)
    }

    pub fn refresh_pool(&self, name: &str) -> Result<(), HvError> {
        let p = self
            .conn
            .lookup_storage_pool_by_name(name)
            .map_err(lv(format!("look up pool {name}")))?;
        p.refresh(0).map_err(lv(format!("refresh pool {name}")))
    }

    fn lookup_pool(&self, name: &str) -> Result<StoragePool, HvError> {
        self.conn
            .lookup_storage_pool_by_name(name)
            .map_err(lv(format!("look up pool {name}")))
    }

    pub fn volumes(&self, pool: &str) -> Result<Vec<VolumeInfo>, HvError> {
        let p = self.lookup_pool(pool)?;
        let mut out = Vec::new();
        for v in p
            .list_all_volumes(0)
            .map_err(lv(format!("list volumes of {pool}")))?
        {
            out.push(volume_info(&v)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A qcow2 overlay backed by `backing_path` (libvirt runs qemu-img for it).
    pub fn create_overlay(
        &self,
        pool: &str,
        name: &str,
        backing_path: &Path,
        backing_format: &str,
        capacity_bytes: u64,
    ) -> Result<VolumeInfo, HvError> {
        let p = self.lookup_pool(pool)?;
        let xml = xml::overlay_volume_xml(name, capacity_bytes, backing_path, backing_format);
        let v = StorageVol::create_xml(&p, &xml, 0).map_err(lv(format!(
            "create overlay {name} on {}",
            backing_path.display()
        )))?;
        volume_info(&v)
    }

    /// Create a volume and fill it with `bytes` through a libvirt stream (works remotely).
    /// A half-written volume is deleted.
    pub fn upload_volume(
        &self,
        pool: &str,
        name: &str,
        bytes: &[u8],
        format: &str,
    ) -> Result<VolumeInfo, HvError> {
        let p = self.lookup_pool(pool)?;
        let v = StorageVol::create_xml(
            &p,
            &xml::raw_volume_xml(name, bytes.len() as u64, format),
            0,
        )
        .map_err(lv(format!("create volume {name}")))?;
        let result = (|| {
            let stream = Stream::new(&self.conn, 0).map_err(lv("open upload stream"))?;
            v.upload(&stream, 0, bytes.len() as u64, 0)
                .map_err(lv(format!("upload to {name}")))?;
            let mut sent = 0;
            while sent < bytes.len() {
                let n = stream
                    .send(&bytes[sent..])
                    .map_err(lv(format!("upload to {name}")))?;
                if n <= 0 {
                    return Err(HvError::Libvirt {
                        what: format!("upload to {name}"),
                        message: "stream accepted no data".into(),
                        code: None,
                    });
                }
                sent += n as usize;
            }
            stream
                .finish()
                .map_err(lv(format!("finish upload to {name}")))
        })();
        if let Err(e) = result {
            let _ = v.delete(0);
            return Err(e);
        }
        volume_info(&v)
    }

    /// Does `pool` hold a volume called `name`? (One lookup, not a listing.)
    pub fn volume_exists(&self, pool: &str, name: &str) -> Result<bool, HvError> {
        let p = self.lookup_pool(pool)?;
        match p.lookup_storage_vol_by_name(name) {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = lv(format!("look up volume {name} in {pool}"))(e);
                if e.is_not_found() {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub fn delete_volume(&self, pool: &str, name: &str) -> Result<(), HvError> {
        let p = self.lookup_pool(pool)?;
        let v = p
            .lookup_storage_vol_by_name(name)
            .map_err(lv(format!("look up volume {name} in {pool}")))?;
        v.delete(0).map_err(lv(format!("delete volume {name}")))
    }

    fn lookup_domain(&self, name: &str) -> Result<Domain, HvError> {
        self.conn
            .lookup_domain_by_name(name)
            .map_err(lv(format!("domain {name}")))
    }

    pub fn domains(&self) -> Result<Vec<DomainInfo>, HvError> {
        let mut out = Vec::new();
        for d in self.conn.list_all_domains(0).map_err(lv("list domains"))? {
            let name = d.name().map_err(lv("read domain name"))?;
            let state = match d.state() {
                Ok((s, _)) => map_state(s),
                Err(e) => {
                    let e = lv(format!("domain {name}"))(e);
                    if e.is_not_found() {
                        continue;
                    }
                    return Err(e);
                }
            };
            out.push(DomainInfo { name, state });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn domain(&self, name: &str) -> Result<Option<DomainInfo>, HvError> {
        match self.lookup_domain(name) {
            Ok(d) => {
                let (s, _) = d.state().map_err(lv(format!("domain {name}")))?;
                Ok(Some(DomainInfo {
                    name: name.to_string(),
                    state: map_state(s),
                }))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn domain_xml(&self, name: &str) -> Result<String, HvError> {
        self.lookup_domain(name)?
            .xml_desc(0)
            .map_err(lv(format!("read XML of {name}")))
    }

    pub fn define(&self, xml: &str) -> Result<(), HvError> {
        self.conn
            .define_domain_xml(xml)
            .map(|_| ())
            .map_err(lv("define domain"))
    }

    pub fn start(&self, name: &str) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .create()
            .map(|_| ())
            .map_err(lv(format!("start {name}")))
    }

    pub fn set_autostart(&self, name: &str, on: bool) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .set_autostart(on)
            .map(|_| ())
            .map_err(lv(format!("set autostart of {name}")))
    }

    pub fn shutdown(&self, name: &str) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .shutdown()
            .map(|_| ())
            .map_err(lv(format!("shut down {name}")))
    }

    pub fn destroy(&self, name: &str) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .destroy()
            .map(|_| ())
            .map_err(lv(format!("destroy {name}")))
    }

    /// Undefine with snapshot metadata and NVRAM; drivers that reject a flag get a plainer call.
    pub fn undefine(&self, name: &str) -> Result<(), HvError> {
        let d = self.lookup_domain(name)?;
        let all = virt_sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | virt_sys::VIR_DOMAIN_UNDEFINE_NVRAM
            | virt_sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE;
        match d.undefine_flags(all) {
            Ok(()) => Ok(()),
            Err(first) => {
                let first = lv(format!("undefine {name}"))(first);
                if first.is_not_found() {
                    return Err(first);
                }
                d.undefine_flags(virt_sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
                    .map_err(|_| first)
            }
        }
    }

    pub fn snapshots(&self, name: &str) -> Result<Vec<String>, HvError> {
        let d = self.lookup_domain(name)?;
        let mut out = Vec::new();
        for s in d
            .list_all_snapshots(0)
            .map_err(lv(format!("list snapshots of {name}")))?
        {
            out.push(s.name().map_err(lv("read snapshot name"))?);
        }
        out.sort();
        Ok(out)
    }

    pub fn create_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        description: &str,
    ) -> Result<(), HvError> {
        let d = self.lookup_domain(name)?;
        let xml = format!(
            "<domainsnapshot><name>{}</name><description>{}</description></domainsnapshot>",
            xml::esc(snapshot),
            xml::esc(description)
        );
        d.create_snapshot_xml(&xml, virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
            .map(|_| ())
            .map_err(lv(format!("snapshot {snapshot} of {name}")))
    }

    /// The IPv4 address the network's DHCP server leased to `mac`, if any.
    pub fn dhcp_lease(&self, network: &str, mac: &str) -> Result<Option<Ipv4Addr>, HvError> {
        let net = self
            .conn
            .lookup_network_by_name(network)
            .map_err(lv(format!("look up network {network}")))?;
        let mac_c = CString::new(mac).map_err(|_| HvError::Xml(format!("bad MAC {mac:?}")))?;
        let mut leases: *mut virt_sys::virNetworkDHCPLeasePtr = std::ptr::null_mut();
        // SAFETY: `net` is a live network handle; libvirt allocates `leases` (an array of
        // `n` lease pointers) which we read once and free with the matching libvirt/libc calls.
        let n = unsafe {
            virt_sys::virNetworkGetDHCPLeases(net.as_ptr(), mac_c.as_ptr(), &mut leases, 0)
        };
        if n < 0 {
            return Err(lv(format!("read DHCP leases of {network}"))(
                virt::error::Error::last_error(),
            ));
        }
        // Stale leases of an earlier guest with the same MAC can outlive it (the lease file is
        // kept across daemon restarts): the newest lease (latest expiry) is the current one.
        let mut found: Option<(i64, Ipv4Addr)> = None;
        for i in 0..n as usize {
            // SAFETY: i < n, and every element is a valid lease pointer until freed below.
            unsafe {
                let lease = *leases.add(i);
                if !lease.is_null() && !(*lease).ipaddr.is_null() {
                    let ip = CStr::from_ptr((*lease).ipaddr).to_string_lossy();
                    let expiry = (*lease).expirytime;
                    if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                        if found.is_none_or(|(e, _)| expiry > e) {
                            found = Some((expiry, ip));
                        }
                    }
                }
                virt_sys::virNetworkDHCPLeaseFree(lease);
            }
        }
        // SAFETY: the array itself was allocated by libvirt with malloc.
        unsafe { libc::free(leases as *mut libc::c_void) };
        Ok(found.map(|(_, ip)| ip))
    }

    /// The guest agent's IPv4 for the interface with `mac` (needs qemu-guest-agent running).
    pub fn agent_ipv4(&self, name: &str, mac: &str) -> Result<Option<Ipv4Addr>, HvError> {
        let d = self.lookup_domain(name)?;
        let ifaces = d
            .interface_addresses(virt_sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
            .map_err(lv(format!("ask the guest agent of {name}")))?;
        Ok(ifaces
            .iter()
            .filter(|i| {
                i.hwaddr
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(mac))
            })
            .flat_map(|i| i.addrs.iter())
            .find_map(|a| a.addr.parse::<Ipv4Addr>().ok()))
    }
}

fn volume_info(v: &StorageVol) -> Result<VolumeInfo, HvError> {
    let name = v.name().map_err(lv("read volume name"))?;
    let path = v
        .path()
        .map_err(lv(format!("read path of volume {name}")))?;
    let info = v.info().map_err(lv(format!("read volume {name}")))?;
    Ok(VolumeInfo {
        name,
        path: PathBuf::from(path),
        capacity: info.capacity,
        allocation: info.allocation,
    })
}

fn map_state(s: virt::domain::DomainStateEnum) -> DomainState {
    use virt::domain::DomainState as S;
    match s {
        virt::enumutil::Enum::Known(S::Running) => DomainState::Running,
        virt::enumutil::Enum::Known(S::Paused) => DomainState::Paused,
        virt::enumutil::Enum::Known(S::Shutoff) => DomainState::ShutOff,
        virt::enumutil::Enum::Known(S::Crashed) => DomainState::Crashed,
        _ => DomainState::Other,
    }
}

/// Which x86_64 domain types the capabilities XML offers: (kvm, qemu).
pub fn domain_types(caps: &str) -> Result<(bool, bool), HvError> {
    let doc = roxmltree::Document::parse(caps).map_err(|e| HvError::Xml(e.to_string()))?;
    let (mut kvm, mut qemu) = (false, false);
    for guest in doc.descendants().filter(|n| n.has_tag_name("guest")) {
        let x86 = guest
            .children()
            .find(|n| n.has_tag_name("arch"))
            .and_then(|a| a.attribute("name"))
            .is_some_and(|n| n == "x86_64");
        for d in guest.descendants().filter(|n| n.has_tag_name("domain")) {
            match d.attribute("type") {
                Some("kvm") if x86 => kvm = true,
                Some("qemu") if x86 => qemu = true,
                // libvirt's test driver (any arch) stands in for both, so tests can plan.
                Some("test") => {
                    kvm = true;
                    qemu = true;
                }
                _ => {}
            }
        }
    }
    Ok((kvm, qemu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_domain_types() {
        let caps = "<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/></arch></guest>\
                    <guest><arch name='i686'><domain type='kvm'/></arch></guest></capabilities>";
        assert_eq!(domain_types(caps).unwrap(), (false, true));
        let caps = "<capabilities><guest><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest></capabilities>";
        assert_eq!(domain_types(caps).unwrap(), (true, true));
    }

    #[test]
    fn versions_are_dotted() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_015), "7.2.15");
    }
}
