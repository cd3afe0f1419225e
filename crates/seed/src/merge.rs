//! The operator's own cloud-config (`user_data`) and how it joins what kvmprov writes: the
//! document tree both are held in ([`Node`], [`CloudConfig`]), the keys kvmprov owns
//! ([`owned_key`]), the merge of `kvm_cloud_init_defaults` with an instance ([`layer`]) and the
//! join with kvmprov's own document ([`join`]).
//!
//! Rules (the README's variables reference says the same):
//! - [`layer`] (defaults, then the instance): two lists concatenate, the defaults' items first;
//!   two mappings merge key by key, recursively, with these same rules at every depth (so
//!   `ca_certs: {trusted: [...]}` concatenates its `trusted` lists); anything else — two scalars,
//!   or values of different kinds — the instance's value wins.
//! - [`join`] (kvmprov's document with the merged user_data): `users` is kvmprov's login user
//!   first, then the operator's users; `packages` and `runcmd` are the user_data's items, then
//!   the instance's own `packages`/`runcmd` fields; `fs_setup` and `mounts` are the data disks'
//!   entries, then the operator's; `write_files` is kvmprov's sshd setting, then the operator's
//!   files; a key kvmprov owns keeps kvmprov's value (the
//!   config layer refuses such a key with its position before it gets here); every other key is
//!   the operator's, after kvmprov's keys, in the operator's order.

use serde_json::Value;

/// A node of a cloud-config document, as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A string: written double-quoted, so the guest reads exactly this string.
    Quoted(String),
    /// A plain (unquoted) scalar: written as it was, so cloud-init's YAML 1.1 reads it as it
    /// would have read the operator's own file (`true`, `0644`, `42`, `null` keep their type).
    Plain(String),
    Seq(Vec<Node>),
    Map(CloudConfig),
}

/// A cloud-config mapping, keys in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudConfig(pub Vec<(String, Node)>);

impl CloudConfig {
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As JSON ([`Node::to_json`]): for digests and reports.
    pub fn to_json(&self) -> Value {
        Node::Map(self.clone()).to_json()
    }
}

impl Node {
    /// kvmprov's own values: strings quoted, booleans, numbers and null plain.
    pub fn from_json(v: &Value) -> Node {
        match v {
            Value::String(s) => Node::Quoted(s.clone()),
            Value::Array(a) => Node::Seq(a.iter().map(Node::from_json).collect()),
            Value::Object(m) => Node::Map(CloudConfig(
                m.iter()
                    .map(|(k, v)| (k.clone(), Node::from_json(v)))
                    .collect(),
            )),
            other => Node::Plain(other.to_string()),
        }
    }

    /// As JSON, for reports and digests: a plain `true`/`false`/`null` or decimal number as
    /// that type (YAML 1.1's other spellings, such as `yes` or `0644`, stay strings here; the
    /// guest still reads them as YAML 1.1 does).
    pub fn to_json(&self) -> Value {
        match self {
            Node::Plain(s) => match s.as_str() {
                "true" | "True" | "TRUE" => Value::Bool(true),
                "false" | "False" | "FALSE" => Value::Bool(false),
                "" | "~" | "null" | "Null" | "NULL" => Value::Null,
                n if !n.starts_with('0') || n == "0" => n
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::String(s.clone())),
                _ => Value::String(s.clone()),
            },
            Node::Quoted(s) => Value::String(s.clone()),
            Node::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Node::Map(m) => {
                Value::Object(m.0.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Quoted(s) | Node::Plain(s) => Some(s),
            _ => None,
        }
    }
}

/// Top-level keys kvmprov sets itself, with why the operator cannot set them: the login user
/// and its access, the host keys kvmprov pins before the first boot, the host name.
const OWNED_KEYS: &[(&str, &str)] = &[
    ("user", "it replaces the default user, which is kvmprov's login user (set `user` in kvm_cloud_init_defaults)"),
    ("system_info", "its default_user would replace kvmprov's login user"),
    ("ssh_authorized_keys", "kvmprov writes the login user's keys (set ssh_authorized_keys in kvm_cloud_init_defaults; other users take theirs in their `users` entry)"),
    ("password", "kvmprov sets the login user's password (use password, password_hash or password_file in kvm_cloud_init_defaults)"),
    ("chpasswd", "kvmprov sets the login user's password (use password, password_hash or password_file in kvm_cloud_init_defaults)"),
    ("ssh_pwauth", "kvmprov sets SSH password authentication (use ssh_password_authentication in kvm_cloud_init_defaults)"),
    ("disable_root", "kvmprov keeps root login disabled"),
    ("ssh_keys", "kvmprov pins the guest's SSH host key before the first boot"),
    ("ssh_deletekeys", "kvmprov pins the guest's SSH host key before the first boot"),
    ("ssh_genkeytypes", "kvmprov pins the guest's SSH host key before the first boot"),
    ("hostname", "the host name is the instance_name (set `fqdn` on the instance for a domain)"),
    ("fqdn", "set `fqdn` on the instance, not in user_data"),
    ("preserve_hostname", "kvmprov sets the host name from instance_name and fqdn"),
    ("prefer_fqdn_over_hostname", "kvmprov sets the host name from instance_name and fqdn"),
    ("manage_etc_hosts", "kvmprov writes /etc/hosts with the host name and fqdn"),
];

/// Why kvmprov owns the top-level key `key`, or `None` when the operator may set it.
pub fn owned_key(key: &str) -> Option<&'static str> {
    OWNED_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, why)| *why)
}

/// Why a `users` entry is refused: it names kvmprov's login user `login`, or `default` (the
/// image's default user, whose place kvmprov's login user takes). `None`: a second user, fine.
pub fn refused_user(entry: &Node, login: &str) -> Option<String> {
    let name = match entry {
        Node::Map(m) => m.get("name").and_then(Node::as_str),
        other => other.as_str(),
    }?;
    if name == "default" {
        return Some(
            "`default` (the image's default user) cannot be listed: kvmprov's login user takes its place".into(),
        );
    }
    (name == login).then(|| {
        format!("user `{login}` is kvmprov's login user: set its keys and password in kvm_cloud_init_defaults")
    })
}

/// `base` (the defaults) with `top` (the instance) laid over it, by the rules in the module doc.
pub fn layer(base: &CloudConfig, top: &CloudConfig) -> CloudConfig {
    let mut out = base.clone();
    for (key, value) in &top.0 {
        match out.get_mut(key) {
            Some(existing) => *existing = layer_node(existing, value),
            None => out.0.push((key.clone(), value.clone())),
        }
    }
    out
}

fn layer_node(base: &Node, top: &Node) -> Node {
    match (base, top) {
        (Node::Seq(a), Node::Seq(b)) => Node::Seq(a.iter().chain(b).cloned().collect()),
        (Node::Map(a), Node::Map(b)) => Node::Map(layer(a, b)),
        _ => top.clone(),
    }
}

/// kvmprov's document with the operator's merged user_data, by the rules in the module doc.
pub(crate) fn join(mut own: CloudConfig, operator: &CloudConfig) -> CloudConfig {
    for (key, value) in &operator.0 {
        let Some(existing) = own.get_mut(key) else {
            if owned_key(key).is_none() {
                own.0.push((key.clone(), value.clone()));
            }
            continue;
        };
        match (key.as_str(), &mut *existing, value) {
            ("users", Node::Seq(ours), Node::Seq(theirs)) => ours.extend(theirs.iter().cloned()),
            // The data disks' entries (or sshd's setting) first, then the operator's own, so
            // an operator's file of the same path is written after ours.
            ("fs_setup" | "mounts" | "write_files", Node::Seq(ours), Node::Seq(theirs)) => {
                ours.extend(theirs.iter().cloned())
            }
            ("packages" | "runcmd", Node::Seq(ours), Node::Seq(theirs)) => {
                let mut items = theirs.clone();
                items.append(ours);
                *ours = items;
            }
            // A key kvmprov owns, or a list kvmprov writes given as something else: kvmprov's
            // value stays (the config layer reports both with their position first).
            _ => {}
        }
    }
    own
}
