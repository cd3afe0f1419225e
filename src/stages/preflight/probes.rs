//! Preflight's probes: what the hypervisor and the paths look like (I/O only, no verdicts).
//! Local paths are checked here; a remote hypervisor's over SSH, as the uid qemu runs as.

use std::path::{Path, PathBuf};
use std::process::Command;

use kvmprov_hypervisor::{DomainType, FirmwareSupport, HostInfo, HvError, Hypervisor, SshDest};

use super::plan::{Observed, PathState};
use crate::config::{Config, FirmwareChoice};
use crate::host::{is_local, resolve_domain_type};
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
    let mut paths = Vec::new();
    let mut instance_pool_free = None;
    for (key, path) in [
        ("image cache", &cfg.image_cache_path),
        ("instance pool", &cfg.instance_pool_path),
    ] {
        paths.push(if local {
            local_path(key, path, &user)
        } else {
            // Remote: the directory exists for us when an active libvirt pool holds it.
            let pool = hv.pool_by_path(path)?.filter(|p| p.active);
            if key == "instance pool" {
                instance_pool_free = pool.as_ref().map(|p| p.available_bytes);
            }
            remote_path(key, path, pool.is_some(), remote.as_ref(), host.qemu_ids)
        });
    }
    let existing: Vec<String> = hv.domains()?.into_iter().map(|d| d.name).collect();
    let missing_instances = cfg
        .instances
        .iter()
        .filter(|i| !existing.contains(&i.name))
        .count();
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
        tools: if local { tools(cfg) } else { Vec::new() },
        qemu_user: user,
        local,
        remote,
    })
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

/// A path on a remote hypervisor (`pooled`: an active pool holds it); its access is checked
/// over SSH as the uid:gid qemu runs as, when libvirt said which.
fn remote_path(
    key: &'static str,
    path: &Path,
    pooled: bool,
    remote: Option<&SshDest>,
    qemu_ids: Option<(u32, u32)>,
) -> PathState {
    let (blocked, access_error) = match (remote, qemu_ids, pooled) {
        (Some(dest), Some(ids), true) => match remote_blocked_dirs(dest, ids, path) {
            Ok(b) => (b, None),
            Err(e) => (Vec::new(), Some(e)),
        },
        _ => (Vec::new(), None),
    };
    PathState {
        key,
        path: path.to_path_buf(),
        exists: pooled,
        is_dir: true,
        blocked,
        access_error,
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
            .map_err(|e| crate::plan::error_chain(&e)),
    )
}

/// Run a command that needs root on a remote hypervisor: as the SSH user, and when that user
/// is not root and it failed, again under `sudo -n` (which fails rather than asking for a
/// password). Returns its standard output, or what both attempts said.
pub(super) fn hypervisor_run_as_root(dest: &SshDest, argv: &[String]) -> Result<String, String> {
    let timeout = std::time::Duration::from_secs(30);
    let run = |argv: &[String]| {
        crate::guest::hypervisor_run(dest, argv, timeout).map_err(|e| e.to_string())
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
    let mut argv = vec![
        "setpriv".to_string(),
        format!("--reuid={}", ids.0),
        format!("--regid={}", ids.1),
        "--init-groups".into(),
        "sh".into(),
        "-c".into(),
        r#"for d; do [ -d "$d" ] || continue; [ -x "$d" ] || printf '%s\n' "$d"; done"#.into(),
        "sh".into(),
    ];
    argv.extend(path.ancestors().map(|d| d.display().to_string()));
    let stdout = hypervisor_run_as_root(dest, &argv)?;
    Ok(stdout.lines().map(PathBuf::from).rev().collect())
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
pub fn blocked_dirs(user: &str, path: &Path) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = path
        .ancestors()
        .filter(|d| d.is_dir())
        .map(Path::to_path_buf)
        .collect();
    if dirs.is_empty() {
        return Vec::new();
    }
    // One process checks them all, as that user (groups and ACLs included).
    let out = Command::new("runuser")
        .args([
            "-u",
            user,
            "--",
            "sh",
            "-c",
            r#"for d; do [ -x "$d" ] || printf '%s\n' "$d"; done"#,
            "sh",
        ])
        .args(&dirs)
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(PathBuf::from)
            .rev()
            .collect(),
        _ => {
            tracing::warn!("could not check access as `{user}` with runuser; assuming access");
            Vec::new()
        }
    }
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
