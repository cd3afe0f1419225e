//! The few qcow2 header fields kvmprov reads: enough to refuse a download that is not a qcow2
//! before it enters the cache, and to follow the backing chain of an overlay that no domain
//! references any more (prune must keep its base).
//!
//! Header (big-endian): magic `QFI\xfb` at 0, version (u32) at 4, backing file offset (u64) at
//! 8 and length (u32) at 16, virtual size (u64) at 24.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Bytes of the header read here.
const HEADER_LEN: usize = 32;
/// qemu allows 1023; a little more is still a name, anything larger is a damaged header.
const MAX_BACKING_NAME: u32 = 4096;
/// Longest chain followed: a loop or a damaged file must not hold a run.
pub const MAX_CHAIN: usize = 16;

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// As written in the header: relative names are relative to the image's directory.
    pub backing_file: Option<String>,
}

/// Why a file is not a usable qcow2 image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("it is {0} bytes long, shorter than a qcow2 header")]
    TooShort(u64),
    #[error("it starts with {0:02x?}, not the qcow2 magic QFI\\xfb")]
    Magic([u8; 4]),
    #[error("its qcow2 version is {0}, not 2 or 3")]
    Version(u32),
    #[error("its qcow2 header gives a virtual size of 0")]
    ZeroSize,
    #[error("its backing file name ({0} bytes) is unreadable")]
    BackingName(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable qcow2 image")]
    Invalid {
        path: PathBuf,
        #[source]
        problem: Problem,
    },
}

/// Parse and check the first bytes of a file (at least 32; the backing name is not read here):
/// a qcow2 kvmprov can use as a base has a known version and a virtual size.
pub fn parse_header(bytes: &[u8]) -> Result<Header, Problem> {
    let header = parse_fields(bytes)?;
    if !(2..=3).contains(&header.version) {
        return Err(Problem::Version(header.version));
    }
    if header.size == 0 {
        return Err(Problem::ZeroSize);
    }
    Ok(header)
}

/// The fields, checking only that it is a qcow2 at all.
fn parse_fields(bytes: &[u8]) -> Result<Header, Problem> {
    let h: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(Problem::TooShort(bytes.len() as u64))?;
    let be32 = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let be64 = |at: usize| (u64::from(be32(at)) << 32) | u64::from(be32(at + 4));
    let magic = [h[0], h[1], h[2], h[3]];
    if &magic != MAGIC {
        return Err(Problem::Magic(magic));
    }
    Ok(Header {
        version: be32(4),
        size: be64(24),
        backing_file: None,
    })
}

/// Read and check a file's qcow2 header, with its backing file name.
pub fn read_header(path: &Path) -> Result<Header, Qcow2Error> {
    read(path, parse_header)
}

/// [`kvmprov_safefs::open_regular`], its refusals as I/O errors on `path` (the download code
/// matches on the two kinds of error this module has).
fn open(path: &Path) -> Result<File, Qcow2Error> {
    kvmprov_safefs::open_regular(path).map_err(|e| Qcow2Error::Io {
        path: path.to_path_buf(),
        source: match e {
            kvmprov_safefs::FsError::Io { source, .. } => source,
            other => std::io::Error::other(other),
        },
    })
}

fn read(path: &Path, parse: fn(&[u8]) -> Result<Header, Problem>) -> Result<Header, Qcow2Error> {
    let io = |source| Qcow2Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |problem| Qcow2Error::Invalid {
        path: path.to_path_buf(),
        problem,
    };
    // The path may come from a header a guest wrote: no link followed at its end, no FIFO or
    // device opened (an open of a FIFO blocks until a writer comes), a regular file only.
    let mut f = open(path)?;
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    (&mut f)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let mut header = parse(&bytes).map_err(invalid)?;
    let offset = u64::from_be_bytes(bytes[8..16].try_into().unwrap_or_default());
    let len = u32::from_be_bytes(bytes[16..20].try_into().unwrap_or_default());
    if offset != 0 && len != 0 {
        if len > MAX_BACKING_NAME {
            return Err(invalid(Problem::BackingName(len)));
        }
        let mut name = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        f.read_exact(&mut name)
            .map_err(|_| invalid(Problem::BackingName(len)))?;
        header.backing_file =
            Some(String::from_utf8(name).map_err(|_| invalid(Problem::BackingName(len)))?);
    }
    Ok(header)
}

/// The backing file of a local qcow2 file (relative names resolved against its directory);
/// `None` for a qcow2 without one and for files that are not qcow2 (ISOs, logs). Any version
/// and size: only the chain matters here.
pub fn backing_file(path: &Path) -> Result<Option<PathBuf>, Qcow2Error> {
    let header = match read(path, parse_fields) {
        Ok(h) => h,
        Err(Qcow2Error::Invalid {
            problem: Problem::TooShort(_) | Problem::Magic(_),
            ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(header.backing_file.map(|name| {
        let name = PathBuf::from(name);
        match path.parent() {
            Some(dir) if name.is_relative() => dir.join(name),
            _ => name,
        }
    }))
}

/// A file and the files under it, `backing` naming the one under each (from a local header,
/// or from libvirt for a remote volume). Stops at a loop or after [`MAX_CHAIN`] files: a chain
/// a guest wrote into its own disk's header must not hold a run.
pub fn backing_chain<E>(
    file: PathBuf,
    mut backing: impl FnMut(&Path) -> Result<Option<PathBuf>, E>,
) -> Result<Vec<PathBuf>, E> {
    let mut out = Vec::new();
    let mut next = Some(file);
    while let Some(p) = next.take() {
        if out.contains(&p) || out.len() >= MAX_CHAIN {
            break;
        }
        next = backing(&p)?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 v3 header of `size` bytes, backed by `backing` when given.
    fn header(size: u64, backing: Option<&str>) -> Vec<u8> {
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        if let Some(name) = backing {
            h[8..16].copy_from_slice(&104u64.to_be_bytes());
            h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            h.extend_from_slice(name.as_bytes());
        }
        h
    }

    #[test]
    fn header_checks() {
        assert_eq!(parse_header(&header(1 << 30, None)).unwrap().size, 1 << 30);
        assert_eq!(parse_header(&header(0, None)), Err(Problem::ZeroSize));
        assert_eq!(parse_header(b"QFI"), Err(Problem::TooShort(3)));
        let mut raw = header(1, None);
        raw[..4].copy_from_slice(b"\x7fELF");
        assert_eq!(
            parse_header(&raw),
            Err(Problem::Magic([0x7f, b'E', b'L', b'F']))
        );
        let mut v9 = header(1, None);
        v9[4..8].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(parse_header(&v9), Err(Problem::Version(9)));
    }

    #[test]
    fn chain_through_headers() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base.qcow2");
        let mid = t.path().join("mid.qcow2");
        let top = t.path().join("top.qcow2");
        std::fs::write(&base, header(1 << 20, None)).unwrap();
        std::fs::write(&mid, header(1 << 20, Some(base.to_str().unwrap()))).unwrap();
        std::fs::write(&top, header(1 << 20, Some("mid.qcow2"))).unwrap();
        std::fs::write(
            t.path().join("seed.iso"),
            b"not a qcow2 at all, long enough",
        )
        .unwrap();
        assert_eq!(
            backing_chain(top.clone(), backing_file).unwrap(),
            vec![top, mid, base]
        );
        assert_eq!(backing_file(&t.path().join("seed.iso")).unwrap(), None);
        // A loop ends.
        let a = t.path().join("a.qcow2");
        std::fs::write(&a, header(1, Some("a.qcow2"))).unwrap();
        assert_eq!(backing_chain(a.clone(), backing_file).unwrap(), vec![a]);
    }

    /// A foreign domain's raw disk started with a qcow2 header naming a FIFO: reading the chain
    /// opened the FIFO with a plain `open`, which blocks until a writer comes (cleanup and
    /// prune hung forever). Now the FIFO is refused at once, and so is a link.
    #[test]
    fn regression_backing_chain_opened_a_fifo_named_in_a_guest_written_header() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let disk = t.path().join("raw.img");
        std::fs::write(&disk, header(1 << 20, Some(fifo.to_str().unwrap()))).unwrap();
        // On a thread: the old code never returns, and the test must fail, not hang.
        let (tx, rx) = std::sync::mpsc::channel();
        let d = disk.clone();
        std::thread::spawn(move || {
            let _ = tx.send(backing_chain(d, |f| {
                backing_file(f).map_err(|e| e.to_string())
            }));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("reading the backing chain blocked on a FIFO");
        let e = got.unwrap_err();
        assert!(e.contains("a FIFO, not a regular file"), "{e}");
        assert!(matches!(backing_file(&fifo), Err(Qcow2Error::Io { .. })));
        // A link is not followed either.
        let link = t.path().join("link.qcow2");
        std::os::unix::fs::symlink(&disk, &link).unwrap();
        assert!(backing_file(&link).is_err());
    }
}
