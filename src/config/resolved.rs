//! The resolved settings every stage reads: defaults applied, cross-field rules checked.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;

use kvmprov_seed::merge::CloudConfig;

use super::disks::DataDisk;
use super::password::LoginPassword;
use super::raw::{
    CatalogImage, CloudInitDefaults, DomainTypeChoice, FirmwareChoice, NicModel, StageChoice,
};

/// A validated static IPv4 setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaticIpv4 {
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
}

/// One instance, resolved: network chosen, static IP parsed, MAC known.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instance {
    pub name: String,
    pub image_name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_size_gib: u64,
    /// What the primary NIC is plugged into. Serialised as `network: NAME` (as before bridges
    /// existed: a network instance's config digest stays the same) or `bridge: NAME`.
    #[serde(flatten)]
    pub attach: Attachment,
    pub ipv4: Option<StaticIpv4>,
    pub mac: Option<String>,
    // The primary NIC's settings beyond the shorthand's, and the other NICs: left out of the
    // serialised form while unused, so a one-NIC instance's config digest stays the same.
    /// The primary NIC's static IPv6 address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<StaticIpv6>,
    /// The primary NIC's model.
    #[serde(skip_serializing_if = "NicModel::is_virtio")]
    pub nic_model: NicModel,
    /// Where the primary NIC sits among the NICs (0: first).
    #[serde(skip_serializing_if = "is_zero")]
    pub primary_nic_index: usize,
    /// The NICs other than the primary one, in device order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_nics: Vec<Nic>,
    pub snapshot_name: Option<String>,
    pub packages: Vec<String>,
    pub runcmd: Vec<String>,
    /// The libvirt URI of the hypervisor this instance lives on.
    pub libvirt_uri: String,
    // Left out of the serialised form while at their defaults: the config digest of domains
    // made before firmware existed stays the same for BIOS guests (no false drift).
    #[serde(skip_serializing_if = "FirmwareChoice::is_bios")]
    pub firmware: FirmwareChoice,
    /// Only ever true with `FirmwareChoice::Uefi`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secure_boot: bool,
    /// cloud-init's `fqdn` (lowercase); the host name stays `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    /// The operator's cloud-config: `kvm_cloud_init_defaults`' with the instance's laid over it.
    #[serde(
        skip_serializing_if = "CloudConfig::is_empty",
        serialize_with = "serialize_cloud_config"
    )]
    pub user_data: CloudConfig,
    /// Data disks, in the order they are attached (`vdb`, `vdc`, …). Left out of the
    /// serialised form when there are none: older domains' config digests stay the same.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DataDisk>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn serialize_cloud_config<S: serde::Serializer>(c: &CloudConfig, s: S) -> Result<S::Ok, S::Error> {
    c.to_json().serialize(s)
}

#[cfg(test)]
impl Instance {
    /// A plain instance for unit tests (BIOS, DHCP on `default`, 1 vCPU, 1 GiB, 4 GiB disk):
    /// a test sets what it checks with struct update syntax.
    pub fn for_tests(name: &str) -> Instance {
        Instance {
            name: name.into(),
            image_name: "debian-12".into(),
            vcpus: 1,
            memory_mib: 1024,
            disk_size_gib: 4,
            attach: Attachment::Network("default".into()),
            ipv4: None,
            mac: None,
            ipv6: None,
            nic_model: NicModel::Virtio,
            primary_nic_index: 0,
            other_nics: vec![],
            snapshot_name: None,
            packages: vec![],
            runcmd: vec![],
            libvirt_uri: "qemu:///system".into(),
            firmware: FirmwareChoice::Bios,
            secure_boot: false,
            fqdn: None,
            user_data: CloudConfig::default(),
            disks: vec![],
        }
    }
}

impl Instance {
    /// The MAC the guest's NIC gets: the configured one, else one derived from the name.
    pub fn effective_mac(&self) -> String {
        effective_mac(self.mac.as_deref(), &self.name)
    }

    /// Every NIC, in device order, the primary one included (marked `primary`).
    pub fn nics(&self) -> Vec<Nic> {
        let primary = Nic {
            attach: self.attach.clone(),
            mac: self.effective_mac(),
            ipv4: self.ipv4.as_ref().map(NicIpv4::from),
            ipv6: self.ipv6.clone(),
            model: self.nic_model,
            primary: true,
        };
        let mut all = self.other_nics.clone();
        all.insert(self.primary_nic_index.min(all.len()), primary);
        all
    }
}

/// The one definition of the default: a stable `52:54:00:…` derived from the instance name.
pub(super) fn effective_mac(configured: Option<&str>, name: &str) -> String {
    configured
        .map(str::to_string)
        .unwrap_or_else(|| kvmprov_hypervisor::xml::mac_for(name))
}

/// Where each effective value of one instance came from (`kvmprov check` shows them for an
/// instance that names a profile).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Origins {
    pub instance: String,
    pub profile: String,
    pub fields: Vec<FieldOrigin>,
}

/// One field of an instance: its effective value and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldOrigin {
    pub field: String,
    pub value: serde_json::Value,
    /// `instance`, `profile NAME`, the top-level key that gave it (`kvm_default_firmware`…),
    /// `built-in default`, or for user_data the layers joined by ` + `.
    pub from: String,
}

impl FieldOrigin {
    /// Whether the value is kvmprov's own default (set nowhere in the settings).
    pub fn is_built_in_default(&self) -> bool {
        self.from == BUILT_IN
    }
}

/// The origin of a value set nowhere in the settings.
pub(super) const BUILT_IN: &str = "built-in default";

/// The resolved settings every stage reads.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub source: PathBuf,
    pub libvirt_uri: String,
    pub hypervisor_host: String,
    pub domain_type: DomainTypeChoice,
    pub stage: StageChoice,
    pub image_cache_path: PathBuf,
    pub instance_pool_path: PathBuf,
    pub verify_on_run: bool,
    pub auto_fix_pool_access: bool,
    pub auto_start_networks: bool,
    pub domain_autostart: bool,
    pub runtime_timeout_seconds: u64,
    pub catalog: Vec<CatalogImage>,
    pub cloud_init: CloudInitDefaults,
    /// Where the login user's password comes from (`None`: locked). Never serialized.
    #[serde(skip)]
    pub password: Option<LoginPassword>,
    pub instances: Vec<Instance>,
    /// Where each value of the instances that name a profile came from (`check` shows it).
    /// Kept apart from [`Instance`], whose serialised form is its config digest: moving a field
    /// into a profile changes no value, so it must not change the digest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<Origins>,
    pub cleanup_confirmed: bool,
    pub cleanup_remove_disks: bool,
    /// Provision applies drift (`kvm_drift_apply_confirmed`).
    pub drift_apply_confirmed: bool,
    /// Drift's recreate steps are applied too (`kvm_drift_recreate_confirmed`; only with
    /// `drift_apply_confirmed`).
    pub drift_recreate_confirmed: bool,
    /// Guests of one hypervisor restarting at once while drift is applied (at least 1).
    pub drift_max_unavailable: u32,
}

impl Config {
    /// The catalog entries used by at least one instance, in catalog order.
    pub fn used_images(&self) -> Vec<&CatalogImage> {
        self.catalog
            .iter()
            .filter(|c| self.instances.iter().any(|i| i.image_name == c.image_name))
            .collect()
    }

    /// The hypervisors this config works on, each once, in the order instances name them
    /// (the global one when no instance names any).
    pub fn hosts(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for i in &self.instances {
            if !out.contains(&i.libvirt_uri) {
                out.push(i.libvirt_uri.clone());
            }
        }
        if out.is_empty() {
            out.push(self.libvirt_uri.clone());
        }
        out
    }

    /// The same settings narrowed to one hypervisor and the instances that live on it.
    pub fn for_host(&self, uri: &str) -> Config {
        let mut c = self.clone();
        c.libvirt_uri = uri.to_string();
        c.instances.retain(|i| i.libvirt_uri == uri);
        let kept = &c.instances;
        c.origins
            .retain(|o| kept.iter().any(|i| i.name == o.instance));
        c
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// The libvirt networks the instances need, each once.
    pub fn required_networks(&self) -> Vec<String> {
        self.required(Attachment::network)
    }

    /// The host bridges the instances' NICs are plugged into directly, each once.
    pub fn required_bridges(&self) -> Vec<String> {
        self.required(Attachment::bridge)
    }

    fn required(&self, which: fn(&Attachment) -> Option<&str>) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for nic in self.instances.iter().flat_map(Instance::nics) {
            if let Some(name) = which(&nic.attach) {
                if !seen.iter().any(|s| s == name) {
                    seen.push(name.to_string());
                }
            }
        }
        seen
    }
}

/// A static IPv4 address of a NIC; only the primary NIC's has a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicIpv4 {
    pub address: Ipv4Net,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
}

impl From<&StaticIpv4> for NicIpv4 {
    fn from(s: &StaticIpv4) -> NicIpv4 {
        NicIpv4 {
            address: s.address,
            gateway: Some(s.gateway),
            dns: s.dns.clone(),
        }
    }
}

/// A static IPv6 address of a NIC; only the primary NIC's has a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaticIpv6 {
    pub address: Ipv6Net,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv6Addr>,
}

/// What a NIC is plugged into: a libvirt network, or a host bridge no libvirt network wraps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Attachment {
    Network(String),
    Bridge(String),
}

impl Attachment {
    /// The libvirt network's name, if it is one.
    pub fn network(&self) -> Option<&str> {
        match self {
            Attachment::Network(n) => Some(n),
            Attachment::Bridge(_) => None,
        }
    }

    /// The host bridge's name, if it is one.
    pub fn bridge(&self) -> Option<&str> {
        match self {
            Attachment::Bridge(b) => Some(b),
            Attachment::Network(_) => None,
        }
    }

    /// The config key that names it: `network` or `bridge`.
    pub fn kind(&self) -> &'static str {
        match self {
            Attachment::Network(_) => "network",
            Attachment::Bridge(_) => "bridge",
        }
    }

    /// The network's or the bridge's name.
    pub fn name(&self) -> &str {
        match self {
            Attachment::Network(n) | Attachment::Bridge(n) => n,
        }
    }
}

/// `network default`, `bridge br0`.
impl std::fmt::Display for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attachment::Network(n) => write!(f, "network {n}"),
            Attachment::Bridge(b) => write!(f, "bridge {b}"),
        }
    }
}

/// One resolved NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// Serialised as `network: NAME` or `bridge: NAME`.
    #[serde(flatten)]
    pub attach: Attachment,
    /// The MAC the guest's NIC gets (configured or derived), lower case.
    pub mac: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<NicIpv4>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<StaticIpv6>,
    #[serde(skip_serializing_if = "NicModel::is_virtio")]
    pub model: NicModel,
    /// The NIC kvmprov reaches the guest on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub primary: bool,
}

impl Nic {
    /// One line for plans and listings: `network isolated, mac 52:54:00:…, static
    /// 10.77.0.10/24, static fd77::10/64` (`bridge br0, …` on a host bridge).
    pub fn describe(&self) -> String {
        let mut s = format!("{}, mac {}", self.attach, self.mac);
        match &self.ipv4 {
            Some(v4) => s.push_str(&format!(", static {}", v4.address)),
            None => s.push_str(", DHCPv4"),
        }
        if let Some(v6) = &self.ipv6 {
            s.push_str(&format!(", static {}", v6.address));
        }
        if !self.model.is_virtio() {
            s.push_str(&format!(", model {}", self.model.as_str()));
        }
        if self.primary {
            s.push_str(", primary");
        }
        s
    }
}
