//! kvmprov-seed: the cloud-init NoCloud seed of one instance — `user-data`, `meta-data`,
//! `network-config` (v2) — and the ISO9660 image (Joliet + Rock Ridge, label `cidata`) that
//! carries them. Pure data in, bytes out; no external tools (no `cloud-localds`).
//!
//! cloud-init reads these documents with PyYAML (YAML 1.1), where `yes`, `on`, `0777` or
//! `1e3` are not strings. We therefore emit every string as a double-quoted scalar, and only
//! booleans and integers plain: the guest reads exactly the types we meant, whatever the user
//! typed.

use std::fmt;
use std::io::Cursor;

use serde_json::{json, Map, Value};

mod disks;
pub mod merge;
mod network;

pub use disks::DataFilesystem;

use merge::{CloudConfig, Node};
pub use network::{Ipv6Static, NetworkSpec, NicNetwork};

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("cannot generate an SSH key: {0}")]
    Key(String),
    #[error("cannot write the seed ISO: {0}")]
    Iso(String),
}

/// An ed25519 key pair in OpenSSH formats. `Debug` never shows the private half.
#[derive(Clone)]
pub struct HostKeys {
    pub ed25519_private_openssh: String,
    pub ed25519_public_openssh: String,
}

impl fmt::Debug for HostKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostKeys")
            .field("ed25519_private_openssh", &"<redacted>")
            .field("ed25519_public_openssh", &self.ed25519_public_openssh)
            .finish()
    }
}

impl HostKeys {
    /// A fresh ed25519 key pair from the OS random source.
    pub fn generate() -> Result<HostKeys, SeedError> {
        generate_pair("")
    }

    pub fn private_openssh(&self) -> &str {
        &self.ed25519_private_openssh
    }

    pub fn public_openssh(&self) -> &str {
        &self.ed25519_public_openssh
    }
}

/// An ed25519 user key for kvmprov's own SSH logins, with a comment naming it.
pub fn generate_client_key(comment: &str) -> Result<HostKeys, SeedError> {
    generate_pair(comment)
}

/// The public half (OpenSSH format, with its comment) of an OpenSSH private key.
pub fn public_key_of(private_openssh: &str) -> Result<String, SeedError> {
    let key = ssh_key::PrivateKey::from_openssh(private_openssh)
        .map_err(|e| SeedError::Key(e.to_string()))?;
    key.public_key()
        .to_openssh()
        .map_err(|e| SeedError::Key(e.to_string()))
}

fn generate_pair(comment: &str) -> Result<HostKeys, SeedError> {
    let mut key = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
        .map_err(|e| SeedError::Key(e.to_string()))?;
    key.set_comment(comment);
    let private = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| SeedError::Key(e.to_string()))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| SeedError::Key(e.to_string()))?;
    Ok(HostKeys {
        ed25519_private_openssh: private.to_string(),
        ed25519_public_openssh: public,
    })
}

/// SHA-512 crypt (`$6$…`) with a random salt and the default 5000 rounds, as `mkpasswd -m
/// sha-512` and `openssl passwd -6` produce and `/etc/shadow` expects.
pub fn hash_password(plain: &str) -> Result<String, SeedError> {
    let params = sha_crypt::Sha512Params::new(sha_crypt::ROUNDS_DEFAULT)
        .map_err(|e| SeedError::Hash(format!("{e:?}")))?;
    sha_crypt::sha512_simple(plain, &params).map_err(|e| SeedError::Hash(format!("{e:?}")))
}

/// Everything one instance's seed says. `Debug` redacts the password hash.
#[derive(Clone)]
pub struct SeedSpec {
    pub instance_id: String,
    pub hostname: String,
    pub user: String,
    /// A SHA-512 crypt hash, never the plain password. `None` locks password login.
    pub password_hash: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub ssh_password_authentication: bool,
    pub host_keys: HostKeys,
    /// The NICs, in device order.
    pub network: Vec<NicNetwork>,
    pub packages: Vec<String>,
    pub runcmd: Vec<String>,
    /// The host's fully qualified name (its first label is `hostname`): `/etc/hosts` names it.
    pub fqdn: Option<String>,
    /// The operator's own cloud-config, defaults and instance already layered
    /// ([`merge::layer`]); joined with kvmprov's keys by [`merge::join`].
    pub user_data: CloudConfig,
    /// Data disks to format (if empty) and mount, through cloud-init's own modules.
    pub data_filesystems: Vec<DataFilesystem>,
}

impl fmt::Debug for SeedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedSpec")
            .field("instance_id", &self.instance_id)
            .field("hostname", &self.hostname)
            .field("user", &self.user)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("ssh_authorized_keys", &self.ssh_authorized_keys)
            .field(
                "ssh_password_authentication",
                &self.ssh_password_authentication,
            )
            .field("host_keys", &self.host_keys)
            .field("network", &self.network)
            .field("packages", &self.packages)
            .field("runcmd", &self.runcmd)
            .field("fqdn", &self.fqdn)
            // The operator's cloud-config can hold tokens (write_files, apt proxies).
            .field("user_data_keys", &self.user_data.0.len())
            .field("data_filesystems", &self.data_filesystems)
            .finish()
    }
}

/// Block-style YAML for a JSON value; strings double-quoted (see [`quote`]).
fn yaml(v: &Value) -> String {
    yaml_node(&Node::from_json(v))
}

/// Block-style YAML for a document tree: quoted strings double-quoted (see [`quote`]), plain
/// scalars as written (see [`plain`]).
fn yaml_node(v: &Node) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

fn scalar(v: &Node) -> String {
    match v {
        Node::Quoted(s) => quote(s),
        Node::Plain(s) => plain(s),
        Node::Map(m) if m.is_empty() => "{}".into(),
        Node::Seq(a) if a.is_empty() => "[]".into(),
        // Only reached for non-empty collections, which `emit` writes as blocks.
        Node::Map(_) | Node::Seq(_) => "{}".into(),
    }
}

/// A plain scalar as the operator wrote it, so PyYAML resolves its type as it would have in
/// the operator's own file. What could not stand plain on one line (a folded line break, white
/// space at either end) is a string to any YAML reader anyway: it is written quoted.
fn plain(s: &str) -> String {
    if s.is_empty() {
        "null".into()
    } else if s.contains(['\n', '\r']) || s.trim() != s {
        quote(s)
    } else {
        s.to_string()
    }
}

/// A YAML 1.1 double-quoted scalar that PyYAML reads back as exactly `s`.
///
/// JSON escaping is not enough: PyYAML refuses a document holding U+007F, C1 controls or
/// U+FFFE/U+FFFF even inside quotes, and folds U+0085, U+2028 and U+2029 as line breaks. Those
/// are written as escapes, like every other control character.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)))
            }
            '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_block(v: &Node) -> bool {
    matches!(v, Node::Map(m) if !m.is_empty()) || matches!(v, Node::Seq(a) if !a.is_empty())
}

fn emit(v: &Node, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Node::Map(m) if !m.is_empty() => {
            for (k, val) in &m.0 {
                let key = quote(k);
                if is_block(val) {
                    out.push_str(&format!("{pad}{key}:\n"));
                    emit(val, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}{key}: {}\n", scalar(val)));
                }
            }
        }
        Node::Seq(a) if !a.is_empty() => {
            for item in a {
                if is_block(item) {
                    // "- " then the first line of the nested block on the same line.
                    let mut nested = String::new();
                    emit(item, indent + 2, &mut nested);
                    let trimmed = nested.trim_start_matches(' ');
                    out.push_str(&format!("{pad}- {trimmed}"));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

/// `user-data`: the user, SSH access, the pinned host key, hostname, then the operator's own
/// cloud-config joined by [`merge::join`]'s rules.
pub fn user_data(spec: &SeedSpec) -> String {
    let mut user = Map::new();
    user.insert("name".into(), json!(spec.user));
    user.insert("shell".into(), json!("/bin/bash"));
    user.insert("groups".into(), json!(["sudo"]));
    user.insert("sudo".into(), json!("ALL=(ALL) NOPASSWD:ALL"));
    match &spec.password_hash {
        Some(hash) => {
            user.insert("lock_passwd".into(), json!(false));
            user.insert("hashed_passwd".into(), json!(hash));
        }
        None => {
            user.insert("lock_passwd".into(), json!(true));
        }
    }
    if !spec.ssh_authorized_keys.is_empty() {
        user.insert(
            "ssh_authorized_keys".into(),
            json!(spec.ssh_authorized_keys),
        );
    }
    let mut doc = Map::new();
    doc.insert("hostname".into(), json!(spec.hostname));
    if let Some(fqdn) = &spec.fqdn {
        doc.insert("fqdn".into(), json!(fqdn));
    }
    doc.insert("manage_etc_hosts".into(), json!(true));
    doc.insert("users".into(), Value::Array(vec![Value::Object(user)]));
    doc.insert("disable_root".into(), json!(true));
    doc.insert("ssh_pwauth".into(), json!(spec.ssh_password_authentication));
    doc.insert(
        "write_files".into(),
        json!([password_authentication_file(
            spec.ssh_password_authentication
        )]),
    );
    // Only our pinned host key may exist: known_hosts is written before the first boot.
    // cloud-init generates only the listed types that are missing, so none here.
    doc.insert("ssh_deletekeys".into(), json!(true));
    doc.insert("ssh_genkeytypes".into(), json!(["ed25519"]));
    doc.insert(
        "ssh_keys".into(),
        json!({
            "ed25519_private": spec.host_keys.ed25519_private_openssh,
            "ed25519_public": spec.host_keys.ed25519_public_openssh.trim(),
        }),
    );
    if !spec.packages.is_empty() {
        doc.insert("packages".into(), json!(spec.packages));
    }
    if !spec.runcmd.is_empty() {
        doc.insert("runcmd".into(), json!(spec.runcmd));
    }
    for (key, value) in disks::cloud_config(&spec.data_filesystems) {
        doc.insert(key.into(), value);
    }
    let own = match Node::from_json(&Value::Object(doc)) {
        Node::Map(m) => m,
        // A JSON object converts to a mapping.
        _ => CloudConfig::default(),
    };
    let joined = merge::join(own, &spec.user_data);
    format!("#cloud-config\n{}", yaml_node(&Node::Map(joined)))
}

/// Where cloud-init's `set-passwords` module writes `ssh_pwauth` (22.4 in Debian 12, 25.1 in
/// Debian 13, both when `sshd_config` includes `sshd_config.d/*.conf`, as Debian's does): one
/// line in a file of mode 0600.
pub const SSHD_PASSWORD_FILE: &str = "/etc/ssh/sshd_config.d/50-cloud-init.conf";

/// `ssh_pwauth`'s line, written ahead by `write_files` (init stage) in the file where
/// `set-passwords` (config stage) would write it. That module then finds the setting made and
/// does not restart sshd, which cost a TCG guest ~1.6 s of its boot (`cloud-init analyze
/// blame`); the file ends up as the module would have left it. Appended, so a file the image
/// already has keeps its lines (the module would have kept them too).
fn password_authentication_file(allowed: bool) -> Value {
    json!({
        "path": SSHD_PASSWORD_FILE,
        "content": format!("PasswordAuthentication {}\n", if allowed { "yes" } else { "no" }),
        "owner": "root:root",
        "permissions": "0600",
        "append": true,
    })
}

/// `meta-data`: a new `instance-id` makes cloud-init treat the boot as a new instance.
pub fn meta_data(spec: &SeedSpec) -> String {
    yaml(&json!({
        "instance-id": spec.instance_id,
        "local-hostname": spec.hostname,
    }))
}

/// `network-config` version 2, each NIC matched by MAC.
pub fn network_config(spec: &SeedSpec) -> String {
    yaml(&network::document(&spec.network))
}

/// The NoCloud seed ISO: ISO9660 with Joliet and Rock Ridge, volume label `cidata`.
pub fn build_iso(spec: &SeedSpec) -> Result<Vec<u8>, SeedError> {
    use hadris_iso::read::PathSeparator;
    use hadris_iso::write::options::{CreationFeatures, IsoFormatOptions};
    use hadris_iso::write::{InputEntry, InputMetadata, InputTree, IsoImageWriter};

    // Files readable by root only inside the guest's view of the CD (Rock Ridge modes).
    let meta = InputMetadata {
        mode: Some(0o400),
        uid: Some(0),
        gid: Some(0),
        ..InputMetadata::default()
    };
    let entries = vec![
        InputEntry::file("meta-data", meta_data(spec).into_bytes()).with_metadata(meta),
        InputEntry::file("network-config", network_config(spec).into_bytes()).with_metadata(meta),
        InputEntry::file("user-data", user_data(spec).into_bytes()).with_metadata(meta),
    ];
    let tree = InputTree::new(PathSeparator::ForwardSlash, entries);
    let options = IsoFormatOptions {
        volume_name: "cidata".to_string(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("kvmprov".to_string()),
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        strict_charset: false,
        features: CreationFeatures::extensions(),
    };
    let out = IsoImageWriter::create(Cursor::new(Vec::new()), tree, options)
        .map_err(|e| SeedError::Iso(e.to_string()))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests;
