//! The variables file as written: the serde types `kvmprov schema` is generated from, with their
//! defaults. Nothing here is checked beyond its type; `resolve` checks the rest.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::disks::DataDiskDefinition;

/// Every top-level key of the variables file (the replaced Ansible project's names plus ours).
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "kvm_hypervisor_host",
    "kvm_libvirt_uri",
    "kvm_domain_type",
    "kvm_default_firmware",
    "kvm_provision_stage",
    "kvm_image_cache_path",
    "kvm_instance_disk_pool_path",
    "kvm_image_cache_verify_on_run",
    "kvm_auto_fix_runtime_pool_access",
    "kvm_default_libvirt_network_name",
    "kvm_auto_start_required_libvirt_networks",
    "kvm_domain_autostart",
    "kvm_runtime_timeout_seconds",
    "kvm_cloud_image_catalog",
    "kvm_cloud_init_defaults",
    "kvm_instance_definitions",
    "kvm_instance_profiles",
    "kvm_cleanup_confirmed",
    "kvm_cleanup_remove_instance_disks",
    "kvm_drift_apply_confirmed",
    "kvm_drift_recreate_confirmed",
    "kvm_drift_max_unavailable",
];

/// Which libvirt domain type to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum DomainTypeChoice {
    /// `kvm` when the hypervisor offers it, else `qemu` (TCG).
    #[default]
    Auto,
    /// Hardware virtualisation (KVM).
    Kvm,
    /// Software emulation (TCG): slower, works without KVM.
    Qemu,
}

/// The firmware a guest boots with. Debian's genericcloud image boots either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareChoice {
    /// SeaBIOS (GRUB from the image's BIOS boot partition).
    #[default]
    Bios,
    /// OVMF (GRUB or shim from the image's EFI system partition), with per-instance NVRAM.
    Uefi,
}

impl FirmwareChoice {
    pub(super) fn is_bios(&self) -> bool {
        *self == FirmwareChoice::Bios
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FirmwareChoice::Bios => "bios",
            FirmwareChoice::Uefi => "uefi",
        }
    }
}

/// `kvm_provision_stage`, as the replaced Ansible project (`kvm-vm-provisioning`) reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StageChoice {
    /// preflight, image-cache, provision and runtime, in order.
    #[default]
    Full,
    /// Validation only.
    Preflight,
    /// Download and verify the images into the cache only.
    ImageCache,
    /// Create missing disks, seeds and domains only.
    Provision,
    /// Start, wait for SSH and cloud-init, snapshot only.
    Runtime,
}

impl StageChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            StageChoice::Full => "full",
            StageChoice::Preflight => "preflight",
            StageChoice::ImageCache => "image-cache",
            StageChoice::Provision => "provision",
            StageChoice::Runtime => "runtime",
        }
    }
}

/// `provision --stage` takes the same names as `kvm_provision_stage`: one enum for the file, the
/// command line and the stage runner. Written out rather than derived so the `--help` text
/// lists only the names (a derive would add each variant's doc comment).
impl clap::ValueEnum for StageChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            StageChoice::Full,
            StageChoice::Preflight,
            StageChoice::ImageCache,
            StageChoice::Provision,
            StageChoice::Runtime,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// A secret string: never printed, never serialized in clear.
#[derive(Clone, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The clear value. Call only where the secret is consumed (hashing).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// One `kvm_cloud_image_catalog` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogImage {
    /// Name instances refer to (letters, digits, `-_.`).
    pub image_name: String,
    /// `http(s)://` or `file:///` URL of the qcow2 (`…/latest/…` is pinned to the dated build).
    // Serialized redacted (JSON output included): credentials and tokens stay in the file.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub image_url: String,
    /// The `SHA512SUMS` beside the image (`file:///` for air-gapped hosts).
    #[serde(serialize_with = "serialize_redacted_url")]
    pub image_checksum_manifest_url: String,
    /// Pin the expected SHA-512 (128 hex digits); no manifest is read.
    #[serde(default)]
    pub image_sha512: Option<String>,
}

fn serialize_redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&kvmprov_image::redact_url(url))
}

/// `kvm_cloud_init_defaults`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInitDefaults {
    /// Login user (lowercase, not root), with passwordless sudo.
    #[serde(default = "default_user")]
    pub user: String,
    /// Plain in the file; only a SHA-512 crypt hash reaches the guest. Without it (and without password_hash and password_file) the password is locked.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A SHA-512 crypt hash (`$6$…`, as `mkpasswd -m sha-512` or `openssl passwd -6` make), used as it is. Not with password or password_file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub password_hash: Option<Secret>,
    /// A file whose first line is the password (relative to the variables file), read when kvmprov runs; it must belong to the user kvmprov runs as and not be readable by group or others. Not with password or password_hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub password_file: Option<PathBuf>,
    /// Public keys allowed to log in (kvmprov adds its own operator key).
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Allow SSH password login.
    #[serde(default)]
    pub ssh_password_authentication: bool,
    /// The operator's own cloud-config for every instance (a mapping); merged with each instance's (lists concatenate, the instance's scalars win). Keys kvmprov sets (users' login user, ssh_keys, ssh_pwauth, chpasswd, hostname…) are errors. Not with user_data_file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub user_data: Option<UserData>,
    /// A cloud-config file (YAML mapping; relative to the variables file) used as user_data. It must belong to root or the user kvmprov runs as and not be writable by others. Not with user_data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub user_data_file: Option<PathBuf>,
}

/// An inline cloud-config mapping. Its typed form is read from the document tree (which keeps
/// each scalar as written, quoted or plain, and where it is): this value only checks that it is
/// a mapping, and is what `kvmprov check --output json` shows.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(transparent)]
pub struct UserData(serde_json::Map<String, serde_json::Value>);

impl Default for CloudInitDefaults {
    fn default() -> Self {
        CloudInitDefaults {
            user: default_user(),
            password: None,
            ssh_authorized_keys: Vec::new(),
            ssh_password_authentication: false,
            password_hash: None,
            password_file: None,
            user_data: None,
            user_data_file: None,
        }
    }
}

fn default_user() -> String {
    "debian".to_string()
}

/// One `kvm_instance_definitions` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = image_name_or_profile)]
pub struct InstanceDefinition {
    /// Domain and host name: 1–63 of `A-Z a-z 0-9 -`, not starting or ending with `-`, unique (case-insensitively).
    pub instance_name: String,
    /// A `kvm_instance_profiles` name: this instance takes the profile's fields it does not set itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub profile: Option<String>,
    /// A catalog `image_name`.
    pub image_name: String,
    /// Virtual CPUs, 1–256.
    #[serde(default = "default_vcpus")]
    #[schemars(range(min = 1, max = 256))]
    pub vcpus: u32,
    /// Memory in MiB, 128–4194304.
    #[serde(default = "default_memory")]
    #[schemars(range(min = 128, max = 4194304))]
    pub memory_mib: u64,
    /// Virtual size of the overlay disk in GiB, 1–65536 (at least the image's virtual size).
    #[serde(default = "default_disk")]
    #[schemars(range(min = 1, max = 65536))]
    pub disk_size_gib: u64,
    /// Network to attach to; else `kvm_default_libvirt_network_name`.
    #[serde(default)]
    pub libvirt_network_name: Option<String>,
    /// Static address with prefix (`192.168.122.50/24`, prefix 8–30, unique); else DHCP.
    #[serde(default)]
    pub ipv4_address: Option<String>,
    /// Default gateway for a static address; default: the first host of the subnet.
    #[serde(default)]
    pub ipv4_gateway: Option<String>,
    /// DNS servers for a static address; default: the gateway.
    #[serde(default)]
    pub dns_servers: Vec<String>,
    /// MAC address; else a stable `52:54:00:…` derived from the instance name.
    #[serde(default)]
    pub mac_address: Option<String>,
    /// Several NICs, in device order (instead of libvirt_network_name, ipv4_address, ipv4_gateway, dns_servers and mac_address, which describe one). Each NIC is matched by MAC in the guest; only the primary one (the first unless one says `primary: true`) has default routes, and kvmprov reaches the guest on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("default" = []))]
    pub nics: Vec<NicDefinition>,
    /// Snapshot taken once after the first successful runtime check; `kvmprov snapshot` lists, reverts and deletes it. With `uefi` it needs libvirt 10.10 or newer on the hypervisor: kvmprov then gives the guest a qcow2 NVRAM (a qcow2 copy of OVMF's variable store template, `kvmprov-OVMF_VARS_4M*.qcow2` in the instance pool), which libvirt's snapshots need.
    #[serde(default)]
    pub snapshot_name: Option<String>,
    /// Passed to cloud-init `packages`.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Passed to cloud-init `runcmd`.
    #[serde(default)]
    pub runcmd: Vec<String>,
    /// `localhost` or `[user@]host`: this instance's hypervisor; else `kvm_hypervisor_host`
    /// (or `kvm_libvirt_uri`).
    #[serde(default)]
    pub hypervisor_host: Option<String>,
    /// `bios` or `uefi` (OVMF; the NVRAM is `<name>_VARS.fd` in the instance pool); else `kvm_default_firmware`.
    #[serde(default)]
    pub firmware: Option<FirmwareChoice>,
    /// With `uefi`: OVMF with Secure Boot and Microsoft's keys enrolled.
    #[serde(default)]
    pub secure_boot: bool,
    /// Fully qualified host name (`app-01.example.com`, its first label the instance_name): cloud-init's hostname, fqdn and /etc/hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub fqdn: Option<String>,
    /// This instance's own cloud-config, laid over `kvm_cloud_init_defaults.user_data` (lists concatenate, defaults first; mappings merge key by key; otherwise the instance's value wins). Not with user_data_file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub user_data: Option<UserData>,
    /// A cloud-config file (relative to the variables file) used as this instance's user_data. Not with user_data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub user_data_file: Option<PathBuf>,
    /// Data disks: empty qcow2 volumes `<instance_name>_<name>.qcow2` in the instance pool, kept when the instance is re-created and by `cleanup-force` (removed only with kvm_cleanup_remove_instance_disks). An existing volume is used as it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("default" = []))]
    pub disks: Vec<DataDiskDefinition>,
}

/// An instance may take its image_name from its profile: the schema asks for one or the other
/// (serde reads the instance with the profile laid under it, where image_name is required).
fn image_name_or_profile(schema: &mut schemars::Schema) {
    if let Some(required) = schema
        .get_mut("required")
        .and_then(serde_json::Value::as_array_mut)
    {
        required.retain(|field| field != "image_name");
    }
    schema.insert(
        "anyOf".into(),
        serde_json::json!([{ "required": ["image_name"] }, { "required": ["profile"] }]),
    );
}

fn default_vcpus() -> u32 {
    2
}
fn default_memory() -> u64 {
    2048
}
fn default_disk() -> u64 {
    20
}

/// The raw file, as written (defaults filled in by serde). Doc comments here are the
/// descriptions in `kvmprov schema`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "kvmprov variables file",
    description = "Settings of kvmprov (vars/kvm-provisioning.yml): the hypervisor, the image catalog, cloud-init access and the instances. Unknown keys are errors."
)]
pub struct Vars {
    /// `localhost` → `qemu:///system`; `[user@]host` → `qemu+ssh://[user@]host/system`.
    #[serde(default = "default_host")]
    pub kvm_hypervisor_host: String,
    /// Explicit libvirt URI; wins over `kvm_hypervisor_host`.
    #[serde(default)]
    pub kvm_libvirt_uri: String,
    /// `auto` (kvm if offered, else qemu), `kvm`, `qemu` (TCG emulation).
    #[serde(default)]
    pub kvm_domain_type: DomainTypeChoice,
    /// Firmware of instances that name none: `bios` (SeaBIOS) or `uefi` (OVMF).
    #[serde(default)]
    pub kvm_default_firmware: FirmwareChoice,
    /// Stage `kvmprov provision` runs: `full`, `preflight`, `image-cache`, `provision`, `runtime`.
    #[serde(default)]
    pub kvm_provision_stage: StageChoice,
    /// Cached base images (absolute; not inside the instance pool, nor the reverse).
    #[serde(default = "default_cache_path")]
    pub kvm_image_cache_path: PathBuf,
    /// Per-instance disks, seeds, console logs and kvmprov's keys (`.kvmprov/`, mode 0700).
    #[serde(default = "default_pool_path")]
    pub kvm_instance_disk_pool_path: PathBuf,
    /// Re-hash cached images on every run; a damaged file is moved aside and downloaded again.
    #[serde(default)]
    pub kvm_image_cache_verify_on_run: bool,
    /// Grant the qemu user (`libvirt-qemu`) traverse access with `setfacl` where it lacks it.
    #[serde(default = "yes")]
    pub kvm_auto_fix_runtime_pool_access: bool,
    /// Network for instances that name none.
    #[serde(default = "default_network")]
    pub kvm_default_libvirt_network_name: String,
    /// Start required networks that are defined but inactive.
    #[serde(default)]
    pub kvm_auto_start_required_libvirt_networks: bool,
    /// Mark domains to start with the hypervisor.
    #[serde(default)]
    pub kvm_domain_autostart: bool,
    /// Deadline per guest for address, SSH and cloud-init, in seconds.
    #[serde(default = "default_runtime_timeout")]
    #[schemars(range(min = 1))]
    pub kvm_runtime_timeout_seconds: u64,
    /// The images instances can use.
    #[serde(default)]
    pub kvm_cloud_image_catalog: Vec<CatalogImage>,
    /// Cloud-init access for every instance.
    #[serde(default)]
    pub kvm_cloud_init_defaults: CloudInitDefaults,
    /// The instances.
    #[serde(default)]
    pub kvm_instance_definitions: Vec<InstanceDefinition>,
    /// Named sets of instance fields; an instance names one with `profile`. The instance's own fields win, each replacing the profile's whole (lists too); user_data layers instead: kvm_cloud_init_defaults', then the profile's, then the instance's. A profile sets neither instance_name nor profile.
    #[serde(default)]
    pub kvm_instance_profiles: BTreeMap<String, InstanceProfile>,
    /// Cleanup really removes (else it prints the plan).
    #[serde(default)]
    pub kvm_cleanup_confirmed: bool,
    /// Cleanup also deletes the instances' files.
    #[serde(default)]
    pub kvm_cleanup_remove_instance_disks: bool,
    /// Provision applies drift (the changes it can make live or with a restart; else it only reports them).
    #[serde(default)]
    pub kvm_drift_apply_confirmed: bool,
    /// With kvm_drift_apply_confirmed: drift that needs the guest re-created (image, firmware, addresses, login, packages, user_data, …) is applied too, one guest at a time: a new seed and domain, a new root disk for image or firmware; data disks are kept (else it is only reported).
    #[serde(default)]
    pub kvm_drift_recreate_confirmed: bool,
    /// When drift is applied: how many guests of a hypervisor may be restarting at once.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1))]
    pub kvm_drift_max_unavailable: u32,
}

fn default_host() -> String {
    "localhost".to_string()
}
fn default_cache_path() -> PathBuf {
    PathBuf::from("/var/lib/kvm-provisioning/images")
}
fn default_pool_path() -> PathBuf {
    PathBuf::from("/var/lib/kvm-provisioning/instances")
}
fn default_network() -> String {
    "default".to_string()
}
fn default_runtime_timeout() -> u64 {
    900
}
fn default_max_unavailable() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// One `kvm_instance_profiles` entry: any instance fields but `instance_name` and `profile`.
/// It is read from the document tree, where it is laid under the instances that name it (see
/// `profiles`); this value is what `kvmprov schema` describes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(transparent)]
pub struct InstanceProfile(serde_json::Map<String, serde_json::Value>);

/// An instance definition's schema with nothing required and without the two fields a profile
/// cannot set: a field added to [`InstanceDefinition`] is described here too.
impl JsonSchema for InstanceProfile {
    fn schema_name() -> Cow<'static, str> {
        "InstanceProfile".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = InstanceDefinition::json_schema(generator);
        if let Some(object) = schema.as_object_mut() {
            object.remove("required");
            object.remove("anyOf");
            if let Some(serde_json::Value::Object(properties)) = object.get_mut("properties") {
                properties.remove("instance_name");
                properties.remove("profile");
            }
            object.insert(
                "description".into(),
                "Instance fields an instance naming this profile takes where it sets none.".into(),
            );
        }
        schema
    }
}
/// QEMU's NIC model (`<model type=…>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    /// Paravirtual: fastest; Debian's cloud kernels have the driver.
    #[default]
    Virtio,
    /// Intel 82574 (PCIe): for guests without virtio drivers.
    E1000e,
    /// Intel 82540EM (PCI).
    E1000,
    /// Realtek 8139 (PCI), for very old guests.
    Rtl8139,
}

impl NicModel {
    pub fn as_str(self) -> &'static str {
        match self {
            NicModel::Virtio => "virtio",
            NicModel::E1000e => "e1000e",
            NicModel::E1000 => "e1000",
            NicModel::Rtl8139 => "rtl8139",
        }
    }

    pub(super) fn is_virtio(&self) -> bool {
        *self == NicModel::Virtio
    }
}

/// One entry of an instance's `nics`: on a libvirt network or directly on a host bridge.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["network"]}, {"required": ["bridge"]}]))]
pub struct NicDefinition {
    /// The libvirt network this NIC joins (any forward mode: NAT, routed, isolated, bridge, open). Exactly one of network and bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("type" = "string"))]
    pub network: Option<String>,
    /// A Linux bridge on the hypervisor (`br0`) the NIC is plugged into directly, with no libvirt network (`<interface type='bridge'>`); its DHCP server, if any, is not libvirt's: kvmprov finds a DHCP address on the guest's serial console. Exactly one of network and bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("type" = "string"))]
    pub bridge: Option<String>,
    /// MAC address; else the first NIC (or the primary one) gets the instance's stable `52:54:00:…` MAC, the others one derived from the name and the NIC's position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub mac: Option<String>,
    /// Static IPv4 address with prefix (`10.77.0.10/24`, prefix 8–30, unique); else DHCPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub ipv4_address: Option<String>,
    /// The primary NIC's IPv4 default gateway; default: the first host of the subnet. Only on the primary NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub ipv4_gateway: Option<String>,
    /// DNS servers (IPv4) for a static ipv4_address; on the primary NIC default: the gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("default" = []))]
    pub dns_servers: Vec<String>,
    /// Static IPv6 address with prefix (`fd77::10/64`, unique); router advertisements are accepted either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub ipv6_address: Option<String>,
    /// The primary NIC's IPv6 default gateway (needs ipv6_address). Only on the primary NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub ipv6_gateway: Option<String>,
    /// `virtio` (default), `e1000e`, `e1000` or `rtl8139`.
    #[serde(default, skip_serializing_if = "NicModel::is_virtio")]
    #[schemars(extend("default" = "virtio"))]
    pub model: NicModel,
    /// The NIC kvmprov reaches the guest on and the only one with default routes; default: the first. At most one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub primary: bool,
}
