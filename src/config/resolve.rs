//! The raw values, checked and completed into the resolved [`Config`]: defaults chosen, rules
//! across fields enforced (unique names, addresses and MACs; cache and pool apart), every error
//! located at the key that breaks it. One step per part of the file, in file order.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use kvmprov_seed::merge::{self, CloudConfig};

use super::diagnostics::{did_you_mean, Locator};
use super::disks;
use super::nics::{self, ResolvedNics};
use super::password::{self, LoginPassword};
use super::profiles::{self, Expanded};
use super::raw::{
    CatalogImage, CloudInitDefaults, FirmwareChoice, InstanceDefinition, NicModel, Vars,
};
use super::resolved::{effective_mac, Attachment, Config, Instance, Origins, StaticIpv4};
use super::user_data::{self, check_fqdn};
use super::validate::{
    check_libvirt_uri, check_login_user, check_path, check_public_key, check_separate,
    check_sha512, check_url, libvirt_uri_for, parse_mac, parse_static, valid_instance_name,
    valid_simple_name,
};
use super::ConfigError;

/// `doc` locates the document's root; `source` is the file the settings came from.
/// `profiles` says which instance took which fields from which profile.
pub(super) fn resolve(
    doc: Locator,
    source: &Path,
    v: Vars,
    profiles: &Expanded,
) -> Result<Config, ConfigError> {
    let libvirt_uri = hypervisor_uri(doc, &v)?;
    check_directories(doc, &v)?;
    if v.kvm_runtime_timeout_seconds == 0 {
        return Err(doc
            .key("kvm_runtime_timeout_seconds")
            .error("must be at least 1 second"));
    }
    if v.kvm_drift_max_unavailable == 0 {
        return Err(doc
            .key("kvm_drift_max_unavailable")
            .error("must be at least 1 (guests restarted at once while drift is applied)"));
    }
    valid_simple_name(&v.kvm_default_libvirt_network_name)
        .map_err(|m| doc.key("kvm_default_libvirt_network_name").error(m))?;
    let image_names = check_catalog(
        doc.key("kvm_cloud_image_catalog"),
        &v.kvm_cloud_image_catalog,
    )?;
    // Files the settings name (user_data_file, password_file) are relative to the file.
    let base = source.parent().unwrap_or(Path::new(""));
    let ci_at = doc.key("kvm_cloud_init_defaults");
    let password = check_cloud_init(ci_at, &v.kvm_cloud_init_defaults, base)?;
    let ci = &v.kvm_cloud_init_defaults;
    let user_data = user_data::load(ci_at, ci.user_data_file.as_deref(), base, &ci.user)?;
    let shared = Shared {
        libvirt_uri: &libvirt_uri,
        network: &v.kvm_default_libvirt_network_name,
        firmware: v.kvm_default_firmware,
        image_names,
        base,
        login: &ci.user,
        user_data,
    };
    let (instances, origins) =
        resolve_instances(doc, &v.kvm_instance_definitions, &shared, profiles)?;

    Ok(Config {
        source: source.to_path_buf(),
        libvirt_uri,
        hypervisor_host: v.kvm_hypervisor_host.trim().to_string(),
        domain_type: v.kvm_domain_type,
        stage: v.kvm_provision_stage,
        image_cache_path: v.kvm_image_cache_path,
        instance_pool_path: v.kvm_instance_disk_pool_path,
        verify_on_run: v.kvm_image_cache_verify_on_run,
        auto_fix_pool_access: v.kvm_auto_fix_runtime_pool_access,
        auto_start_networks: v.kvm_auto_start_required_libvirt_networks,
        domain_autostart: v.kvm_domain_autostart,
        runtime_timeout_seconds: v.kvm_runtime_timeout_seconds,
        catalog: v.kvm_cloud_image_catalog,
        cloud_init: v.kvm_cloud_init_defaults,
        password,
        instances,
        origins,
        cleanup_confirmed: v.kvm_cleanup_confirmed,
        cleanup_remove_disks: v.kvm_cleanup_remove_instance_disks,
        drift_apply_confirmed: v.kvm_drift_apply_confirmed,
        drift_recreate_confirmed: v.kvm_drift_recreate_confirmed,
        drift_max_unavailable: v.kvm_drift_max_unavailable,
    })
}

/// `kvm_libvirt_uri` when set, else the URI `kvm_hypervisor_host` stands for.
fn hypervisor_uri(doc: Locator, v: &Vars) -> Result<String, ConfigError> {
    let explicit = v.kvm_libvirt_uri.trim();
    if explicit.is_empty() {
        return libvirt_uri_for(v.kvm_hypervisor_host.trim())
            .map_err(|m| doc.key("kvm_hypervisor_host").error(m));
    }
    check_libvirt_uri(explicit).map_err(|m| doc.key("kvm_libvirt_uri").error(m))?;
    Ok(explicit.to_string())
}

fn check_directories(doc: Locator, v: &Vars) -> Result<(), ConfigError> {
    let (cache, pool) = (&v.kvm_image_cache_path, &v.kvm_instance_disk_pool_path);
    check_path(cache).map_err(|m| doc.key("kvm_image_cache_path").error(m))?;
    check_path(pool).map_err(|m| doc.key("kvm_instance_disk_pool_path").error(m))?;
    // Point at the pool path, or at the cache path when the pool is left to its default.
    let pool_key = doc.key("kvm_instance_disk_pool_path");
    let at = if pool_key.is_set() {
        pool_key
    } else {
        doc.key("kvm_image_cache_path")
    };
    check_separate(cache, pool).map_err(|m| at.error(m))
}

/// Checks every catalog entry; returns the image names, in catalog order.
fn check_catalog<'v>(
    list: Locator,
    catalog: &'v [CatalogImage],
) -> Result<Vec<&'v str>, ConfigError> {
    let mut names: Vec<&str> = Vec::new();
    for (i, c) in catalog.iter().enumerate() {
        let here = |field| list.index(i).key(field);
        valid_simple_name(&c.image_name)
            .map_err(|m| here("image_name").error(format!("image_name {m}")))?;
        if names.contains(&c.image_name.as_str()) {
            return Err(here("image_name")
                .error(format!("image_name `{}` is declared twice", c.image_name)));
        }
        names.push(&c.image_name);
        check_url(&c.image_url).map_err(|m| here("image_url").error(m))?;
        check_url(&c.image_checksum_manifest_url)
            .map_err(|m| here("image_checksum_manifest_url").error(m))?;
        if let Some(sum) = &c.image_sha512 {
            check_sha512(sum).map_err(|m| here("image_sha512").error(m))?;
        }
    }
    Ok(names)
}

/// Checks the login user and its keys; returns where its password comes from.
fn check_cloud_init(
    at: Locator,
    ci: &CloudInitDefaults,
    base: &Path,
) -> Result<Option<LoginPassword>, ConfigError> {
    check_login_user(&ci.user).map_err(|m| at.key("user").error(m))?;
    let password = password::resolve(at, ci, base)?;
    for (i, key) in ci.ssh_authorized_keys.iter().enumerate() {
        check_public_key(key).map_err(|m| at.key("ssh_authorized_keys").index(i).error(m))?;
    }
    Ok(password)
}

/// What every instance falls back to or must refer to.
struct Shared<'a> {
    libvirt_uri: &'a str,
    network: &'a str,
    firmware: FirmwareChoice,
    image_names: Vec<&'a str>,
    /// The variables file's directory: `user_data_file` is relative to it.
    base: &'a Path,
    /// kvmprov's login user, which no user_data may list.
    login: &'a str,
    /// `kvm_cloud_init_defaults`' user_data, which each instance's is laid over.
    user_data: CloudConfig,
}

/// What earlier instances took: no two guests share a name, an address or a MAC.
#[derive(Default)]
struct Taken {
    /// Lowercase: host names are case-insensitive, so names differing only in case collide.
    names: HashSet<String>,
    ips: HashSet<Ipv4Addr>,
    ips6: HashSet<Ipv6Addr>,
    /// MAC → the instance that has it: two NICs with one MAC on a network break both guests.
    macs: HashMap<String, String>,
}

impl nics::TakenAddresses for Taken {
    fn take_ipv4(&mut self, ip: Ipv4Addr) -> bool {
        self.ips.insert(ip)
    }
    fn take_ipv6(&mut self, ip: Ipv6Addr) -> bool {
        self.ips6.insert(ip)
    }
    fn take_mac(&mut self, mac: &str, owner: &str) -> Result<(), String> {
        if let Some(first) = self.macs.get(mac) {
            return Err(if first == owner {
                format!("another NIC of `{owner}`")
            } else {
                format!("instance `{first}`")
            });
        }
        self.macs.insert(mac.to_string(), owner.to_string());
        Ok(())
    }
}

/// The instances, and the origins of the values of those that name a profile.
fn resolve_instances(
    doc: Locator,
    definitions: &[InstanceDefinition],
    shared: &Shared,
    profiles: &Expanded,
) -> Result<(Vec<Instance>, Vec<Origins>), ConfigError> {
    let list = doc.key("kvm_instance_definitions");
    let mut taken = Taken::default();
    let mut instances = Vec::new();
    let mut origins = Vec::new();
    for (i, d) in definitions.iter().enumerate() {
        let profile_user_data = profiles::layered_source(doc, profiles, i);
        let instance = resolve_instance(list.index(i), d, shared, profile_user_data, &mut taken)?;
        origins.extend(profiles::origins(doc, profiles, i, d, &instance));
        instances.push(instance);
    }
    Ok((instances, origins))
}

/// `profile_user_data`: where the instance's profile sets user_data, and the file it names.
fn resolve_instance(
    at: Locator,
    d: &InstanceDefinition,
    shared: &Shared,
    profile_user_data: Option<(Locator, Option<PathBuf>)>,
    taken: &mut Taken,
) -> Result<Instance, ConfigError> {
    check_name(at, d, taken)?;
    check_image_reference(at, d, &shared.image_names)?;
    check_sizes(at, d)?;
    let nics = if d.nics.is_empty() {
        one_nic(at, d, shared, taken)?
    } else {
        nics::resolve(at, d, taken)?
    };
    if let Some(s) = &d.snapshot_name {
        valid_simple_name(s)
            .map_err(|m| at.key("snapshot_name").error(format!("snapshot_name {m}")))?;
    }
    let libvirt_uri = match &d.hypervisor_host {
        Some(h) => libvirt_uri_for(h.trim()).map_err(|m| {
            at.key("hypervisor_host")
                .error(format!("hypervisor_host {m}"))
        })?,
        None => shared.libvirt_uri.to_string(),
    };
    let firmware = firmware(at, d, shared.firmware)?;
    if let Some(fqdn) = &d.fqdn {
        check_fqdn(fqdn, &d.instance_name).map_err(|m| at.key("fqdn").error(m))?;
    }
    let own = user_data::load(at, d.user_data_file.as_deref(), shared.base, shared.login)?;
    let below = match profile_user_data {
        Some((p, file)) => merge::layer(
            &shared.user_data,
            &user_data::load(p, file.as_deref(), shared.base, shared.login)?,
        ),
        None => shared.user_data.clone(),
    };
    let disks = disks::resolve(at, &d.disks)?;
    Ok(Instance {
        name: d.instance_name.clone(),
        image_name: d.image_name.clone(),
        vcpus: d.vcpus,
        memory_mib: d.memory_mib,
        disk_size_gib: d.disk_size_gib,
        attach: nics.attach,
        ipv4: nics.ipv4,
        mac: nics.mac,
        ipv6: nics.ipv6,
        nic_model: nics.model,
        primary_nic_index: nics.primary_index,
        other_nics: nics.others,
        snapshot_name: d.snapshot_name.clone(),
        packages: d.packages.clone(),
        runcmd: d.runcmd.clone(),
        libvirt_uri,
        firmware,
        secure_boot: d.secure_boot,
        fqdn: d.fqdn.as_ref().map(|f| f.to_ascii_lowercase()),
        user_data: merge::layer(&below, &own),
        disks,
    })
}

/// The one-NIC shorthand: `libvirt_network_name`, `ipv4_address` (+ gateway, DNS),
/// `mac_address`.
fn one_nic(
    at: Locator,
    d: &InstanceDefinition,
    shared: &Shared,
    taken: &mut Taken,
) -> Result<ResolvedNics, ConfigError> {
    let network = d
        .libvirt_network_name
        .clone()
        .unwrap_or_else(|| shared.network.to_string());
    valid_simple_name(&network).map_err(|m| {
        at.key("libvirt_network_name")
            .error(format!("libvirt_network_name {m}"))
    })?;
    let ipv4 = static_ipv4(at, d, taken)?;
    let mac = mac_address(at, d, taken)?;
    Ok(ResolvedNics {
        attach: Attachment::Network(network),
        ipv4,
        mac,
        ipv6: None,
        model: NicModel::Virtio,
        primary_index: 0,
        others: Vec::new(),
    })
}

fn check_name(at: Locator, d: &InstanceDefinition, taken: &mut Taken) -> Result<(), ConfigError> {
    let name = &d.instance_name;
    valid_instance_name(name).map_err(|m| {
        at.key("instance_name")
            .error(format!("instance_name `{}` {m}", name.escape_debug()))
    })?;
    if !taken.names.insert(name.to_ascii_lowercase()) {
        return Err(at
            .key("instance_name")
            .error(format!("instance_name `{name}` is declared twice")));
    }
    Ok(())
}

fn check_image_reference(
    at: Locator,
    d: &InstanceDefinition,
    known: &[&str],
) -> Result<(), ConfigError> {
    if known.contains(&d.image_name.as_str()) {
        return Ok(());
    }
    let listed = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    Err(at.key("image_name").error(format!(
        "image_name `{}` is not in kvm_cloud_image_catalog (known: {listed}){}",
        d.image_name,
        did_you_mean(&d.image_name, known)
    )))
}

fn check_sizes(at: Locator, d: &InstanceDefinition) -> Result<(), ConfigError> {
    if !(1..=256).contains(&d.vcpus) {
        return Err(at.key("vcpus").error("vcpus must be between 1 and 256"));
    }
    if !(128..=4 * 1024 * 1024).contains(&d.memory_mib) {
        return Err(at
            .key("memory_mib")
            .error("memory_mib must be between 128 and 4194304"));
    }
    if !(1..=65536).contains(&d.disk_size_gib) {
        return Err(at
            .key("disk_size_gib")
            .error("disk_size_gib must be between 1 and 65536"));
    }
    Ok(())
}

/// The static address, unique among the instances; gateway and DNS only come with one.
fn static_ipv4(
    at: Locator,
    d: &InstanceDefinition,
    taken: &mut Taken,
) -> Result<Option<StaticIpv4>, ConfigError> {
    let Some(addr) = &d.ipv4_address else {
        let stray = if d.ipv4_gateway.is_some() {
            Some("ipv4_gateway")
        } else if !d.dns_servers.is_empty() {
            Some("dns_servers")
        } else {
            None
        };
        return match stray {
            Some(field) => Err(at
                .key(field)
                .error("ipv4_gateway and dns_servers need a static ipv4_address")),
            None => Ok(None),
        };
    };
    let s = parse_static(addr, d.ipv4_gateway.as_deref(), &d.dns_servers)
        .map_err(|(field, m)| at.key(field).error(m))?;
    if !taken.ips.insert(s.address.addr()) {
        return Err(at.key("ipv4_address").error(format!(
            "ipv4_address {} is used by another instance",
            s.address.addr()
        )));
    }
    Ok(Some(s))
}

/// The configured MAC (normalised); the one the guest gets, configured or derived, must be
/// unique.
fn mac_address(
    at: Locator,
    d: &InstanceDefinition,
    taken: &mut Taken,
) -> Result<Option<String>, ConfigError> {
    let mac = d
        .mac_address
        .as_deref()
        .map(parse_mac)
        .transpose()
        .map_err(|m| at.key("mac_address").error(m))?;
    let effective = effective_mac(mac.as_deref(), &d.instance_name);
    if let Some(first) = taken.macs.get(&effective) {
        let (field, how) = match mac {
            Some(_) => ("mac_address", "its mac_address"),
            None => ("instance_name", "the MAC derived from its name"),
        };
        return Err(at.key(field).error(format!(
            "instance `{}`: {how} {effective} is already the MAC of instance `{first}`; set a distinct mac_address",
            d.instance_name
        )));
    }
    taken.macs.insert(effective, d.instance_name.clone());
    Ok(mac)
}

fn firmware(
    at: Locator,
    d: &InstanceDefinition,
    default: FirmwareChoice,
) -> Result<FirmwareChoice, ConfigError> {
    let firmware = d.firmware.unwrap_or(default);
    if d.secure_boot && firmware != FirmwareChoice::Uefi {
        return Err(at.key("secure_boot").error(
            "secure_boot needs firmware: uefi (set it on the instance or kvm_default_firmware)",
        ));
    }
    // UEFI with snapshot_name is the hypervisor's question, not the file's: libvirt 10.10 and
    // newer snapshot a UEFI guest whose NVRAM is qcow2 (preflight and runtime ask it).
    Ok(firmware)
}
