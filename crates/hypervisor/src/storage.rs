//! Storage: `dir` pools, volumes (qcow2 overlays, uploads and downloads through streams).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use crate::error::{infos_of_listed, lv, none_if_missing};
use crate::xml;
use crate::{HvError, Hypervisor};

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

impl Hypervisor {
    fn lookup_pool(&self, name: &str) -> Result<StoragePool, HvError> {
        self.conn
            .lookup_storage_pool_by_name(name)
            .map_err(self.lv(format!("look up pool {name}")))
    }

    pub fn pool(&self, name: &str) -> Result<Option<PoolInfo>, HvError> {
        match none_if_missing(self.lookup_pool(name))? {
            Some(p) => Ok(Some(pool_info(self, &p)?)),
            None => Ok(None),
        }
    }

    /// The pool whose target is `path`: compared as given, then both canonicalized on this
    /// machine (when the hypervisor is remote only the first comparison can match).
    pub fn pool_by_path(&self, path: &Path) -> Result<Option<PoolInfo>, HvError> {
        Ok(self.find_pool_by_path(path)?.map(|(_, info)| info))
    }

    fn find_pool_by_path(&self, path: &Path) -> Result<Option<(StoragePool, PoolInfo)>, HvError> {
        Ok(self.find_pools_by_paths(&[path])?.pop().flatten())
    }

    /// The pools whose targets are `paths`, in one listing: each pool's XML is read once to
    /// compare its target; only a match costs the two further calls its state takes (with
    /// dozens of pools on a hypervisor, three calls a pool was most of a one-instance run).
    fn find_pools_by_paths(
        &self,
        paths: &[&Path],
    ) -> Result<Vec<Option<(StoragePool, PoolInfo)>>, HvError> {
        let wanted: Vec<Option<PathBuf>> = paths.iter().map(|p| p.canonicalize().ok()).collect();
        // Resolving a pool's symlinks costs a lookup: only when some wanted path resolved.
        let resolve = wanted.iter().any(Option::is_some);
        let mut found: Vec<Option<(StoragePool, PoolInfo)>> = paths.iter().map(|_| None).collect();
        for p in self
            .conn
            .list_all_storage_pools(0)
            .map_err(self.lv("list storage pools"))?
        {
            // `None` twice: a pool with no target path, or one undefined since the listing.
            let Some(Some(target)) = none_if_missing(pool_target(self, &p))? else {
                continue;
            };
            let canonical = resolve.then(|| target.canonicalize().ok()).flatten();
            let Some(i) = (0..paths.len()).find(|&i| {
                found[i].is_none()
                    && (target == paths[i] || (wanted[i].is_some() && canonical == wanted[i]))
            }) else {
                continue;
            };
            match none_if_missing(pool_state(self, &p, target))? {
                Some(info) => found[i] = Some((p, info)),
                None => continue,
            }
            if found.iter().all(Option::is_some) {
                break;
            }
        }
        Ok(found)
    }

    /// `pool_by_path` for several paths with one listing of the pools.
    pub fn pools_by_paths(&self, paths: &[&Path]) -> Result<Vec<Option<PoolInfo>>, HvError> {
        Ok(self
            .find_pools_by_paths(paths)?
            .into_iter()
            .map(|f| f.map(|(_, info)| info))
            .collect())
    }

    /// An active `dir` pool serving `path`. A pool already serving the directory is reused
    /// whatever its name (two pools on one directory would each list the other's volumes);
    /// otherwise `name` is defined, built (mkdir), started and set to autostart. An existing
    /// active pool is refreshed so files created behind libvirt's back show up.
    pub fn ensure_dir_pool(&self, name: &str, path: &Path) -> Result<PoolOutcome, HvError> {
        let found = self.find_pool_by_path(path)?;
        self.ensure_found_dir_pool(name, path, found)
    }

    /// `ensure_dir_pool` right after `pools_by_paths` looked for `path`: `seen` is what it
    /// found (an inactive pool, or none), so every pool is not listed and read a second time.
    pub fn ensure_seen_dir_pool(
        &self,
        name: &str,
        path: &Path,
        seen: Option<&PoolInfo>,
    ) -> Result<PoolOutcome, HvError> {
        let found = match seen {
            Some(info) => match none_if_missing(self.lookup_pool(&info.name))? {
                Some(p) => Some((p, info.clone())),
                // Undefined since: look again.
                None => self.find_pool_by_path(path)?,
            },
            None => None,
        };
        self.ensure_found_dir_pool(name, path, found)
    }

    fn ensure_found_dir_pool(
        &self,
        name: &str,
        path: &Path,
        found: Option<(StoragePool, PoolInfo)>,
    ) -> Result<PoolOutcome, HvError> {
        let (pool, mut action) = match found {
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
        if pool
            .is_active()
            .map_err(self.lv(format!("pool {pool_name}")))?
        {
            pool.refresh(0)
                .map_err(self.lv(format!("refresh pool {pool_name}")))?;
        } else {
            // Started by another run meanwhile, or its directory was removed (building
            // recreates it).
            if pool.create(0).is_err() && !pool.is_active().unwrap_or(false) {
                pool.build(0)
                    .map_err(self.lv(format!("build pool {pool_name}")))?;
                if let Err(e) = pool.create(0) {
                    if !pool.is_active().unwrap_or(false) {
                        return Err(self.lv(format!("start pool {pool_name}"))(e));
                    }
                }
            }
            if action == PoolAction::Existed {
                action = PoolAction::Started;
            }
        }
        Ok(PoolOutcome {
            pool: pool_info(self, &pool)?,
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
            .map_err(self.lv(format!("define pool {name} at {}", path.display())))?;
        p.build(0)
            .map_err(self.lv(format!("build pool {name} (create {})", path.display())))?;
        p.set_autostart(true)
            .map_err(self.lv(format!("set autostart of pool {name}")))?;
        Ok(p)
    }

    /// Stop and undefine a pool. Its directory and files stay: libvirt forgets the pool only.
    pub fn remove_pool(&self, name: &str) -> Result<(), HvError> {
        let p = self.lookup_pool(name)?;
        if p.is_active().map_err(self.lv(format!("pool {name}")))? {
            p.destroy().map_err(self.lv(format!("stop pool {name}")))?;
        }
        p.undefine()
            .map_err(self.lv(format!("undefine pool {name}")))
    }

    /// Rescan a pool's directory.
    pub fn refresh_pool(&self, name: &str) -> Result<(), HvError> {
        self.lookup_pool(name)?
            .refresh(0)
            .map_err(self.lv(format!("refresh pool {name}")))
    }

    /// The volumes of a pool, sorted by name.
    pub fn volumes(&self, pool: &str) -> Result<Vec<VolumeInfo>, HvError> {
        let p = self.lookup_pool(pool)?;
        let listed = p
            .list_all_volumes(0)
            .map_err(self.lv(format!("list volumes of pool {pool}")))?;
        infos_of_listed(listed, |o| volume_info(self, o), |i| &i.name)
    }

    /// A pool's volume names, each with its virtual size when `sized(name)`: one listing (the
    /// names come with it), and a call per volume only for those sized, where [`Self::volumes`]
    /// makes three per volume (issue 27: a pool holds three volumes an instance).
    pub fn volume_names(
        &self,
        pool: &str,
        sized: impl Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, Option<u64>>, HvError> {
        let p = self.lookup_pool(pool)?;
        let listed = p
            .list_all_volumes(0)
            .map_err(self.lv(format!("list volumes of pool {pool}")))?;
        let mut out = BTreeMap::new();
        for v in &listed {
            let name = v.name().map_err(lv("read volume name"))?;
            let size = if sized(&name) {
                let what = format!("read volume {name}");
                match none_if_missing(v.info().map_err(self.lv(what)))? {
                    Some(info) => Some(info.capacity),
                    // Gone since the listing.
                    None => continue,
                }
            } else {
                None
            };
            out.insert(name, size);
        }
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
                .map_err(self.lv(what))
                .and_then(|v| volume_info(self, &v)),
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
        let v = StorageVol::create_xml(&p, &xml, 0).map_err(self.lv(format!(
            "create overlay {name} in pool {pool} on {}",
            backing_path.display()
        )))?;
        volume_info(self, &v)
    }

    /// An empty volume of `capacity_bytes` in `format` (`qcow2`: libvirt runs qemu-img; the
    /// file starts small and grows as the guest writes). Fails if the name is taken.
    pub fn create_volume(
        &self,
        pool: &str,
        name: &str,
        capacity_bytes: u64,
        format: &str,
    ) -> Result<VolumeInfo, HvError> {
        let p = self.lookup_pool(pool)?;
        let xml = xml::raw_volume_xml(name, capacity_bytes, format);
        let v = StorageVol::create_xml(&p, &xml, 0)
            .map_err(self.lv(format!("create volume {name} in pool {pool}")))?;
        volume_info(self, &v)
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
    /// The result's `capacity` and `allocation` are the bytes the finished stream carried.
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
            .map_err(self.lv(format!("create volume {name} in pool {pool}")))?;
        // Everything the caller learns about the volume is known before the stream starts.
        // Once an upload stream closes, libvirtd refreshes the whole pool in a thread that
        // holds the pool's lock; every volume call on that pool (path, info, XML) waits for
        // it. So none is made after the upload (a CI run saw `virStorageVolGetInfo` there
        // block for 14 minutes).
        let path = match v.path() {
            Ok(path) => PathBuf::from(path),
            Err(e) => {
                let _ = v.delete(0);
                return Err(self.lv(format!("read volume {name} in pool {pool}"))(e));
            }
        };
        let sent = Stream::new(&self.conn, 0)
            .map_err(self.lv(what))
            .and_then(|stream| send_volume(self, &v, stream, source, len, what, progress));
        if let Err(e) = sent {
            // Best effort: the upload error is the one worth reporting.
            let _ = v.delete(0);
            return Err(e);
        }
        // `virStreamFinish` returned only after libvirtd wrote and closed the file: it holds
        // exactly the `len` bytes sent (`send_volume` fails on a short source).
        Ok(VolumeInfo {
            name: name.to_string(),
            path,
            capacity: len,
            allocation: len,
            format: Some(format.to_string()),
            backing_path: None,
        })
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
            .map_err(self.lv(what.clone()))?;
        let stream = Stream::new(&self.conn, 0).map_err(self.lv(what.clone()))?;
        v.download(&stream, 0, 0, 0)
            .map_err(self.lv(what.clone()))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match stream.recv(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = stream.abort();
                    return Err(self.lv(what)(e));
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
        stream.finish().map_err(self.lv(what))?;
        Ok(total)
    }

    /// The size of a volume's file on the host (not its virtual size), `None` if missing.
    pub fn volume_file_size(&self, pool: &str, name: &str) -> Result<Option<u64>, HvError> {
        let p = self.lookup_pool(pool)?;
        let v = match p.lookup_storage_vol_by_name(name) {
            Ok(v) => v,
            Err(e) => return none_if_missing(Err(self.lv(format!("look up volume {name}"))(e))),
        };
        // VIR_STORAGE_VOL_GET_PHYSICAL: `allocation` holds the file's size.
        let info = v
            .info_flags(virt_sys::VIR_STORAGE_VOL_GET_PHYSICAL)
            .map_err(self.lv(format!("read volume {name} in pool {pool}")))?;
        Ok(Some(info.allocation))
    }

    /// The volume `name` of `pool`, `None` when there is none.
    pub fn volume(&self, pool: &str, name: &str) -> Result<Option<VolumeInfo>, HvError> {
        let p = self.lookup_pool(pool)?;
        none_if_missing(
            p.lookup_storage_vol_by_name(name)
                .map_err(self.lv(format!("look up volume {name} in pool {pool}")))
                .and_then(|v| volume_info(self, &v)),
        )
    }

    /// Does `pool` hold a volume called `name`? One lookup, not a listing: a listing races with
    /// volumes other workers are creating (found by the SIGKILL fault test).
    pub fn volume_exists(&self, pool: &str, name: &str) -> Result<bool, HvError> {
        let p = self.lookup_pool(pool)?;
        match p.lookup_storage_vol_by_name(name) {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = self.lv(format!("look up volume {name} in pool {pool}"))(e);
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
            .map_err(self.lv(format!("look up volume {name} in pool {pool}")))?;
        v.delete(0)
            .map_err(self.lv(format!("delete volume {name} in pool {pool}")))
    }
}

/// Stream `bytes` into `v`; the stream is finished on success and aborted on failure.
fn send_volume(
    hv: &Hypervisor,
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
        .map_err(hv.lv(what))
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
                    let n = stream.send(rest).map_err(hv.lv(what))?;
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
        Ok(()) => stream.finish().map_err(hv.lv(what)),
        Err(e) => {
            let _ = stream.abort();
            Err(e)
        }
    }
}

fn pool_info(hv: &Hypervisor, p: &StoragePool) -> Result<PoolInfo, HvError> {
    let path = pool_target(hv, p)?.unwrap_or_default();
    pool_state(hv, p, path)
}

/// The pool's target directory, from its XML (`None` for pools without one).
fn pool_target(hv: &Hypervisor, p: &StoragePool) -> Result<Option<PathBuf>, HvError> {
    let name = p.name().map_err(lv("read pool name"))?;
    xml::parse_pool_path(&p.xml_desc(0).map_err(hv.lv(format!("read pool {name}")))?)
}

/// The pool's name, activity and free space, its target already known.
fn pool_state(hv: &Hypervisor, p: &StoragePool, path: PathBuf) -> Result<PoolInfo, HvError> {
    let name = p.name().map_err(lv("read pool name"))?;
    let what = format!("read pool {name}");
    let active = p.is_active().map_err(hv.lv(what.clone()))?;
    let available_bytes = if active {
        p.info().map_err(hv.lv(what))?.available
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

fn volume_info(hv: &Hypervisor, v: &StorageVol) -> Result<VolumeInfo, HvError> {
    let name = v.name().map_err(lv("read volume name"))?;
    let what = format!("read volume {name}");
    let path = v.path().map_err(hv.lv(what.clone()))?;
    let info = v.info().map_err(hv.lv(what.clone()))?;
    let facts = xml::parse_volume_xml(&v.xml_desc(0).map_err(hv.lv(what))?)?;
    Ok(VolumeInfo {
        name,
        path: PathBuf::from(path),
        capacity: info.capacity,
        allocation: info.allocation,
        format: facts.format,
        backing_path: facts.backing_path,
    })
}
