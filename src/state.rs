//! kvmprov's own small files beside the instances: the operator SSH key kvmprov logs in with and
//! each instance's pinned host key. They live in `<instance pool>/.kvmprov/` (mode 0700), files
//! 0600, written atomically, so nothing secret is ever world-readable or half-written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate the operator SSH key: {0}")]
    Key(#[from] kvmprov_seed::SeedError),
}

pub fn state_dir(pool: &Path) -> PathBuf {
    pool.join(".kvmprov")
}

/// Lowercase hex SHA-256.
pub fn digest_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Create the state directory (0700) if needed.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
        StateError::Write {
            path: dir.to_path_buf(),
            source,
        }
    })
}

/// Write a file atomically with mode 0600 (temp name, fsync, rename).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Unique per call, not only per process: threads of one run (one per hypervisor) may write
    // the same file at once, and must never share a temporary file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// The operator key pair kvmprov logs in with: created once per instance pool.
pub struct OperatorKey {
    pub private_path: PathBuf,
    pub public: String,
}

pub fn operator_key(dir: &Path, create: bool) -> Result<Option<OperatorKey>, StateError> {
    if let Some(key) = existing_operator_key(dir)? {
        return Ok(Some(key));
    }
    if !create {
        return Ok(None);
    }
    ensure_dir(dir)?;
    // Runs and threads that share this pool (one per hypervisor: the operator keeps the state
    // of remote pools locally) must agree on one key: the first creates it, under a lock, and
    // the others read it.
    let lock_path = dir.join("key.lock");
    let lock = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|source| StateError::Write {
            path: lock_path,
            source,
        })?;
    if let Some(key) = existing_operator_key(dir)? {
        return Ok(Some(key));
    }
    let pair = kvmprov_seed::generate_client_key("kvmprov-operator")?;
    // The public half first: a complete pair is one whose private half exists.
    write_private(
        &dir.join("id_ed25519.pub"),
        format!("{}\n", pair.public_openssh()).as_bytes(),
    )?;
    let private_path = dir.join("id_ed25519");
    write_private(&private_path, pair.private_openssh().as_bytes())?;
    drop(lock);
    Ok(Some(OperatorKey {
        private_path,
        public: pair.public_openssh().trim().to_string(),
    }))
}

fn existing_operator_key(dir: &Path) -> Result<Option<OperatorKey>, StateError> {
    let private_path = dir.join("id_ed25519");
    let public_path = dir.join("id_ed25519.pub");
    if !(private_path.exists() && public_path.exists()) {
        return Ok(None);
    }
    let public = fs::read_to_string(&public_path)
        .map_err(|source| StateError::Read {
            path: public_path.clone(),
            source,
        })?
        .trim()
        .to_string();
    Ok(Some(OperatorKey {
        private_path,
        public,
    }))
}

/// The pinned host key file of one instance, in known_hosts format without host names
/// (the address is only known at runtime): one `ssh-ed25519 AAAA…` line.
pub fn host_key_path(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("{instance}.hostkey.pub"))
}

/// A known_hosts file for `addr` built from the pinned key (written per use: the address can change).
pub fn known_hosts_for(dir: &Path, instance: &str, addr: &str) -> Result<PathBuf, StateError> {
    let key_path = host_key_path(dir, instance);
    let key = fs::read_to_string(&key_path).map_err(|source| StateError::Read {
        path: key_path.clone(),
        source,
    })?;
    let path = dir.join(format!("{instance}.known_hosts"));
    write_private(&path, format!("{addr} {}\n", key.trim()).as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_dir_0700() {
        let t = tempfile::tempdir().unwrap();
        let dir = state_dir(t.path());
        ensure_dir(&dir).unwrap();
        let f = dir.join("x");
        write_private(&f, b"secret").unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(fs::read(&f).unwrap(), b"secret");
    }

    /// Two hypervisors' threads provisioning at once share the operator's state directory
    /// (`<pool>/.kvmprov` on the operator): both found no key, both generated one, both wrote
    /// through the same temporary name. One failed ("cannot write …id_ed25519: No such file or
    /// directory") and the key left on disk matched neither guest's seed: no guest was reachable.
    #[test]
    fn regression_concurrent_first_use_generated_two_operator_keys() {
        for _ in 0..20 {
            let t = tempfile::tempdir().unwrap();
            let dir = state_dir(t.path());
            let start = std::sync::Barrier::new(8);
            let got: Vec<String> = std::thread::scope(|sc| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        sc.spawn(|| {
                            start.wait();
                            operator_key(&dir, true).map(|k| k.map(|k| k.public))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap().unwrap().unwrap())
                    .collect()
            });
            assert!(got.iter().all(|p| *p == got[0]), "several keys: {got:?}");
            let private = fs::read_to_string(dir.join("id_ed25519")).unwrap();
            let public = fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
            assert_eq!(public.trim(), got[0]);
            assert_eq!(
                kvmprov_seed::public_key_of(&private).unwrap().trim(),
                got[0]
            );
            let left: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(
                left.iter().all(|n| !n.to_string_lossy().contains(".tmp")),
                "temporary files left: {left:?}"
            );
        }
    }

    #[test]
    fn known_hosts_uses_pinned_key() {
        let t = tempfile::tempdir().unwrap();
        write_private(&host_key_path(t.path(), "a"), b"ssh-ed25519 AAAAkey\n").unwrap();
        let kh = known_hosts_for(t.path(), "a", "192.168.122.5").unwrap();
        assert_eq!(
            fs::read_to_string(kh).unwrap(),
            "192.168.122.5 ssh-ed25519 AAAAkey\n"
        );
    }
}
