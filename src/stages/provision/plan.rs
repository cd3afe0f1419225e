//! Provision's plan, pure: what exists for an instance against what the config says.
//! Existing domains are never modified; differences from the config are drift.

use kvmprov_hypervisor::xml::{DomainType, ObservedDomain};
use kvmprov_image::CachedImage;

use crate::config::{Attachment, Config, Instance};
use crate::digest::sha256_hex;
use crate::drift::{self, plan::Step};
use crate::firmware::firmware_label;
use crate::report::{Action, Op};

/// What exists for one instance.
#[derive(Debug, Clone)]
pub enum Found {
    /// No domain; `disk_exists`: its overlay disk is in the instance pool (kept by a cleanup
    /// or an interrupted run).
    NoDomain {
        disk_exists: bool,
    },
    Exists(Box<ObservedDomain>),
}

/// The image an instance's new overlay would be backed by.
#[derive(Debug, Clone, Copy)]
pub enum Backing<'a> {
    /// Cached (on this hypervisor's cache pool, for a remote one).
    Cached(&'a CachedImage),
    /// Not cached, but this `--check` run's image-cache stage plans to download it: applying
    /// would have it by the time provision runs.
    Pending,
    /// Not cached, and nothing in this run fetches it.
    Missing,
}

/// What to do for one instance.
#[derive(Debug, Clone, PartialEq)]
pub enum InstancePlan {
    /// Exists and matches the config.
    Keep,
    /// Exists but differs: each difference a phrase, and the drift plan of the recorded
    /// fields (applied by the runtime stage when `kvm_drift_apply_confirmed`).
    Drift(Vec<String>, Vec<Step>),
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
    image: Backing,
    found: &Found,
    domain_type: DomainType,
) -> InstancePlan {
    match found {
        Found::Exists(d) => {
            let (diffs, steps) = differences(cfg, inst, d, domain_type);
            if diffs.is_empty() {
                InstancePlan::Keep
            } else {
                InstancePlan::Drift(diffs, steps)
            }
        }
        Found::NoDomain { disk_exists } => match image {
            Backing::Missing if !disk_exists => InstancePlan::Blocked(format!(
                "image `{}` is not cached on this hypervisor: run the image-cache stage first (make image-cache)",
                inst.image_name
            )),
            _ => InstancePlan::Create {
                disk: !disk_exists,
            },
        },
    }
}

/// Pure: how an existing domain differs from the config, each difference a phrase (for the
/// recorded fields: how applying it works), and the drift plan of the recorded fields.
fn differences(
    cfg: &Config,
    inst: &Instance,
    d: &ObservedDomain,
    domain_type: DomainType,
) -> (Vec<String>, Vec<Step>) {
    // The config against what the domain was made from, field by field; a domain
    // defined before fields were recorded has only the config digest to go by.
    let changes = match d
        .metadata
        .as_ref()
        .and_then(|m| Some((m, m.fields.as_ref()?)))
    {
        Some((m, recorded)) => drift::diff(
            recorded,
            &drift::instance_fields(cfg, inst, domain_type, &m.instance_id),
            &m.instance_id,
        ),
        None => Vec::new(),
    };
    let changed = |field: &str| changes.iter().any(|c| c.field == field);
    let mut diffs = edited(inst, d, domain_type, &changed);
    match &d.metadata {
        Some(m) if m.image_name != inst.image_name && !changed("image_name") => diffs.push(
            format!("image {} (config {})", m.image_name, inst.image_name),
        ),
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
    // Only a domain kvmprov made has a plan: it knows what the domain was made from.
    let recorded = d.metadata.as_ref().is_some_and(|m| m.fields.is_some());
    let steps = if recorded {
        drift::plan::plan(&changes, &drift::plan::Facts::of(d, cfg))
    } else {
        Vec::new()
    };
    diffs.extend(steps.iter().map(Step::describe));
    if steps.is_empty() && !changes.is_empty() {
        diffs.push(drift::remedy(&changes).to_string());
    }
    (diffs, steps)
}

/// Pure: the domain as it is against the config (changed behind kvmprov's back, say with
/// virsh edit); what the config diff already names (`changed`) is not said twice.
fn edited(
    inst: &Instance,
    d: &ObservedDomain,
    domain_type: DomainType,
    changed: &dyn Fn(&str) -> bool,
) -> Vec<String> {
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
    let shown = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            v.join(",")
        }
    };
    match &inst.attach {
        Attachment::Network(n) if !d.networks.contains(n) && !changed("libvirt_network_name") => {
            diffs.push(format!("network {} (config {n})", shown(&d.networks)));
        }
        Attachment::Bridge(b) if !d.bridges.contains(b) && !changed("bridge") => {
            diffs.push(format!("bridge {} (config {b})", shown(&d.bridges)));
        }
        _ => {}
    }
    // Other types (the test driver's `test`) say nothing about kvm or qemu.
    let observed_type = d
        .domain_type
        .as_deref()
        .filter(|t| *t == "kvm" || *t == "qemu");
    if let Some(t) = observed_type {
        if t != domain_type.as_str() && !changed("domain_type") {
            diffs.push(format!("domain type {t} (config {})", domain_type.as_str()));
        }
    }
    let mac = inst.effective_mac();
    if !d.macs.iter().any(|m| m.eq_ignore_ascii_case(&mac)) && !changed("mac_address") {
        diffs.push(format!("mac {} (config {mac})", d.macs.join(",")));
    }
    let serials: Vec<&str> = inst.disks.iter().map(|x| x.name.as_str()).collect();
    if d.disk_serials != serials && !changed("disks") {
        let shown = |v: &[&str]| {
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(",")
            }
        };
        let observed: Vec<&str> = d.disk_serials.iter().map(String::as_str).collect();
        diffs.push(format!(
            "data disks {} (config {})",
            shown(&observed),
            shown(&serials)
        ));
    }
    for nic in inst.other_nics.iter() {
        if !d.macs.iter().any(|m| m.eq_ignore_ascii_case(&nic.mac)) && !changed("nics") {
            diffs.push(format!(
                "no NIC with mac {} (config: on {})",
                nic.mac, nic.attach
            ));
        }
    }
    if d.firmware != firmware_label(inst) && !changed("firmware") {
        diffs.push(format!(
            "firmware {} (config {})",
            d.firmware,
            firmware_label(inst)
        ));
    }
    diffs
}

/// What happens to a drifted domain: the plan is applied by the runtime stage when confirmed.
fn drift_note(cfg: &Config, steps: &[Step]) -> &'static str {
    let (apply, _) = drift::plan::applicable(steps);
    if drift::plan::removal(steps).is_some() {
        return ", the runtime stage re-creates the guest (one at a time; its data disks are kept)";
    }
    match (apply.is_empty(), cfg.drift_apply_confirmed) {
        (true, _) => ", left unchanged",
        (false, true) => ", the runtime stage applies what it can",
        (false, false) => {
            ", left unchanged (apply with -e kvm_drift_apply_confirmed=true, make provision-drift-apply)"
        }
    }
}

/// The action line for a plan.
pub fn describe(
    cfg: &Config,
    inst: &Instance,
    p: &InstancePlan,
    image: Option<&CachedImage>,
) -> Action {
    // The version label came from the image host: sanitized.
    let version = image
        .map(|c| match &c.version {
            Some(v) => crate::output::sanitize(v, false),
            None => c.sha512.chars().take(16).collect(),
        })
        .unwrap_or_default();
    match p {
        InstancePlan::Keep => {
            Action::new(&inst.name, Op::Ok, "domain exists and matches the config")
        }
        InstancePlan::Drift(d, steps) => Action::new(
            &inst.name,
            Op::Drift,
            format!(
                "domain exists but differs{}: {}{}",
                drift_note(cfg, steps),
                d.join("; "),
                // One sentence per instance: which variables apply what is only reported.
                if drift::plan::recreate_pending(steps) {
                    format!("; {}", drift::plan::RECREATE_HINT)
                } else {
                    String::new()
                }
            ),
        )
        .with_drift(steps.clone()),
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

/// A digest of the instance's definition, recorded in the domain metadata.
pub fn config_digest(inst: &Instance) -> String {
    let text = serde_json::to_string(inst).unwrap_or_default();
    sha256_hex(text.as_bytes())[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FirmwareChoice;
    use kvmprov_hypervisor::xml::{self, KvmprovMetadata};
    use std::path::Path;

    fn inst(name: &str) -> Instance {
        Instance {
            vcpus: 2,
            memory_mib: 2048,
            disk_size_gib: 20,
            ..Instance::for_tests(name)
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
            networks: i.attach.network().map(String::from).into_iter().collect(),
            bridges: i.attach.bridge().map(String::from).into_iter().collect(),
            macs: vec![xml::mac_for(&i.name)],
            disk_paths: vec![],
            disk_serials: i.disks.iter().map(|d| d.name.clone()).collect(),
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
            max_vcpus: i.vcpus,
            max_memory_mib: i.memory_mib,
            running: true,
            ..ObservedDomain::default()
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
            Backing::Cached(&cached()),
            &Found::NoDomain { disk_exists: false },
            DomainType::Qemu,
        );
        assert_eq!(p, InstancePlan::Create { disk: true });
        assert!(describe(&cfg(), &i, &p, Some(&cached()))
            .reason
            .contains("20241004-1890"));
    }

    #[test]
    fn partly_provisioned_keeps_disk() {
        let i = inst("a");
        let p = plan_instance(
            &cfg(),
            &i,
            Backing::Missing,
            &Found::NoDomain { disk_exists: true },
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
            Backing::Cached(&cached()),
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
            Backing::Cached(&cached()),
            &Found::Exists(Box::new(o)),
            DomainType::Qemu,
        ) {
            InstancePlan::Drift(d, _) => {
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
            Backing::Cached(&cached()),
            &Found::Exists(Box::new(o)),
            DomainType::Qemu,
        ) {
            InstancePlan::Drift(d, _) => d,
            InstancePlan::Keep => Vec::new(),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn drift_names_changed_fields_old_new_and_how_they_are_applied() {
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
        let seed = "(recreate: only a new domain with a new cloud-init seed carries it: cleanup, then provision (the disks are kept))";
        assert_eq!(
            d,
            vec![
                "vcpus 2 → 4 (restart: more than the 2 the guest booted with)".to_string(),
                format!("ipv4_address (none) → 192.168.122.60/24 {seed}"),
                format!("ipv4_gateway (none) → 192.168.122.1 {seed}"),
            ]
        );
        let p = plan_instance(
            &cfg(),
            &after,
            Backing::Cached(&cached()),
            &Found::Exists(Box::new(defined(&before))),
            DomainType::Qemu,
        );
        let action = describe(&cfg(), &after, &p, None);
        assert!(
            action.reason.starts_with(
                "domain exists but differs, left unchanged (apply with -e kvm_drift_apply_confirmed=true, make provision-drift-apply): vcpus 2 → 4"
            ),
            "{}",
            action.reason
        );
        let how: Vec<(&str, &str)> = action
            .drift
            .iter()
            .map(|s| (s.field.as_str(), s.how.as_str()))
            .collect();
        assert_eq!(
            how,
            [
                ("vcpus", "restart"),
                ("ipv4_address", "recreate"),
                ("ipv4_gateway", "recreate")
            ]
        );
        // The recreate steps only reported: one sentence names what applies them.
        assert!(
            action
                .reason
                .ends_with(&format!("; {}", drift::plan::RECREATE_HINT)),
            "{}",
            action.reason
        );
    }

    /// With both confirmations `--check` shows the recreate as what will be done, in the line
    /// and in each step's `why` (the JSON's); the hint for an unconfirmed recreate is gone.
    #[test]
    fn with_both_confirmations_the_plan_says_the_guest_is_re_created() {
        let before = inst("a");
        let mut after = before.clone();
        after.firmware = FirmwareChoice::Uefi;
        let mut c = cfg();
        c.drift_recreate_confirmed = true;
        // The recreate confirmation alone applies nothing.
        let plan_with = |c: &Config| {
            let p = plan_instance(
                c,
                &after,
                Backing::Cached(&cached()),
                &Found::Exists(Box::new(defined(&before))),
                DomainType::Qemu,
            );
            describe(c, &after, &p, None)
        };
        let only_recreate = plan_with(&c);
        assert!(
            only_recreate.reason.ends_with(drift::plan::RECREATE_HINT),
            "{}",
            only_recreate.reason
        );
        c.drift_apply_confirmed = true;
        let action = plan_with(&c);
        assert_eq!(
            action.reason,
            "domain exists but differs, the runtime stage re-creates the guest (one at a time; its data disks are kept): \
             firmware bios → uefi (recreate: the guest is re-created: a new root disk from the image, a new seed and domain; its data disks are kept)"
        );
        assert_eq!(
            drift::plan::removal(&action.drift),
            Some(drift::plan::Removal {
                root_disk: true,
                nvram: true
            })
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

    /// Someone re-plugged the primary NIC from its host bridge into another behind kvmprov's
    /// back: read from the domain XML.
    #[test]
    fn a_primary_nic_on_another_bridge_is_drift() {
        let i = Instance {
            attach: crate::config::Attachment::Bridge("br0".into()),
            ..inst("a")
        };
        let mut o = defined(&i);
        assert_eq!(drift_of(&i, o.clone()), Vec::<String>::new());
        o.bridges = vec!["br1".into()];
        assert_eq!(drift_of(&i, o), vec!["bridge br1 (config br0)"]);
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
                Backing::Cached(&cached()),
                &Found::Exists(Box::new(o)),
                DomainType::Qemu,
            ) {
                InstancePlan::Drift(d, _) => {
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

    /// A `--check` run plans the image's download: the instance is planned as created (a new
    /// disk), not blocked, and the plan line says what it will be made of.
    #[test]
    fn an_image_this_check_run_would_download_plans_creation() {
        let i = inst("a");
        let p = plan_instance(
            &cfg(),
            &i,
            Backing::Pending,
            &Found::NoDomain { disk_exists: false },
            DomainType::Qemu,
        );
        assert_eq!(p, InstancePlan::Create { disk: true });
    }

    #[test]
    fn missing_image_blocks() {
        let i = inst("a");
        assert!(matches!(
            plan_instance(
                &cfg(),
                &i,
                Backing::Missing,
                &Found::NoDomain { disk_exists: false },
                DomainType::Qemu,
            ),
            InstancePlan::Blocked(_)
        ));
    }
}
