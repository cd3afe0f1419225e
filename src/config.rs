//! The variables file (`vars/kvm-provisioning.yml`): parsing, `-e` overrides, defaults and
//! validation into resolved [`Config`] settings.
//!
//! Parsing keeps the YAML node tree (with positions) beside the typed values, so that every
//! error — a serde type error, an unknown key or a rule broken across fields — names the file,
//! line and column (or the `-e` argument) it comes from.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

use ipnet::Ipv4Net;
use marked_yaml::types::{MarkedScalarNode, Node};
use marked_yaml::{LoaderOptions, Span};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest variables file we read: a real one is a few KiB; this bounds memory on hostile input.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Every top-level key of the variables file (the seed's names plus ours).
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
    "kvm_cleanup_confirmed",
    "kvm_cleanup_remove_instance_disks",
];

/// Where a problem sits: a position in the file or an `-e` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    Override {
        argument: String,
    },
    Unknown {
        path: PathBuf,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Location::Override { argument } => write!(f, "-e {argument}"),
            Location::Unknown { path } => write!(f, "{}", path.display()),
        }
    }
}

/// A configuration error: always with a location.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes; this is not a variables file")]
    TooLarge { path: PathBuf },
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
    #[error("-e {argument}: {message}")]
    BadOverride { argument: String, message: String },
}

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
    fn is_bios(&self) -> bool {
        *self == FirmwareChoice::Bios
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FirmwareChoice::Bios => "bios",
            FirmwareChoice::Uefi => "uefi",
        }
    }
}

/// The seed's `kvm_provision_stage`.
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
    /// Plain in the file; only a SHA-512 crypt hash reaches the guest. Without it the password is locked.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Public keys allowed to log in (kvmprov adds its own operator key).
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Allow SSH password login.
    #[serde(default)]
    pub ssh_password_authentication: bool,
}

impl Default for CloudInitDefaults {
    fn default() -> Self {
        CloudInitDefaults {
            user: default_user(),
            password: None,
            ssh_authorized_keys: Vec::new(),
            ssh_password_authentication: false,
        }
    }
}

fn default_user() -> String {
    "debian".to_string()
}

/// One `kvm_instance_definitions` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceDefinition {
    /// Domain and host name: 1–63 of `A-Z a-z 0-9 -`, not starting or ending with `-`, unique (case-insensitively).
    pub instance_name: String,
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
    /// Snapshot taken once after the first successful runtime check (not with `uefi`: libvirt takes no internal snapshots of a guest with UEFI NVRAM).
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
    /// Cleanup really removes (else it prints the plan).
    #[serde(default)]
    pub kvm_cleanup_confirmed: bool,
    /// Cleanup also deletes the instances' files.
    #[serde(default)]
    pub kvm_cleanup_remove_instance_disks: bool,
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
fn yes() -> bool {
    true
}

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
    pub network: String,
    pub ipv4: Option<StaticIpv4>,
    pub mac: Option<String>,
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
}

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
    pub instances: Vec<Instance>,
    pub cleanup_confirmed: bool,
    pub cleanup_remove_disks: bool,
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
        c
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// The networks the instances need, each once.
    pub fn required_networks(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for i in &self.instances {
            if !seen.contains(&i.network) {
                seen.push(i.network.clone());
            }
        }
        seen
    }
}

/// Load, override and validate a variables file.
pub fn load(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, overrides)
}

/// Parse text as if it came from `path` (pure: used by `load` and the tests).
pub fn parse(path: &Path, text: &str, overrides: &[String]) -> Result<Config, ConfigError> {
    let ctx = Ctx { path, overrides };
    // An empty file is an empty mapping: every default applies.
    let mut root = if text.trim().is_empty() {
        Node::from(marked_yaml::types::MarkedMappingNode::new_empty(
            Span::new_blank(),
        ))
    } else {
        marked_yaml::parse_yaml_with_options(0, text, loader_options())
            .map_err(|e| ctx.load_error(e))?
    };
    for (i, arg) in overrides.iter().enumerate() {
        apply_override(&mut root, i + 1, arg)?;
    }
    drop_nulls(&mut root);
    let vars: Vars = marked_yaml::from_node(&root).map_err(|e| ctx.serde_error(&root, e))?;
    resolve(&ctx, &root, vars)
}

/// A key whose value is YAML's null (`null`, `Null`, `NULL` or `~`) is not set: it is dropped so
/// its default applies, as the schema says. The loader hands serde the string "null" (so
/// `password: null` was the password "null"). The loader does not tell a quoted "null" from a
/// plain one here: that is unset too (a locked password, never the password "null").
fn drop_nulls(node: &mut Node) {
    let is_null = |n: &Node| {
        n.as_scalar()
            .is_some_and(|s| matches!(s.as_str(), "null" | "Null" | "NULL" | "~"))
    };
    match node {
        Node::Mapping(m) => {
            m.retain(|_, v| !is_null(v));
            m.iter_mut().for_each(|(_, v)| drop_nulls(v));
        }
        Node::Sequence(s) => s.iter_mut().for_each(drop_nulls),
        Node::Scalar(_) => {}
    }
}

fn loader_options() -> LoaderOptions {
    // Duplicate keys silently losing a value is the kind of thing that deletes the wrong VM.
    LoaderOptions::default().error_on_duplicate_keys(true)
}

/// Words that make a key secret (`password`, `private_key`, `api_token`…): its value is never
/// echoed in an error.
const SECRET_WORDS: &[&str] = &["password", "private", "secret", "token"];

/// An `-e` argument as errors show it: a value that mentions a secret field is hidden whole,
/// naming the field instead. It is judged by its words, not parsed: a value that is not valid
/// YAML must not leak either.
fn shown_argument(arg: &str) -> String {
    let lower = arg.to_lowercase();
    let words: Vec<&str> = SECRET_WORDS
        .iter()
        .copied()
        .filter(|w| lower.contains(w))
        .collect();
    if words.is_empty() {
        return arg.to_string();
    }
    let fields = words.join("`/`");
    match arg.split_once('=') {
        Some((key, _)) if !SECRET_WORDS.iter().any(|w| key.to_lowercase().contains(w)) => {
            format!("{key}=… (value not shown: it sets a `{fields}` field)")
        }
        _ => format!("… (argument not shown: it mentions a `{fields}` field)"),
    }
}

/// `-e KEY=VALUE`: VALUE is YAML (so `true` is a boolean, `[a, b]` a list).
fn apply_override(root: &mut Node, source: usize, arg: &str) -> Result<(), ConfigError> {
    let bad = |message: String| ConfigError::BadOverride {
        argument: shown_argument(arg),
        message,
    };
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE".to_string()))?;
    let key = key.trim();
    if !TOP_LEVEL_KEYS.contains(&key) {
        return Err(bad(format!(
            "unknown variable `{key}`{}",
            did_you_mean(key, TOP_LEVEL_KEYS)
        )));
    }
    if value.contains('\n') || value.contains('\r') {
        return Err(bad("the value must be on one line".to_string()));
    }
    let doc = format!("value: {value}");
    let parsed =
        marked_yaml::parse_yaml_with_options(source, &doc, loader_options()).map_err(|e| {
            bad(format!(
                "the value is not valid YAML: {}",
                load_error_message(&e)
            ))
        })?;
    let value_node = parsed
        .as_mapping()
        .and_then(|m| m.get_node("value"))
        .cloned()
        .ok_or_else(|| bad("the value is not valid YAML".to_string()))?;
    let map = root
        .as_mapping_mut()
        .ok_or_else(|| bad("the variables file is not a mapping".to_string()))?;
    let key_node = MarkedScalarNode::new(Span::new_blank(), key);
    map.remove(&key_node);
    map.insert(key_node, value_node);
    Ok(())
}

/// The context errors are located in.
struct Ctx<'a> {
    path: &'a Path,
    overrides: &'a [String],
}

impl Ctx<'_> {
    fn location(&self, span: &Span) -> Location {
        match span.start() {
            Some(m) if m.source() == 0 => Location::File {
                path: self.path.to_path_buf(),
                line: m.line(),
                column: m.column(),
            },
            Some(m) => Location::Override {
                argument: self
                    .overrides
                    .get(m.source() - 1)
                    .map(|a| shown_argument(a))
                    .unwrap_or_default(),
            },
            None => Location::Unknown {
                path: self.path.to_path_buf(),
            },
        }
    }

    fn invalid(&self, span: &Span, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            location: self.location(span),
            message: message.into(),
        }
    }

    fn load_error(&self, e: marked_yaml::LoadError) -> ConfigError {
        use marked_yaml::LoadError as L;
        let mark = match &e {
            L::TopLevelMustBeMapping(m)
            | L::TopLevelMustBeSequence(m)
            | L::UnexpectedAnchor(m)
            | L::MappingKeyMustBeScalar(m)
            | L::UnexpectedTag(m)
            | L::ScanError(m, _) => Some(*m),
            L::DuplicateKey(d) => d.key.span().start().copied(),
        };
        ConfigError::Invalid {
            location: match mark {
                Some(m) => Location::File {
                    path: self.path.to_path_buf(),
                    line: m.line(),
                    column: m.column(),
                },
                None => Location::Unknown {
                    path: self.path.to_path_buf(),
                },
            },
            message: load_error_message(&e),
        }
    }

    fn serde_error(&self, root: &Node, e: marked_yaml::FromNodeError) -> ConfigError {
        use marked_yaml::Error as E;
        let span = match &*e {
            E::NotBoolean(s)
            | E::IntegerParseFailure(_, s)
            | E::FloatParseFailure(_, s)
            | E::UnknownFieldError(_, _, s)
            | E::Other(_, s) => *s,
        };
        // The loader gives an unknown key the span of its mapping: point at the key itself.
        let span = match &*e {
            E::UnknownFieldError(field, _, _) => find_key(root, field).unwrap_or(span),
            _ => span,
        };
        let message = match &*e {
            E::UnknownFieldError(field, expected, _) => {
                format!("unknown key `{field}`{}", did_you_mean(field, expected))
            }
            E::NotBoolean(_) => "expected a boolean (true or false)".to_string(),
            E::IntegerParseFailure(err, _) => format!("expected a whole number: {err}"),
            E::FloatParseFailure(err, _) => format!("expected a number: {err}"),
            E::Other(msg, _) => msg.clone(),
        };
        // serde reports a missing field at the start of its mapping; without a start mark
        // (a blank span) fall back to the top of the file.
        let span = if span.start().is_none() {
            *root.span()
        } else {
            span
        };
        self.invalid(&span, message)
    }
}

fn load_error_message(e: &marked_yaml::LoadError) -> String {
    use marked_yaml::LoadError as L;
    match e {
        L::TopLevelMustBeMapping(_) => {
            "the file must be a mapping of variables (key: value)".into()
        }
        L::TopLevelMustBeSequence(_) => "expected a list".into(),
        L::UnexpectedAnchor(_) => {
            "YAML anchors and aliases are not supported (they can expand without bound)".into()
        }
        L::MappingKeyMustBeScalar(_) => "mapping keys must be plain strings".into(),
        L::UnexpectedTag(_) => "YAML tags (`!tag`) are not supported".into(),
        L::ScanError(_, err) => format!("YAML syntax error: {}", err.info()),
        L::DuplicateKey(d) => {
            let first = d
                .prev_key
                .span()
                .start()
                .map(|m| format!(" (first set on line {})", m.line()))
                .unwrap_or_default();
            format!("duplicate key `{}`{first}", d.key.as_str())
        }
    }
}

/// ", did you mean `x`?" when a known name is close.
pub fn did_you_mean(given: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(given, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!(", did you mean `{k}`?"))
        .unwrap_or_default()
}

/// Spans of nodes by path, for errors found after deserialization.
fn span_at(root: &Node, path: &[Seg]) -> Span {
    let mut node = root;
    let mut best = *root.span();
    for seg in path {
        let next = match (seg, node) {
            (Seg::Key(k), Node::Mapping(m)) => m.get_node(k),
            (Seg::Index(i), Node::Sequence(s)) => s.get(*i),
            _ => None,
        };
        match next {
            Some(n) => {
                node = n;
                if n.span().start().is_some() {
                    best = *n.span();
                }
            }
            None => break,
        }
    }
    best
}

/// The first mapping key named `name`, depth first in document order.
fn find_key(node: &Node, name: &str) -> Option<Span> {
    match node {
        Node::Mapping(m) => m.iter().find_map(|(k, v)| {
            if k.as_str() == name {
                Some(*k.span())
            } else {
                find_key(v, name)
            }
        }),
        Node::Sequence(s) => s.iter().find_map(|n| find_key(n, name)),
        Node::Scalar(_) => None,
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}
use Seg::{Index, Key};

/// Valid libvirt domain name and host name label: what we accept as an instance name.
pub fn valid_instance_name(name: &str) -> Result<(), String> {
    let len = name.len();
    if !(1..=63).contains(&len) {
        return Err(format!("must be 1 to 63 characters long, not {len}"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(
            "may contain only ASCII letters, digits and `-` (it becomes the host name)".into(),
        );
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not start or end with `-`".into());
    }
    Ok(())
}

/// Names of snapshots, images and networks: safe in paths and XML.
fn valid_simple_name(name: &str) -> Result<(), String> {
    let len = name.len();
    if !(1..=64).contains(&len) {
        return Err(format!("must be 1 to 64 characters long, not {len}"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || name.starts_with('.')
    {
        return Err("may contain only ASCII letters, digits, `-`, `_` and `.` (not first)".into());
    }
    Ok(())
}

fn check_path(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("`{}` must be an absolute path", p.display()));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "`{}` must not contain `.` or `..` components",
            p.display()
        ));
    }
    if p == Path::new("/") {
        return Err("must not be the root directory".into());
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), String> {
    let ok = ["http://", "https://", "file:///"]
        .iter()
        .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
    if !ok {
        return Err(format!(
            "`{}` must be an http://, https:// or file:/// URL",
            kvmprov_image::redact_url(url)
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{}` contains white space",
            kvmprov_image::redact_url(url)
        ));
    }
    Ok(())
}

fn parse_mac(mac: &str) -> Result<String, String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(format!(
            "`{mac}` is not a MAC address like 52:54:00:12:34:56"
        ));
    }
    let first = u8::from_str_radix(parts[0], 16).map_err(|e| e.to_string())?;
    if first & 1 == 1 {
        return Err(format!("`{mac}` is a multicast address"));
    }
    Ok(mac.to_ascii_lowercase())
}

fn parse_static(
    address: &str,
    gateway: Option<&str>,
    dns: &[String],
) -> Result<StaticIpv4, (&'static str, String)> {
    let net: Ipv4Net = address.parse().map_err(|_| {
        (
            "ipv4_address",
            format!("`{address}` is not an IPv4 address with prefix, like 192.168.122.50/24"),
        )
    })?;
    if !(8..=30).contains(&net.prefix_len()) {
        return Err((
            "ipv4_address",
            format!(
                "prefix /{} is not usable for a host (use /8 to /30)",
                net.prefix_len()
            ),
        ));
    }
    let host = net.addr();
    if host == net.network() || host == net.broadcast() {
        return Err((
            "ipv4_address",
            format!(
                "`{host}` is the network or broadcast address of {}",
                net.trunc()
            ),
        ));
    }
    if host.is_loopback() || host.is_multicast() || host.is_unspecified() || host.is_broadcast() {
        return Err((
            "ipv4_address",
            format!("`{host}` is not a unicast host address"),
        ));
    }
    let gateway = match gateway {
        Some(g) => {
            let g: Ipv4Addr = g
                .parse()
                .map_err(|_| ("ipv4_gateway", format!("`{g}` is not an IPv4 address")))?;
            if !net.contains(&g) || g == host {
                return Err((
                    "ipv4_gateway",
                    format!(
                        "gateway `{g}` must be another address inside {}",
                        net.trunc()
                    ),
                ));
            }
            g
        }
        None => {
            // libvirt's NAT networks put the host at the first address of the subnet.
            let first = Ipv4Addr::from(u32::from(net.network()) + 1);
            if first == host {
                return Err(("ipv4_address",
                    format!("`{host}` is the subnet's first address, which is the default gateway; set ipv4_gateway"),
                ));
            }
            first
        }
    };
    let mut servers = Vec::new();
    for d in dns {
        servers.push(
            d.parse::<Ipv4Addr>()
                .map_err(|_| ("dns_servers", format!("`{d}` is not an IPv4 address")))?,
        );
    }
    if servers.is_empty() {
        servers.push(gateway);
    }
    Ok(StaticIpv4 {
        address: net,
        gateway,
        dns: servers,
    })
}

/// `localhost` → `qemu:///system`; `[user@]host` → `qemu+ssh://[user@]host/system`.
pub fn libvirt_uri_for(host: &str) -> Result<String, String> {
    if host == "localhost" || host == "127.0.0.1" || host == "::1" {
        return Ok("qemu:///system".to_string());
    }
    let (user, name) = match host.split_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, host),
    };
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !s.starts_with('-')
    };
    if !label_ok(name) || user.is_some_and(|u| !label_ok(u)) {
        return Err(format!(
            "`{host}` is not `localhost` or `[user@]host` (letters, digits, `-`, `.`, `_`)"
        ));
    }
    Ok(format!("qemu+ssh://{host}/system"))
}

fn resolve(ctx: &Ctx, root: &Node, v: Vars) -> Result<Config, ConfigError> {
    let at = |path: &[Seg]| span_at(root, path);

    // Hypervisor.
    let libvirt_uri = if v.kvm_libvirt_uri.trim().is_empty() {
        libvirt_uri_for(v.kvm_hypervisor_host.trim())
            .map_err(|m| ctx.invalid(&at(&[Key("kvm_hypervisor_host")]), m))?
    } else {
        let uri = v.kvm_libvirt_uri.trim().to_string();
        if !uri.contains(":/") {
            return Err(ctx.invalid(
                &at(&[Key("kvm_libvirt_uri")]),
                format!("`{uri}` is not a libvirt URI such as qemu:///system"),
            ));
        }
        uri
    };

    // Paths.
    for (key, p) in [
        ("kvm_image_cache_path", &v.kvm_image_cache_path),
        (
            "kvm_instance_disk_pool_path",
            &v.kvm_instance_disk_pool_path,
        ),
    ] {
        check_path(p).map_err(|m| ctx.invalid(&at(&[Key(key)]), m))?;
    }
    let (cache, pool) = (&v.kvm_image_cache_path, &v.kvm_instance_disk_pool_path);
    if cache == pool || cache.starts_with(pool) || pool.starts_with(cache) {
        return Err(ctx.invalid(
            &at(&[Key("kvm_instance_disk_pool_path")]),
            format!(
                "the instance pool `{}` and the image cache `{}` must be separate directories, neither inside the other (cleanup deletes in one and must never reach the other)",
                pool.display(),
                cache.display()
            ),
        ));
    }
    if v.kvm_runtime_timeout_seconds == 0 {
        return Err(ctx.invalid(
            &at(&[Key("kvm_runtime_timeout_seconds")]),
            "must be at least 1 second",
        ));
    }
    valid_simple_name(&v.kvm_default_libvirt_network_name)
        .map_err(|m| ctx.invalid(&at(&[Key("kvm_default_libvirt_network_name")]), m))?;

    // Catalog.
    let mut image_names: Vec<&str> = Vec::new();
    for (i, c) in v.kvm_cloud_image_catalog.iter().enumerate() {
        let here = |field| at(&[Key("kvm_cloud_image_catalog"), Index(i), Key(field)]);
        valid_simple_name(&c.image_name)
            .map_err(|m| ctx.invalid(&here("image_name"), format!("image_name {m}")))?;
        if image_names.contains(&c.image_name.as_str()) {
            return Err(ctx.invalid(
                &here("image_name"),
                format!("image_name `{}` is declared twice", c.image_name),
            ));
        }
        image_names.push(&c.image_name);
        check_url(&c.image_url).map_err(|m| ctx.invalid(&here("image_url"), m))?;
        check_url(&c.image_checksum_manifest_url)
            .map_err(|m| ctx.invalid(&here("image_checksum_manifest_url"), m))?;
        if let Some(sum) = &c.image_sha512 {
            if sum.len() != 128 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ctx.invalid(
                    &here("image_sha512"),
                    "image_sha512 must be 128 hexadecimal digits",
                ));
            }
        }
    }

    // cloud-init defaults.
    let ci = &v.kvm_cloud_init_defaults;
    let user_ok = !ci.user.is_empty()
        && ci.user.len() <= 32
        && ci
            .user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
        && ci.user.as_bytes()[0].is_ascii_lowercase()
        && ci.user != "root";
    if !user_ok {
        return Err(ctx.invalid(
            &at(&[Key("kvm_cloud_init_defaults"), Key("user")]),
            format!(
                "user `{}` must be a lowercase login name (not root), like debian",
                ci.user
            ),
        ));
    }
    if ci.password.as_ref().is_some_and(|p| p.expose().is_empty()) {
        return Err(ctx.invalid(
            &at(&[Key("kvm_cloud_init_defaults"), Key("password")]),
            "password is empty: remove the key to lock password login instead",
        ));
    }
    for (i, key) in ci.ssh_authorized_keys.iter().enumerate() {
        if !key.starts_with("ssh-") && !key.starts_with("ecdsa-") && !key.starts_with("sk-") {
            return Err(ctx.invalid(
                &at(&[
                    Key("kvm_cloud_init_defaults"),
                    Key("ssh_authorized_keys"),
                    Index(i),
                ]),
                "not an OpenSSH public key line (ssh-ed25519 AAAA…, ssh-rsa …)",
            ));
        }
    }

    // Instances.
    let mut instances = Vec::new();
    let mut seen_names: HashSet<String> = HashSet::new();
    let mut seen_ips: HashSet<Ipv4Addr> = HashSet::new();
    // MAC → the instance that has it: two NICs with one MAC on a network break both guests.
    let mut seen_macs: HashMap<String, String> = HashMap::new();
    for (i, d) in v.kvm_instance_definitions.iter().enumerate() {
        let here = |field| at(&[Key("kvm_instance_definitions"), Index(i), Key(field)]);
        valid_instance_name(&d.instance_name).map_err(|m| {
            ctx.invalid(
                &here("instance_name"),
                format!("instance_name `{}` {m}", d.instance_name.escape_debug()),
            )
        })?;
        // Host names are case-insensitive: two names differing only in case collide.
        if !seen_names.insert(d.instance_name.to_ascii_lowercase()) {
            return Err(ctx.invalid(
                &here("instance_name"),
                format!("instance_name `{}` is declared twice", d.instance_name),
            ));
        }
        if !image_names.contains(&d.image_name.as_str()) {
            let known: Vec<&str> = image_names.clone();
            return Err(ctx.invalid(
                &here("image_name"),
                format!(
                    "image_name `{}` is not in kvm_cloud_image_catalog (known: {}){}",
                    d.image_name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    },
                    did_you_mean(&d.image_name, &known)
                ),
            ));
        }
        if !(1..=256).contains(&d.vcpus) {
            return Err(ctx.invalid(&here("vcpus"), "vcpus must be between 1 and 256"));
        }
        if !(128..=4 * 1024 * 1024).contains(&d.memory_mib) {
            return Err(ctx.invalid(
                &here("memory_mib"),
                "memory_mib must be between 128 and 4194304",
            ));
        }
        if !(1..=65536).contains(&d.disk_size_gib) {
            return Err(ctx.invalid(
                &here("disk_size_gib"),
                "disk_size_gib must be between 1 and 65536",
            ));
        }
        let network = d
            .libvirt_network_name
            .clone()
            .unwrap_or_else(|| v.kvm_default_libvirt_network_name.clone());
        valid_simple_name(&network).map_err(|m| {
            ctx.invalid(
                &here("libvirt_network_name"),
                format!("libvirt_network_name {m}"),
            )
        })?;
        let ipv4 = match &d.ipv4_address {
            Some(addr) => {
                let s = parse_static(addr, d.ipv4_gateway.as_deref(), &d.dns_servers)
                    .map_err(|(field, m)| ctx.invalid(&here(field), m))?;
                if !seen_ips.insert(s.address.addr()) {
                    return Err(ctx.invalid(
                        &here("ipv4_address"),
                        format!(
                            "ipv4_address {} is used by another instance",
                            s.address.addr()
                        ),
                    ));
                }
                Some(s)
            }
            None => {
                if d.ipv4_gateway.is_some() || !d.dns_servers.is_empty() {
                    return Err(ctx.invalid(
                        &here(if d.ipv4_gateway.is_some() {
                            "ipv4_gateway"
                        } else {
                            "dns_servers"
                        }),
                        "ipv4_gateway and dns_servers need a static ipv4_address",
                    ));
                }
                None
            }
        };
        let mac = d
            .mac_address
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(|m| ctx.invalid(&here("mac_address"), m))?;
        let effective_mac = mac
            .clone()
            .unwrap_or_else(|| kvmprov_hypervisor::xml::mac_for(&d.instance_name));
        if let Some(first) = seen_macs.get(&effective_mac) {
            let (field, how) = match mac {
                Some(_) => ("mac_address", "its mac_address"),
                None => ("instance_name", "the MAC derived from its name"),
            };
            return Err(ctx.invalid(
                &here(field),
                format!(
                    "instance `{}`: {how} {effective_mac} is already the MAC of instance `{first}`; set a distinct mac_address",
                    d.instance_name
                ),
            ));
        }
        seen_macs.insert(effective_mac, d.instance_name.clone());
        if let Some(s) = &d.snapshot_name {
            valid_simple_name(s)
                .map_err(|m| ctx.invalid(&here("snapshot_name"), format!("snapshot_name {m}")))?;
        }
        let instance_uri = match &d.hypervisor_host {
            Some(h) => libvirt_uri_for(h.trim()).map_err(|m| {
                ctx.invalid(&here("hypervisor_host"), format!("hypervisor_host {m}"))
            })?,
            None => libvirt_uri.clone(),
        };
        let firmware = d.firmware.unwrap_or(v.kvm_default_firmware);
        if d.secure_boot && firmware != FirmwareChoice::Uefi {
            return Err(ctx.invalid(
                &here("secure_boot"),
                "secure_boot needs firmware: uefi (set it on the instance or kvm_default_firmware)",
            ));
        }
        if firmware == FirmwareChoice::Uefi && d.snapshot_name.is_some() {
            // libvirt takes internal (qcow2) snapshots only; QEMU cannot snapshot the raw
            // pflash NVRAM a UEFI guest has, so libvirt refuses them for such domains.
            return Err(ctx.invalid(
                &here("snapshot_name"),
                "snapshot_name cannot be used with firmware: uefi (libvirt refuses internal snapshots of guests with UEFI NVRAM)",
            ));
        }
        instances.push(Instance {
            name: d.instance_name.clone(),
            image_name: d.image_name.clone(),
            vcpus: d.vcpus,
            memory_mib: d.memory_mib,
            disk_size_gib: d.disk_size_gib,
            network,
            ipv4,
            mac,
            snapshot_name: d.snapshot_name.clone(),
            packages: d.packages.clone(),
            runcmd: d.runcmd.clone(),
            libvirt_uri: instance_uri,
            firmware,
            secure_boot: d.secure_boot,
        });
    }

    Ok(Config {
        source: ctx.path.to_path_buf(),
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
        instances,
        cleanup_confirmed: v.kvm_cleanup_confirmed,
        cleanup_remove_disks: v.kvm_cleanup_remove_instance_disks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
kvm_image_cache_path: /srv/images
kvm_instance_disk_pool_path: /srv/instances
kvm_cloud_image_catalog:
  - image_name: debian-12
    image_url: http://127.0.0.1:1/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2
    image_checksum_manifest_url: http://127.0.0.1:1/images/cloud/bookworm/latest/SHA512SUMS
kvm_cloud_init_defaults:
  password: secret-pw
kvm_instance_definitions:
  - instance_name: app-01
    image_name: debian-12
  - instance_name: app-02
    image_name: debian-12
    ipv4_address: 192.168.122.50/24
";

    fn p(text: &str, ov: &[&str]) -> Result<Config, ConfigError> {
        let ov: Vec<String> = ov.iter().map(|s| s.to_string()).collect();
        parse(Path::new("vars.yml"), text, &ov)
    }

    fn err(text: &str, ov: &[&str]) -> String {
        match p(text, ov) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn firmware_defaults_to_bios_and_follows_the_top_level_default() {
        let c = p(GOOD, &[]).unwrap();
        assert!(c
            .instances
            .iter()
            .all(|i| i.firmware == FirmwareChoice::Bios));
        let c = p(GOOD, &["kvm_default_firmware=uefi"]).unwrap();
        assert!(c
            .instances
            .iter()
            .all(|i| i.firmware == FirmwareChoice::Uefi));
        let text = GOOD.replace(
            "  - instance_name: app-02\n",
            "  - instance_name: app-02\n    firmware: bios\n",
        );
        let c = p(&text, &["kvm_default_firmware=uefi"]).unwrap();
        assert_eq!(c.instances[1].firmware, FirmwareChoice::Bios);
    }

    #[test]
    fn secure_boot_needs_uefi_and_uefi_takes_no_snapshot() {
        let text = GOOD.replace(
            "  - instance_name: app-02\n",
            "  - instance_name: app-02\n    secure_boot: true\n",
        );
        let e = err(&text, &[]);
        assert!(e.contains("secure_boot needs firmware: uefi"), "{e}");
        assert!(e.contains("vars.yml:"), "{e}");
        let text = GOOD.replace(
            "  - instance_name: app-02\n",
            "  - instance_name: app-02\n    firmware: uefi\n    snapshot_name: base\n",
        );
        let e = err(&text, &[]);
        assert!(
            e.contains("snapshot_name cannot be used with firmware: uefi"),
            "{e}"
        );
        let e = err(GOOD, &["kvm_default_firmware=efi"]);
        assert!(e.contains("expected `bios` or `uefi`"), "{e}");
    }

    #[test]
    fn instances_may_name_their_own_hypervisor() {
        let text = GOOD.replace(
            "  - instance_name: app-02\n",
            "  - instance_name: app-02\n    hypervisor_host: admin@hv2\n",
        );
        let c = p(&text, &["kvm_hypervisor_host=hv1"]).unwrap();
        assert_eq!(
            c.hosts(),
            ["qemu+ssh://hv1/system", "qemu+ssh://admin@hv2/system"]
        );
        let hv2 = c.for_host("qemu+ssh://admin@hv2/system");
        assert_eq!(hv2.libvirt_uri, "qemu+ssh://admin@hv2/system");
        assert_eq!(hv2.instances.len(), 1);
        assert_eq!(hv2.instances[0].name, "app-02");
        let e = err(
            &GOOD.replace(
                "  - instance_name: app-02\n",
                "  - instance_name: app-02\n    hypervisor_host: \"bad host\"\n",
            ),
            &[],
        );
        assert!(e.contains("hypervisor_host"), "{e}");
        assert!(e.contains("vars.yml:"), "{e}");
    }

    #[test]
    fn good_file_resolves_defaults() {
        let c = p(GOOD, &[]).unwrap();
        assert_eq!(c.hosts(), ["qemu:///system"]);
        assert_eq!(c.libvirt_uri, "qemu:///system");
        assert_eq!(c.instances.len(), 2);
        assert_eq!(c.instances[0].vcpus, 2);
        assert_eq!(c.instances[0].network, "default");
        let s = c.instances[1].ipv4.as_ref().unwrap();
        assert_eq!(s.gateway, Ipv4Addr::new(192, 168, 122, 1));
        assert_eq!(s.dns, vec![Ipv4Addr::new(192, 168, 122, 1)]);
        assert!(!c.cleanup_confirmed);
        assert!(c.auto_fix_pool_access);
    }

    #[test]
    fn password_never_in_debug_or_json() {
        let c = p(GOOD, &[]).unwrap();
        assert!(!format!("{c:?}").contains("secret-pw"));
        assert!(!serde_json::to_string(&c).unwrap().contains("secret-pw"));
    }

    #[test]
    fn typo_key_names_line_column_and_hint() {
        let text = GOOD.replace("kvm_instance_definitions:", "kvm_instance_definition:");
        let e = err(&text, &[]);
        assert!(e.starts_with("vars.yml:9:1:"), "{e}");
        assert!(e.contains("did you mean `kvm_instance_definitions`"), "{e}");
    }

    #[test]
    fn nested_typo_key() {
        let text = GOOD.replace("    ipv4_address:", "    ipv4_adress:");
        let e = err(&text, &[]);
        assert!(e.starts_with("vars.yml:14:5:"), "{e}");
        assert!(e.contains("did you mean `ipv4_address`"), "{e}");
    }

    #[test]
    fn duplicate_instance_name() {
        let text = GOOD.replace("instance_name: app-02", "instance_name: app-01");
        let e = err(&text, &[]);
        assert!(e.starts_with("vars.yml:12:20:"), "{e}");
        assert!(e.contains("declared twice"), "{e}");
    }

    /// Two instances with one MAC address passed `check`, and the second guest's NIC then
    /// fought the first's on the network (no DHCP lease, no SSH for either).
    #[test]
    fn regression_duplicate_mac_addresses_passed_check() {
        let derived = kvmprov_hypervisor::xml::mac_for("app-01");
        let text = GOOD.replace(
            "    ipv4_address: 192.168.122.50/24\n",
            &format!("    ipv4_address: 192.168.122.50/24\n    mac_address: \"{derived}\"\n"),
        );
        let e = err(&text, &[]);
        assert!(e.starts_with("vars.yml:15:18:"), "{e}");
        assert!(e.contains("`app-01`") && e.contains("`app-02`"), "{e}");
        assert!(e.contains(&derived), "{e}");

        // Both declared, in another case.
        let text = GOOD
            .replace(
                "  - instance_name: app-02\n",
                "    mac_address: 52:54:00:AA:BB:CC\n  - instance_name: app-02\n",
            )
            .replace(
                "    ipv4_address: 192.168.122.50/24\n",
                "    ipv4_address: 192.168.122.50/24\n    mac_address: 52:54:00:aa:bb:cc\n",
            );
        let e = err(&text, &[]);
        assert!(e.starts_with("vars.yml:16:18:"), "{e}");
        assert!(e.contains("`app-01`") && e.contains("`app-02`"), "{e}");

        // Two names whose derived MACs collide (the derivation keeps 24 bits).
        let mut by_mac = HashMap::new();
        let (a, b) = (0..100_000)
            .map(|i| format!("vm-{i}"))
            .find_map(|n| {
                let mac = kvmprov_hypervisor::xml::mac_for(&n);
                by_mac.insert(mac, n.clone()).map(|first| (first, n))
            })
            .expect("a collision among 100000 names");
        let text = GOOD
            .replace("instance_name: app-01", &format!("instance_name: {a}"))
            .replace("instance_name: app-02", &format!("instance_name: {b}"));
        let e = err(&text, &[]);
        assert!(e.starts_with("vars.yml:12:20:"), "{e}");
        assert!(
            e.contains(&format!("`{a}`")) && e.contains(&format!("`{b}`")),
            "{e}"
        );
    }

    #[test]
    fn missing_image_reference() {
        let text = GOOD.replacen(
            "    image_name: debian-12\n  - instance_name: app-02",
            "    image_name: debian-13\n  - instance_name: app-02",
            1,
        );
        let e = err(&text, &[]);
        assert!(e.starts_with("vars.yml:11:17:"), "{e}");
        assert!(e.contains("not in kvm_cloud_image_catalog"), "{e}");
    }

    #[test]
    fn relative_path() {
        let text = GOOD.replace("/srv/images", "srv/images");
        let e = err(&text, &[]);
        assert!(e.starts_with("vars.yml:1:23:"), "{e}");
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn nested_paths_rejected() {
        let text = GOOD.replace("/srv/instances", "/srv/images/instances");
        let e = err(&text, &[]);
        assert!(e.starts_with("vars.yml:2:"), "{e}");
    }

    #[test]
    fn yaml_syntax_error() {
        let e = err("kvm_instance_definitions:\n  - instance_name: [a\n", &[]);
        assert!(e.starts_with("vars.yml:"), "{e}");
        assert!(e.contains("YAML syntax error"), "{e}");
        let e = err("a: b\n c: d\n", &[]);
        assert!(e.starts_with("vars.yml:2:"), "{e}");
    }

    #[test]
    fn wrong_type_is_located() {
        let text = GOOD.replace(
            "    image_name: debian-12\n  - instance_name: app-02",
            "    image_name: debian-12\n    vcpus: many\n  - instance_name: app-02",
        );
        let e = err(&text, &[]);
        assert!(e.starts_with("vars.yml:12:12:"), "{e}");
    }

    #[test]
    fn anchors_rejected() {
        let e = err("a: &x [1]\nb: *x\n", &[]);
        assert!(e.contains("anchors"), "{e}");
    }

    #[test]
    fn duplicate_key_rejected() {
        let e = err(
            "kvm_cleanup_confirmed: false\nkvm_cleanup_confirmed: true\n",
            &[],
        );
        assert!(e.starts_with("vars.yml:2:1:"), "{e}");
        assert!(e.contains("duplicate key"), "{e}");
    }

    #[test]
    fn overrides_are_typed() {
        let c = p(
            GOOD,
            &[
                "kvm_cleanup_confirmed=true",
                "kvm_provision_stage=image-cache",
                "kvm_runtime_timeout_seconds=60",
                "kvm_hypervisor_host=admin@hv1",
            ],
        )
        .unwrap();
        assert!(c.cleanup_confirmed);
        assert_eq!(c.stage, StageChoice::ImageCache);
        assert_eq!(c.runtime_timeout_seconds, 60);
        assert_eq!(c.libvirt_uri, "qemu+ssh://admin@hv1/system");
    }

    #[test]
    fn override_errors_name_the_argument() {
        let e = err(GOOD, &["kvm_cleanup_confirmed=maybe"]);
        assert!(e.contains("-e kvm_cleanup_confirmed=maybe"), "{e}");
        let e = err(GOOD, &["kvm_cleanup_confirm=true"]);
        assert!(e.contains("did you mean `kvm_cleanup_confirmed`"), "{e}");
        let e = err(GOOD, &["novalue"]);
        assert!(e.contains("KEY=VALUE"), "{e}");
    }

    #[test]
    fn bad_static_ip() {
        let text = GOOD.replace("192.168.122.50/24", "192.168.122.255/24");
        assert!(err(&text, &[]).contains("broadcast"));
        let text = GOOD.replace("192.168.122.50/24", "192.168.122.50/31");
        assert!(err(&text, &[]).contains("prefix"));
        let text = GOOD.replace("192.168.122.50/24", "300.1.1.1/24");
        assert!(err(&text, &[]).starts_with("vars.yml:14:19:"));
    }

    #[test]
    fn hostile_instance_names() {
        for bad in [
            "a/b",
            "..",
            "a b",
            "x".repeat(64).as_str(),
            "аpp",
            "-a",
            "a\\nb",
        ] {
            let text = GOOD.replace(
                "instance_name: app-01",
                &format!("instance_name: \"{bad}\""),
            );
            let e = err(&text, &[]);
            assert!(e.starts_with("vars.yml:10:"), "{bad}: {e}");
        }
    }

    #[test]
    fn empty_file_has_defaults() {
        let c = p("", &[]).unwrap();
        assert!(c.instances.is_empty());
        assert_eq!(
            c.image_cache_path,
            PathBuf::from("/var/lib/kvm-provisioning/images")
        );
    }

    #[test]
    fn regression_yaml_null_was_the_string_null() {
        let base = "kvm_cloud_image_catalog:\n  - image_name: d\n    image_url: https://x/d.qcow2\n    image_checksum_manifest_url: https://x/SHA512SUMS\n    image_sha512: ~\n\
                    kvm_instance_definitions:\n  - instance_name: a\n    image_name: d\n    ipv4_address: null\n    firmware: null\n";
        let c = p(
            &format!("{base}kvm_cloud_init_defaults:\n  password: null\n"),
            &[],
        )
        .unwrap();
        assert!(c.cloud_init.password.is_none());
        assert!(c.instances[0].ipv4.is_none());
        let c = p(base, &["kvm_runtime_timeout_seconds=~"]).unwrap();
        assert_eq!(c.runtime_timeout_seconds, 900);
    }

    #[test]
    fn did_you_mean_only_when_close() {
        assert_eq!(did_you_mean("zzz", TOP_LEVEL_KEYS), "");
    }
}
