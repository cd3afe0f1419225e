//! kvmprov-hypervisor: the only code that talks to libvirt.
//!
//! A thin, typed layer over the `virt` crate: connection and host facts, networks, `dir`
//! storage pools and volumes (qcow2 overlays, uploads through streams), domains and snapshots,
//! DHCP leases and guest-agent addresses. It works the same for `qemu:///system`,
//! `qemu+ssh://host/system` and libvirt's `test:///default` driver. `xml` holds what the XML
//! looks like, both ways, as pure functions.
//!
//! Every error names what was being done and carries libvirt's own message on one line.

pub mod xml;

use std::ffi::{CStr, CString};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Once;

use serde::Serialize;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::network::Network;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

pub use xml::{domain_types, DomainType, Firmware, FirmwareSupport, NetworkIpv4};

/// A libvirt failure, with what we were doing.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("cannot connect to the hypervisor at {uri}: {message}")]
    Connect { uri: String, message: String },
    #[error("{what}: {message}")]
    Libvirt {
        what: String,
        message: String,
        /// libvirt's error number (`virErrorNumber`), for `is_not_found`.
        code: Option<u32>,
    },
    #[error("{what}: {source}")]
    Xml {
        what: String,
        #[source]
        source: roxmltree::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// kvmprov keeps the managed-save image of a domain it did not create.
    #[error("undefine domain {name}: it has a managed-save image, which kvmprov does not delete for a domain it did not create; remove it with `virsh managedsave-remove {name}` and run cleanup again")]
    ForeignManagedSave { name: String },
}

impl HvError {
    /// The object (domain, network, pool, volume, snapshot) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code_is(&[
            virt_sys::VIR_ERR_NO_DOMAIN,
            virt_sys::VIR_ERR_NO_NETWORK,
            virt_sys::VIR_ERR_NO_STORAGE_POOL,
            virt_sys::VIR_ERR_NO_STORAGE_VOL,
            virt_sys::VIR_ERR_NO_DOMAIN_SNAPSHOT,
        ])
    }

    /// The daemon went away (restarted, stopped, or the ssh link to it broke).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, HvError::Libvirt { message, .. } if message.contains(LOST_HINT))
    }

    /// The driver does not support the call or one of its flags.
    fn is_unsupported(&self) -> bool {
        self.code_is(&[
            virt_sys::VIR_ERR_NO_SUPPORT,
            virt_sys::VIR_ERR_INVALID_ARG,
            virt_sys::VIR_ERR_ARGUMENT_UNSUPPORTED,
        ])
    }

    fn code_is(&self, codes: &[u32]) -> bool {
        matches!(self, HvError::Libvirt { code: Some(c), .. } if codes.contains(c))
    }
}

/// libvirt messages can carry the stderr of ssh or a helper: keep one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Map a libvirt error to `HvError::Libvirt`, saying what we were doing.
fn lv(what: impl Into<String>) -> impl FnOnce(virt::error::Error) -> HvError {
    let what = what.into();
    move |e| HvError::Libvirt {
        what,
        message: with_hint(one_line(e.message())),
        code: Some(e.code().to_raw()),
    }
}

const LOST_HINT: &str = "the connection to libvirtd was lost";

/// libvirt's words for a connection whose daemon went away are cryptic; say what happened.
fn with_hint(message: String) -> String {
    const LOST: &[&str] = &[
        "client socket is closed",
        "End of file while reading data",
        "Broken pipe",
        "Connection reset by peer",
    ];
    if LOST.iter().any(|l| message.contains(l)) {
        format!("{message} ({LOST_HINT}: was the daemon restarted or stopped, or, over qemu+ssh, the ssh link to its host lost? run again once it is back)")
    } else {
        message
    }
}

/// `Ok(None)` for a not-found error, the error otherwise.
fn none_if_missing<T>(r: Result<T, HvError>) -> Result<Option<T>, HvError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Host facts for `ping` and preflight.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub hostname: String,
    pub libvirt_version: String,
    /// `QEMU`, `TEST`, ...
    pub driver: String,
    pub hypervisor_version: String,
    /// Domain type `kvm` offered for x86_64 guests.
    pub kvm: bool,
    /// Domain type `qemu` (TCG) offered for x86_64 guests.
    pub qemu: bool,
    /// uid:gid qemu runs as (libvirt's DAC base label), when the host says.
    pub qemu_ids: Option<(u32, u32)>,
}

/// Where `ssh` goes for a `qemu+ssh://[user@]host[:port]/system[?keyfile=…]` URI: the
/// hypervisor as an SSH destination, for guest checks through it and for commands on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshDest {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub keyfile: Option<String>,
}

impl SshDest {
    /// Options that make `ssh … host` reach it the way libvirt does.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(p) = self.port {
            a.extend(["-p".to_string(), p.to_string()]);
        }
        if let Some(u) = &self.user {
            a.extend(["-l".to_string(), u.clone()]);
        }
        if let Some(k) = &self.keyfile {
            a.extend(["-i".to_string(), k.clone()]);
        }
        a
    }

    /// The `ssh` command line that reaches it, for commands printed for the operator to type.
    pub fn command_line(&self) -> String {
        let mut words = vec!["ssh".to_string()];
        if let Some(p) = self.port {
            words.push(format!("-p {p}"));
        }
        if let Some(k) = &self.keyfile {
            words.push(format!("-i {k}"));
        }
        words.push(self.display());
        words.join(" ")
    }

    /// Whether commands run there as root (`None`: ssh's own config decides the user).
    pub fn is_root(&self) -> bool {
        self.user.as_deref() == Some("root")
    }

    /// `[user@]host` for messages.
    pub fn display(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

/// Pure: the SSH destination of a libvirt URI, `None` when the transport is not SSH.
pub fn ssh_destination(uri: &str) -> Option<SshDest> {
    let (scheme, rest) = uri.split_once("://")?;
    let transport = scheme.split_once('+').map(|(_, t)| t)?;
    if !matches!(transport, "ssh" | "libssh" | "libssh2") {
        return None;
    }
    let (authority, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    let keyfile = tail.split_once('?').and_then(|(_, q)| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("keyfile="))
            .map(String::from)
    });
    Some(SshDest {
        user,
        host: host.to_string(),
        port,
        keyfile,
    })
}

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

#[derive(Debug, Clone, Serialize)]
pub struct PoolInfo {
    pub name: String,
    /// The target directory (empty for pools without one).
    pub path: PathBuf,
    pub active: bool,
    /// Free space; 0 for an inactive pool.
    pub available_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub name: String,
    pub path: PathBuf,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Bytes used on the host.
    pub allocation: u64,
    /// `qcow2`, `raw`, `iso`, ...
    pub format: Option<String>,
    /// The backing file of a qcow2 overlay.
    pub backing_path: Option<PathBuf>,
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
    pub uuid: String,
    pub state: DomainState,
    /// Defined (survives a stop), as opposed to transient.
    pub persistent: bool,
}

/// What `ensure_dir_pool` had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PoolAction {
    /// Already defined and active (it was refreshed).
    Existed,
    /// Defined but inactive: started.
    Started,
    /// Defined, built (directory created), started, set to autostart.
    Defined,
}

/// The pool `ensure_dir_pool` made sure of. Its name differs from the one asked for when
/// another pool already served the directory.
#[derive(Debug, Clone, Serialize)]
pub struct PoolOutcome {
    pub pool: PoolInfo,
    pub action: PoolAction,
}

/// One DHCP lease as libvirt reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    ip: String,
    /// Unix seconds; 0 means the lease never expires.
    expiry: i64,
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
    /// Open `uri`. The error is one sentence naming the URI, with libvirt's reason.
    pub fn connect(uri: &str) -> Result<Self, HvError> {
        // libvirt prints every error to stderr unless told not to; we report them ourselves.
        static QUIET: Once = Once::new();
        QUIET.call_once(virt::error::clear_error_callback);
        let conn = Connect::open(Some(uri)).map_err(|e| HvError::Connect {
            uri: uri.to_string(),
            message: one_line(e.message()),
        })?;
        Ok(Hypervisor {
            conn,
            uri: uri.to_string(),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Versions, host name, driver and the x86_64 domain types the host offers.
    pub fn host_info(&self) -> Result<HostInfo, HvError> {
        let caps = self.conn.capabilities().map_err(lv("read capabilities"))?;
        let (kvm, qemu) = xml::domain_types(&caps)?;
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
            qemu_ids: xml::dac_baselabel(&caps)?,
        })
    }

    /// Which firmware q35 guests of `domain_type` can boot with here (OVMF installed?).
    pub fn firmware_support(&self, domain_type: DomainType) -> Result<FirmwareSupport, HvError> {
        let caps = self
            .conn
            .domain_capabilities(
                None,
                Some("x86_64"),
                Some("q35"),
                Some(domain_type.as_str()),
                0,
            )
            .map_err(lv(format!(
                "read the {} domain capabilities",
                domain_type.as_str()
            )))?;
        xml::parse_firmware_support(&caps)
    }

    /// All networks, active and inactive, sorted by name.
    pub fn networks(&self) -> Result<Vec<NetworkInfo>, HvError> {
        let nets = self
            .conn
            .list_all_networks(0)
            .map_err(lv("list networks"))?;
        let mut out = Vec::new();
        for n in nets {
            match network_info(&n) {
                Ok(info) => out.push(info),
                // Undefined between the listing and now.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Start a defined network; a network that is already active is left alone.
    pub fn start_network(&self, name: &str) -> Result<(), HvError> {
        let n = self
            .conn
            .lookup_network_by_name(name)
            .map_err(lv(format!("look up network {name}")))?;
        if n.is_active().map_err(lv(format!("network {name}")))? {
            return Ok(());
        }
        n.create().map_err(lv(format!("start network {name}")))
    }

    fn lookup_pool(&self, name: &str) -> Result<StoragePool, HvError> {
        self.conn
            .lookup_storage_pool_by_name(name)
            .map_err(lv(format!("look up pool {name}")))
    }

    pub fn pool(&self, name: &str) -> Result<Option<PoolInfo>, HvError> {
        match none_if_missing(self.lookup_pool(name))? {
            Some(p) => Ok(Some(pool_info(&p)?)),
            None => Ok(None),
        }
    }

    /// The pool whose target is `path`: compared as given, then both canonicalized on this
    /// machine (when the hypervisor is remote only the first comparison can match).
    pub fn pool_by_path(&self, path: &Path) -> Result<Option<PoolInfo>, HvError> {
        Ok(self.find_pool_by_path(path)?.map(|(_, info)| info))
    }

    fn find_pool_by_path(&self, path: &Path) -> Result<Option<(StoragePool, PoolInfo)>, HvError> {
        let want = path.canonicalize().ok();
        for p in self
            .conn
            .list_all_storage_pools(0)
            .map_err(lv("list storage pools"))?
        {
            let info = match pool_info(&p) {
                Ok(info) => info,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let same =
                info.path == path || (want.is_some() && info.path.canonicalize().ok() == want);
            if same && !info.path.as_os_str().is_empty() {
                return Ok(Some((p, info)));
            }
        }
        Ok(None)
    }

    /// An active `dir` pool serving `path`. A pool already serving the directory is reused
    /// whatever its name (two pools on one directory would each list the other's volumes);
    /// otherwise `name` is defined, built (mkdir), started and set to autostart. An existing
    /// active pool is refreshed so files created behind libvirt's back show up.
    pub fn ensure_dir_pool(&self, name: &str, path: &Path) -> Result<PoolOutcome, HvError> {
        let (pool, mut action) = match self.find_pool_by_path(path)? {
            Some((p, _)) => (p, PoolAction::Existed),
            None => match self.define_dir_pool(name, path) {
                Ok(p) => (p, PoolAction::Defined),
                // Another run (a config sharing this directory) defined it a moment ago.
                Err(e) => match self.find_pool_by_path(path)? {
                    Some((p, _)) => (p, PoolAction::Existed),
                    None => return Err(e),
                },
            },
        };
        let pool_name = pool.name().map_err(lv("read pool name"))?;
        if pool.is_active().map_err(lv(format!("pool {pool_name}")))? {
            pool.refresh(0)
                .map_err(lv(format!("refresh pool {pool_name}")))?;
        } else {
            // Started by another run meanwhile, or its directory was removed (building
            // recreates it).
            if pool.create(0).is_err() && !pool.is_active().unwrap_or(false) {
                pool.build(0)
                    .map_err(lv(format!("build pool {pool_name}")))?;
                if let Err(e) = pool.create(0) {
                    if !pool.is_active().unwrap_or(false) {
                        return Err(lv(format!("start pool {pool_name}"))(e));
                    }
                }
            }
            if action == PoolAction::Existed {
                action = PoolAction::Started;
            }
        }
        Ok(PoolOutcome {
            pool: pool_info(&pool)?,
            action,
        })
    }

    /// Define, build (mkdir) and autostart a dir pool; refused when the name is taken by a
    /// pool of another directory.
    fn define_dir_pool(&self, name: &str, path: &Path) -> Result<StoragePool, HvError> {
        if let Some(other) = self.pool(name)? {
            return Err(HvError::Invalid {
                what: format!("create pool {name} for {}", path.display()),
                reason: format!(
                    "a pool of that name already exists for {}",
                    other.path.display()
                ),
            });
        }
        let p = self
            .conn
            .define_storage_pool_xml(&xml::pool_xml(name, path), 0)
            .map_err(lv(format!("define pool {name} at {}", path.display())))?;
        p.build(0)
            .map_err(lv(format!("build pool {name} (create {})", path.display())))?;
        p.set_autostart(true)
            .map_err(lv(format!("set autostart of pool {name}")))?;
        Ok(p)
    }

    /// Stop and undefine a pool. Its directory and files stay: libvirt forgets the pool only.
    pub fn remove_pool(&self, name: &str) -> Result<(), HvError> {
        let p = self.lookup_pool(name)?;
        if p.is_active().map_err(lv(format!("pool {name}")))? {
            p.destroy().map_err(lv(format!("stop pool {name}")))?;
        }
        p.undefine().map_err(lv(format!("undefine pool {name}")))
    }

    /// Rescan a pool's directory.
    pub fn refresh_pool(&self, name: &str) -> Result<(), HvError> {
        self.lookup_pool(name)?
            .refresh(0)
            .map_err(lv(format!("refresh pool {name}")))
    }

    /// The volumes of a pool, sorted by name.
    pub fn volumes(&self, pool: &str) -> Result<Vec<VolumeInfo>, HvError> {
        let p = self.lookup_pool(pool)?;
        let mut out = Vec::new();
        for v in p
            .list_all_volumes(0)
            .map_err(lv(format!("list volumes of pool {pool}")))?
        {
            match volume_info(&v) {
                Ok(info) => out.push(info),
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The volume at `path` in whichever pool holds it; `None` when no pool does.
    pub fn volume_by_path(&self, path: &Path) -> Result<Option<VolumeInfo>, HvError> {
        let what = format!("look up volume {}", path.display());
        let Some(p) = path.to_str() else {
            return Ok(None);
        };
        none_if_missing(
            self.conn
                .lookup_storage_vol_by_path(p)
                .map_err(lv(what))
                .and_then(|v| volume_info(&v)),
        )
    }

    /// A qcow2 overlay of `capacity_bytes` backed by `backing_path` (libvirt runs qemu-img).
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
            "create overlay {name} in pool {pool} on {}",
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
        let what = format!("upload volume {name} to pool {pool}");
        let len = bytes.len() as u64;
        self.upload_from(pool, name, &mut &bytes[..], len, format, &what, &mut |_| {})
    }

    /// Create a volume and stream a local file into it (cached images: hundreds of MiB, never
    /// held in memory). `progress` gets the bytes sent so far. A half-written volume is deleted.
    pub fn upload_file(
        &self,
        pool: &str,
        name: &str,
        path: &Path,
        format: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<VolumeInfo, HvError> {
        let what = format!("upload {} to pool {pool} as {name}", path.display());
        let io = |e: std::io::Error| HvError::Invalid {
            what: what.clone(),
            reason: e.to_string(),
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        self.upload_from(pool, name, &mut file, len, format, &what, progress)
    }

    #[allow(clippy::too_many_arguments)]
    fn upload_from(
        &self,
        pool: &str,
        name: &str,
        source: &mut dyn std::io::Read,
        len: u64,
        format: &str,
        what: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<VolumeInfo, HvError> {
        let p = self.lookup_pool(pool)?;
        let v = StorageVol::create_xml(&p, &xml::raw_volume_xml(name, len, format), 0)
            .map_err(lv(format!("create volume {name} in pool {pool}")))?;
        let sent = Stream::new(&self.conn, 0)
            .map_err(lv(what))
            .and_then(|stream| send_volume(&v, stream, source, len, what, progress));
        if let Err(e) = sent {
            // Best effort: the upload error is the one worth reporting.
            let _ = v.delete(0);
            return Err(e);
        }
        volume_info(&v)
    }

    /// Stream a volume's bytes into `sink` (for re-hashing an image on a remote host).
    pub fn download_volume(
        &self,
        pool: &str,
        name: &str,
        sink: &mut dyn std::io::Write,
    ) -> Result<u64, HvError> {
        let what = format!("download volume {name} from pool {pool}");
        let v = self
            .lookup_pool(pool)?
            .lookup_storage_vol_by_name(name)
            .map_err(lv(what.clone()))?;
        let stream = Stream::new(&self.conn, 0).map_err(lv(what.clone()))?;
        v.download(&stream, 0, 0, 0).map_err(lv(what.clone()))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match stream.recv(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = stream.abort();
                    return Err(lv(what)(e));
                }
            };
            // 0 is the end of the stream; libvirt reports errors as Err, never as n < 0 here.
            let n = usize::try_from(n).unwrap_or(0);
            if n == 0 {
                break;
            }
            if let Err(e) = sink.write_all(&buf[..n.min(buf.len())]) {
                let _ = stream.abort();
                return Err(HvError::Invalid {
                    what,
                    reason: e.to_string(),
                });
            }
            total += n as u64;
        }
        stream.finish().map_err(lv(what))?;
        Ok(total)
    }

    /// The size of a volume's file on the host (not its virtual size), `None` if missing.
    pub fn volume_file_size(&self, pool: &str, name: &str) -> Result<Option<u64>, HvError> {
        let p = self.lookup_pool(pool)?;
        let v = match p.lookup_storage_vol_by_name(name) {
            Ok(v) => v,
            Err(e) => return none_if_missing(Err(lv(format!("look up volume {name}"))(e))),
        };
        // VIR_STORAGE_VOL_GET_PHYSICAL: `allocation` holds the file's size.
        let info = v
            .info_flags(virt_sys::VIR_STORAGE_VOL_GET_PHYSICAL)
            .map_err(lv(format!("read volume {name} in pool {pool}")))?;
        Ok(Some(info.allocation))
    }

    /// Does `pool` hold a volume called `name`? One lookup, not a listing: a listing races with
    /// volumes other workers are creating (found by the SIGKILL fault test).
    pub fn volume_exists(&self, pool: &str, name: &str) -> Result<bool, HvError> {
        let p = self.lookup_pool(pool)?;
        match p.lookup_storage_vol_by_name(name) {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = lv(format!("look up volume {name} in pool {pool}"))(e);
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
            .map_err(lv(format!("look up volume {name} in pool {pool}")))?;
        v.delete(0)
            .map_err(lv(format!("delete volume {name} in pool {pool}")))
    }

    fn lookup_domain(&self, name: &str) -> Result<Domain, HvError> {
        self.conn
            .lookup_domain_by_name(name)
            .map_err(lv(format!("look up domain {name}")))
    }

    /// All domains, running or not, sorted by name.
    pub fn domains(&self) -> Result<Vec<DomainInfo>, HvError> {
        let mut out = Vec::new();
        for d in self.conn.list_all_domains(0).map_err(lv("list domains"))? {
            match domain_info(&d) {
                Ok(info) => out.push(info),
                // Undefined between the listing and now.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn domain(&self, name: &str) -> Result<Option<DomainInfo>, HvError> {
        match none_if_missing(self.lookup_domain(name))? {
            Some(d) => none_if_missing(domain_info(&d)),
            None => Ok(None),
        }
    }

    /// The domain's persistent definition as libvirt stores it.
    pub fn domain_xml(&self, name: &str) -> Result<String, HvError> {
        self.lookup_domain(name)?
            .xml_desc(0)
            .map_err(lv(format!("read XML of domain {name}")))
    }

    /// Define (or redefine) a persistent domain.
    pub fn define(&self, xml: &str) -> Result<(), HvError> {
        self.conn
            .define_domain_xml(xml)
            .map(|_| ())
            .map_err(lv("define domain"))
    }

    /// Start a shut-off domain; a paused one is resumed (it is active: a start would fail).
    pub fn start(&self, name: &str) -> Result<(), HvError> {
        let d = self.lookup_domain(name)?;
        let what = format!("start domain {name}");
        let (state, _reason) = d.state().map_err(lv(what.clone()))?;
        if map_state(state) == DomainState::Paused {
            d.resume()
                .map(|_| ())
                .map_err(lv(format!("resume domain {name}")))
        } else {
            d.create().map(|_| ()).map_err(lv(what))
        }
    }

    pub fn set_autostart(&self, name: &str, on: bool) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .set_autostart(on)
            .map(|_| ())
            .map_err(lv(format!("set autostart of domain {name}")))
    }

    /// Ask the guest to power off (ACPI); returns at once.
    pub fn shutdown(&self, name: &str) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .shutdown()
            .map(|_| ())
            .map_err(lv(format!("shut down domain {name}")))
    }

    /// Power off at once.
    pub fn destroy(&self, name: &str) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .destroy()
            .map(|_| ())
            .map_err(lv(format!("destroy domain {name}")))
    }

    /// Undefine with snapshot metadata, always keeping NVRAM (see `undefine_attempts`).
    /// `managed_save`: also remove the managed-save image — only for domains kvmprov created;
    /// for any other domain one is the operator's, and this fails naming
    /// `virsh managedsave-remove`. Disks are left alone.
    pub fn undefine(&self, name: &str, managed_save: bool) -> Result<(), HvError> {
        let d = self.lookup_domain(name)?;
        let what = format!("undefine domain {name}");
        if !managed_save {
            let saved = match d.has_managed_save(0).map_err(lv(what.clone())) {
                Ok(saved) => saved,
                // A driver without managed save has none to lose.
                Err(e) if e.is_unsupported() => false,
                Err(e) => return Err(e),
            };
            if saved {
                return Err(HvError::ForeignManagedSave {
                    name: name.to_string(),
                });
            }
        }
        let attempts = undefine_attempts(managed_save);
        let mut last = None;
        for flags in attempts {
            match d.undefine_flags(flags).map_err(lv(what.clone())) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_unsupported() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(HvError::Invalid {
            what,
            reason: "no undefine call was tried".into(),
        }))
    }

    /// Snapshot names, sorted.
    pub fn snapshots(&self, name: &str) -> Result<Vec<String>, HvError> {
        let d = self.lookup_domain(name)?;
        let mut out = Vec::new();
        for s in d
            .list_all_snapshots(0)
            .map_err(lv(format!("list snapshots of domain {name}")))?
        {
            out.push(s.name().map_err(lv("read snapshot name"))?);
        }
        out.sort();
        Ok(out)
    }

    /// Take a snapshot; atomic, so a failure leaves no half snapshot behind.
    pub fn create_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        description: &str,
    ) -> Result<(), HvError> {
        self.lookup_domain(name)?
            .create_snapshot_xml(
                &xml::snapshot_xml(snapshot, description),
                virt_sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC,
            )
            .map(|_| ())
            .map_err(lv(format!("create snapshot {snapshot} of domain {name}")))
    }

    /// The IPv4 address the network's DHCP server leased to `mac`, if any. With several
    /// leases (an earlier guest with the same MAC), the newest one.
    pub fn dhcp_lease(&self, network: &str, mac: &str) -> Result<Option<Ipv4Addr>, HvError> {
        let what = format!("read DHCP leases of {mac} on network {network}");
        let net = self
            .conn
            .lookup_network_by_name(network)
            .map_err(lv(format!("look up network {network}")))?;
        let mac_c = CString::new(mac).map_err(|_| HvError::Invalid {
            what: what.clone(),
            reason: "the MAC address contains a NUL byte".into(),
        })?;
        let leases = dhcp_leases(&net, &mac_c).map_err(lv(what))?;
        Ok(newest_ipv4(&leases))
    }

    /// The guest agent's IPv4 for the interface with `mac` (needs qemu-guest-agent running).
    pub fn agent_ipv4(&self, name: &str, mac: &str) -> Result<Option<Ipv4Addr>, HvError> {
        let ifaces = self
            .lookup_domain(name)?
            .interface_addresses(virt_sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
            .map_err(lv(format!("ask the guest agent of domain {name}")))?;
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

/// The flags `undefine` tries, most wanted first. NVRAM is always kept
/// (VIR_DOMAIN_UNDEFINE_NVRAM would delete a file outside kvmprov's pools); the managed-save
/// image goes only when asked. When a driver rejects a flag the next set lacks it, newest
/// flag first (KEEP_NVRAM: libvirt 2.3): libvirt then refuses to undefine a domain with NVRAM,
/// snapshots or a managed save rather than delete them.
fn undefine_attempts(managed_save: bool) -> [u32; 4] {
    use virt_sys::{
        VIR_DOMAIN_UNDEFINE_KEEP_NVRAM as KEEP_NVRAM,
        VIR_DOMAIN_UNDEFINE_MANAGED_SAVE as MANAGED_SAVE,
        VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA as SNAPSHOTS,
    };
    let flags = SNAPSHOTS | KEEP_NVRAM | if managed_save { MANAGED_SAVE } else { 0 };
    [
        flags,
        flags & !KEEP_NVRAM,
        flags & !(KEEP_NVRAM | SNAPSHOTS),
        0,
    ]
}

/// Stream `bytes` into `v`; the stream is finished on success and aborted on failure.
fn send_volume(
    v: &StorageVol,
    stream: Stream,
    source: &mut dyn std::io::Read,
    len: u64,
    what: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<(), HvError> {
    // Chunks like virsh's: one message per chunk stays under libvirt's RPC payload limit.
    const CHUNK: usize = 256 * 1024;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let sent = v
        .upload(&stream, 0, len, 0)
        .map_err(lv(what))
        .and_then(|()| {
            while done < len {
                let want = (len - done).min(CHUNK as u64) as usize;
                let got = source
                    .read(&mut buf[..want])
                    .map_err(|e| HvError::Invalid {
                        what: what.to_string(),
                        reason: e.to_string(),
                    })?;
                if got == 0 {
                    return Err(HvError::Invalid {
                        what: what.to_string(),
                        reason: format!("the source ended after {done} of {len} bytes"),
                    });
                }
                done += got as u64;
                let mut rest = &buf[..got];
                while !rest.is_empty() {
                    let n = stream.send(rest).map_err(lv(what))?;
                    // Blocking streams send at least one byte or fail.
                    let n = usize::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                        HvError::Invalid {
                            what: what.to_string(),
                            reason: format!("the stream accepted no data (returned {n})"),
                        }
                    })?;
                    rest = &rest[n.min(rest.len())..];
                }
                progress(done);
            }
            Ok(())
        });
    match sent {
        Ok(()) => stream.finish().map_err(lv(what)),
        Err(e) => {
            let _ = stream.abort();
            Err(e)
        }
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

fn network_info(n: &Network) -> Result<NetworkInfo, HvError> {
    let name = n.name().map_err(lv("read network name"))?;
    let what = format!("read network {name}");
    let facts = xml::parse_network_xml(&n.xml_desc(0).map_err(lv(what.clone()))?)?;
    Ok(NetworkInfo {
        active: n.is_active().map_err(lv(what.clone()))?,
        autostart: n.autostart().map_err(lv(what))?,
        bridge: facts.bridge,
        forward: facts.forward,
        ipv4: facts.ipv4,
        name,
    })
}

fn pool_info(p: &StoragePool) -> Result<PoolInfo, HvError> {
    let name = p.name().map_err(lv("read pool name"))?;
    let what = format!("read pool {name}");
    let path = xml::parse_pool_path(&p.xml_desc(0).map_err(lv(what.clone()))?)?;
    let active = p.is_active().map_err(lv(what.clone()))?;
    let available_bytes = if active {
        p.info().map_err(lv(what))?.available
    } else {
        0
    };
    Ok(PoolInfo {
        name,
        path: path.unwrap_or_default(),
        active,
        available_bytes,
    })
}

fn volume_info(v: &StorageVol) -> Result<VolumeInfo, HvError> {
    let name = v.name().map_err(lv("read volume name"))?;
    let what = format!("read volume {name}");
    let path = v.path().map_err(lv(what.clone()))?;
    let info = v.info().map_err(lv(what.clone()))?;
    let facts = xml::parse_volume_xml(&v.xml_desc(0).map_err(lv(what))?)?;
    Ok(VolumeInfo {
        name,
        path: PathBuf::from(path),
        capacity: info.capacity,
        allocation: info.allocation,
        format: facts.format,
        backing_path: facts.backing_path,
    })
}

fn domain_info(d: &Domain) -> Result<DomainInfo, HvError> {
    let name = d.name().map_err(lv("read domain name"))?;
    let what = format!("read domain {name}");
    let (state, _reason) = d.state().map_err(lv(what.clone()))?;
    Ok(DomainInfo {
        uuid: d.uuid_string().map_err(lv(what.clone()))?,
        state: map_state(state),
        persistent: d.is_persistent().map_err(lv(what))?,
        name,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_destinations_of_uris() {
        let d = ssh_destination("qemu+ssh://admin@hv1.example/system").unwrap();
        assert_eq!(
            (d.user.as_deref(), d.host.as_str(), d.port),
            (Some("admin"), "hv1.example", None)
        );
        assert_eq!(d.display(), "admin@hv1.example");
        let d = ssh_destination("qemu+ssh://hv2:2222/system?keyfile=/k/id&no_verify=1").unwrap();
        assert_eq!(d.port, Some(2222));
        assert_eq!(d.keyfile.as_deref(), Some("/k/id"));
        assert_eq!(d.args(), ["-p", "2222", "-i", "/k/id"]);
        // What the operator is told to type reaches the same port with the same key.
        assert_eq!(d.command_line(), "ssh -p 2222 -i /k/id hv2");
        assert!(!d.is_root());
        let d = ssh_destination("qemu+libssh2://root@[fd00::5]:22/system").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("fd00::5", Some(22)));
        assert!(d.is_root());
        for local in [
            "qemu:///system",
            "test:///default",
            "qemu+tls://hv/system",
            "qemu+ssh:///system",
            "qemu+ssh://h:x/system",
        ] {
            assert_eq!(ssh_destination(local), None, "{local}");
        }
    }

    #[test]
    fn versions_are_dotted() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_015), "7.2.15");
    }

    #[test]
    fn regression_lost_libvirtd_connection_was_a_cryptic_socket_error() {
        assert!(with_hint("internal error: client socket is closed".into())
            .contains("connection to libvirtd was lost"));
        assert_eq!(with_hint("Domain not found".into()), "Domain not found");
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(
            one_line("Cannot recv data: Host key verification failed.\r\n: Connection reset\n"),
            "Cannot recv data: Host key verification failed. : Connection reset"
        );
    }

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

    #[test]
    fn regression_undefine_deleted_nvram_and_managed_save_it_did_not_make() {
        use virt_sys::{
            VIR_DOMAIN_UNDEFINE_KEEP_NVRAM as KEEP_NVRAM,
            VIR_DOMAIN_UNDEFINE_MANAGED_SAVE as MANAGED_SAVE, VIR_DOMAIN_UNDEFINE_NVRAM as NVRAM,
        };
        for ours in [true, false] {
            let attempts = undefine_attempts(ours);
            assert!(attempts.iter().all(|f| f & NVRAM == 0), "{attempts:?}");
            assert_ne!(attempts[0] & KEEP_NVRAM, 0);
            assert_eq!(attempts[0] & MANAGED_SAVE != 0, ours);
            assert!(attempts.iter().all(|f| f & MANAGED_SAVE == 0 || ours));
        }
    }

    #[test]
    fn not_found_and_unsupported_codes() {
        let e = |code| HvError::Libvirt {
            what: "x".into(),
            message: "y".into(),
            code: Some(code),
        };
        assert!(e(virt_sys::VIR_ERR_NO_DOMAIN).is_not_found());
        assert!(!e(virt_sys::VIR_ERR_OPERATION_FAILED).is_not_found());
        assert!(e(virt_sys::VIR_ERR_NO_SUPPORT).is_unsupported());
        assert!(!e(virt_sys::VIR_ERR_NO_DOMAIN).is_unsupported());
    }
}
