//! kvmprov's own small files beside the instances: the operator SSH key kvmprov logs in with,
//! each instance's pinned host key, the run lock. They live in `<instance pool>/.kvmprov/`,
//! which is accepted only as a real directory owned by the running user (mode 0700) below a tree
//! nobody else can write ([`StateDir::open`]); every file inside is opened through that checked
//! handle (`openat`, `O_NOFOLLOW`, `O_EXCL` temporaries with unpredictable names), files 0600,
//! written atomically, so nothing secret is ever world-readable, half-written, or written
//! through a link somebody planted.

use std::fs::File;
use std::path::{Path, PathBuf};

use kvmprov_hypervisor::uri::canonical_uri;
use kvmprov_safefs::{Dir, FsError};

use crate::digest::sha256_hex;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory, a file in it, or the tree above it is not safe, or cannot be used.
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("cannot create {path}: {source}")]
    CreatePool {
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
    #[error("cannot lock {path}: {source}")]
    Lock {
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

/// A short file-name-safe key for a hypervisor (its canonical URI, hashed).
fn uri_key(uri: &str) -> String {
    sha256_hex(canonical_uri(uri).as_bytes())[..16].to_string()
}

/// The run lock's file name for one hypervisor: `run-<uri key>.lock` in the state directory.
fn run_lock_name(uri: &str) -> String {
    format!("run-{}.lock", uri_key(uri))
}

/// kvmprov's state directory of one instance pool, opened and checked: everything kvmprov keeps
/// there is read and written through this handle, never through a path that could be swapped.
#[derive(Debug)]
pub struct StateDir {
    dir: Dir,
}

impl StateDir {
    /// Open `<pool>/.kvmprov`, creating it (0700) and the pool's missing directories if needed
    /// (the pool itself gets the default mode: qemu must be able to traverse it). Refused with
    /// the path, its owner and mode and the fix when the pool or a directory above it can be
    /// written by another user (`check_tree`), or when `.kvmprov` is a link, not a directory, or
    /// not the running user's: whoever could plant it would get the operator key into every
    /// guest and choose the pinned host keys.
    ///
    /// The pool is opened by its resolved path, so one pool spelled two ways (`/srv/pool/`, a
    /// link to it) is one directory, one lock.
    pub fn open(pool: &Path) -> Result<StateDir, StateError> {
        let pool = kvmprov_safefs::lexical_absolute(pool);
        // Checked before anything is created through it, and again once it all exists.
        kvmprov_safefs::check_tree(&pool)?;
        std::fs::create_dir_all(&pool).map_err(|source| StateError::CreatePool {
            path: pool.clone(),
            source,
        })?;
        kvmprov_safefs::check_tree(&pool)?;
        let real = pool.canonicalize().map_err(|source| StateError::Read {
            path: pool.clone(),
            source,
        })?;
        Ok(StateDir {
            dir: Dir::private(&state_dir(&real))?,
        })
    }

    /// [`StateDir::open`] for readers (login, inventory): `None` when the pool or its state
    /// directory does not exist, nothing created.
    pub fn open_existing(pool: &Path) -> Result<Option<StateDir>, StateError> {
        let pool = kvmprov_safefs::lexical_absolute(pool);
        match std::fs::symlink_metadata(state_dir(&pool)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            _ => {}
        }
        Self::open(&pool).map(Some)
    }

    /// What [`StateDir::open`] would refuse, found without creating or changing anything
    /// (preflight, `--check`): the tree above the pool, and `.kvmprov` if it exists.
    pub fn inspect(pool: &Path) -> Result<(), StateError> {
        let pool = kvmprov_safefs::lexical_absolute(pool);
        kvmprov_safefs::check_tree(&pool)?;
        Ok(Dir::inspect_private(&state_dir(&pool))?)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `name` atomically, mode 0600 (an `O_EXCL` temporary with an unpredictable name,
    /// fsync, rename).
    pub fn write_private(&self, name: &str, contents: &[u8]) -> Result<(), StateError> {
        Ok(self.dir.write_atomic(name, contents, 0o600)?)
    }

    /// The run lock of one hypervisor on this pool (`run-<uri key>.lock`, 0600, ours), open for
    /// `flock`; and its path, for messages.
    pub fn run_lock(&self, uri: &str) -> Result<(PathBuf, File), StateError> {
        let name = run_lock_name(uri);
        let f = self.dir.lock_file(&name)?;
        Ok((self.dir.join(&name), f))
    }

    /// The operator key pair kvmprov logs in with: created once per instance pool (`create`).
    pub fn operator_key(&self, create: bool) -> Result<Option<OperatorKey>, StateError> {
        if let Some(key) = self.existing_operator_key()? {
            return Ok(Some(key));
        }
        if !create {
            return Ok(None);
        }
        // Runs and threads that share this pool (one per hypervisor: the operator keeps the state
        // of remote pools locally) must agree on one key: the first creates it, under a lock, and
        // the others read it.
        let lock = self.dir.lock_file("key.lock")?;
        lock.lock().map_err(|source| StateError::Lock {
            path: self.dir.join("key.lock"),
            source,
        })?;
        if let Some(key) = self.existing_operator_key()? {
            return Ok(Some(key));
        }
        let pair = kvmprov_seed::generate_client_key("kvmprov-operator")?;
        // The public half first: a complete pair is one whose private half exists.
        self.write_private(
            "id_ed25519.pub",
            format!("{}\n", pair.public_openssh()).as_bytes(),
        )?;
        self.write_private("id_ed25519", pair.private_openssh().as_bytes())?;
        drop(lock);
        Ok(Some(OperatorKey {
            private_path: self.dir.join("id_ed25519"),
            public: pair.public_openssh().trim().to_string(),
        }))
    }

    /// Both halves, each a regular file (no link) owned by the running user and writable by
    /// nobody else; else an error naming the file, its owner and mode: a planted public half would
    /// go into every new guest's authorized_keys.
    fn existing_operator_key(&self) -> Result<Option<OperatorKey>, StateError> {
        let private = self.dir.open_file("id_ed25519", false, true)?;
        let public = self.dir.read_own("id_ed25519.pub")?;
        let (Some(_), Some(public)) = (private, public) else {
            return Ok(None);
        };
        Ok(Some(OperatorKey {
            private_path: self.dir.join("id_ed25519"),
            public: String::from_utf8_lossy(&public).trim().to_string(),
        }))
    }

    /// Pin an instance's host key (one `ssh-ed25519 AAAA…` line).
    pub fn pin_host_key(&self, uri: &str, instance: &str, key: &str) -> Result<(), StateError> {
        self.write_private(
            &host_key_name(uri, instance),
            format!("{}\n", key.trim()).as_bytes(),
        )
    }

    /// A known_hosts file for `addr` built from the pinned key (written per use: the address can
    /// change); its path, for ssh.
    pub fn known_hosts_for(
        &self,
        uri: &str,
        instance: &str,
        addr: &str,
    ) -> Result<PathBuf, StateError> {
        let key_name = host_key_name(uri, instance);
        let key = match self.dir.read_own(&key_name)? {
            Some(k) => k,
            None => {
                let legacy = legacy_host_key_name(uri, instance);
                let found = match &legacy {
                    Some(l) => self.dir.read_own(l)?,
                    None => None,
                };
                found.ok_or_else(|| StateError::Read {
                    path: self.dir.join(&key_name),
                    source: std::io::ErrorKind::NotFound.into(),
                })?
            }
        };
        let name = known_hosts_name(uri, instance);
        let key = String::from_utf8_lossy(&key);
        self.write_private(&name, format!("{addr} {}\n", key.trim()).as_bytes())?;
        Ok(self.dir.join(&name))
    }
}

/// The operator key pair kvmprov logs in with: created once per instance pool.
pub struct OperatorKey {
    pub private_path: PathBuf,
    pub public: String,
}

/// The URI whose pinned host keys used the old layout, keyed by instance name only.
const LEGACY_HOST_KEY_URI: &str = "qemu:///system";

/// The pinned host key file of one instance on one hypervisor, in known_hosts format without
/// host names (the address is only known at runtime): one `ssh-ed25519 AAAA…` line. Keyed by
/// hypervisor too: two hypervisors may each have an `app-01` and share this (operator-local)
/// directory.
fn host_key_name(uri: &str, instance: &str) -> String {
    format!("{instance}.{}.hostkey.pub", uri_key(uri))
}

fn known_hosts_name(uri: &str, instance: &str) -> String {
    format!("{instance}.{}.known_hosts", uri_key(uri))
}

/// Before keys were keyed by hypervisor: `<instance>.hostkey.pub`. Still read for the local
/// default hypervisor, so instances provisioned then stay reachable.
fn legacy_host_key_name(uri: &str, instance: &str) -> Option<String> {
    (canonical_uri(uri) == LEGACY_HOST_KEY_URI).then(|| format!("{instance}.hostkey.pub"))
}

/// The path of [`host_key_name`] in `dir` (cleanup and tests name the files by path).
pub fn host_key_path(dir: &Path, uri: &str, instance: &str) -> PathBuf {
    dir.join(host_key_name(uri, instance))
}

/// Every file kvmprov keeps for one instance's host key (cleanup removes these), old layout
/// included.
pub fn host_key_files(dir: &Path, uri: &str, instance: &str) -> Vec<PathBuf> {
    let mut files = vec![
        host_key_path(dir, uri, instance),
        dir.join(known_hosts_name(uri, instance)),
    ];
    if let Some(legacy) = legacy_host_key_name(uri, instance) {
        files.push(dir.join(legacy));
        files.push(dir.join(format!("{instance}.known_hosts")));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// A pool directory in a fresh temporary directory (0700, ours, under /tmp).
    fn pool() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let pool = t.path().join("pool");
        (t, pool)
    }

    #[test]
    fn private_files_are_0600_and_dir_0700() {
        let (_t, pool) = pool();
        let st = StateDir::open(&pool).unwrap();
        st.write_private("x", b"secret").unwrap();
        let dir = state_dir(&pool);
        assert_eq!(mode(&dir.join("x")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(fs::read(dir.join("x")).unwrap(), b"secret");
    }

    /// Issue 23 item 1: `<pool>/.kvmprov` was trusted whatever it was. A symlink planted there
    /// (by whoever can create an entry in the pool) sent `chmod 0700`, the lock and the pinned
    /// keys to its target, and an `id_ed25519` pair found there became the operator key whose
    /// public half went into every new guest's authorized_keys.
    #[test]
    fn regression_planted_state_dir_symlink_was_followed_and_its_key_trusted() {
        let (t, pool) = pool();
        fs::create_dir(&pool).unwrap();
        let victim = t.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(victim.join("id_ed25519"), "attacker private\n").unwrap();
        fs::write(victim.join("id_ed25519.pub"), "ssh-ed25519 ATTACKER\n").unwrap();
        symlink(&victim, state_dir(&pool)).unwrap();

        let e = StateDir::open(&pool).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(e.contains(&state_dir(&pool).display().to_string()), "{e}");
        assert!(StateDir::open_existing(&pool).is_err());
        // Nothing was written through it, its mode is the victim's own.
        assert_eq!(mode(&victim), 0o755);
        let mut names: Vec<_> = fs::read_dir(&victim)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["id_ed25519", "id_ed25519.pub"]);
    }

    /// An operator key pair kvmprov did not write (another owner, or writable by others) was
    /// taken as its own: its public half would be authorized on every new guest.
    #[test]
    fn regression_operator_key_writable_by_others_was_trusted() {
        let (_t, pool) = pool();
        let st = StateDir::open(&pool).unwrap();
        let key = st.operator_key(true).unwrap().unwrap();
        let public = state_dir(&pool).join("id_ed25519.pub");
        fs::set_permissions(&public, fs::Permissions::from_mode(0o666)).unwrap();
        let e = st.operator_key(false).err().expect("refused").to_string();
        assert!(e.contains(&public.display().to_string()), "{e}");
        assert!(e.contains("mode 0666") && e.contains("chmod go-w"), "{e}");
        fs::set_permissions(&public, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(st.operator_key(false).unwrap().unwrap().public, key.public);
        if rustix::process::geteuid().is_root() {
            rustix::fs::chown(&public, Some(rustix::process::Uid::from_raw(65534)), None).unwrap();
            let e = st.operator_key(false).err().expect("refused").to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
    }

    /// Temporaries were `<file>.tmp-<pid>-<n>`, opened with O_CREAT|O_TRUNC following links: a
    /// link planted under the next name made root overwrite whatever it pointed to.
    #[test]
    fn regression_predictable_temporary_was_written_through_a_planted_link() {
        let (t, pool) = pool();
        let st = StateDir::open(&pool).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let dir = state_dir(&pool);
        for n in 0..64 {
            let name = format!("a.tmp-{}-{n}", std::process::id());
            symlink(&victim, dir.join(name)).unwrap();
        }
        st.write_private("a", b"new").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"new");
        assert_eq!(mode(&dir.join("a")), 0o600);
    }

    /// Issue 23 item 2: a pool under a directory every user can write (no sticky bit), or owned
    /// by another user, was written into as root.
    #[test]
    fn regression_state_dir_was_made_under_a_world_writable_directory() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let pool = open.join("pool");
        let e = StateDir::open(&pool).unwrap_err().to_string();
        assert!(
            e.contains(&open.display().to_string()) && e.contains("every user"),
            "{e}"
        );
        assert!(!pool.exists(), "created through an unsafe tree");
        // With the sticky bit (as /tmp has), others cannot replace what root made there.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        StateDir::open(&pool).unwrap();
        // The pool itself must not be writable by others at all.
        fs::set_permissions(&pool, fs::Permissions::from_mode(0o777)).unwrap();
        let e = StateDir::open(&pool).unwrap_err().to_string();
        assert!(e.contains("chmod o-w"), "{e}");
    }

    /// Two hypervisors' threads provisioning at once share the operator's state directory
    /// (`<pool>/.kvmprov` on the operator): both found no key, both generated one, both wrote
    /// through the same temporary name. One failed ("cannot write …id_ed25519: No such file or
    /// directory") and the key left on disk matched neither guest's seed: no guest was reachable.
    #[test]
    fn regression_concurrent_first_use_generated_two_operator_keys() {
        for _ in 0..20 {
            let (_t, pool) = pool();
            let dir = state_dir(&pool);
            let start = std::sync::Barrier::new(8);
            let got: Vec<String> = std::thread::scope(|sc| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        sc.spawn(|| {
                            start.wait();
                            StateDir::open(&pool)
                                .and_then(|st| st.operator_key(true))
                                .map(|k| k.map(|k| k.public))
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
        let (_t, pool) = pool();
        let st = StateDir::open(&pool).unwrap();
        let uri = "qemu:///system";
        st.pin_host_key(uri, "a", "ssh-ed25519 AAAAkey").unwrap();
        let kh = st.known_hosts_for(uri, "a", "192.168.122.5").unwrap();
        assert_eq!(
            fs::read_to_string(&kh).unwrap(),
            "192.168.122.5 ssh-ed25519 AAAAkey\n"
        );
        assert_eq!(mode(&kh), 0o600);
        // A pinned key somebody replaced with a link is refused, not read through.
        let key = host_key_path(st.path(), uri, "a");
        fs::remove_file(&key).unwrap();
        symlink("/etc/hostname", &key).unwrap();
        let e = st.known_hosts_for(uri, "a", "192.168.122.5").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    /// Two configs with the same pool path on different hypervisors, each with an `app-01`,
    /// share the operator-local state directory: the second provision overwrote the first's
    /// pinned key, and the first guest was then refused as an impostor.
    #[test]
    fn regression_pinned_host_keys_of_two_hypervisors_overwrote_each_other() {
        let (_t, pool) = pool();
        let st = StateDir::open(&pool).unwrap();
        let (hv1, hv2) = ("qemu+ssh://hv1/system", "qemu+ssh://hv2/system");
        st.pin_host_key(hv1, "app-01", "ssh-ed25519 KEY1").unwrap();
        st.pin_host_key(hv2, "app-01", "ssh-ed25519 KEY2").unwrap();
        let kh1 = st.known_hosts_for(hv1, "app-01", "10.0.0.5").unwrap();
        let kh2 = st.known_hosts_for(hv2, "app-01", "10.0.0.5").unwrap();
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
            host_key_path(st.path(), "QEMU+SSH://root@HV1:22/system/", "app-01"),
            host_key_path(st.path(), hv1, "app-01")
        );
    }

    /// Installs from before keys were keyed by hypervisor keep working on the local default one.
    #[test]
    fn legacy_host_keys_stay_readable_for_the_local_hypervisor() {
        let (_t, pool) = pool();
        let st = StateDir::open(&pool).unwrap();
        st.write_private("app-01.hostkey.pub", b"ssh-ed25519 OLD\n")
            .unwrap();
        let kh = st
            .known_hosts_for("qemu:///system", "app-01", "10.0.0.5")
            .unwrap();
        assert_eq!(
            fs::read_to_string(kh).unwrap(),
            "10.0.0.5 ssh-ed25519 OLD\n"
        );
        let files = host_key_files(st.path(), "qemu:///system", "app-01");
        assert!(
            files.contains(&st.path().join("app-01.hostkey.pub")),
            "{files:?}"
        );
        // A remote hypervisor never takes the old, ambiguous file for its own.
        assert!(st
            .known_hosts_for("qemu+ssh://hv1/system", "app-01", "10.0.0.5")
            .is_err());
        assert_eq!(
            host_key_files(st.path(), "qemu+ssh://hv1/system", "app-01").len(),
            2
        );
    }
}
