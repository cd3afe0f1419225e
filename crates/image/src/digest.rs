//! SHA-512 as the cache uses it: hex digests, re-hashing a file, hashing a stream.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha512};

use crate::download::CHUNK;
use crate::error::{io_err, ImageError};

/// A `Write` sink that SHA-512-hashes what it is given (re-hashing a remote copy as it streams).
#[derive(Default)]
pub struct Sha512Writer(Sha512);

impl Sha512Writer {
    pub fn hex(self) -> String {
        hex(&self.0.finalize())
    }
}

impl std::io::Write for Sha512Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn is_sha512_hex(s: &str) -> bool {
    s.len() == 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Re-hash a file and compare.
pub fn verify(path: &Path, sha512: &str) -> Result<(), ImageError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha512::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let actual = hex(&h.finalize());
    if actual != sha512 {
        return Err(ImageError::DigestMismatch {
            url: path.display().to_string(),
            expected: sha512.to_string(),
            actual,
        });
    }
    Ok(())
}
