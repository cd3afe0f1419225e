//! The cache's layout: versioned file names, JSON sidecars, what is cached, and moving a damaged
//! file aside.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kvmprov_safefs::{Dir, FileType, FsError};
use serde::{Deserialize, Serialize};

use crate::digest::is_sha512_hex;
use crate::error::{io_err, ImageError};
use crate::url::redact_url;

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

/// The sidecar of a cached image: `<file>.json` (its name: [`sidecar_name`]).
pub fn sidecar_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// The cache directory, created if missing (0755: libvirt's qemu user reads the images in it),
/// opened without following a link and accepted only if nobody but root or the running user can
/// write it: a planted `.part` link or sidecar there would be written or trusted as root.
pub(crate) fn open_cache_dir(cache_dir: &Path) -> Result<Dir, ImageError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(cache_dir)
        .map_err(io_err(cache_dir))?;
    // Again after creating: a directory another user made above it between the caller's check
    // and this create would otherwise go unseen (the handle below checks the last one only).
    kvmprov_safefs::check_tree(cache_dir)?;
    Ok(Dir::trusted(cache_dir)?)
}

/// The cache directory if it exists (`None` when it does not: nothing is cached).
fn existing_cache_dir(cache_dir: &Path) -> Result<Option<Dir>, ImageError> {
    match Dir::trusted(cache_dir) {
        Ok(d) => Ok(Some(d)),
        Err(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The name of a cache file's sidecar inside the cache directory.
pub(crate) fn sidecar_name(file_name: &str) -> String {
    format!("{file_name}.json")
}

/// Is this version (its cache file name, [`cache_file_name`], and its SHA-512) cached? Only
/// `stat`s: the file and its sidecar exist, the size matches and the sidecar records the digest.
pub fn lookup(
    cache_dir: &Path,
    file_name: &str,
    sha512: &str,
) -> Result<Option<CachedImage>, ImageError> {
    match existing_cache_dir(cache_dir)? {
        Some(dir) => lookup_in(&dir, file_name, sha512),
        None => Ok(None),
    }
}

pub(crate) fn lookup_in(
    dir: &Dir,
    file_name: &str,
    sha512: &str,
) -> Result<Option<CachedImage>, ImageError> {
    let Some(cached) = read_sidecar(dir, file_name)? else {
        return Ok(None);
    };
    // Not followed: a link under an image's name is no cached image.
    match dir.stat(file_name)? {
        Some(e)
            if e.kind == FileType::RegularFile
                && e.size == cached.size
                && cached.sha512 == sha512 =>
        {
            Ok(Some(cached))
        }
        _ => Ok(None),
    }
}

fn read_sidecar(dir: &Dir, file_name: &str) -> Result<Option<CachedImage>, ImageError> {
    let side = sidecar_name(file_name);
    // Only kvmprov's own sidecars (owned by the running user, not writable by others) count.
    let Some(bytes) = dir.read_own(&side)? else {
        return Ok(None);
    };
    let shown = dir.join(&side);
    match serde_json::from_slice::<CachedImage>(&bytes) {
        // A damaged sidecar (a truncated digest) is no proof of anything: not cached.
        Ok(c) if !is_sha512_hex(&c.sha512) => {
            tracing::warn!(
                "ignoring sidecar {}: its sha512 is not 128 hex digits",
                shown.display()
            );
            Ok(None)
        }
        Ok(mut c) => {
            c.path = dir.join(file_name);
            // Sidecars written before URLs were redacted may still hold a secret.
            c.url = redact_url(&c.url);
            Ok(Some(c))
        }
        Err(e) => {
            tracing::warn!("ignoring unreadable sidecar {}: {e}", shown.display());
            Ok(None)
        }
    }
}

/// Every cached image (by sidecar), newest first.
pub fn list_cached(cache_dir: &Path) -> Result<Vec<CachedImage>, ImageError> {
    let Some(dir) = existing_cache_dir(cache_dir)? else {
        return Ok(Vec::new());
    };
    let entries = fs::read_dir(cache_dir).map_err(io_err(cache_dir))?;
    let mut out = Vec::new();
    for entry in entries {
        let name = entry.map_err(io_err(cache_dir))?.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.ends_with(".json")
            || name.ends_with(".part")
            || name.ends_with(".lock")
            || name.ends_with(".tmp")
            || name.starts_with('.')
        {
            continue;
        }
        let Some(c) = read_sidecar(&dir, name)? else {
            continue;
        };
        if matches!(dir.stat(name)?, Some(e) if e.kind == FileType::RegularFile) {
            out.push(c);
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
    let bad = || ImageError::Invalid(format!("{} is not a file in a directory", path.display()));
    let parent = path.parent().ok_or_else(bad)?;
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
    let dir = Dir::trusted(parent)?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = format!("{name}.damaged-{stamp}");
    dir.rename(name, &aside)?;
    dir.remove_file(&sidecar_name(name))?;
    Ok(dir.join(&aside))
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
