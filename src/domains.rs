//! What each domain on a hypervisor holds on to: its state, every file it uses (disks with
//! their backing chains, console log, NVRAM) and whether kvmprov defined it. Cleanup decides
//! with this which files may go; `image-cache prune` which cached versions are still in use.

use std::path::PathBuf;

use kvmprov_hypervisor::{xml, DomainState, HvError, Hypervisor};
use kvmprov_image::qcow2;

use crate::host::is_local;

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

/// Every domain on `hv`, with its files.
pub fn observe(hv: &Hypervisor) -> Result<Vec<DomainFacts>, HvError> {
    // A remote hypervisor's files are not ours to read: compare the paths as libvirt names them.
    let local = is_local(hv.uri());
    let mut out = Vec::new();
    for d in hv.domains()? {
        let (files, ours) = match hv.domain_xml(&d.name) {
            // Disks with their backing chains, console logs and NVRAM: all protected. Locally
            // as real paths read from the qcow2 headers; remotely as the hypervisor's pools
            // know them.
            Ok(x) => {
                let ours = xml::parse_domain_xml(&x)?.metadata.is_some();
                let real = |p: PathBuf| p.canonicalize().unwrap_or(p);
                let mut files = Vec::new();
                for p in xml::domain_files(&x)? {
                    files.extend(if local {
                        // An unreadable header names no backing file, as any non-qcow2 file.
                        qcow2::backing_chain(real(p), |f| {
                            Ok::<_, HvError>(qcow2::backing_file(f).ok().flatten().map(real))
                        })?
                    } else {
                        qcow2::backing_chain(p, |f| {
                            Ok(hv.volume_by_path(f)?.and_then(|v| v.backing_path))
                        })?
                    });
                }
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
