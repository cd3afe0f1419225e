//! Preflight: is this hypervisor ready for our instances? One line per check.
//!
//! Observation (I/O) is gathered first; [`plan`] is pure and decides, for each check, whether
//! it passes, needs a fix kvmprov may apply (create a directory, start a network, grant the
//! qemu user traverse access with an ACL) or fails with the exact remedy.

use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::Ipv4Net;
use kvmprov_hypervisor::{DomainType, FirmwareSupport, HostInfo, Hypervisor, NetworkInfo, SshDest};

use crate::address;
use crate::config::{Config, DomainTypeChoice, FirmwareChoice, Instance};
use crate::plan::{Action, Op, Outcome, StageReport, Status};
use crate::stages::Session;

/// Headroom kept free in the instance pool beyond the planned initial disk sizes.
const POOL_HEADROOM_BYTES: u64 = 256 * 1024 * 1024;
/// Initial size of one instance's files: qcow2 overlay header + seed ISO + console log.
const INITIAL_BYTES_PER_INSTANCE: u64 = 8 * 1024 * 1024;

/// What preflight saw.
#[derive(Debug, Clone)]
pub struct Observed {
    pub host: HostInfo,
    pub networks: Vec<NetworkInfo>,
    pub paths: Vec<PathState>,
    pub pool_free_bytes: Option<u64>,
    pub missing_instances: usize,
    /// Tools kvmprov needs on a local hypervisor and whether each is on PATH.
    pub tools: Vec<(&'static str, &'static str, bool)>,
    pub qemu_user: String,
    /// Whether paths and tools could be checked (local hypervisor).
    pub local: bool,
    /// A remote hypervisor reached over SSH: paths are checked and fixed there.
    pub remote: Option<SshDest>,
    /// The firmware the hypervisor offers (only asked when an instance wants UEFI).
    pub firmware: Option<Result<FirmwareSupport, String>>,
}

#[derive(Debug, Clone)]
pub struct PathState {
    pub key: &'static str,
    pub path: PathBuf,
    pub exists: bool,
    pub is_dir: bool,
    /// Directories on the way (the path itself included) the qemu user cannot traverse.
    pub blocked: Vec<PathBuf>,
    /// The access check itself failed (remote: ssh).
    pub access_error: Option<String>,
}

/// A fix kvmprov can apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    CreateDir(PathBuf),
    /// On a remote hypervisor: a libvirt dir pool with this name, built (mkdir) by libvirt.
    CreatePool {
        name: String,
        path: PathBuf,
    },
    StartNetwork(String),
    GrantTraverse {
        user: String,
        dirs: Vec<PathBuf>,
    },
}

/// The verdict on one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Apply(Fix),
    Fail(String),
}

/// The domain type `auto` resolves to on this host, or why the wanted one is unavailable.
pub fn resolve_domain_type(
    choice: DomainTypeChoice,
    host: &HostInfo,
) -> Result<(&'static str, String), String> {
    match choice {
        DomainTypeChoice::Kvm if host.kvm => Ok(("kvm", "kvm requested and available".into())),
        DomainTypeChoice::Kvm => Err(
            "kvm requested but the hypervisor does not offer it (no /dev/kvm access?); set kvm_domain_type: qemu to emulate (slow) or auto".into(),
        ),
        DomainTypeChoice::Qemu if host.qemu => Ok(("qemu", "qemu (TCG emulation) requested and available".into())),
        DomainTypeChoice::Qemu => Err("qemu requested but the hypervisor offers no x86_64 qemu emulator".into()),
        DomainTypeChoice::Auto if host.kvm => Ok(("kvm", "auto: kvm is available".into())),
        DomainTypeChoice::Auto if host.qemu => Ok((
            "qemu",
            "auto: kvm is not available, using qemu (TCG emulation, slower)".into(),
        )),
        DomainTypeChoice::Auto => Err("the hypervisor offers neither kvm nor qemu domains for x86_64".into()),
    }
}

/// A network in one line: mode, who serves DHCP, the subnet.
pub fn network_summary(n: &NetworkInfo) -> String {
    let mode = address::mode_name(n);
    let onto = n
        .bridge
        .as_deref()
        .map(|b| format!(" on bridge {b}"))
        .unwrap_or_default();
    match &n.ipv4 {
        Some(ip) => {
            let subnet = Ipv4Net::new(ip.address, ip.prefix)
                .map(|net| net.trunc().to_string())
                .unwrap_or_else(|_| format!("{}/{}", ip.address, ip.prefix));
            let dhcp = match ip.dhcp_range {
                Some((a, b)) => format!("libvirt DHCP {a}-{b}"),
                None => "no libvirt DHCP".to_string(),
            };
            format!("mode {mode}{onto}, {dhcp}, subnet {subnet}")
        }
        None => format!("mode {mode}{onto}, no libvirt DHCP, subnet unknown to libvirt"),
    }
}

/// How the instance's address will be found on its network; a static address must lie in
/// the network's subnet and outside its DHCP range.
fn address_check(inst: &Instance, net: &NetworkInfo) -> (Action, Verdict) {
    let target = format!("address {}", inst.name);
    if let (Some(st), Some(ip)) = (&inst.ipv4, &net.ipv4) {
        let addr = st.address.addr();
        if let Ok(subnet) = Ipv4Net::new(ip.address, ip.prefix).map(|n| n.trunc()) {
            if !subnet.contains(&addr) {
                return (
                    Action::new(target, Op::Check, format!("static {}", st.address)),
                    Verdict::Fail(format!(
                        "ipv4_address {addr} of {} is outside network `{}`'s subnet {subnet}: the guest would be unreachable; pick an address in {subnet}",
                        inst.name, net.name
                    )),
                );
            }
        }
        if let Some((start, end)) = ip.dhcp_range {
            if (start..=end).contains(&addr) {
                // libvirt's own default network leases its whole subnet, so this is common and
                // mostly harmless (dnsmasq pings an address before it leases it): said, not failed.
                return (
                    Action::new(
                        target,
                        Op::Check,
                        format!(
                            "static {} — inside network `{}`'s DHCP range {start}-{end}: its DHCP server may lease it to another guest while this one is off; an address outside the range is safer",
                            st.address, net.name
                        ),
                    ),
                    Verdict::Pass,
                );
            }
        }
    }
    match address::plan(inst, net) {
        Ok(p) => (Action::new(target, Op::Check, p.how), Verdict::Pass),
        Err(why) => (
            Action::new(target, Op::Check, "no address source"),
            Verdict::Fail(why),
        ),
    }
}

/// Is the UEFI firmware the instance needs installed on the hypervisor?
fn firmware_check(
    inst: &Instance,
    support: Option<&Result<FirmwareSupport, String>>,
) -> (Action, Verdict) {
    let target = format!("firmware {}", inst.name);
    let wanted = if inst.secure_boot {
        "UEFI with Secure Boot"
    } else {
        "UEFI"
    };
    let action = |why: String| Action::new(target.clone(), Op::Check, why);
    match support {
        None => (action(format!("{wanted}: not checked")), Verdict::Pass),
        Some(Err(e)) => (
            action(format!("{wanted}: firmware not checked ({e}); assuming it is installed")),
            Verdict::Pass,
        ),
        Some(Ok(f)) if !f.efi => (
            action(wanted.to_string()),
            Verdict::Fail(format!(
                "{} needs UEFI firmware, and libvirt on the hypervisor knows none: install Debian's `ovmf` package there (apt-get install ovmf)",
                inst.name
            )),
        ),
        Some(Ok(f)) if inst.secure_boot && !f.secure_boot => (
            action(wanted.to_string()),
            Verdict::Fail(format!(
                "{} needs Secure Boot, and the hypervisor has no Secure Boot OVMF build: install Debian's `ovmf` package (OVMF_CODE_4M.ms.fd) or set secure_boot: false",
                inst.name
            )),
        ),
        Some(Ok(f)) => {
            // Name the loader libvirt will most likely pick, for the operator's eye only.
            let secure = |l: &&String| l.contains(".ms.") || l.contains("secboot");
            let loader = match inst.secure_boot {
                true => f.loaders.iter().find(secure),
                false => f.loaders.iter().find(|l| !secure(l)),
            };
            (
                action(format!(
                    "{wanted}: OVMF installed ({})",
                    loader.map(String::as_str).unwrap_or("descriptor found")
                )),
                Verdict::Pass,
            )
        }
    }
}

/// Pure: the checks and their verdicts.
pub fn plan(cfg: &Config, o: &Observed) -> Vec<(Action, Verdict)> {
    let mut out = Vec::new();
    out.push((
        Action::new(
            "hypervisor",
            Op::Check,
            format!(
                "{} reachable: libvirt {}, {} {}",
                cfg.libvirt_uri, o.host.libvirt_version, o.host.driver, o.host.hypervisor_version
            ),
        ),
        Verdict::Pass,
    ));
    match resolve_domain_type(cfg.domain_type, &o.host) {
        Ok((_, why)) => out.push((Action::new("domain type", Op::Check, why), Verdict::Pass)),
        Err(why) => out.push((
            Action::new(
                "domain type",
                Op::Check,
                format!("{:?}", cfg.domain_type).to_lowercase(),
            ),
            Verdict::Fail(why),
        )),
    }

    for name in cfg.required_networks() {
        let target = format!("network {name}");
        match o.networks.iter().find(|n| n.name == name) {
            Some(n) if n.active => out.push((
                Action::new(
                    target,
                    Op::Check,
                    format!("defined and active: {}", network_summary(n)),
                ),
                Verdict::Pass,
            )),
            Some(_) if cfg.auto_start_networks => out.push((
                Action::new(target, Op::Fix, "inactive: starting it (kvm_auto_start_required_libvirt_networks=true)"),
                Verdict::Apply(Fix::StartNetwork(name.clone())),
            )),
            Some(_) => out.push((
                Action::new(target, Op::Check, "defined but inactive"),
                Verdict::Fail(format!(
                    "network `{name}` is inactive: start it (`virsh net-start {name}`) or run with -e kvm_auto_start_required_libvirt_networks=true"
                )),
            )),
            None => {
                let known: Vec<String> = o
                    .networks
                    .iter()
                    .map(|n| format!("{} ({})", n.name, if n.active { "active" } else { "inactive" }))
                    .collect();
                out.push((
                    Action::new(target, Op::Check, "Network not found"),
                    Verdict::Fail(format!(
                        "Network not found: `{name}`; networks defined on {}: {}. Set kvm_default_libvirt_network_name or the instance's libvirt_network_name to one of them",
                        cfg.libvirt_uri,
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    )),
                ));
            }
        }
    }

    for inst in &cfg.instances {
        if let Some(net) = o.networks.iter().find(|n| n.name == inst.network) {
            out.push(address_check(inst, net));
        }
        if inst.firmware == FirmwareChoice::Uefi {
            out.push(firmware_check(inst, o.firmware.as_ref()));
        }
    }

    if o.local {
        for (tool, why, found) in &o.tools {
            let action = Action::new(format!("tool {tool}"), Op::Check, *why);
            out.push(if *found {
                (action, Verdict::Pass)
            } else {
                (
                    action,
                    Verdict::Fail(format!(
                        "`{tool}` is not installed on the hypervisor ({why})"
                    )),
                )
            });
        }
    }

    for p in &o.paths {
        let target = format!("{}", p.path.display());
        if p.exists && !p.is_dir {
            out.push((
                Action::new(target, Op::Check, p.key),
                Verdict::Fail(format!(
                    "{} `{}` exists and is not a directory",
                    p.key,
                    p.path.display()
                )),
            ));
            continue;
        }
        if !p.exists && !o.local {
            let name = crate::stages::provision::pool_name_for(
                if p.path == cfg.image_cache_path {
                    "images"
                } else {
                    "instances"
                },
                &p.path,
            );
            out.push((
                Action::new(
                    target.clone(),
                    Op::Create,
                    format!("{}: no libvirt pool on the hypervisor, creating dir pool {name} (libvirt builds the directory)", p.key),
                ),
                Verdict::Apply(Fix::CreatePool { name, path: p.path.clone() }),
            ));
        } else if !p.exists {
            out.push((
                Action::new(
                    target.clone(),
                    Op::Create,
                    format!("{}: missing, creating it", p.key),
                ),
                Verdict::Apply(Fix::CreateDir(p.path.clone())),
            ));
        } else {
            out.push((
                Action::new(
                    target.clone(),
                    Op::Check,
                    format!("{}: directory exists", p.key),
                ),
                Verdict::Pass,
            ));
        }
        if !o.local && o.remote.is_none() {
            continue;
        }
        if let Some(e) = &p.access_error {
            // As on a local host where runuser fails: not checkable is not a proven failure;
            // qemu itself reports a directory it cannot open when the domain starts.
            out.push((
                Action::new(
                    target,
                    Op::Check,
                    format!(
                        "qemu user `{}` access not checked ({e}); assuming access",
                        o.qemu_user
                    ),
                ),
                Verdict::Pass,
            ));
            continue;
        }
        if p.blocked.is_empty() {
            out.push((
                Action::new(
                    target,
                    Op::Check,
                    format!("qemu user `{}` can traverse it", o.qemu_user),
                ),
                Verdict::Pass,
            ));
        } else {
            let cmds: Vec<String> = p
                .blocked
                .iter()
                .map(|d| acl_command(o.remote.as_ref(), &o.qemu_user, d))
                .collect();
            if cfg.auto_fix_pool_access {
                out.push((
                    Action::new(
                        target,
                        Op::Fix,
                        format!(
                            "qemu user `{}` cannot traverse: {}",
                            o.qemu_user,
                            cmds.join("; ")
                        ),
                    ),
                    Verdict::Apply(Fix::GrantTraverse {
                        user: o.qemu_user.clone(),
                        dirs: p.blocked.clone(),
                    }),
                ));
            } else {
                out.push((
                    Action::new(target, Op::Check, format!("qemu user `{}` access", o.qemu_user)),
                    Verdict::Fail(format!(
                        "qemu user `{}` cannot traverse {}; fix: {} (or set kvm_auto_fix_runtime_pool_access=true)",
                        o.qemu_user,
                        p.blocked.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
                        cmds.join("; ")
                    )),
                ));
            }
        }
    }

    if let Some(free) = o.pool_free_bytes {
        let need = o.missing_instances as u64 * INITIAL_BYTES_PER_INSTANCE + POOL_HEADROOM_BYTES;
        let action = Action::new(
            "free space",
            Op::Check,
            format!(
                "instance pool: {} MiB free, {} MiB needed for {} new instance(s)",
                free / (1 << 20),
                need / (1 << 20),
                o.missing_instances
            ),
        );
        out.push(if free >= need {
            (action, Verdict::Pass)
        } else {
            let msg = format!(
                "only {} MiB free in {}, need {} MiB",
                free / (1 << 20),
                cfg.instance_pool_path.display(),
                need / (1 << 20)
            );
            (action, Verdict::Fail(msg))
        });
    }
    out
}

/// Is this URI a hypervisor on this machine (so its paths are our paths)?
/// The command that grants traverse, as the operator would type it (over SSH when remote).
fn acl_command(remote: Option<&SshDest>, user: &str, dir: &Path) -> String {
    let cmd = format!("setfacl -m u:{user}:x {}", dir.display());
    match remote {
        Some(d) if d.is_root() => format!("{} -- {cmd}", d.command_line()),
        Some(d) => format!("{} -- sudo {cmd}", d.command_line()),
        None => cmd,
    }
}

/// Run a command that needs root on a remote hypervisor: as the SSH user, and when that user
/// is not root and it failed, again under `sudo -n` (which fails rather than asking for a
/// password). Returns its standard output, or what both attempts said.
fn hypervisor_run_as_root(dest: &SshDest, argv: &[String]) -> Result<String, String> {
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
fn remote_blocked_dirs(
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

pub fn is_local(uri: &str) -> bool {
    uri.starts_with("qemu:///") || uri.starts_with("test:///")
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

fn observe(s: &Session, hv: &Hypervisor) -> Result<Observed, kvmprov_hypervisor::HvError> {
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
        let state = if local {
            PathState {
                key,
                path: path.clone(),
                exists: path.exists(),
                is_dir: path.is_dir(),
                blocked: if path.is_dir() {
                    blocked_dirs(&user, path)
                } else {
                    Vec::new()
                },
                access_error: None,
            }
        } else {
            // Remote: the directory exists for us when an active libvirt pool holds it.
            let pool = hv.pool_by_path(path)?.filter(|p| p.active);
            if key == "instance pool" {
                instance_pool_free = pool.as_ref().map(|p| p.available_bytes);
            }
            let (blocked, access_error) = match (&remote, host.qemu_ids, &pool) {
                (Some(dest), Some(ids), Some(_)) => match remote_blocked_dirs(dest, ids, path) {
                    Ok(b) => (b, None),
                    Err(e) => (Vec::new(), Some(e)),
                },
                _ => (Vec::new(), None),
            };
            PathState {
                key,
                path: path.clone(),
                exists: pool.is_some(),
                is_dir: true,
                blocked,
                access_error,
            }
        };
        paths.push(state);
    }
    let existing: Vec<String> = hv.domains()?.into_iter().map(|d| d.name).collect();
    let missing_instances = cfg
        .instances
        .iter()
        .filter(|i| !existing.contains(&i.name))
        .count();
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
    let firmware = if cfg
        .instances
        .iter()
        .any(|i| i.firmware == FirmwareChoice::Uefi)
    {
        let dt = match resolve_domain_type(cfg.domain_type, &host) {
            Ok(("kvm", _)) => DomainType::Kvm,
            _ => DomainType::Qemu,
        };
        Some(
            hv.firmware_support(dt)
                .map_err(|e| crate::plan::error_chain(&e)),
        )
    } else {
        None
    };
    Ok(Observed {
        firmware,
        host,
        networks,
        paths,
        pool_free_bytes: if local {
            free_bytes(&cfg.instance_pool_path)
        } else {
            instance_pool_free
        },
        missing_instances,
        tools: if local { tools } else { Vec::new() },
        qemu_user: user,
        local,
        remote,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setfacl on {path} failed: {detail}")]
    Acl { path: PathBuf, detail: String },
    #[error(transparent)]
    Hypervisor(#[from] kvmprov_hypervisor::HvError),
}

fn apply_fix(hv: &Hypervisor, remote: Option<&SshDest>, fix: &Fix) -> Result<(), FixError> {
    match fix {
        Fix::CreatePool { name, path } => hv
            .ensure_dir_pool(name, path)
            .map(|_| ())
            .map_err(FixError::from),
        Fix::GrantTraverse { user, dirs } if remote.is_some() => {
            let dest = remote.ok_or_else(|| FixError::Acl {
                path: PathBuf::new(),
                detail: "no remote host".into(),
            })?;
            let mut argv = vec!["setfacl".to_string(), "-m".into(), format!("u:{user}:x")];
            argv.extend(dirs.iter().map(|d| d.display().to_string()));
            hypervisor_run_as_root(dest, &argv)
                .map(|_| ())
                .map_err(|detail| FixError::Acl {
                    path: dirs.first().cloned().unwrap_or_default(),
                    detail,
                })
        }
        Fix::CreateDir(path) => {
            std::fs::create_dir_all(path).map_err(|source| FixError::CreateDir {
                path: path.clone(),
                source,
            })
        }
        Fix::StartNetwork(name) => Ok(hv.start_network(name)?),
        Fix::GrantTraverse { user, dirs } => {
            for d in dirs {
                let out = Command::new("setfacl")
                    .arg("-m")
                    .arg(format!("u:{user}:x"))
                    .arg(d)
                    .output()
                    .map_err(|e| FixError::Acl {
                        path: d.clone(),
                        detail: e.to_string(),
                    })?;
                if !out.status.success() {
                    return Err(FixError::Acl {
                        path: d.clone(),
                        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
            }
            Ok(())
        }
    }
}

pub fn run(s: &Session, hv: &Hypervisor) -> Result<StageReport, kvmprov_hypervisor::HvError> {
    let observed = observe(s, hv)?;
    let mut report = StageReport::new("preflight");
    for (action, verdict) in plan(&s.cfg, &observed) {
        let outcome = match verdict {
            Verdict::Pass => Outcome {
                action,
                status: Status::Done,
                seconds: 0.0,
            },
            Verdict::Fail(why) => Outcome {
                action,
                status: Status::Failed(why),
                seconds: 0.0,
            },
            Verdict::Apply(_) if s.check => Outcome {
                action,
                status: Status::Planned,
                seconds: 0.0,
            },
            Verdict::Apply(fix) => {
                crate::plan::run(action, || apply_fix(hv, observed.remote.as_ref(), &fix))
            }
        };
        s.printer.outcome(&outcome);
        report.outcomes.push(outcome);
    }
    // A directory created just now may still block the qemu user: check again.
    let checkable = observed.local || observed.remote.is_some();
    if !s.check && checkable && report.outcomes.iter().any(|o| o.action.op == Op::Create) {
        let user = &observed.qemu_user;
        for path in [&s.cfg.image_cache_path, &s.cfg.instance_pool_path] {
            let blocked = match (&observed.remote, observed.host.qemu_ids) {
                (Some(dest), Some(ids)) => remote_blocked_dirs(dest, ids, path).unwrap_or_default(),
                (Some(_), None) => Vec::new(),
                (None, _) => blocked_dirs(user, path),
            };
            if blocked.is_empty() {
                continue;
            }
            let action = Action::new(
                path.display().to_string(),
                if s.cfg.auto_fix_pool_access {
                    Op::Fix
                } else {
                    Op::Check
                },
                format!(
                    "qemu user `{user}` cannot traverse the new directory: {}",
                    blocked
                        .iter()
                        .map(|d| acl_command(observed.remote.as_ref(), user, d))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            );
            let outcome = if s.cfg.auto_fix_pool_access {
                let fix = Fix::GrantTraverse {
                    user: user.clone(),
                    dirs: blocked,
                };
                crate::plan::run(action, || apply_fix(hv, observed.remote.as_ref(), &fix))
            } else {
                Outcome {
                    action,
                    status: Status::Failed(format!(
                        "fix: setfacl -m u:{user}:x on {} (or set kvm_auto_fix_runtime_pool_access=true)",
                        blocked.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                    )),
                    seconds: 0.0,
                }
            };
            s.printer.outcome(&outcome);
            report.outcomes.push(outcome);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let text = "kvm_libvirt_uri: qemu+ssh://admin@hv1:2222/system\n\
             kvm_image_cache_path: /c\nkvm_instance_disk_pool_path: /srv/p\n\
             kvm_auto_fix_runtime_pool_access: false\n\
             kvm_cloud_image_catalog:\n  - {image_name: d, image_url: http://x/a.qcow2, image_checksum_manifest_url: http://x/S}\n\
             kvm_instance_definitions:\n  - {instance_name: app-01, image_name: d}\n";
        crate::config::parse(Path::new("t.yml"), text, &[]).unwrap()
    }

    fn cfg_with(instance: &str) -> Config {
        let text = format!(
            "kvm_libvirt_uri: qemu+ssh://admin@hv1:2222/system\n\
             kvm_image_cache_path: /c\nkvm_instance_disk_pool_path: /srv/p\n\
             kvm_cloud_image_catalog:\n  - {{image_name: d, image_url: http://x/a.qcow2, image_checksum_manifest_url: http://x/S}}\n\
             kvm_instance_definitions:\n  - {{instance_name: app-01, image_name: d, {instance}}}\n"
        );
        crate::config::parse(Path::new("t.yml"), &text, &[]).unwrap()
    }

    fn verdict_for<'a>(plan: &'a [(Action, Verdict)], target: &str) -> &'a (Action, Verdict) {
        plan.iter()
            .find(|(a, _)| a.target == target)
            .unwrap_or_else(|| panic!("no check {target}: {plan:?}"))
    }

    #[test]
    fn regression_static_address_outside_the_subnet_waited_until_the_deadline() {
        let o = remote(&[], None);
        let p = plan(&cfg_with("ipv4_address: 10.9.0.5/24"), &o);
        match &verdict_for(&p, "address app-01").1 {
            Verdict::Fail(m) => assert!(
                m.contains("outside network `default`'s subnet 192.168.122.0/24"),
                "{m}"
            ),
            v => panic!("{v:?}"),
        }
        // Inside the DHCP range (libvirt's default network leases its whole subnet): said.
        let p = plan(&cfg_with("ipv4_address: 192.168.122.77/24"), &o);
        let (a, v) = verdict_for(&p, "address app-01");
        assert_eq!(v, &Verdict::Pass);
        assert!(
            a.reason
                .contains("inside network `default`'s DHCP range 192.168.122.2-192.168.122.254"),
            "{}",
            a.reason
        );
    }

    #[test]
    fn preflight_says_how_each_address_is_found_and_what_the_network_is() {
        let mut o = remote(&[], None);
        let p = plan(&cfg_with("vcpus: 1"), &o);
        let (net, v) = verdict_for(&p, "network default");
        assert_eq!(v, &Verdict::Pass);
        assert!(
            net.reason.contains("mode nat on bridge virbr0, libvirt DHCP 192.168.122.2-192.168.122.254, subnet 192.168.122.0/24"),
            "{}",
            net.reason
        );
        let (a, v) = verdict_for(&p, "address app-01");
        assert_eq!(v, &Verdict::Pass);
        assert!(a.reason.contains("DHCP lease from libvirt"), "{}", a.reason);

        // A bridge whose DHCP server is somebody else's: the guest's console announcement.
        o.networks[0].forward = Some("bridge".into());
        o.networks[0].bridge = Some("br0".into());
        o.networks[0].ipv4 = None;
        let p = plan(&cfg_with("vcpus: 1"), &o);
        let (a, v) = verdict_for(&p, "address app-01");
        assert_eq!(v, &Verdict::Pass);
        assert!(a.reason.contains("serial console"), "{}", a.reason);

        // libvirt's own bridge without DHCP and no static address: nothing can work.
        o.networks[0].forward = Some("nat".into());
        o.networks[0].ipv4 = Some(kvmprov_hypervisor::NetworkIpv4 {
            address: "192.168.50.1".parse().unwrap(),
            prefix: 24,
            dhcp_range: None,
        });
        let p = plan(&cfg_with("vcpus: 1"), &o);
        assert!(
            matches!(&verdict_for(&p, "address app-01").1, Verdict::Fail(m) if m.contains("no DHCP server"))
        );
    }

    #[test]
    fn uefi_without_ovmf_fails_naming_the_package() {
        let mut o = remote(&[], None);
        o.firmware = Some(Ok(FirmwareSupport::default()));
        let p = plan(&cfg_with("firmware: uefi"), &o);
        match &verdict_for(&p, "firmware app-01").1 {
            Verdict::Fail(m) => assert!(m.contains("`ovmf`"), "{m}"),
            v => panic!("{v:?}"),
        }
        o.firmware = Some(Ok(FirmwareSupport {
            efi: true,
            secure_boot: false,
            loaders: vec!["/usr/share/OVMF/OVMF_CODE_4M.fd".into()],
        }));
        let p = plan(&cfg_with("firmware: uefi"), &o);
        assert_eq!(verdict_for(&p, "firmware app-01").1, Verdict::Pass);
        let p = plan(&cfg_with("firmware: uefi, secure_boot: true"), &o);
        assert!(
            matches!(&verdict_for(&p, "firmware app-01").1, Verdict::Fail(m) if m.contains("Secure Boot"))
        );
    }

    fn remote(blocked: &[&str], access_error: Option<&str>) -> Observed {
        let path = |key, p: &str| PathState {
            key,
            path: p.into(),
            exists: true,
            is_dir: true,
            blocked: blocked.iter().map(PathBuf::from).collect(),
            access_error: access_error.map(String::from),
        };
        Observed {
            firmware: None,
            host: HostInfo {
                hostname: "hv1".into(),
                libvirt_version: "9.0.0".into(),
                driver: "QEMU".into(),
                hypervisor_version: "7.2.0".into(),
                kvm: false,
                qemu: true,
                qemu_ids: Some((64055, 994)),
            },
            networks: vec![NetworkInfo {
                name: "default".into(),
                active: true,
                autostart: true,
                bridge: Some("virbr0".into()),
                forward: Some("nat".into()),
                ipv4: Some(kvmprov_hypervisor::NetworkIpv4 {
                    address: "192.168.122.1".parse().unwrap(),
                    prefix: 24,
                    dhcp_range: Some((
                        "192.168.122.2".parse().unwrap(),
                        "192.168.122.254".parse().unwrap(),
                    )),
                }),
            }],
            paths: vec![path("image cache", "/c"), path("instance pool", "/srv/p")],
            pool_free_bytes: None,
            missing_instances: 1,
            tools: Vec::new(),
            qemu_user: "64055".into(),
            local: false,
            remote: kvmprov_hypervisor::ssh_destination("qemu+ssh://admin@hv1:2222/system"),
        }
    }

    #[test]
    fn remote_blocked_pool_prints_the_fix_a_non_root_operator_can_type() {
        let plan = plan(&cfg(), &remote(&["/srv"], None));
        let fails: Vec<&String> = plan
            .iter()
            .filter_map(|(_, v)| match v {
                Verdict::Fail(why) => Some(why),
                _ => None,
            })
            .collect();
        assert_eq!(fails.len(), 2, "{plan:?}");
        assert!(
            fails[1].contains("ssh -p 2222 admin@hv1 -- sudo setfacl -m u:64055:x /srv"),
            "{}",
            fails[1]
        );
    }

    #[test]
    fn remote_access_that_cannot_be_checked_is_said_and_not_a_failure() {
        let plan = plan(
            &cfg(),
            &remote(&[], Some("on admin@hv1: setpriv: not permitted")),
        );
        assert!(plan.iter().all(|(_, v)| *v == Verdict::Pass), "{plan:?}");
        let line = plan
            .iter()
            .find(|(a, _)| a.target == "/srv/p" && a.reason.contains("access"))
            .map(|(a, _)| a.reason.clone())
            .unwrap_or_default();
        assert!(
            line.contains("not checked (on admin@hv1: setpriv: not permitted)"),
            "{line}"
        );
    }
}
