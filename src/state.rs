//! kvmprov's own small files beside the instances: the operator SSH key kvmprov logs in with and
//! each instance's pinned host key. They live in `<instance pool>/.kvmprov/` (mode 0700), files
//! 0600, written atomically, so nothing secret is ever world-readable or half-written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
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

/// The URI kvmprov's local state is keyed by: one spelling per hypervisor. Scheme and host are
/// lower-cased, the transport's default port, a trailing `/` and the SSH user are dropped (the
/// same host reached as another user is the same hypervisor), except for `/session` URIs, where
/// the user names whose libvirt it is. What is not a URI (no `://`, an unclosed `[`) is only
/// trimmed.
pub fn canonical_uri(uri: &str) -> String {
    let uri = uri.trim();
    let Some(u) = kvmprov_hypervisor::uri::LibvirtUri::parse(uri) else {
        return uri.to_string();
    };
    let scheme = u.scheme.to_ascii_lowercase();
    let host = u.host.unwrap_or("");
    let host = if u.bracketed {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let transport = u.transport().map(str::to_ascii_lowercase);
    let default_port = match transport.as_deref() {
        Some("ssh" | "libssh" | "libssh2") => Some("22"),
        Some("tcp") => Some("16509"),
        Some("tls") | None => Some("16514"),
        Some(_) => None,
    };
    let port = u.port.filter(|p| !p.is_empty() && Some(*p) != default_port);
    let path = match u.path.trim_end_matches('/') {
        "" => u.path,
        trimmed => trimmed,
    };
    let mut out = format!("{scheme}://");
    if let Some(user) = u.user.filter(|_| path.ends_with("/session")) {
        out.push_str(user);
        out.push('@');
    }
    out.push_str(&host.to_ascii_lowercase());
    if let Some(p) = port {
        out.push(':');
        out.push_str(p);
    }
    out.push_str(path);
    if let Some(q) = u.query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `path` with `.` and `..` resolved by name only (the file system is not asked).
pub fn lexical_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A short file-name-safe key for a hypervisor (its canonical URI, hashed).
fn uri_key(uri: &str) -> String {
    digest_hex(canonical_uri(uri).as_bytes())[..16].to_string()
}

/// The run lock of one hypervisor on one instance pool: `<pool>/.kvmprov/run-<uri key>.lock`.
///
/// It sits beside kvmprov's state in a directory only its owner can write, so no other local
/// user can pre-create it or plant a symlink there (as they could in `$TMPDIR`), and one pool
/// spelled two ways (`/srv/pool/`, a symlink to it) is one directory, so one lock.
pub fn run_lock_path(pool: &Path, uri: &str) -> Result<PathBuf, StateError> {
    let dir = state_dir(&lexical_normal(pool));
    ensure_dir(&dir)?;
    let dir = dir.canonicalize().map_err(|source| StateError::Read {
        path: dir.clone(),
        source,
    })?;
    Ok(dir.join(format!("run-{}.lock", uri_key(uri))))
}

/// Lowercase hex SHA-256.
pub fn digest_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Create the state directory (0700) if needed. Missing parents (the pool itself, before
/// preflight made it) get the default mode: qemu must be able to traverse the pool.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(|source| StateError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(StateError::Write {
                path: dir.to_path_buf(),
                source: e,
            })
        }
        _ => {}
    }
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

/// The URI whose pinned host keys used the old layout, keyed by instance name only.
const LEGACY_HOST_KEY_URI: &str = "qemu:///system";

/// The pinned host key file of one instance on one hypervisor, in known_hosts format without
/// host names (the address is only known at runtime): one `ssh-ed25519 AAAA…` line. Keyed by
/// hypervisor too: two hypervisors may each have an `app-01` and share this (operator-local)
/// directory.
pub fn host_key_path(dir: &Path, uri: &str, instance: &str) -> PathBuf {
    dir.join(format!("{instance}.{}.hostkey.pub", uri_key(uri)))
}

fn known_hosts_path(dir: &Path, uri: &str, instance: &str) -> PathBuf {
    dir.join(format!("{instance}.{}.known_hosts", uri_key(uri)))
}

/// Before keys were keyed by hypervisor: `<instance>.hostkey.pub`. Still read for the local
/// default hypervisor, so instances provisioned then stay reachable.
fn legacy_host_key_path(dir: &Path, uri: &str, instance: &str) -> Option<PathBuf> {
    (canonical_uri(uri) == LEGACY_HOST_KEY_URI).then(|| dir.join(format!("{instance}.hostkey.pub")))
}

/// Every file kvmprov keeps for one instance's host key (cleanup removes these), old layout
/// included.
pub fn host_key_files(dir: &Path, uri: &str, instance: &str) -> Vec<PathBuf> {
    let mut files = vec![
        host_key_path(dir, uri, instance),
        known_hosts_path(dir, uri, instance),
    ];
    if let Some(legacy) = legacy_host_key_path(dir, uri, instance) {
        files.push(legacy);
        files.push(dir.join(format!("{instance}.known_hosts")));
    }
    files
}

/// A known_hosts file for `addr` built from the pinned key (written per use: the address can change).
pub fn known_hosts_for(
    dir: &Path,
    uri: &str,
    instance: &str,
    addr: &str,
) -> Result<PathBuf, StateError> {
    let key_path = host_key_path(dir, uri, instance);
    let key = match (
        fs::read_to_string(&key_path),
        legacy_host_key_path(dir, uri, instance),
    ) {
        (Err(e), Some(legacy)) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::read_to_string(&legacy).map_err(|source| StateError::Read {
                path: legacy,
                source,
            })
        }
        (read, _) => read.map_err(|source| StateError::Read {
            path: key_path.clone(),
            source,
        }),
    }?;
    let path = known_hosts_path(dir, uri, instance);
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
        let uri = "qemu:///system";
        write_private(&host_key_path(t.path(), uri, "a"), b"ssh-ed25519 AAAAkey\n").unwrap();
        let kh = known_hosts_for(t.path(), uri, "a", "192.168.122.5").unwrap();
        assert_eq!(
            fs::read_to_string(kh).unwrap(),
            "192.168.122.5 ssh-ed25519 AAAAkey\n"
        );
    }

    /// Two configs with the same pool path on different hypervisors, each with an `app-01`,
    /// share the operator-local state directory: the second provision overwrote the first's
    /// pinned key, and the first guest was then refused as an impostor.
    #[test]
    fn regression_pinned_host_keys_of_two_hypervisors_overwrote_each_other() {
        let t = tempfile::tempdir().unwrap();
        let (hv1, hv2) = ("qemu+ssh://hv1/system", "qemu+ssh://hv2/system");
        write_private(
            &host_key_path(t.path(), hv1, "app-01"),
            b"ssh-ed25519 KEY1\n",
        )
        .unwrap();
        write_private(
            &host_key_path(t.path(), hv2, "app-01"),
            b"ssh-ed25519 KEY2\n",
        )
        .unwrap();
        let kh1 = known_hosts_for(t.path(), hv1, "app-01", "10.0.0.5").unwrap();
        let kh2 = known_hosts_for(t.path(), hv2, "app-01", "10.0.0.5").unwrap();
        assert_eq!(
            fs::read_to_string(kh1).unwrap(),
            "10.0.0.5 ssh-ed25519 KEY1\n"
        );
        assert_eq!(
            fs::read_to_string(kh2).unwrap(),
            "10.0.0.5 ssh-ed25519 KEY2\n"
        );
        // One hypervisor however its URI is spelled.
        assert_eq!(
            host_key_path(t.path(), "QEMU+SSH://root@HV1:22/system/", "app-01"),
            host_key_path(t.path(), hv1, "app-01")
        );
    }

    /// Installs from before keys were keyed by hypervisor keep working on the local default one.
    #[test]
    fn legacy_host_keys_stay_readable_for_the_local_hypervisor() {
        let t = tempfile::tempdir().unwrap();
        write_private(&t.path().join("app-01.hostkey.pub"), b"ssh-ed25519 OLD\n").unwrap();
        let kh = known_hosts_for(t.path(), "qemu:///system", "app-01", "10.0.0.5").unwrap();
        assert_eq!(
            fs::read_to_string(kh).unwrap(),
            "10.0.0.5 ssh-ed25519 OLD\n"
        );
        let files = host_key_files(t.path(), "qemu:///system", "app-01");
        assert!(
            files.contains(&t.path().join("app-01.hostkey.pub")),
            "{files:?}"
        );
        // A remote hypervisor never takes the old, ambiguous file for its own.
        assert!(known_hosts_for(t.path(), "qemu+ssh://hv1/system", "app-01", "10.0.0.5").is_err());
        assert_eq!(
            host_key_files(t.path(), "qemu+ssh://hv1/system", "app-01").len(),
            2
        );
    }

    #[test]
    fn canonical_uri_spellings() {
        for (given, want) in [
            ("qemu:///system", "qemu:///system"),
            ("qemu:///system/", "qemu:///system"),
            ("QEMU+SSH://HV1/system", "qemu+ssh://hv1/system"),
            ("qemu+ssh://hv1:22/system", "qemu+ssh://hv1/system"),
            ("qemu+ssh://admin@hv1/system", "qemu+ssh://hv1/system"),
            ("qemu+ssh://hv1:2222/system", "qemu+ssh://hv1:2222/system"),
            (
                "qemu+ssh://alice@hv1/session",
                "qemu+ssh://alice@hv1/session",
            ),
            ("qemu+tcp://hv1:16509/system", "qemu+tcp://hv1/system"),
            ("qemu://hv1:16514/system", "qemu://hv1/system"),
            (
                "qemu+ssh://[fe80::1]:22/system",
                "qemu+ssh://[fe80::1]/system",
            ),
            (
                "qemu+ssh://hv1/system?keyfile=/k",
                "qemu+ssh://hv1/system?keyfile=/k",
            ),
            ("test:///default", "test:///default"),
        ] {
            assert_eq!(canonical_uri(given), want, "{given}");
        }
    }

    #[test]
    fn lexical_normal_resolves_dots() {
        assert_eq!(
            lexical_normal(Path::new("/srv/./a/../pool/")),
            PathBuf::from("/srv/pool")
        );
    }
}
