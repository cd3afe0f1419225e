//! Who may use, write or prune the cache: advisory `flock`s on files in the cache directory.
//!
//! Lock files are created 0600 and must belong to the user kvmprov runs as (safefs's
//! `lock_file`): `flock` works on any descriptor, read-only ones included, so a lock file others
//! can open is a lock others can hold. Every wait has a deadline, and its error names the
//! holder's PID when `/proc/locks` tells it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvmprov_safefs::Dir;

use crate::cache::open_cache_dir;
use crate::error::{io_err, ImageError};

/// The cache-wide lock file: a run holds it shared while it uses cached images, prune holds it
/// exclusively while it deletes.
const CACHE_LOCK: &str = ".kvmprov-cache.lock";
/// Longest wait for the cache-wide lock: kvmprov's prune holds it exclusively only while it
/// decides and deletes, which takes seconds.
const PRUNE_WAIT: Duration = Duration::from_secs(60);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(100);

/// An advisory lock (`flock`) on a file in the cache; released when dropped.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// For a run that uses cached images: waits while another process holds the cache
    /// exclusively (a prune deleting), at most 60 s.
    pub fn shared(cache_dir: &Path) -> Result<CacheLock, ImageError> {
        Self::shared_within(cache_dir, PRUNE_WAIT)
    }

    /// [`CacheLock::shared`] with another deadline.
    pub fn shared_within(cache_dir: &Path, wait: Duration) -> Result<CacheLock, ImageError> {
        let dir = open_cache_dir(cache_dir)?;
        Self::shared_in(&dir, wait)
    }

    pub(crate) fn shared_in(dir: &Dir, wait: Duration) -> Result<CacheLock, ImageError> {
        let path = dir.join(CACHE_LOCK);
        let file = dir.lock_file(CACHE_LOCK)?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock_shared() {
                Ok(()) => return Ok(CacheLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(POLL);
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(ImageError::LockBusy {
                        holder: holder(&file, true),
                        path,
                        seconds: wait.as_secs(),
                        what: "this run cannot use the image cache now (kvmprov takes this lock \
                               exclusively only to prune)"
                            .to_string(),
                    })
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
        }
    }

    /// For prune: the whole cache, or `None` while any run uses it (a run may be between its
    /// download and its use of a version).
    pub fn try_exclusive(cache_dir: &Path) -> Result<Option<CacheLock>, ImageError> {
        let dir = open_cache_dir(cache_dir)?;
        let path = dir.join(CACHE_LOCK);
        let file = dir.lock_file(CACHE_LOCK)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(CacheLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }

    /// One writer per cache file: waits for another run writing the same version while that
    /// run makes progress (its `part_name` grows); gives up after `idle` without any.
    pub(crate) fn writer(
        dir: &Dir,
        file_name: &str,
        part_name: &str,
        idle: Duration,
    ) -> Result<CacheLock, ImageError> {
        let name = writer_lock_name(file_name);
        let path = dir.join(&name);
        let file = dir.lock_file(&name)?;
        let part_size = || dir.stat(part_name).ok().flatten().map(|e| e.size);
        let mut seen = part_size();
        let mut last_progress = Instant::now();
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(CacheLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
            if !told {
                tracing::info!("another run is downloading {file_name}; waiting for it");
                told = true;
            }
            let now = part_size();
            if now != seen {
                seen = now;
                last_progress = Instant::now();
            } else if last_progress.elapsed() >= idle {
                return Err(ImageError::LockBusy {
                    holder: holder(&file, false),
                    path,
                    seconds: idle.as_secs(),
                    what: format!(
                        "its download of {file_name} made no progress in that time and this run \
                         cannot write it"
                    ),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The lock file of one cache file's writer: `.<file>.lock` (hidden, like the cache's own lock:
/// listings of the cache show images, sidecars and parts).
pub fn writer_lock_path(cache_dir: &Path, file_name: &str) -> PathBuf {
    cache_dir.join(writer_lock_name(file_name))
}

fn writer_lock_name(file_name: &str) -> String {
    format!(".{file_name}.lock")
}

/// Who holds a `flock` on `file`: `process 1234 (kvmprov)` from `/proc/locks`, or `another
/// process` when it does not say (another PID namespace, no /proc). `exclusive_only`: only a
/// write lock blocks a shared one.
fn holder(file: &File, exclusive_only: bool) -> String {
    let pid = file.metadata().ok().and_then(|m| {
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        flock_holder(&locks, m.dev(), m.ino(), exclusive_only)
    });
    match pid {
        Some(pid) => {
            // Any process names itself (prctl PR_SET_NAME), escape bytes included: printable
            // ASCII only reaches the message.
            let comm: String = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .collect();
            match comm.trim() {
                "" => format!("process {pid}"),
                name => format!("process {pid} ({name})"),
            }
        }
        None => "another process".to_string(),
    }
}

/// The PID holding a `flock` on device `dev`, inode `ino` in a `/proc/locks` text. Lines:
/// `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`; waiters' lines have `->` after the number;
/// the device is `major:minor` in hex.
fn flock_holder(locks: &str, dev: u64, ino: u64, exclusive_only: bool) -> Option<u32> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [_, "FLOCK", _, mode, pid, id, ..]
                if *id == want && (!exclusive_only || *mode == "WRITE") =>
            {
                pid.parse().ok().filter(|p| *p > 0)
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_names_the_holder_not_a_waiter() {
        let dev = libc::makedev(0xfd, 1);
        let text = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:77 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 5151 fd:01:77 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 999 fd:01:78 0 EOF\n\
                    3: FLOCK  ADVISORY  READ 31 fd:01:79 0 EOF\n";
        assert_eq!(flock_holder(text, dev, 77, false), Some(4242));
        assert_eq!(flock_holder(text, dev, 78, false), None);
        assert_eq!(flock_holder(text, dev, 79, false), Some(31));
        assert_eq!(flock_holder(text, dev, 79, true), None);
        assert_eq!(flock_holder(text, libc::makedev(8, 1), 77, false), None);
    }

    #[test]
    fn a_live_flock_is_found_in_proc_locks() {
        let t = tempfile::tempdir().unwrap();
        let dir = Dir::trusted(t.path()).unwrap();
        let held = dir.lock_file("l").unwrap();
        held.lock().unwrap();
        let other = dir.lock_file("l").unwrap();
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(
            holder(&other, false),
            format!("process {} ({})", std::process::id(), comm.trim())
        );
    }
}
