//! Preflight's probes: what the hypervisor and the paths look like (I/O only, no verdicts).
//! Local paths are checked here; a remote hypervisor's over SSH, as the uid qemu runs as.

use std::path::{Path, PathBuf};

use kvmprov_hypervisor::uri::is_local;
use kvmprov_hypervisor::{DomainType, FirmwareSupport, HostInfo, HvError, Hypervisor, SshDest};

use super::plan::{BridgeState, Observed, PathState, TreeState};
use crate::config::{Config, FirmwareChoice};
use crate::host::resolve_domain_type;
use crate::layout::data_disk_name;
use crate::settings::Session;

/// Look at the hypervisor: host, networks, the two pool paths and their access, free space,
/// the instances still to create, tools and firmware.
pub(super) fn observe(s: &Session, hv: &Hypervisor) -> Result<Observed, HvError> {
    let cfg = &s.cfg;
    let host = hv.host_info()?;
    let networks = hv.networks()?;
    let local = is_local(&cfg.libvirt_uri);
    let remote = if local {
        None
    } else {
        kvmprov_hypervisor::ssh_destination(&cfg.libvirt_uri)
    };
    // Remotely, the uid libvirt runs qemu as (from its capabilities) is what ACLs name.
    let user = match (&remote, host.qemu_ids) {
        (Some(_), Some((uid, _))) => uid.to_string(),
        _ => qemu_user(),
    };
    let keyed = [
        ("image cache", cfg.image_cache_path.as_path()),
        ("instance pool", cfg.instance_pool_path.as_path()),
    ];
    let mut instance_pool_free = None;
    let existing = hv.domain_names()?;
    // Remotely the access check costs an SSH connection (~0.35 s here, more across a WAN): it
    // is made unless every declared instance there already runs, when qemu has nothing new to
    // open (a fleet's re-run).
    let all_running = !local
        && !cfg.instances.is_empty()
        && hv
            .active_domain_names()
            .map(|active| cfg.instances.iter().all(|i| active.contains(&i.name)))?;
    let paths = if local {
        keyed
            .iter()
            .map(|(key, path)| local_path(key, path, &user))
            .collect()
    } else {
        // Remote: the directory exists for us when an active libvirt pool holds it.
        let pools: Vec<bool> = keyed
            .iter()
            .map(|(key, path)| {
                let pool = hv.pool_by_path(path)?.filter(|p| p.active);
                if *key == "instance pool" {
                    instance_pool_free = pool.as_ref().map(|p| p.available_bytes);
                }
                Ok(pool.is_some())
            })
            .collect::<Result<_, HvError>>()?;
        let remote = remote.as_ref().filter(|_| !all_running);
        remote_paths(&keyed, &pools, remote, host.qemu_ids)
    };
    let missing_instances = cfg
        .instances
        .iter()
        .filter(|i| !existing.contains(&i.name))
        .count();
    // Data disks provision would create: those of new instances whose volume is not there.
    let mut missing_data_disks = Vec::new();
    for i in cfg.instances.iter().filter(|i| !existing.contains(&i.name)) {
        for d in &i.disks {
            let path = cfg
                .instance_pool_path
                .join(data_disk_name(&i.name, &d.name));
            if hv.volume_by_path(&path)?.is_none() {
                missing_data_disks.push(d.size_gib);
            }
        }
    }
    Ok(Observed {
        firmware: firmware(hv, cfg, &host),
        host,
        networks,
        paths,
        pool_free_bytes: if local {
            free_bytes(&cfg.instance_pool_path)
        } else {
            instance_pool_free
        },
        missing_instances,
        missing_data_disks,
        tools: if local { tools(cfg) } else { Vec::new() },
        qemu_user: user,
        trees: local_trees(cfg, local),
        bridges: bridges(cfg, local, remote.as_ref()),
        access_unneeded: all_running,
        local,
        remote,
    })
}

/// The directories on this machine kvmprov writes into as root, and who else can write there:
/// the image cache (always local: remote hypervisors get uploads from it), the instance pool
/// when the hypervisor is local (a remote one's lives there, and only kvmprov's state directory
/// is kept here), and the state directory `<pool>/.kvmprov` with the tree above it.
fn local_trees(cfg: &Config, local: bool) -> Vec<TreeState> {
    let tree = |key, path: &Path| TreeState {
        key,
        path: path.to_path_buf(),
        problem: kvmprov_safefs::check_tree(path)
            .err()
            .map(|e| e.to_string()),
    };
    let mut trees = vec![tree("image cache", &cfg.image_cache_path)];
    if local {
        trees.push(tree("instance pool", &cfg.instance_pool_path));
    }
    let pool = &cfg.instance_pool_path;
    // The pool's own refusal already says what the state directory's would.
    if trees.iter().any(|t| t.path == *pool && t.problem.is_some()) {
        return trees;
    }
    trees.push(TreeState {
        key: "kvmprov state",
        path: crate::state::state_dir(pool),
        problem: crate::state::StateDir::inspect(pool)
            .err()
            .map(|e| crate::report::error_chain(&e)),
    });
    trees
}

/// A path on this machine, and the directories on its way `user` cannot traverse.
fn local_path(key: &'static str, path: &Path, user: &str) -> PathState {
    PathState {
        key,
        path: path.to_path_buf(),
        exists: path.exists(),
        is_dir: path.is_dir(),
        blocked: if path.is_dir() {
            blocked_dirs(user, path)
        } else {
            Vec::new()
        },
        access_error: None,
    }
}

/// The paths on a remote hypervisor (`pooled[i]`: an active pool holds `keyed[i]`); the access
/// of those pooled is checked over SSH (at `remote`; none: not checked) as the uid:gid qemu
/// runs as, when libvirt said which, all in one SSH command (each costs a connection).
fn remote_paths(
    keyed: &[(&'static str, &Path)],
    pooled: &[bool],
    remote: Option<&SshDest>,
    qemu_ids: Option<(u32, u32)>,
) -> Vec<PathState> {
    let checked: Vec<&Path> = keyed
        .iter()
        .zip(pooled)
        .filter(|(_, pooled)| **pooled)
        .map(|((_, path), _)| *path)
        .collect();
    let answer = match (remote, qemu_ids) {
        (Some(dest), Some(ids)) if !checked.is_empty() => {
            Some(remote_blocked_dirs_of(dest, ids, &checked))
        }
        _ => None,
    };
    keyed
        .iter()
        .zip(pooled)
        .map(|((key, path), pooled)| {
            let (blocked, access_error) = match (&answer, pooled) {
                (Some(Ok(blocked)), true) => (blocked_on_way(blocked, path), None),
                (Some(Err(e)), true) => (Vec::new(), Some(e.clone())),
                _ => (Vec::new(), None),
            };
            PathState {
                key,
                path: path.to_path_buf(),
                exists: *pooled,
                is_dir: true,
                blocked,
                access_error,
            }
        })
        .collect()
}

/// The host bridges NICs are plugged into, as the hypervisor has them: read under
/// /sys/class/net here (a bridge has a `bridge` directory there), or there over SSH.
fn bridges(cfg: &Config, local: bool, remote: Option<&SshDest>) -> Vec<(String, BridgeState)> {
    let names = cfg.required_bridges();
    if names.is_empty() {
        return Vec::new();
    }
    if local {
        return names
            .into_iter()
            .map(|n| {
                let state = local_bridge(&n);
                (n, state)
            })
            .collect();
    }
    let Some(dest) = remote else {
        let why = "the hypervisor is not reached over SSH".to_string();
        return names
            .into_iter()
            .map(|n| (n, BridgeState::Unknown(why.clone())))
            .collect();
    };
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        BRIDGE_PROBE.into(),
        "sh".into(),
    ];
    argv.extend(names.iter().cloned());
    let answer = crate::ssh::hypervisor_run(dest, &argv, std::time::Duration::from_secs(30))
        .map_err(|e| e.to_string())
        .and_then(|o| match o.code {
            Some(0) => Ok(o.stdout),
            _ => Err(format!("on {}: {}", dest.display(), o.stderr.trim())),
        });
    names
        .into_iter()
        .map(|n| {
            let state = match &answer {
                Ok(text) => remote_bridge(text, &n),
                Err(e) => BridgeState::Unknown(e.clone()),
            };
            (n, state)
        })
        .collect()
}

/// Prints `bridge NAME`, `other NAME` or `missing NAME` for each name it is given.
const BRIDGE_PROBE: &str = r#"for b; do if [ -d "/sys/class/net/$b/bridge" ]; then echo "bridge $b"; elif [ -e "/sys/class/net/$b" ]; then echo "other $b"; else echo "missing $b"; fi; done"#;

/// Pure: what [`BRIDGE_PROBE`] said of `name`.
fn remote_bridge(answer: &str, name: &str) -> BridgeState {
    for line in answer.lines() {
        match line.split_once(' ') {
            Some(("bridge", n)) if n == name => return BridgeState::Bridge,
            Some(("other", n)) if n == name => return BridgeState::NotBridge,
            Some(("missing", n)) if n == name => return BridgeState::Missing,
            _ => {}
        }
    }
    BridgeState::Unknown("the hypervisor did not answer for it".into())
}

/// A bridge on this machine (in kvmprov's network namespace, which is libvirtd's when they
/// share one). The name was checked (`A-Z a-z 0-9 - _ .`, not `.` first, at most 15): it stays
/// one entry under /sys/class/net, whose entries are the kernel's links to its devices.
fn local_bridge(name: &str) -> BridgeState {
    let dev = Path::new("/sys/class/net").join(name);
    match std::fs::symlink_metadata(&dev) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BridgeState::Missing,
        Err(e) => BridgeState::Unknown(format!("cannot read {}: {e}", dev.display())),
        Ok(_) if dev.join("bridge").is_dir() => BridgeState::Bridge,
        Ok(_) => BridgeState::NotBridge,
    }
}

/// The tools kvmprov needs on a local hypervisor, why, and whether each is on PATH.
fn tools(cfg: &Config) -> Vec<(&'static str, &'static str, bool)> {
    let mut tools = vec![(
        "qemu-img",
        "libvirt runs it to create the qcow2 overlay disks",
        on_path("qemu-img"),
    )];
    if cfg.auto_fix_pool_access {
        tools.push((
            "setfacl",
            "grants the qemu user access (kvm_auto_fix_runtime_pool_access=true)",
            on_path("setfacl"),
        ));
    }
    tools.push((
        "ssh",
        "runtime checks log in to the guests with OpenSSH",
        on_path("ssh"),
    ));
    tools
}

/// The firmware the hypervisor offers for the domain type instances get; asked only when an
/// instance wants UEFI.
fn firmware(
    hv: &Hypervisor,
    cfg: &Config,
    host: &HostInfo,
) -> Option<Result<FirmwareSupport, String>> {
    if !cfg
        .instances
        .iter()
        .any(|i| i.firmware == FirmwareChoice::Uefi)
    {
        return None;
    }
    let dt = resolve_domain_type(cfg.domain_type, host)
        .map(|(t, _)| t)
        .unwrap_or(DomainType::Qemu);
    Some(
        hv.firmware_support(dt)
            .map_err(|e| crate::report::error_chain(&e)),
    )
}

/// Run a command that needs root on a remote hypervisor: as the SSH user, and when that user
/// is not root and it failed, again under `sudo -n` (which fails rather than asking for a
/// password). Returns its standard output, or what both attempts said.
pub(super) fn hypervisor_run_as_root(dest: &SshDest, argv: &[String]) -> Result<String, String> {
    let timeout = std::time::Duration::from_secs(30);
    let run = |argv: &[String]| {
        crate::ssh::hypervisor_run(dest, argv, timeout).map_err(|e| e.to_string())
    };
    let out = run(argv)?;
    if out.code == Some(0) {
        return Ok(out.stdout);
    }
    let plain = out.stderr.trim().to_string();
    if dest.is_root() {
        return Err(format!("on {}: {plain}", dest.display()));
    }
    let sudo: Vec<String> = ["sudo", "-n"]
        .into_iter()
        .map(String::from)
        .chain(argv.iter().cloned())
        .collect();
    let out = run(&sudo)?;
    if out.code == Some(0) {
        return Ok(out.stdout);
    }
    Err(format!(
        "on {}: {plain}; with sudo -n: {} (it needs root or passwordless sudo there)",
        dest.display(),
        out.stderr.trim()
    ))
}

/// On a remote hypervisor, over SSH: the ancestors of `path` that uid:gid cannot traverse,
/// checked as that uid with its supplementary groups (qemu runs with them). libvirt has no
/// API for directory permissions outside a pool.
pub(super) fn remote_blocked_dirs(
    dest: &SshDest,
    ids: (u32, u32),
    path: &Path,
) -> Result<Vec<PathBuf>, String> {
    let blocked = remote_blocked_dirs_of(dest, ids, &[path])?;
    Ok(blocked_on_way(&blocked, path))
}

/// Pure: the directories of `blocked` on the way to `path`, from `/` down.
fn blocked_on_way(blocked: &[PathBuf], path: &Path) -> Vec<PathBuf> {
    let mut on_way: Vec<PathBuf> = path
        .ancestors()
        .filter(|d| blocked.iter().any(|b| b == d))
        .map(Path::to_path_buf)
        .collect();
    on_way.reverse();
    on_way
}

/// [`remote_blocked_dirs`] of several paths in one SSH command: every directory on the way to
/// any of them that uid:gid cannot traverse (each once, in no particular order).
fn remote_blocked_dirs_of(
    dest: &SshDest,
    ids: (u32, u32),
    paths: &[&Path],
) -> Result<Vec<PathBuf>, String> {
    let mut argv = vec![
        "setpriv".to_string(),
        format!("--reuid={}", ids.0),
        format!("--regid={}", ids.1),
        "--init-groups".into(),
        "sh".into(),
        "-c".into(),
        BLOCKED_DIRS_SCRIPT.into(),
        "sh".into(),
    ];
    argv.extend(ancestors_once(paths));
    let stdout = hypervisor_run_as_root(dest, &argv)?;
    Ok(stdout.lines().map(PathBuf::from).collect())
}

/// Run as the qemu user with its directories as arguments: those it cannot traverse.
const BLOCKED_DIRS_SCRIPT: &str =
    r#"for d; do [ -d "$d" ] || continue; [ -x "$d" ] || printf '%s\n' "$d"; done"#;

/// Every directory on the way to any of `paths`, each once, as text.
fn ancestors_once(paths: &[&Path]) -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    for d in paths.iter().flat_map(|p| p.ancestors()) {
        let d = d.display().to_string();
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// The user qemu runs as (`user = "…"` in qemu.conf; Debian's default is libvirt-qemu).
pub fn qemu_user() -> String {
    if let Ok(text) = std::fs::read_to_string("/etc/libvirt/qemu.conf") {
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("user") {
                if let Some(v) = rest.trim_start().strip_prefix('=') {
                    let v = v.trim().trim_matches('"');
                    if !v.is_empty() {
                        return v.to_string();
                    }
                }
            }
        }
    }
    "libvirt-qemu".to_string()
}

/// The directories from `/` down to `path` (those that exist) that `user` cannot traverse.
/// The kernel answers: a thread of its own takes on the user's uid, gid and groups and asks
/// `access(X_OK)` for each directory, so groups and ACLs count as they do for qemu. rustix makes
/// the raw system calls, which change only that thread's credentials (glibc's `setresuid` would
/// change every thread's); the thread ends with them. A `runuser` per path did this before, at
/// 12-29 ms each and two paths a run, half of what kvmprov added to libvirt's start of one
/// instance.
pub fn blocked_dirs(user: &str, path: &Path) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = path
        .ancestors()
        .filter(|d| d.is_dir())
        .map(Path::to_path_buf)
        .collect();
    if dirs.is_empty() {
        return Vec::new();
    }
    let checked = user_ids(user).and_then(|(uid, gid, groups)| {
        std::thread::spawn(move || blocked_as(uid, gid, &groups, dirs))
            .join()
            .map_err(|_| "the access check's thread panicked".to_string())?
    });
    checked.unwrap_or_else(|e| {
        tracing::warn!("could not check access as `{user}` ({e}); assuming access");
        Vec::new()
    })
}

/// The user's uid, primary gid and all its groups, as the system's user database has them.
fn user_ids(user: &str) -> Result<(u32, u32, Vec<u32>), String> {
    use nix::unistd::{getgrouplist, User};
    let u = User::from_name(user)
        .map_err(|e| format!("cannot look up the user: {e}"))?
        .ok_or_else(|| "no such user".to_string())?;
    let name = std::ffi::CString::new(user).map_err(|_| "a NUL in the name".to_string())?;
    let groups = getgrouplist(&name, u.gid)
        .map_err(|e| format!("cannot read its groups: {e}"))?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    Ok((u.uid.as_raw(), u.gid.as_raw(), groups))
}

/// On the calling thread, which keeps these credentials: `dirs` (deepest first) that the
/// user cannot traverse, from `/` down.
fn blocked_as(
    uid: u32,
    gid: u32,
    groups: &[u32],
    dirs: Vec<PathBuf>,
) -> Result<Vec<PathBuf>, String> {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    let groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    set_thread_groups(&groups)
        .and_then(|()| set_thread_res_gid(gid, gid, gid))
        .and_then(|()| set_thread_res_uid(uid, uid, uid))
        .map_err(|e| format!("cannot take on its identity: {e}"))?;
    Ok(dirs
        .into_iter()
        .filter(|d| rustix::fs::access(d, rustix::fs::Access::EXEC_OK).is_err())
        .rev()
        .collect())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|d| d.exists())?;
    let st = rustix::fs::statvfs(existing).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Taking on another user's identity needs root (CI runs the tests as root).
    fn running_as_root() -> bool {
        let root = rustix::process::getuid().is_root();
        if !root {
            eprintln!("skipped: taking on another user's identity needs root");
        }
        root
    }

    #[test]
    fn blocked_dirs_names_the_directory_the_user_cannot_traverse() {
        if !running_as_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let closed = t.path().join("closed");
        let inner = closed.join("pool");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        // What lies behind a closed directory cannot be reached either (as `runuser` said).
        assert_eq!(
            blocked_dirs("nobody", &inner),
            vec![closed.clone(), inner.clone()]
        );
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(blocked_dirs("nobody", &inner), Vec::<PathBuf>::new());
    }

    #[test]
    fn blocked_dirs_leaves_the_callers_identity_alone() {
        if !running_as_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            blocked_dirs("nobody", t.path()),
            vec![t.path().to_path_buf()]
        );
        // Only the check's own thread became `nobody`: this one is still root and can write.
        assert!(rustix::process::getuid().is_root());
        assert!(rustix::process::geteuid().is_root());
        std::fs::write(t.path().join("still-root"), b"").unwrap();
    }

    #[test]
    fn the_remote_bridge_probe_is_read_per_name() {
        let answer = "bridge br0\nother eth0\nmissing br9\n";
        assert_eq!(remote_bridge(answer, "br0"), BridgeState::Bridge);
        assert_eq!(remote_bridge(answer, "eth0"), BridgeState::NotBridge);
        assert_eq!(remote_bridge(answer, "br9"), BridgeState::Missing);
        assert!(matches!(
            remote_bridge(answer, "br"),
            BridgeState::Unknown(_)
        ));
    }

    /// The probe script as `sh` runs it on a hypervisor, here against this machine's
    /// /sys/class/net: loopback exists and is no bridge; a name no interface has is missing.
    #[test]
    fn the_bridge_probe_script_tells_an_interface_from_a_missing_one() {
        let out = std::process::Command::new("sh")
            .args(["-c", BRIDGE_PROBE, "sh", "lo", "kvmprov-nx0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(remote_bridge(&text, "lo"), BridgeState::NotBridge);
        assert_eq!(remote_bridge(&text, "kvmprov-nx0"), BridgeState::Missing);
        assert_eq!(local_bridge("lo"), BridgeState::NotBridge);
        assert_eq!(local_bridge("kvmprov-nx0"), BridgeState::Missing);
    }

    #[test]
    fn blocked_dirs_of_an_unknown_user_assumes_access() {
        let t = tempfile::tempdir().unwrap();
        assert!(blocked_dirs("no-such-user-kvmprov", t.path()).is_empty());
    }

    /// The remote check's command (what [`remote_blocked_dirs_of`] runs over SSH), run here as
    /// nobody: it lists the directory that uid cannot traverse, and only that one.
    #[test]
    fn the_remote_access_check_lists_what_the_uid_cannot_traverse() {
        if !running_as_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("closed");
        std::fs::create_dir(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let inner = closed.join("pool");
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--init-groups"])
            .args(["sh", "-c", BLOCKED_DIRS_SCRIPT, "sh"])
            .args(ancestors_once(&[inner.as_path()]))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let blocked: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
        assert_eq!(blocked_on_way(&blocked, &inner), vec![closed], "{stdout}");
    }

    #[test]
    fn one_answer_for_both_pool_paths_splits_into_each_paths_blocked_directories() {
        // What one SSH command for the image cache and the instance pool printed.
        let blocked = [
            PathBuf::from("/srv/kvm/images"),
            PathBuf::from("/srv/kvm"),
            PathBuf::from("/data"),
        ];
        assert_eq!(
            blocked_on_way(&blocked, Path::new("/srv/kvm/images")),
            vec![PathBuf::from("/srv/kvm"), PathBuf::from("/srv/kvm/images")]
        );
        assert_eq!(
            blocked_on_way(&blocked, Path::new("/srv/kvm/instances")),
            vec![PathBuf::from("/srv/kvm")]
        );
        assert!(blocked_on_way(&blocked, Path::new("/var/lib/kvm")).is_empty());
    }
}
