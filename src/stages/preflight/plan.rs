//! Preflight's plan, pure: from what was observed, each check's verdict — it passes, needs a
//! fix kvmprov may apply, or fails with the exact remedy.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use kvmprov_hypervisor::{FirmwareSupport, HostInfo, NetworkInfo, SshDest};

use crate::address;
use crate::config::{Attachment, Config, FirmwareChoice, Instance};
use crate::host::resolve_domain_type;
use crate::layout::pool_name_for;
use crate::report::{Action, Op};

/// Headroom kept free in the instance pool beyond the planned initial disk sizes.
const POOL_HEADROOM_BYTES: u64 = 256 * 1024 * 1024;
/// Initial size of one instance's files: qcow2 overlay header + seed ISO + console log.
const INITIAL_BYTES_PER_INSTANCE: u64 = 8 * 1024 * 1024;
/// Initial size of an empty qcow2 data disk (header and tables; it grows as the guest writes).
const INITIAL_BYTES_PER_DATA_DISK: u64 = 1024 * 1024;

/// What preflight saw.
#[derive(Debug, Clone)]
pub struct Observed {
    pub host: HostInfo,
    pub networks: Vec<NetworkInfo>,
    pub paths: Vec<PathState>,
    pub pool_free_bytes: Option<u64>,
    pub missing_instances: usize,
    /// The virtual sizes (GiB) of the data disks provision would create.
    pub missing_data_disks: Vec<u64>,
    /// Tools kvmprov needs on a local hypervisor and whether each is on PATH.
    pub tools: Vec<(&'static str, &'static str, bool)>,
    pub qemu_user: String,
    /// Whether paths and tools could be checked (local hypervisor).
    pub local: bool,
    /// A remote hypervisor reached over SSH: paths are checked and fixed there.
    pub remote: Option<SshDest>,
    /// Remote, and every declared instance there runs: the qemu user's access was not checked
    /// (an SSH connection), as qemu has nothing new to open.
    pub access_unneeded: bool,
    /// The firmware the hypervisor offers (only asked when an instance wants UEFI).
    pub firmware: Option<Result<FirmwareSupport, String>>,
    /// Directories on this machine kvmprov writes into as root (the image cache, a local
    /// instance pool, kvmprov's state directory) and why each is unsafe, if it is.
    pub trees: Vec<TreeState>,
    /// The host bridges NICs are plugged into directly, as found on the hypervisor.
    pub bridges: Vec<(String, BridgeState)>,
}

/// What the hypervisor has under a host bridge's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeState {
    /// A Linux bridge.
    Bridge,
    /// A network interface that is not a bridge.
    NotBridge,
    Missing,
    /// It could not be looked at (why).
    Unknown(String),
}

/// A local directory kvmprov writes into as root, and what another user could do there.
#[derive(Debug, Clone)]
pub struct TreeState {
    pub key: &'static str,
    pub path: PathBuf,
    /// The one-sentence refusal (who can write where, and the fix); `None`: only root and the
    /// running user can write it and every directory above it.
    pub problem: Option<String>,
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

/// How the address of `inst`'s primary NIC will be found: on its libvirt network among
/// `networks` (`None` when that network is not there: its own check fails), or on its host
/// bridge, where no subnet is known to check a static address against.
fn attached_address_check(inst: &Instance, networks: &[NetworkInfo]) -> Option<(Action, Verdict)> {
    match &inst.attach {
        Attachment::Network(name) => networks
            .iter()
            .find(|n| n.name == *name)
            .map(|net| address_check(inst, net)),
        Attachment::Bridge(b) => Some((
            Action::new(
                format!("address {}", inst.name),
                Op::Check,
                address::plan_on_bridge(inst, b).how,
            ),
            Verdict::Pass,
        )),
    }
}

/// A host bridge a NIC is plugged into: it exists on the hypervisor and is a bridge.
fn bridge_check(cfg: &Config, name: &str, state: &BridgeState) -> (Action, Verdict) {
    let target = format!("bridge {name}");
    let uri = &cfg.libvirt_uri;
    match state {
        BridgeState::Bridge => (
            Action::new(target, Op::Check, "host bridge exists on the hypervisor"),
            Verdict::Pass,
        ),
        BridgeState::NotBridge => (
            Action::new(target, Op::Check, "not a bridge"),
            Verdict::Fail(format!(
                "`{name}` on {uri} is a network interface but not a bridge: plug the NIC into a Linux bridge (`ip link add NAME type bridge`) or onto a libvirt network instead"
            )),
        ),
        BridgeState::Missing => (
            Action::new(target, Op::Check, "host bridge not found"),
            Verdict::Fail(format!(
                "host bridge `{name}` does not exist on {uri}: create it there (`ip link add {name} type bridge && ip link set {name} up`) or name an existing bridge in the NIC's `bridge`"
            )),
        ),
        // As with access checks: not checkable is not a proven failure; libvirt says so when
        // the domain starts.
        BridgeState::Unknown(why) => (
            Action::new(
                target,
                Op::Check,
                format!("host bridge not checked ({why}); assuming it exists"),
            ),
            Verdict::Pass,
        ),
    }
}

/// How each NIC other than the primary one gets its address, checked like the primary one's:
/// a static address outside its network's subnet fails. A DHCP NIC whose address no source can
/// find passes (kvmprov reaches the guest on the primary NIC), and says so.
fn nic_address_checks(inst: &Instance, networks: &[NetworkInfo]) -> Vec<(Action, Verdict)> {
    let mut out = Vec::new();
    for (i, nic) in inst.nics().iter().enumerate() {
        if nic.primary {
            continue;
        }
        let Some((mut action, verdict)) =
            attached_address_check(&address::nic_as_primary(inst, nic), networks)
        else {
            continue; // the network's own check fails
        };
        action.target = format!("address {} nic{i}", inst.name);
        let verdict = match verdict {
            Verdict::Fail(why) if nic.ipv4.is_none() => {
                action.reason = format!(
                    "no address source on network `{}` (kvmprov does not need one: it reaches the guest on the primary NIC)",
                    nic.attach.name()
                );
                tracing::debug!("{}: {why}", action.target);
                Verdict::Pass
            }
            v => v,
        };
        out.push((action, verdict));
    }
    out
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

/// Can the hypervisor's libvirt take `snapshot_name` of a UEFI instance? (Runtime would
/// otherwise fail only after the guest's whole first boot.)
fn uefi_snapshot_check(
    cfg: &Config,
    inst: &Instance,
    snap: &str,
    libvirt_version: &str,
) -> (Action, Verdict) {
    let action = Action::new(
        format!("snapshot {}", inst.name),
        Op::Check,
        format!("UEFI snapshot `{snap}`: libvirt {libvirt_version} with a qcow2 NVRAM"),
    );
    match crate::snapshot::uefi_refusal(&inst.name, &cfg.libvirt_uri, libvirt_version) {
        Some(why) => (action, Verdict::Fail(why)),
        None => (action, Verdict::Pass),
    }
}

/// Pure: the checks and their verdicts.
pub fn plan(cfg: &Config, o: &Observed) -> Vec<(Action, Verdict)> {
    let mut out = hypervisor_checks(cfg, o);
    for name in cfg.required_networks() {
        out.push(network_check(cfg, o, &name));
    }
    for (name, state) in &o.bridges {
        out.push(bridge_check(cfg, name, state));
    }
    for inst in &cfg.instances {
        out.extend(attached_address_check(inst, &o.networks));
        out.extend(nic_address_checks(inst, &o.networks));
        if inst.firmware == FirmwareChoice::Uefi {
            out.push(firmware_check(inst, o.firmware.as_ref()));
            if let Some(snap) = &inst.snapshot_name {
                out.push(uefi_snapshot_check(
                    cfg,
                    inst,
                    snap,
                    &o.host.libvirt_version,
                ));
            }
        }
    }
    if o.local {
        out.extend(o.tools.iter().map(|(tool, why, found)| {
            let action = Action::new(format!("tool {tool}"), Op::Check, *why);
            if *found {
                (action, Verdict::Pass)
            } else {
                let why = format!("`{tool}` is not installed on the hypervisor ({why})");
                (action, Verdict::Fail(why))
            }
        }));
    }
    out.extend(o.trees.iter().map(tree_check));
    for p in &o.paths {
        // Nothing is created or granted through a tree another user can write (refused above).
        let unsafe_tree = o
            .trees
            .iter()
            .any(|t| o.local && t.path == p.path && t.problem.is_some());
        if !unsafe_tree {
            out.extend(path_checks(cfg, o, p));
        }
    }
    if let Some(free) = o.pool_free_bytes {
        out.push(free_space_check(cfg, o, free));
    }
    out
}

/// A local directory kvmprov writes into as root: nobody but root and the running user can
/// write it or a directory above it (sticky world-writable ancestors such as /tmp excepted).
fn tree_check(t: &TreeState) -> (Action, Verdict) {
    let action = Action::new(
        t.path.display().to_string(),
        Op::Check,
        format!(
            "{}: no other user can write it or a directory above it",
            t.key
        ),
    );
    match &t.problem {
        None => (action, Verdict::Pass),
        Some(why) => (action, Verdict::Fail(why.clone())),
    }
}

/// The hypervisor answers, and offers the domain type the config asks for.
fn hypervisor_checks(cfg: &Config, o: &Observed) -> Vec<(Action, Verdict)> {
    let reachable = (
        Action::new(
            "hypervisor",
            Op::Check,
            format!(
                "{} reachable: libvirt {}, {} {}",
                cfg.libvirt_uri, o.host.libvirt_version, o.host.driver, o.host.hypervisor_version
            ),
        ),
        Verdict::Pass,
    );
    let domain_type = match resolve_domain_type(cfg.domain_type, &o.host) {
        Ok((_, why)) => (Action::new("domain type", Op::Check, why), Verdict::Pass),
        Err(why) => (
            Action::new(
                "domain type",
                Op::Check,
                format!("{:?}", cfg.domain_type).to_lowercase(),
            ),
            Verdict::Fail(why),
        ),
    };
    vec![reachable, domain_type]
}

/// A network an instance uses: defined and active, started (when allowed), or the failure.
fn network_check(cfg: &Config, o: &Observed, name: &str) -> (Action, Verdict) {
    let target = format!("network {name}");
    match o.networks.iter().find(|n| n.name == name) {
        Some(n) if n.active => (
            Action::new(
                target,
                Op::Check,
                format!("defined and active: {}", network_summary(n)),
            ),
            Verdict::Pass,
        ),
        Some(_) if cfg.auto_start_networks => (
            Action::new(target, Op::Fix, "inactive: starting it (kvm_auto_start_required_libvirt_networks=true)"),
            Verdict::Apply(Fix::StartNetwork(name.to_string())),
        ),
        Some(_) => (
            Action::new(target, Op::Check, "defined but inactive"),
            Verdict::Fail(format!(
                "network `{name}` is inactive: start it (`virsh net-start {name}`) or run with -e kvm_auto_start_required_libvirt_networks=true"
            )),
        ),
        None => {
            let known: Vec<String> = o
                .networks
                .iter()
                .map(|n| format!("{} ({})", n.name, if n.active { "active" } else { "inactive" }))
                .collect();
            (
                Action::new(target, Op::Check, "Network not found"),
                Verdict::Fail(format!(
                    "Network not found: `{name}`; networks defined on {}: {}. Set kvm_default_libvirt_network_name or the instance's libvirt_network_name to one of them",
                    cfg.libvirt_uri,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )),
            )
        }
    }
}

/// A pool directory: exists (or is created) and, where it can be checked, the qemu user can
/// traverse every directory on its way.
fn path_checks(cfg: &Config, o: &Observed, p: &PathState) -> Vec<(Action, Verdict)> {
    let target = format!("{}", p.path.display());
    if p.exists && !p.is_dir {
        return vec![(
            Action::new(target, Op::Check, p.key),
            Verdict::Fail(format!(
                "{} `{}` exists and is not a directory",
                p.key,
                p.path.display()
            )),
        )];
    }
    let mut out = vec![existence_check(cfg, o, p)];
    if !o.local && o.remote.is_none() {
        return out;
    }
    // Not checked: nothing new for qemu to open there, or the check itself could not run. As on
    // a local host where the check cannot run, not checkable is not a proven failure; qemu
    // itself reports a directory it cannot open when the domain starts.
    let not_checked = if o.access_unneeded && p.exists {
        Some(": every instance here runs, nothing new to open".to_string())
    } else {
        p.access_error
            .as_ref()
            .map(|e| format!(" ({e}); assuming access"))
    };
    out.push(match not_checked {
        Some(why) => (
            Action::new(
                target,
                Op::Check,
                format!("qemu user `{}` access not checked{why}", o.qemu_user),
            ),
            Verdict::Pass,
        ),
        None => access_check(
            target,
            &o.qemu_user,
            &p.blocked,
            o.remote.as_ref(),
            cfg.auto_fix_pool_access,
        ),
    });
    out
}

/// A pool directory exists, or is created: locally as a directory, remotely as a libvirt dir
/// pool (libvirt builds the directory).
fn existence_check(cfg: &Config, o: &Observed, p: &PathState) -> (Action, Verdict) {
    let target = format!("{}", p.path.display());
    if p.exists {
        return (
            Action::new(target, Op::Check, format!("{}: directory exists", p.key)),
            Verdict::Pass,
        );
    }
    if o.local {
        return (
            Action::new(
                target,
                Op::Create,
                format!("{}: missing, creating it", p.key),
            ),
            Verdict::Apply(Fix::CreateDir(p.path.clone())),
        );
    }
    let prefix = if p.path == cfg.image_cache_path {
        "images"
    } else {
        "instances"
    };
    let name = pool_name_for(prefix, &p.path);
    (
        Action::new(
            target,
            Op::Create,
            format!("{}: no libvirt pool on the hypervisor, creating dir pool {name} (libvirt builds the directory)", p.key),
        ),
        Verdict::Apply(Fix::CreatePool { name, path: p.path.clone() }),
    )
}

/// Pure: the one verdict on the qemu user's access to a directory, `blocked` being the
/// directories on its way the user cannot traverse: a pass, the ACL fix (with
/// `auto_fix`), or a failure naming the commands that fix it. Preflight says it the same way
/// before its fixes and after them, for a directory it has just created.
pub fn access_check(
    target: String,
    user: &str,
    blocked: &[PathBuf],
    remote: Option<&SshDest>,
    auto_fix: bool,
) -> (Action, Verdict) {
    if blocked.is_empty() {
        return (
            Action::new(
                target,
                Op::Check,
                format!("qemu user `{user}` can traverse it"),
            ),
            Verdict::Pass,
        );
    }
    let cmds: Vec<String> = blocked
        .iter()
        .map(|d| acl_command(remote, user, d))
        .collect();
    if auto_fix {
        return (
            Action::new(
                target,
                Op::Fix,
                format!("qemu user `{user}` cannot traverse: {}", cmds.join("; ")),
            ),
            Verdict::Apply(Fix::GrantTraverse {
                user: user.to_string(),
                dirs: blocked.to_vec(),
            }),
        );
    }
    (
        Action::new(target, Op::Check, format!("qemu user `{user}` access")),
        Verdict::Fail(format!(
            "qemu user `{user}` cannot traverse {}; fix: {} (or set kvm_auto_fix_runtime_pool_access=true)",
            blocked.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
            cmds.join("; ")
        )),
    )
}

/// Room in the instance pool for the instances still to create, with headroom.
fn free_space_check(cfg: &Config, o: &Observed, free: u64) -> (Action, Verdict) {
    let disks = &o.missing_data_disks;
    let need = o.missing_instances as u64 * INITIAL_BYTES_PER_INSTANCE
        + disks.len() as u64 * INITIAL_BYTES_PER_DATA_DISK
        + POOL_HEADROOM_BYTES;
    let mut line = format!(
        "instance pool: {} MiB free, {} MiB needed for {} new instance(s)",
        free / (1 << 20),
        need / (1 << 20),
        o.missing_instances
    );
    // Data disks are thin: what they need now is their tables; what they may grow to is said.
    if !disks.is_empty() {
        let virtual_gib: u64 = disks.iter().sum();
        line.push_str(&format!(
            " and {} new data disk(s) (thin; up to {virtual_gib} GiB as guests write)",
            disks.len()
        ));
    }
    let action = Action::new("free space", Op::Check, line);
    if free >= need {
        return (action, Verdict::Pass);
    }
    let msg = format!(
        "only {} MiB free in {}, need {} MiB",
        free / (1 << 20),
        cfg.instance_pool_path.display(),
        need / (1 << 20)
    );
    (action, Verdict::Fail(msg))
}

/// The command that grants traverse, as the operator would type it (over SSH when remote).
fn acl_command(remote: Option<&SshDest>, user: &str, dir: &Path) -> String {
    let cmd = format!("setfacl -m u:{user}:x {}", dir.display());
    match remote {
        Some(d) if d.is_root() => format!("{} -- {cmd}", d.command_line()),
        Some(d) => format!("{} -- sudo {cmd}", d.command_line()),
        None => cmd,
    }
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
    fn a_host_bridge_must_exist_and_be_a_bridge() {
        let c = cfg_with("nics: [{network: default}, {bridge: br0}]");
        let mut o = remote(&[], None);
        o.bridges = vec![("br0".into(), BridgeState::Bridge)];
        let p = plan(&c, &o);
        assert_eq!(verdict_for(&p, "bridge br0").1, Verdict::Pass);
        let (a, v) = verdict_for(&p, "address app-01 nic1");
        assert_eq!(v, &Verdict::Pass);
        assert!(
            a.reason.contains("serial console (host bridge br0"),
            "{}",
            a.reason
        );
        for (state, says) in [
            (BridgeState::Missing, "host bridge `br0` does not exist on qemu+ssh://admin@hv1:2222/system: create it there"),
            (BridgeState::NotBridge, "`br0` on qemu+ssh://admin@hv1:2222/system is a network interface but not a bridge"),
        ] {
            o.bridges = vec![("br0".into(), state)];
            match &verdict_for(&plan(&c, &o), "bridge br0").1 {
                Verdict::Fail(why) => assert!(why.starts_with(says), "{why}"),
                v => panic!("{v:?}"),
            }
        }
        o.bridges = vec![("br0".into(), BridgeState::Unknown("ssh: timeout".into()))];
        let p = plan(&c, &o);
        let (a, v) = verdict_for(&p, "bridge br0");
        assert_eq!(v, &Verdict::Pass);
        assert_eq!(
            a.reason,
            "host bridge not checked (ssh: timeout); assuming it exists"
        );
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
    fn each_other_nic_is_checked_on_its_own_network() {
        let mut o = remote(&[], None);
        let mut storage = o.networks[0].clone();
        storage.name = "storage".into();
        storage.forward = None;
        storage.ipv4 = Some(kvmprov_hypervisor::NetworkIpv4 {
            address: "10.77.0.1".parse().unwrap(),
            prefix: 24,
            dhcp_range: None,
        });
        o.networks.push(storage);
        // A static address outside the NIC's network's subnet cannot work.
        let p = plan(
            &cfg_with("nics: [{network: default}, {network: storage, ipv4_address: 10.78.0.5/24}]"),
            &o,
        );
        match &verdict_for(&p, "address app-01 nic1").1 {
            Verdict::Fail(m) => assert!(
                m.contains("outside network `storage`'s subnet 10.77.0.0/24"),
                "{m}"
            ),
            v => panic!("{v:?}"),
        }
        let p = plan(
            &cfg_with("nics: [{network: default}, {network: storage, ipv4_address: 10.77.0.5/24}]"),
            &o,
        );
        let (a, v) = verdict_for(&p, "address app-01 nic1");
        assert_eq!(v, &Verdict::Pass);
        assert!(a.reason.contains("10.77.0.5"), "{}", a.reason);
        assert_eq!(verdict_for(&p, "address app-01").1, Verdict::Pass);
        // DHCP where no source can see the address: fine for a NIC kvmprov does not use.
        let p = plan(
            &cfg_with("nics: [{network: default}, {network: storage}]"),
            &o,
        );
        let (a, v) = verdict_for(&p, "address app-01 nic1");
        assert_eq!(v, &Verdict::Pass);
        assert!(
            a.reason.contains("reaches the guest on the primary NIC"),
            "{}",
            a.reason
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

    /// New data disks count in the free-space check: their initial size in what is needed,
    /// their virtual size said; without any, the line is as it always was.
    #[test]
    fn uefi_snapshot_on_libvirt_9_fails_naming_the_version_and_what_works() {
        let mut o = remote(&[], None);
        let p = plan(&cfg_with("firmware: uefi, snapshot_name: base"), &o);
        match &verdict_for(&p, "snapshot app-01").1 {
            Verdict::Fail(m) => {
                assert!(
                    m.contains("libvirt 9.0.0 on qemu+ssh://admin@hv1:2222/system"),
                    "{m}"
                );
                assert!(m.contains("10.10.0 or newer"), "{m}");
            }
            v => panic!("{v:?}"),
        }
        o.host.libvirt_version = "11.3.0".into();
        let p = plan(&cfg_with("firmware: uefi, snapshot_name: base"), &o);
        assert_eq!(verdict_for(&p, "snapshot app-01").1, Verdict::Pass);
        // BIOS guests and UEFI guests without a snapshot are not asked.
        for other in ["snapshot_name: base", "firmware: uefi"] {
            let p = plan(&cfg_with(other), &remote(&[], None));
            assert!(
                !p.iter().any(|(a, _)| a.target == "snapshot app-01"),
                "{other}"
            );
        }
    }

    #[test]
    fn free_space_counts_new_data_disks() {
        let mut o = remote(&[], None);
        o.pool_free_bytes = Some(300 << 20);
        let p = plan(&cfg(), &o);
        let (a, v) = verdict_for(&p, "free space");
        assert_eq!(v, &Verdict::Pass);
        assert_eq!(
            a.reason,
            "instance pool: 300 MiB free, 264 MiB needed for 1 new instance(s)"
        );
        o.missing_data_disks = vec![10, 2];
        let p = plan(&cfg(), &o);
        let (a, _) = verdict_for(&p, "free space");
        assert_eq!(
            a.reason,
            "instance pool: 300 MiB free, 266 MiB needed for 1 new instance(s) and 2 new data disk(s) (thin; up to 12 GiB as guests write)"
        );
        o.pool_free_bytes = Some(265 << 20);
        assert!(matches!(
            verdict_for(&plan(&cfg(), &o), "free space").1,
            Verdict::Fail(_)
        ));
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
            missing_data_disks: Vec::new(),
            tools: Vec::new(),
            qemu_user: "64055".into(),
            local: false,
            remote: kvmprov_hypervisor::ssh_destination("qemu+ssh://admin@hv1:2222/system"),
            access_unneeded: false,
            trees: Vec::new(),
            bridges: Vec::new(),
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

    /// After its fixes, preflight checked a new directory again with a second, differently
    /// worded verdict whose remedy named a local `setfacl` even for a remote hypervisor.
    #[test]
    fn one_acl_verdict_names_the_remote_fix_before_and_after_fixes() {
        let dest = kvmprov_hypervisor::ssh_destination("qemu+ssh://admin@hv1:2222/system");
        let blocked = [PathBuf::from("/srv")];
        let (a, v) = access_check("/srv/p".into(), "64055", &blocked, dest.as_ref(), false);
        assert_eq!(a.op, Op::Check);
        match v {
            Verdict::Fail(m) => assert!(
                m.contains("ssh -p 2222 admin@hv1 -- sudo setfacl -m u:64055:x /srv"),
                "{m}"
            ),
            v => panic!("{v:?}"),
        }
        let (a, v) = access_check("/srv/p".into(), "64055", &blocked, dest.as_ref(), true);
        assert_eq!(a.op, Op::Fix);
        assert_eq!(
            v,
            Verdict::Apply(Fix::GrantTraverse {
                user: "64055".into(),
                dirs: blocked.to_vec()
            })
        );
        let (_, v) = access_check("/srv/p".into(), "64055", &[], dest.as_ref(), false);
        assert_eq!(v, Verdict::Pass);
    }

    /// A fleet's re-run (every instance running) made an SSH connection per hypervisor for
    /// this check alone: ~0.35 s of a 1.3 s re-run. Not made then, and said so.
    #[test]
    fn regression_a_re_run_checked_remote_access_over_ssh() {
        let mut o = remote(&[], None);
        o.access_unneeded = true;
        o.missing_instances = 0;
        let plan = plan(&cfg(), &o);
        assert!(plan.iter().all(|(_, v)| *v == Verdict::Pass), "{plan:?}");
        let lines: Vec<&str> = plan
            .iter()
            .filter(|(a, _)| a.reason.contains("access"))
            .map(|(a, _)| a.reason.as_str())
            .collect();
        assert_eq!(lines.len(), 2, "{plan:?}");
        assert!(lines
            .iter()
            .all(|l| l.contains("not checked: every instance here runs")));
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
