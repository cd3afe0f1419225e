//! One run at a time per hypervisor and instance pool: the run lock.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use crate::settings::Session;

/// How long a run waits for another one on the same hypervisor and pool before giving up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every host's lock before any work, in a fixed order: two runs over overlapping hosts never
/// deadlock, and a run never starts half its hosts. Ordered and taken once per canonical URI,
/// the lock's key: `hv1` and `admin@hv1` in one config are one lock, not a wait on ourselves.
pub fn lock_all(hosts: &[Session]) -> Result<Vec<RunLock>, LockError> {
    let mut order: Vec<(String, &Session)> = hosts
        .iter()
        .map(|h| {
            (
                kvmprov_hypervisor::uri::canonical_uri(&h.cfg.libvirt_uri),
                h,
            )
        })
        .collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    order.dedup_by(|a, b| a.0 == b.0);
    order
        .into_iter()
        .map(|(_, h)| RunLock::acquire(h))
        .collect()
}

/// One run at a time per hypervisor and instance pool: `<pool>/.kvmprov/run-<uri key>.lock`.
///
/// It sits beside kvmprov's state in a directory only its owner can write, opened through the
/// checked handle ([`crate::state::StateDir`]), so no other local user can pre-create it or plant
/// a symlink there (as they could in `$TMPDIR`), and one pool spelled two ways (`/srv/pool/`, a
/// symlink to it) is one directory, so one lock.
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The state directory or the lock file in it is not safe to use (the message names the
    /// path, its owner and mode, and the fix), or cannot be made.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot lock {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another kvmprov run ({holder}) is working on {uri} with pool {pool}; wait for it to finish (lock file {path})")]
    Busy {
        holder: String,
        uri: String,
        pool: String,
        path: PathBuf,
    },
}

impl RunLock {
    pub fn acquire(s: &Session) -> Result<RunLock, LockError> {
        Self::acquire_within(s, LOCK_WAIT)
    }

    fn acquire_within(s: &Session, wait: std::time::Duration) -> Result<RunLock, LockError> {
        let pool = &s.cfg.instance_pool_path;
        let (path, mut file) = crate::state::StateDir::open(pool)?.run_lock(&s.cfg.libvirt_uri)?;
        // Another run may be finishing (or a killed one still exiting): wait a little for it.
        let deadline = std::time::Instant::now() + wait;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = read_holder(&mut file);
                    if std::time::Instant::now() >= deadline {
                        return Err(LockError::Busy {
                            holder,
                            uri: s.cfg.libvirt_uri.clone(),
                            pool: pool.display().to_string(),
                            path,
                        });
                    }
                    if !told {
                        s.printer.note(&format!(
                            "waiting up to {}s for another kvmprov run ({holder}) on this hypervisor and pool",
                            wait.as_secs()
                        ));
                        told = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(LockError::Open { path, source })
                }
            }
        }
        // Who holds it, for the message the next run prints.
        let _ = file.set_len(0);
        let _ = writeln!(file, "pid {}", std::process::id());
        Ok(RunLock { _file: file, path })
    }
}

/// What the lock's holder wrote into it (`pid N`), read through our own handle.
fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_string(&mut text));
    match text.trim() {
        "" => "pid unknown".to_string(),
        t => t.to_string(),
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        tracing::debug!("releasing {}", self.path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn session(pool: &Path, uri: &str) -> Session {
        let text = format!(
            "kvm_libvirt_uri: \"{uri}\"\nkvm_image_cache_path: /nonexistent/cache\nkvm_instance_disk_pool_path: {}\n",
            pool.display()
        );
        let cfg = crate::config::parse(Path::new("vars.yml"), &text, &[]).unwrap();
        Session::new(cfg, crate::settings::Options::default())
    }

    /// The lock was `$TMPDIR/kvmprov-<hash>.lock`, opened following symlinks: any local user
    /// could plant a symlink there, and root's run then truncated the file it pointed to.
    #[test]
    fn regression_run_lock_followed_a_planted_symlink() {
        let t = tempfile::tempdir().unwrap();
        let pool = t.path().join("pool");
        let s = session(&pool, "qemu:///system");
        let path = RunLock::acquire(&s).unwrap().path.clone();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let again = RunLock::acquire(&s);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(again.is_err(), "a planted symlink was taken as the lock");
        // It lives beside kvmprov's state in the pool, not in a world-writable directory.
        let state = crate::state::state_dir(&pool.canonicalize().unwrap());
        assert_eq!(path.parent(), Some(state.as_path()), "{}", path.display());
    }

    /// `/srv/pool` and `/srv/pool/`, `hv1` and `HV1:22` got different lock files: two runs on
    /// the same hypervisor and pool did not exclude each other.
    #[test]
    fn regression_run_lock_differed_for_one_hypervisor_and_pool_spelled_two_ways() {
        let t = tempfile::tempdir().unwrap();
        let pool = t.path().join("pool");
        std::fs::create_dir(&pool).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&pool, &link).unwrap();
        let plain = session(&pool, "qemu+ssh://hv1/system");
        let first = RunLock::acquire(&plain).unwrap().path.clone();
        for (p, uri) in [
            (
                PathBuf::from(format!("{}/", pool.display())),
                "qemu+ssh://hv1/system",
            ),
            (pool.clone(), "QEMU+SSH://admin@HV1:22/system/"),
            (link, "qemu+ssh://hv1/system"),
        ] {
            let other = RunLock::acquire(&session(&p, uri)).unwrap().path.clone();
            assert_eq!(other, first, "{} {uri}", p.display());
        }
        // Another hypervisor on the same pool path has its own lock.
        let hv2 = RunLock::acquire(&session(&pool, "qemu+ssh://hv2/system")).unwrap();
        assert_ne!(hv2.path, first);
    }

    #[test]
    fn one_run_locks_a_hypervisor_spelled_two_ways_once() {
        let t = tempfile::tempdir().unwrap();
        let pool = t.path().join("pool");
        let hosts = [
            session(&pool, "qemu+ssh://hv1/system"),
            session(&pool, "qemu+ssh://admin@hv1/system"),
            session(&pool, "qemu+ssh://hv2/system"),
        ];
        let started = std::time::Instant::now();
        let locks = lock_all(&hosts).unwrap();
        assert_eq!(locks.len(), 2);
        assert!(started.elapsed() < LOCK_WAIT / 2, "waited on itself");
    }

    #[test]
    fn busy_lock_names_its_holder_and_file() {
        let t = tempfile::tempdir().unwrap();
        let s = session(&t.path().join("pool"), "qemu:///system");
        let held = RunLock::acquire(&s).unwrap();
        let e = RunLock::acquire_within(&s, std::time::Duration::ZERO)
            .err()
            .expect("the lock is held")
            .to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains(&held.path.display().to_string()), "{e}");
    }
}
