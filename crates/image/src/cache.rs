//! The cache's layout: versioned file names, JSON sidecars, what is cached, and moving a damaged
//! file aside.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::is_sha512_hex;
use crate::error::{io_err, ImageError};
use crate::url::redact_url;
use crate::Resolved;

/// A verified image in the cache (what its sidecar records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedImage {
    pub image_name: String,
    #[serde(skip)]
    pub path: PathBuf,
    pub sha512: String,
    pub size: u64,
    pub version: Option<String>,
    pub url: String,
    /// Milliseconds since the epoch (orders versions cached within the same second).
    pub cached_at: String,
}

/// `debian-12-genericcloud-amd64.qcow2` + digest → `debian-12-genericcloud-amd64-<16 hex>.qcow2`.
pub fn cache_file_name(image_file: &str, sha512: &str) -> String {
    let short = &sha512[..16.min(sha512.len())];
    match image_file.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}-{short}.{ext}"),
        None => format!("{image_file}-{short}"),
    }
}

/// The sidecar of a cached image: `<file>.json`.
pub fn sidecar_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// Is this version cached? Only `stat`s: the file and its sidecar exist and the size matches.
pub fn lookup(cache_dir: &Path, resolved: &Resolved) -> Result<Option<CachedImage>, ImageError> {
    let path = cache_dir.join(&resolved.file_name);
    let Some(cached) = read_sidecar(&path)? else {
        return Ok(None);
    };
    match fs::metadata(&path) {
        Ok(m) if m.len() == cached.size && cached.sha512 == resolved.sha512 => Ok(Some(cached)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn read_sidecar(image: &Path) -> Result<Option<CachedImage>, ImageError> {
    let side = sidecar_path(image);
    let text = match fs::read_to_string(&side) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&side)(e)),
    };
    match serde_json::from_str::<CachedImage>(&text) {
        // A damaged sidecar (a truncated digest) is no proof of anything: not cached.
        Ok(c) if !is_sha512_hex(&c.sha512) => {
            tracing::warn!(
                "ignoring sidecar {}: its sha512 is not 128 hex digits",
                side.display()
            );
            Ok(None)
        }
        Ok(mut c) => {
            c.path = image.to_path_buf();
            // Sidecars written before URLs were redacted may still hold a secret.
            c.url = redact_url(&c.url);
            Ok(Some(c))
        }
        Err(e) => {
            tracing::warn!("ignoring unreadable sidecar {}: {e}", side.display());
            Ok(None)
        }
    }
}

/// Every cached image (by sidecar), newest first.
pub fn list_cached(cache_dir: &Path) -> Result<Vec<CachedImage>, ImageError> {
    let entries = match fs::read_dir(cache_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(cache_dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(cache_dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".json")
            || name.ends_with(".part")
            || name.ends_with(".lock")
            || name.ends_with(".tmp")
        {
            continue;
        }
        if let Some(c) = read_sidecar(&path)? {
            if path.is_file() {
                out.push(c);
            }
        }
    }
    out.sort_by(|a, b| {
        let t = |c: &CachedImage| c.cached_at.parse::<u128>().unwrap_or(0);
        t(b).cmp(&t(a)).then_with(|| a.path.cmp(&b.path))
    });
    Ok(out)
}

/// The newest cached version of `image_name`.
pub fn newest_cached(
    cache_dir: &Path,
    image_name: &str,
) -> Result<Option<CachedImage>, ImageError> {
    Ok(list_cached(cache_dir)?
        .into_iter()
        .find(|c| c.image_name == image_name))
}

/// Move a damaged file (and its sidecar) aside; never delete it silently.
pub fn quarantine(path: &Path) -> Result<PathBuf, ImageError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{stamp}"));
    let aside = PathBuf::from(aside);
    fs::rename(path, &aside).map_err(io_err(path))?;
    let side = sidecar_path(path);
    if side.exists() {
        fs::remove_file(&side).map_err(io_err(&side))?;
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_carry_the_digest() {
        assert_eq!(
            cache_file_name("debian-12-genericcloud-amd64.qcow2", &"ab".repeat(64)),
            "debian-12-genericcloud-amd64-abababababababab.qcow2"
        );
    }
}
