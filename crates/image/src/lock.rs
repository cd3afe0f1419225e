//! Who may use, write or prune the cache: advisory `flock`s on files in the cache directory.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{io_err, ImageError};

/// The cache-wide lock file: a run holds it shared while it uses cached images, prune holds it
/// exclusively while it deletes.
const CACHE_LOCK: &str = ".kvmprov-cache.lock";
/// Longest wait for a prune to release the cache: it decides in seconds.
const PRUNE_WAIT: Duration = Duration::from_secs(60);

/// An advisory lock (`flock`) on a file in the cache; released when dropped.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Open a lock file, never through a symlink someone planted in the cache directory.
    fn open(path: &Path) -> Result<File, ImageError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err(path))
    }

    /// For a run that uses cached images: waits while a prune deletes, at most `PRUNE_WAIT`
    /// (a prune stuck on an unreachable hypervisor must not hold a run forever).
    pub fn shared(cache_dir: &Path) -> Result<CacheLock, ImageError> {
        let wait = PRUNE_WAIT;
        fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
        let path = cache_dir.join(CACHE_LOCK);
        let file = Self::open(&path)?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock_shared() {
                Ok(()) => return Ok(CacheLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(ImageError::CacheBusy {
                        path,
                        seconds: wait.as_secs(),
                    })
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
        }
    }

    /// For prune: the whole cache, or `None` while any run uses it (a run may be between its
    /// download and its use of a version).
    pub fn try_exclusive(cache_dir: &Path) -> Result<Option<CacheLock>, ImageError> {
        fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
        let path = cache_dir.join(CACHE_LOCK);
        let file = Self::open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(CacheLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }

    /// One writer per cache file: waits for another run writing the same version.
    pub(crate) fn writer(cache_dir: &Path, file_name: &str) -> Result<CacheLock, ImageError> {
        let path = writer_lock_path(cache_dir, file_name);
        let file = Self::open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!("another run is downloading {file_name}; waiting for it");
                // No deadline of our own: the other writer's download is bounded by its client's.
                file.lock().map_err(io_err(&path))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        Ok(CacheLock { _file: file })
    }
}

/// The lock file of one cache file's writer: `.<file>.lock` (hidden, like the cache's own lock:
/// listings of the cache show images, sidecars and parts).
pub fn writer_lock_path(cache_dir: &Path, file_name: &str) -> PathBuf {
    cache_dir.join(format!(".{file_name}.lock"))
}
