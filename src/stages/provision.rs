//! Provision stage: per instance, a qcow2 overlay on the cached image, a cloud-init seed ISO and
//! a domain — created only when missing, in that order, so a domain never exists without its
//! disk and seed. Existing domains are never modified; differences from the config are drift.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kvmprov_hypervisor::xml::{self, DomainSpec, DomainType, KvmprovMetadata, ObservedDomain};
use kvmprov_hypervisor::{Firmware, HvError, Hypervisor};
use kvmprov_image::CachedImage;
use kvmprov_seed::{HostKeys, NetworkSpec, SeedSpec};

use crate::config::{Config, FirmwareChoice, Instance};
use crate::plan::{Action, Op, Outcome, StageReport, Status};
use crate::stages::preflight::resolve_domain_type;
use crate::stages::{drift, parallel, Handoff, Session};
use crate::state;

/// File names inside the instance pool: the only files cleanup may delete for an instance.
pub fn disk_name(instance: &str) -> String {
    format!("{instance}.qcow2")
}
pub fn seed_name(instance: &str) -> String {
    format!("{instance}-seed.iso")
}
pub fn console_name(instance: &str) -> String {
    format!("{instance}-console.log")
}
/// A UEFI guest's variable store (libvirt creates it from the firmware's template).
pub fn nvram_name(instance: &str) -> String {
    format!("{instance}_VARS.fd")
}

/// The firmware an instance boots with, as the domain XML gets it.
pub fn firmware_of(inst: &Instance, pool_path: &Path) -> Firmware {
    match inst.firmware {
        FirmwareChoice::Bios => Firmware::Bios,
        FirmwareChoice::Uefi => Firmware::Uefi {
            secure_boot: inst.secure_boot,
            nvram: pool_path.join(nvram_name(&inst.name)),
        },
    }
}

/// How `ObservedDomain::firmware` names an instance's firmware.
pub fn firmware_label(inst: &Instance) -> &'static str {
    match (inst.firmware, inst.secure_boot) {
        (FirmwareChoice::Bios, _) => "bios",
        (FirmwareChoice::Uefi, false) => "uefi",
        (FirmwareChoice::Uefi, true) => "uefi+secure-boot",
    }
}

/// The libvirt pool name for a directory: an existing pool with that path wins (see observe).
pub fn pool_name_for(prefix: &str, path: &Path) -> String {
    let digest = state::digest_hex(path.as_os_str().as_encoded_bytes());
    format!("kvmprov-{prefix}-{}", &digest[..8])
}

/// What exists for one instance.
#[derive(Debug, Clone)]
pub enum Found {
    Missing { disk: bool },
    Exists(Box<ObservedDomain>),
}

/// What to do for one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum InstancePlan {
    /// Exists and matches the config.
    Keep,
    /// Exists but differs: reported, never changed.
    Drift(Vec<String>),
    /// Create what is missing: the overlay (unless present), a fresh seed, the domain.
    Create { disk: bool },
    /// Cannot be planned (no cached image).
    Blocked(String),
}

/// Pure: compare config with what exists. `domain_type` is the type a domain would be
/// defined with now.
pub fn plan_instance(
    cfg: &Config,
    inst: &Instance,
    image: Option<&CachedImage>,
    found: &Found,
    domain_type: DomainType,
) -> InstancePlan {
    match found {
        Found::Exists(d) => {
            // The config against what the domain was made from, field by field; a domain
            // defined before fields were recorded has only the config digest to go by.
            let changes = match d.metadata.as_ref().and_then(|m| Some((m, m.fields.as_ref()?))) {
                Some((m, recorded)) => drift::diff(
                    recorded,
                    &drift::instance_fields(cfg, inst, domain_type, &m.instance_id),
                ),
                None => Vec::new(),
            };
            let changed = |field: &str| changes.iter().any(|c| c.field == field);
            // The domain as it is (changed behind kvmprov's back, say with virsh edit); what
            // the config diff already names is not said twice.
            let mut diffs = Vec::new();
            if d.vcpus != inst.vcpus && !changed("vcpus") {
                diffs.push(format!("vcpus {} (config {})", d.vcpus, inst.vcpus));
            }
            if d.memory_mib != inst.memory_mib && !changed("memory_mib") {
                diffs.push(format!(
                    "memory {} MiB (config {})",
                    d.memory_mib, inst.memory_mib
                ));
            }
            if !d.networks.contains(&inst.network) && !changed("libvirt_network_name") {
                diffs.push(format!(
                    "network {} (config {})",
                    d.networks.join(","),
                    inst.network
                ));
            }
            // Other types (the test driver's `test`) say nothing about kvm or qemu.
            let observed_type = d.domain_type.as_deref().filter(|t| *t == "kvm" || *t == "qemu");
            if let Some(t) = observed_type {
                if t != domain_type.as_str() && !changed("domain_type") {
                    diffs.push(format!("domain type {t} (config {})", domain_type.as_str()));
                }
            }
            let mac = mac_of(inst);
            if !d.macs.iter().any(|m| m.eq_ignore_ascii_case(&mac)) && !changed("mac_address") {
                diffs.push(format!("mac {} (config {mac})", d.macs.join(",")));
            }
            if d.firmware != firmware_label(inst) && !changed("firmware") {
                diffs.push(format!(
                    "firmware {} (config {})",
                    d.firmware,
                    firmware_label(inst)
                ));
            }
            match &d.metadata {
                Some(m) if m.image_name != inst.image_name && !changed("image_name") => diffs
                    .push(format!(
                        "image {} (config {})",
                        m.image_name, inst.image_name
                    )),
                Some(m)
                    if m.fields.is_none()
                        && !m.config_digest.is_empty()
                        && m.config_digest != config_digest(inst) =>
                {
                    diffs.push(
                        "the config changed since this domain was defined (field unknown: defined by an older kvmprov)"
                            .to_string(),
                    )
                }
                Some(_) => {}
                None => diffs.push("not created by kvmprov (no kvmprov metadata)".to_string()),
            }
            diffs.extend(changes.iter().map(drift::Change::describe));
            if !changes.is_empty() {
                diffs.push(drift::remedy(&changes).to_string());
            }
            if diffs.is_empty() {
                InstancePlan::Keep
            } else {
                InstancePlan::Drift(diffs)
            }
        }
        Found::Missing { disk } => match image {
            None if !disk => InstancePlan::Blocked(format!(
                "image `{}` is not cached on this hypervisor: run the image-cache stage first (make image-cache)",
                inst.image_name
            )),
            _ => InstancePlan::Create { disk: !disk },
        },
    }
}

/// The action line for a plan.
pub fn describe(inst: &Instance, p: &InstancePlan, image: Option<&CachedImage>) -> Action {
    let version = image
        .map(|c| {
            c.version
                .clone()
                .unwrap_or_else(|| c.sha512.chars().take(16).collect())
        })
        .unwrap_or_default();
    match p {
        InstancePlan::Keep => {
            Action::new(&inst.name, Op::Keep, "domain exists and matches the config")
        }
        InstancePlan::Drift(d) => Action::new(
            &inst.name,
            Op::Drift,
            format!(
                "domain exists but differs, left unchanged: {}",
                d.join("; ")
            ),
        ),
        InstancePlan::Create { disk: true } => Action::new(
            &inst.name,
            Op::Create,
            format!(
                "missing: overlay disk on {} {version} ({} GiB), seed, domain",
                inst.image_name, inst.disk_size_gib
            ),
        ),
        InstancePlan::Create { disk: false } => Action::new(
            &inst.name,
            Op::Create,
            "domain missing, disk present (kept): new seed, domain",
        ),
        InstancePlan::Blocked(why) => Action::new(&inst.name, Op::Create, why.clone()),
    }
}

/// Read the virtual size from a qcow2 header (bytes 24..32, big-endian).
pub fn qcow2_virtual_size(header: &[u8]) -> Option<u64> {
    if header.len() < 32 || &header[..4] != b"QFI\xfb" {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&header[24..32]);
    Some(u64::from_be_bytes(b))
}

fn image_virtual_size(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut header = [0u8; 32];
    f.read_exact(&mut header).ok()?;
    qcow2_virtual_size(&header)
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("cloud-init seed: {0}")]
    Seed(#[from] kvmprov_seed::SeedError),
    #[error("{0}")]
    Invalid(String),
}

/// Everything the instances share during apply.
struct Shared<'a> {
    cfg: &'a Config,
    hv: &'a Hypervisor,
    domain_type: DomainType,
    instance_pool: String,
    state_dir: PathBuf,
    operator_public: String,
}

pub fn run(s: &Session, hv: &Hypervisor, handoff: &Handoff) -> Result<StageReport, ProvisionError> {
    let cfg = &s.cfg;
    let mut report = StageReport::new("provision");
    let host = hv.host_info()?;
    let domain_type = match resolve_domain_type(cfg.domain_type, &host) {
        Ok(("kvm", _)) => DomainType::Kvm,
        Ok(_) => DomainType::Qemu,
        Err(why) => return Err(ProvisionError::Invalid(why)),
    };

    // Observe: images, domains, volumes.
    let mut images = handoff.images.clone();
    for inst in &cfg.instances {
        if !images.contains_key(&inst.image_name) {
            if let Ok(Some(c)) =
                kvmprov_image::newest_cached(&cfg.image_cache_path, &inst.image_name)
            {
                images.insert(inst.image_name.clone(), c);
            }
        }
    }
    let pool_names = [
        ("images", &cfg.image_cache_path),
        ("instances", &cfg.instance_pool_path),
    ]
    .map(|(prefix, path)| -> Result<(String, Option<_>), HvError> {
        let existing = hv.pool_by_path(path)?;
        Ok(match existing {
            Some(p) => (p.name.clone(), Some(p)),
            None => (pool_name_for(prefix, path), None),
        })
    });
    let [cache_pool, inst_pool] = pool_names;
    let (cache_pool, cache_found) = cache_pool?;
    let (inst_pool, inst_found) = inst_pool?;
    // A remote hypervisor backs overlays with its own copy: an image the image-cache stage has
    // not uploaded there yet is as good as not cached.
    // (In check mode the upload was only planned.)
    if !s.check && !crate::stages::preflight::is_local(&cfg.libvirt_uri) {
        // Rescanned: on storage shared with the local cache the files may be there unscanned.
        if let Some(p) = cache_found.as_ref().filter(|p| p.active) {
            hv.refresh_pool(&p.name)?;
        }
        let mut present = std::collections::BTreeMap::new();
        for (name, c) in images {
            let file = c.path.file_name().map(|f| f.to_string_lossy().into_owned());
            let uploaded = match (&cache_found, file) {
                (Some(p), Some(f)) if p.active => {
                    hv.volume_exists(&p.name, &f)?
                        && hv.volume_exists(&p.name, &format!("{f}.json"))?
                }
                _ => false,
            };
            if uploaded {
                present.insert(name, c);
            }
        }
        images = present;
    }
    let volumes: Vec<String> = match &inst_found {
        Some(p) if p.active => {
            hv.refresh_pool(&p.name)?;
            hv.volumes(&p.name)?.into_iter().map(|v| v.name).collect()
        }
        _ => Vec::new(),
    };

    let mut planned = Vec::new();
    for inst in &cfg.instances {
        let found = match hv.domain(&inst.name)? {
            Some(_) => Found::Exists(Box::new(xml::parse_domain_xml(
                &hv.domain_xml(&inst.name)?,
            )?)),
            None => Found::Missing {
                disk: volumes.contains(&disk_name(&inst.name)),
            },
        };
        let image = images.get(&inst.image_name);
        let mut p = plan_instance(cfg, inst, image, &found, domain_type);
        // In check mode the image-cache stage only planned its download.
        if matches!(p, InstancePlan::Blocked(_)) && handoff.pending.contains(&inst.image_name) {
            p = InstancePlan::Create { disk: true };
        }
        planned.push((inst, p));
    }

    // Pools first: a plan line each when missing.
    for (name, path, found) in [
        (&cache_pool, &cfg.image_cache_path, &cache_found),
        (&inst_pool, &cfg.instance_pool_path, &inst_found),
    ] {
        if found.as_ref().is_some_and(|p| p.active) {
            continue;
        }
        let action = Action::new(
            format!("pool {name}"),
            Op::Create,
            format!(
                "libvirt dir pool for {} missing or inactive",
                path.display()
            ),
        );
        let outcome = if s.check {
            Outcome {
                action,
                status: Status::Planned,
                seconds: 0.0,
            }
        } else {
            crate::plan::run(action, || hv.ensure_dir_pool(name, path).map(|_| ()))
        };
        s.printer.outcome(&outcome);
        let failed = outcome.failed();
        report.outcomes.push(outcome);
        if failed {
            return Ok(report);
        }
    }

    if s.check {
        for (inst, p) in &planned {
            let o = Outcome {
                action: describe(inst, p, images.get(&inst.image_name)),
                status: match p {
                    InstancePlan::Blocked(why) => Status::Failed(why.clone()),
                    _ => Status::Planned,
                },
                seconds: 0.0,
            };
            s.printer.outcome(&o);
            report.outcomes.push(o);
        }
        return Ok(report);
    }

    let state_dir = s.state_dir();
    let needs_work = planned
        .iter()
        .any(|(_, p)| matches!(p, InstancePlan::Create { .. }));
    let operator = state::operator_key(&state_dir, needs_work)?;
    let shared = Shared {
        cfg,
        hv,
        domain_type,
        instance_pool: inst_pool,
        state_dir,
        operator_public: operator.map(|k| k.public).unwrap_or_default(),
    };
    let outcomes = parallel(&planned, s.jobs, |(inst, p)| {
        let image = images.get(&inst.image_name);
        let action = describe(inst, p, image);
        let outcome = match p {
            InstancePlan::Keep | InstancePlan::Drift(_) => Outcome {
                action,
                status: Status::Done,
                seconds: 0.0,
            },
            InstancePlan::Blocked(why) => Outcome {
                action,
                status: Status::Failed(why.clone()),
                seconds: 0.0,
            },
            InstancePlan::Create { disk } => {
                crate::plan::run(action, || create(&shared, inst, image, *disk))
            }
        };
        s.printer.outcome(&outcome);
        outcome
    });
    report.outcomes.extend(outcomes);
    Ok(report)
}

pub(crate) fn mac_of(inst: &Instance) -> String {
    inst.mac.clone().unwrap_or_else(|| xml::mac_for(&inst.name))
}

/// Create one instance: overlay (if missing) → seed → domain.
fn create(
    sh: &Shared,
    inst: &Instance,
    image: Option<&CachedImage>,
    make_disk: bool,
) -> Result<(), ProvisionError> {
    let pool_path = &sh.cfg.instance_pool_path;
    let disk_path = pool_path.join(disk_name(&inst.name));
    let seed_path = pool_path.join(seed_name(&inst.name));
    let capacity = inst.disk_size_gib << 30;

    if make_disk {
        let image = image.ok_or_else(|| {
            ProvisionError::Invalid(format!("image `{}` is not cached", inst.image_name))
        })?;
        if let Some(vsize) = image_virtual_size(&image.path) {
            if vsize > capacity {
                return Err(ProvisionError::Invalid(format!(
                    "disk_size_gib {} is smaller than the image's virtual size ({:.1} GiB)",
                    inst.disk_size_gib,
                    vsize as f64 / (1u64 << 30) as f64
                )));
            }
        }
        sh.hv.create_overlay(
            &sh.instance_pool,
            &disk_name(&inst.name),
            &image.path,
            "qcow2",
            capacity,
        )?;
    }

    // A new seed every time a domain is created: new instance-id, new pinned host key.
    let instance_id = format!(
        "{}-{}",
        inst.name,
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let host_keys = HostKeys::generate()?;
    let password_hash = sh
        .cfg
        .cloud_init
        .password
        .as_ref()
        .map(|p| kvmprov_seed::hash_password(p.expose()))
        .transpose()?;
    let mut authorized = sh.cfg.cloud_init.ssh_authorized_keys.clone();
    if !sh.operator_public.is_empty() {
        authorized.push(sh.operator_public.clone());
    }
    let mac = mac_of(inst);
    let network = match &inst.ipv4 {
        Some(st) => NetworkSpec::Static {
            mac: mac.clone(),
            address: st.address.to_string(),
            gateway: Some(st.gateway),
            dns: st.dns.clone(),
        },
        None => NetworkSpec::Dhcp { mac: mac.clone() },
    };
    let spec = SeedSpec {
        instance_id: instance_id.clone(),
        hostname: inst.name.clone(),
        user: sh.cfg.cloud_init.user.clone(),
        password_hash,
        ssh_authorized_keys: authorized,
        ssh_password_authentication: sh.cfg.cloud_init.ssh_password_authentication,
        host_keys,
        network,
        packages: inst.packages.clone(),
        runcmd: inst.runcmd.clone(),
    };
    let iso = kvmprov_seed::build_iso(&spec)?;
    // Pin the host key before the domain can exist: runtime trusts only this key.
    state::ensure_dir(&sh.state_dir)?;
    state::write_private(
        &state::host_key_path(&sh.state_dir, &inst.libvirt_uri, &inst.name),
        format!("{}\n", spec.host_keys.ed25519_public_openssh.trim()).as_bytes(),
    )?;
    let seed_vol = seed_name(&inst.name);
    // A seed left by an interrupted run belongs to no domain: replace it.
    if sh.hv.volume_exists(&sh.instance_pool, &seed_vol)? {
        sh.hv.delete_volume(&sh.instance_pool, &seed_vol)?;
    }
    sh.hv
        .upload_volume(&sh.instance_pool, &seed_vol, &iso, "raw")?;

    let (image_version, image_sha512) = image
        .map(|c| (c.version.clone(), c.sha512.clone()))
        .unwrap_or((None, String::new()));
    let spec = DomainSpec {
        name: inst.name.clone(),
        domain_type: sh.domain_type,
        vcpus: inst.vcpus,
        memory_mib: inst.memory_mib,
        disk_path,
        seed_path,
        network: inst.network.clone(),
        mac,
        console_log: pool_path.join(console_name(&inst.name)),
        firmware: firmware_of(inst, pool_path),
        metadata: KvmprovMetadata {
            image_name: inst.image_name.clone(),
            image_version,
            image_sha512,
            config_digest: config_digest(inst),
            fields: Some(
                drift::instance_fields(sh.cfg, inst, sh.domain_type, &instance_id)
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), value))
                    .collect(),
            ),
            instance_id,
        },
    };
    sh.hv.define(&xml::domain_xml(&spec))?;
    Ok(())
}

/// A digest of the instance's definition, recorded in the domain metadata.
pub fn config_digest(inst: &Instance) -> String {
    let text = serde_json::to_string(inst).unwrap_or_default();
    state::digest_hex(text.as_bytes())[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(name: &str) -> Instance {
        Instance {
            name: name.into(),
            image_name: "debian-12".into(),
            vcpus: 2,
            memory_mib: 2048,
            disk_size_gib: 20,
            network: "default".into(),
            ipv4: None,
            mac: None,
            snapshot_name: None,
            packages: vec![],
            runcmd: vec![],
            libvirt_uri: "qemu:///system".into(),
            firmware: FirmwareChoice::Bios,
            secure_boot: false,
        }
    }

    fn cfg() -> Config {
        let text = "kvm_image_cache_path: /c\nkvm_instance_disk_pool_path: /p\n\
             kvm_cloud_image_catalog:\n  - {image_name: debian-12, image_url: http://x/a.qcow2, image_checksum_manifest_url: http://x/S}\n\
             kvm_cloud_init_defaults:\n  password: secret\n\
             kvm_instance_definitions:\n  - {instance_name: a, image_name: debian-12}\n";
        crate::config::parse(Path::new("t.yml"), text, &[]).unwrap()
    }

    fn observed(i: &Instance) -> ObservedDomain {
        ObservedDomain {
            vcpus: i.vcpus,
            memory_mib: i.memory_mib,
            networks: vec![i.network.clone()],
            macs: vec![xml::mac_for(&i.name)],
            disk_paths: vec![],
            domain_type: Some("qemu".into()),
            firmware: firmware_label(i).into(),
            nvram: None,
            metadata: Some(KvmprovMetadata {
                image_name: i.image_name.clone(),
                image_version: None,
                image_sha512: String::new(),
                config_digest: String::new(),
                instance_id: "x".into(),
                fields: None,
            }),
        }
    }

    fn cached() -> CachedImage {
        CachedImage {
            image_name: "debian-12".into(),
            path: "/c/debian-12-genericcloud-amd64-0123456789abcdef.qcow2".into(),
            sha512: "0123456789abcdef".repeat(8),
            size: 1,
            version: Some("20241004-1890".into()),
            url: "http://x".into(),
            cached_at: "0".into(),
        }
    }

    #[test]
    fn empty_host_plans_creation() {
        let i = inst("a");
        let p = plan_instance(
            &cfg(),
            &i,
            Some(&cached()),
            &Found::Missing { disk: false },
            DomainType::Qemu,
        );
        assert_eq!(p, InstancePlan::Create { disk: true });
        assert!(describe(&i, &p, Some(&cached()))
            .reason
            .contains("20241004-1890"));
    }

    #[test]
    fn partly_provisioned_keeps_disk() {
        let i = inst("a");
        let p = plan_instance(
            &cfg(),
            &i,
            None,
            &Found::Missing { disk: true },
            DomainType::Qemu,
        );
        assert_eq!(p, InstancePlan::Create { disk: false });
    }

    #[test]
    fn fully_provisioned_is_kept() {
        let i = inst("a");
        let p = plan_instance(
            &cfg(),
            &i,
            Some(&cached()),
            &Found::Exists(Box::new(observed(&i))),
            DomainType::Qemu,
        );
        assert_eq!(p, InstancePlan::Keep);
    }

    #[test]
    fn drift_is_reported() {
        let i = inst("a");
        let mut o = observed(&i);
        o.vcpus = 4;
        o.memory_mib = 1024;
        o.networks = vec!["other".into()];
        match plan_instance(
            &cfg(),
            &i,
            Some(&cached()),
            &Found::Exists(Box::new(o)),
            DomainType::Qemu,
        ) {
            InstancePlan::Drift(d) => {
                assert_eq!(d.len(), 3, "{d:?}");
                assert!(d[0].contains("vcpus 4 (config 2)"));
            }
            p => panic!("{p:?}"),
        }
    }

    /// The domain `i` would be defined as, with its fields recorded.
    fn defined(i: &Instance) -> ObservedDomain {
        let mut o = observed(i);
        if let Some(m) = o.metadata.as_mut() {
            m.fields = Some(
                drift::instance_fields(&cfg(), i, DomainType::Qemu, &m.instance_id)
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), v))
                    .collect(),
            );
        }
        o
    }

    fn drift_of(i: &Instance, o: ObservedDomain) -> Vec<String> {
        match plan_instance(
            &cfg(),
            i,
            Some(&cached()),
            &Found::Exists(Box::new(o)),
            DomainType::Qemu,
        ) {
            InstancePlan::Drift(d) => d,
            InstancePlan::Keep => Vec::new(),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn drift_names_changed_fields_old_and_new_and_the_remedy() {
        let before = inst("a");
        let o = defined(&before);
        assert_eq!(drift_of(&before, o.clone()), Vec::<String>::new());
        let mut after = before.clone();
        after.ipv4 = Some(crate::config::StaticIpv4 {
            address: "192.168.122.60/24".parse().unwrap(),
            gateway: "192.168.122.1".parse().unwrap(),
            dns: vec![],
        });
        after.vcpus = 4;
        let d = drift_of(&after, o);
        assert_eq!(
            d,
            vec![
                "vcpus 2 → 4",
                "ipv4_address (none) → 192.168.122.60/24",
                "ipv4_gateway (none) → 192.168.122.1",
                "to apply, re-create the domain (cleanup, then provision: the disk is kept and boots with a new cloud-init seed)",
            ]
        );
        let line = describe(&after, &InstancePlan::Drift(d), None).reason;
        assert!(
            line.starts_with("domain exists but differs, left unchanged: vcpus 2 → 4;"),
            "{line}"
        );
    }

    #[test]
    fn drift_of_a_domain_edited_behind_kvmprovs_back_and_of_older_domains() {
        let i = inst("a");
        // Recorded as configured, but someone changed the domain with virsh.
        let mut o = defined(&i);
        o.memory_mib = 1024;
        o.domain_type = Some("kvm".into());
        assert_eq!(
            drift_of(&i, o),
            vec![
                "memory 1024 MiB (config 2048)",
                "domain type kvm (config qemu)"
            ]
        );
        // Defined by an older kvmprov: no fields, only the digest of the config it came from.
        let mut o = observed(&i);
        if let Some(m) = o.metadata.as_mut() {
            m.config_digest = config_digest(&i);
        }
        assert_eq!(drift_of(&i, o.clone()), Vec::<String>::new());
        let mut changed = i.clone();
        changed.runcmd = vec!["reboot".into()];
        assert_eq!(
            drift_of(&changed, o),
            vec!["the config changed since this domain was defined (field unknown: defined by an older kvmprov)"]
        );
    }

    #[test]
    fn a_firmware_change_is_drift() {
        let mut i = inst("a");
        // A domain of an older kvmprov (no field record): read from its XML.
        let old = observed(&i);
        // A domain of this one: from the recorded fields.
        let new = defined(&i);
        i.firmware = FirmwareChoice::Uefi;
        i.secure_boot = true;
        for (o, want) in [
            (old, "firmware bios (config uefi+secure-boot)"),
            (new, "firmware"),
        ] {
            match plan_instance(
                &cfg(),
                &i,
                Some(&cached()),
                &Found::Exists(Box::new(o)),
                DomainType::Qemu,
            ) {
                InstancePlan::Drift(d) => {
                    assert!(d.iter().any(|x| x.contains(want)), "{d:?}");
                    assert!(d.iter().any(|x| x.contains("uefi+secure-boot")), "{d:?}");
                }
                p => panic!("{p:?}"),
            }
        }
    }

    #[test]
    fn regression_firmware_fields_made_every_older_bios_domain_drift() {
        // The config digest of a BIOS instance is what it was before firmware existed.
        let i = inst("a");
        let text = serde_json::to_string(&i).unwrap();
        assert!(
            !text.contains("firmware") && !text.contains("secure_boot"),
            "{text}"
        );
    }

    #[test]
    fn missing_image_blocks() {
        let i = inst("a");
        assert!(matches!(
            plan_instance(
                &cfg(),
                &i,
                None,
                &Found::Missing { disk: false },
                DomainType::Qemu,
            ),
            InstancePlan::Blocked(_)
        ));
    }

    #[test]
    fn qcow2_header_size() {
        let mut h = vec![0u8; 32];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[24..32].copy_from_slice(&(3u64 << 30).to_be_bytes());
        assert_eq!(qcow2_virtual_size(&h), Some(3 << 30));
        assert_eq!(qcow2_virtual_size(b"nope"), None);
    }
}
