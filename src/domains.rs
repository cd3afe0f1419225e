//! What each domain on a hypervisor holds on to: its state, every file it uses (disks with
//! their backing chains, console log, NVRAM) and whether kvmprov defined it. Cleanup decides
//! with this which files may go; `image-cache prune` which cached versions are still in use.
//!
//! Disk images and logs are written by guests, so nothing a guest wrote decides what is read:
//! a backing chain is followed only for disks libvirt declares as qcow2 (`<driver type>`),
//! libvirt's own view of the chain (`<backingStore>` in the live XML) wins where it has one,
//! every header read opens its file without following a link or blocking on a FIFO
//! ([`kvmprov_safefs::open_regular`]), the chain is bounded ([`qcow2::MAX_CHAIN`]), and console
//! logs and NVRAM stores are only names, never parsed.

use std::path::{Path, PathBuf};

use kvmprov_hypervisor::uri::is_local;
use kvmprov_hypervisor::xml::{self, used_files, UsedFile};
use kvmprov_hypervisor::{DomainState, HvError, Hypervisor};
use kvmprov_image::qcow2;

/// A domain and the files it uses.
#[derive(Debug, Clone)]
pub struct DomainFacts {
    pub name: String,
    pub state: DomainState,
    /// Real paths of its disks and their backing files.
    pub files: Vec<PathBuf>,
    /// It carries kvmprov's metadata (kvmprov defined it).
    pub ours: bool,
}

/// libvirt's backing chain of a disk, as long as kvmprov follows any chain
/// ([`qcow2::MAX_CHAIN`]).
fn bounded(chain: &[PathBuf]) -> &[PathBuf] {
    &chain[..chain.len().min(qcow2::MAX_CHAIN)]
}

/// The real path of a local file (itself when it cannot be resolved).
fn real(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// What libvirt's storage says is under a file: `Some(backing)` when the file is a volume of a
/// pool libvirt knows (its volume XML), `None` when libvirt does not know it.
pub type VolumeBacking<'a> = dyn Fn(&Path) -> Result<Option<Option<PathBuf>>, HvError> + 'a;

/// The files a domain uses on the local machine, as real paths: disks with their backing
/// chains (libvirt's: the domain XML's `<backingStore>`, else the volume XML through `volumes`;
/// else the qcow2 headers), for qcow2 disks only; console logs and NVRAM as names.
pub fn local_files(domain_xml: &str, volumes: &VolumeBacking) -> Result<Vec<PathBuf>, HvError> {
    let mut files = Vec::new();
    for used in used_files(domain_xml)? {
        match used {
            UsedFile::Plain(p)
            | UsedFile::Disk {
                path: p,
                qcow2: false,
                ..
            } => files.push(real(&p)),
            UsedFile::Disk {
                path,
                chain: Some(chain),
                ..
            } => {
                files.push(real(&path));
                files.extend(bounded(&chain).iter().map(|p| real(p)));
            }
            UsedFile::Disk {
                path, chain: None, ..
            } => {
                // A header that cannot be read (a FIFO, a link, a damaged file) names no
                // backing file: the chain ends there, the file itself still protected.
                files.extend(qcow2::backing_chain(real(&path), |f| {
                    let backing = match volumes(f)? {
                        Some(known) => known,
                        None => qcow2::backing_file(f).ok().flatten(),
                    };
                    Ok::<_, HvError>(backing.map(|b| real(&b)))
                })?);
            }
        }
    }
    dedup(&mut files);
    Ok(files)
}

/// The files a domain uses on a remote hypervisor, as libvirt names them: libvirt's chain, else
/// the storage volumes' backing paths, for qcow2 disks only.
fn remote_files(hv: &Hypervisor, domain_xml: &str) -> Result<Vec<PathBuf>, HvError> {
    let mut files = Vec::new();
    for used in used_files(domain_xml)? {
        match used {
            UsedFile::Plain(p)
            | UsedFile::Disk {
                path: p,
                qcow2: false,
                ..
            } => files.push(p),
            UsedFile::Disk {
                path,
                chain: Some(chain),
                ..
            } => {
                files.push(path);
                files.extend(bounded(&chain).iter().cloned());
            }
            UsedFile::Disk {
                path, chain: None, ..
            } => files.extend(qcow2::backing_chain(path, |f| {
                Ok(hv.volume_by_path(f)?.and_then(|v| v.backing_path))
            })?),
        }
    }
    dedup(&mut files);
    Ok(files)
}

/// libvirt's view of a local file's backing file: `None` when no pool holds it (or libvirt
/// cannot say: the header is read then), a lost connection an error.
fn volume_backing(hv: &Hypervisor, file: &Path) -> Result<Option<Option<PathBuf>>, HvError> {
    match hv.volume_by_path(file) {
        Ok(v) => Ok(v.map(|v| v.backing_path)),
        Err(e) if e.is_connection_lost() => Err(e),
        Err(_) => Ok(None),
    }
}

/// Each file once, in order (libvirt repeats the serial log under `<console>`).
fn dedup(files: &mut Vec<PathBuf>) {
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.clone()));
}

/// Every domain on `hv`, with its files.
pub fn observe(hv: &Hypervisor) -> Result<Vec<DomainFacts>, HvError> {
    // A remote hypervisor's files are not ours to read: compare the paths as libvirt names them.
    let local = is_local(hv.uri());
    let mut out = Vec::new();
    for d in hv.domains()? {
        let (files, ours) = match hv.domain_xml(&d.name) {
            Ok(x) => {
                let ours = xml::parse_domain_xml(&x)?.metadata.is_some();
                let files = if local {
                    local_files(&x, &|f| volume_backing(hv, f))?
                } else {
                    remote_files(hv, &x)?
                };
                (files, ours)
            }
            // Gone between the listing and now: nothing to protect.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        out.push(DomainFacts {
            name: d.name,
            state: d.state,
            files,
            ours,
        });
    }
    Ok(out)
}

/// Every file some domain's disks use, backing files included (for `image-cache prune`).
pub fn paths_in_use(hv: &Hypervisor) -> Result<Vec<PathBuf>, HvError> {
    Ok(observe(hv)?.into_iter().flat_map(|d| d.files).collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A qcow2 v3 header naming `backing` (as a guest can write into its disk).
    pub(crate) fn qcow2_header(backing: &Path) -> Vec<u8> {
        let name = backing.to_str().unwrap().as_bytes();
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(qcow2::MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[8..16].copy_from_slice(&104u64.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        h.extend_from_slice(name);
        h
    }

    fn mkfifo(p: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    fn domain(disk: &Path, driver: &str, log: &Path, nvram: &Path, extra: &str) -> String {
        format!(
            "<domain type='qemu'><name>foreign</name>\
             <os><type>hvm</type><nvram>{}</nvram></os><devices>\
             <disk type='file' device='disk'><driver name='qemu' type='{driver}'/>\
             <source file='{}'/>{extra}<target dev='vda'/></disk>\
             <serial type='pty'><log file='{}'/></serial>\
             <console type='pty'><log file='{}'/></console>\
             </devices></domain>",
            nvram.display(),
            disk.display(),
            log.display(),
            log.display()
        )
    }

    /// `local_files` on a thread: a FIFO opened by mistake blocks forever, and the test must
    /// fail rather than hang.
    fn files_within_seconds(xml: String) -> Vec<PathBuf> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(local_files(&xml, &|_| Ok(None)).map_err(|e| e.to_string()));
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("reading the domain's files blocked (a FIFO named in a header was opened)")
            .unwrap()
    }

    /// A foreign domain's raw disk, its console log and its NVRAM all started with a qcow2
    /// header naming a FIFO: every file of every domain was read as qcow2 whatever its
    /// `<driver type>`, and the FIFO opened with a plain `open` hung cleanup (even the dry run)
    /// and prune forever.
    #[test]
    fn regression_raw_disk_console_log_and_nvram_were_read_as_qcow2() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        mkfifo(&fifo);
        let (disk, log, nvram) = (
            t.path().join("raw.img"),
            t.path().join("foreign-console.log"),
            t.path().join("foreign_VARS.fd"),
        );
        for f in [&disk, &log, &nvram] {
            std::fs::write(f, qcow2_header(&fifo)).unwrap();
        }
        let real = t.path().canonicalize().unwrap();
        let files = files_within_seconds(domain(&disk, "raw", &log, &nvram, ""));
        assert_eq!(
            files,
            vec![
                real.join("raw.img"),
                real.join("foreign-console.log"),
                real.join("foreign_VARS.fd")
            ]
        );
        // Declared qcow2: the header is read, but the FIFO is not opened (not a regular file):
        // it is protected as a name, and the chain ends there.
        let files = files_within_seconds(domain(&disk, "qcow2", &log, &nvram, ""));
        assert_eq!(files[..2], [real.join("raw.img"), real.join("fifo")]);
    }

    #[test]
    fn libvirts_backing_store_is_preferred_to_the_headers() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        mkfifo(&fifo);
        let disk = t.path().join("top.qcow2");
        // The header names the FIFO; libvirt says the base is elsewhere: libvirt wins.
        std::fs::write(&disk, qcow2_header(&fifo)).unwrap();
        let store = "<backingStore type='file'><format type='qcow2'/>\
                     <source file='/cache/mid.qcow2'/><backingStore type='file'>\
                     <format type='qcow2'/><source file='/cache/base.qcow2'/>\
                     <backingStore/></backingStore></backingStore>";
        let (log, nvram) = (t.path().join("l.log"), t.path().join("n.fd"));
        let files = files_within_seconds(domain(&disk, "qcow2", &log, &nvram, store));
        let real = t.path().canonicalize().unwrap();
        assert_eq!(
            files[..3],
            [
                real.join("top.qcow2"),
                PathBuf::from("/cache/mid.qcow2"),
                PathBuf::from("/cache/base.qcow2")
            ]
        );
        // An empty <backingStore/>: libvirt says there is none; no header is read.
        let files = files_within_seconds(domain(&disk, "qcow2", &log, &nvram, "<backingStore/>"));
        assert_eq!(files[0], real.join("top.qcow2"));
        assert!(!files.contains(&real.join("fifo")), "{files:?}");
    }

    #[test]
    fn libvirts_volume_xml_is_preferred_to_the_headers() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        mkfifo(&fifo);
        let disk = t.path().join("top.qcow2");
        std::fs::write(&disk, qcow2_header(&fifo)).unwrap();
        let real = t.path().canonicalize().unwrap();
        let top = real.join("top.qcow2");
        let (log, nvram) = (t.path().join("l.log"), t.path().join("n.fd"));
        let xml = domain(&disk, "qcow2", &log, &nvram, "");
        // libvirt knows the volume: its backing file, not the header's FIFO.
        let files = local_files(&xml, &|f| {
            Ok((f == top).then(|| Some(PathBuf::from("/cache/base.qcow2"))))
        })
        .unwrap();
        assert_eq!(
            files[..2],
            [top.clone(), PathBuf::from("/cache/base.qcow2")]
        );
        // A volume libvirt knows without a backing file: none.
        let files = local_files(&xml, &|f| Ok((f == top).then_some(None))).unwrap();
        assert_eq!(files[..2], [top, real.join("l.log")]);
    }
}
