//! The operator's own cloud-config: `user_data` (inline) or `user_data_file`, in
//! `kvm_cloud_init_defaults` and per instance. Owns reading the file (no symlink followed, not
//! writable by others: it becomes code root runs in the guest), turning the YAML tree into the
//! seed's [`CloudConfig`] (each scalar as written, quoted or plain), refusing the keys kvmprov
//! sets — each error at the key's file:line:column — and the instance's `fqdn`. How the pieces
//! merge is `kvmprov_seed::merge`'s.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kvmprov_seed::merge::{self, CloudConfig, Node as CcNode};
use marked_yaml::types::{MarkedMappingNode, Node};

use super::diagnostics::{Locator, Sources};
use super::document::loader_options;
use super::validate::valid_instance_name;
use super::{ConfigError, MAX_FILE_BYTES};

/// Keys whose value kvmprov joins with its own list ([`merge`]'s rules): they must be lists.
const JOINED_LISTS: &[&str] = &[
    "users",
    "packages",
    "runcmd",
    "fs_setup",
    "mounts",
    "write_files",
];

/// The user_data of one level (`kvm_cloud_init_defaults` or an instance) at `at`, which holds
/// `user_data` or `user_data_file` (not both); empty when neither. `base` is the variables
/// file's directory, `login` kvmprov's login user.
pub(super) fn load(
    at: Locator,
    file: Option<&Path>,
    base: &Path,
    login: &str,
) -> Result<CloudConfig, ConfigError> {
    let inline = at.key("user_data");
    match (inline.node(), file) {
        (Some(_), Some(_)) => Err(at
            .key("user_data_file")
            .error("user_data and user_data_file cannot be used together: set one")),
        (Some(node), None) => from_tree(inline.sources(), node, login),
        (None, Some(file)) => {
            let path = base.join(file);
            let text = read_file(&path).map_err(|m| at.key("user_data_file").error(m))?;
            let sources = Sources {
                path: &path,
                overrides: &[],
            };
            if text.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    location: super::Location::Unknown { path: path.clone() },
                    message: "the user_data file is empty: a cloud-config mapping was expected"
                        .into(),
                });
            }
            let root =
                marked_yaml::parse_yaml_with_options(0, &text, loader_options()).map_err(|e| {
                    match e {
                        marked_yaml::LoadError::TopLevelMustBeMapping(m) => {
                            sources.invalid(&marked_yaml::Span::new_start(m), NOT_A_MAPPING)
                        }
                        other => {
                            let located = sources.load_error(other);
                            // Keep the location, word the message for a user_data file.
                            match located {
                                ConfigError::Invalid { location, message } => {
                                    ConfigError::Invalid {
                                        location,
                                        message: format!("in a user_data file: {message}"),
                                    }
                                }
                                e => e,
                            }
                        }
                    }
                })?;
            from_tree(&sources, &root, login)
        }
        (None, None) => Ok(CloudConfig::default()),
    }
}

const NOT_A_MAPPING: &str = "user_data must be a cloud-config mapping (key: value); MIME multi-part documents and scripts are not supported (put a script in runcmd or write_files)";

/// The text of a user_data file: read without following a symlink at its name, refused when
/// another non-root user owns it or anyone but its owner can write it or a directory above it.
fn read_file(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let mut file =
        kvmprov_safefs::open_regular(path).map_err(|e| format!("user_data_file: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("user_data_file: cannot inspect {shown}: {e}"))?;
    let (owner, mode, me) = (meta.uid(), meta.mode() & 0o7777, kvmprov_safefs::euid());
    if owner != 0 && owner != me {
        return Err(format!(
            "user_data_file {shown} is owned by uid {owner} (mode {mode:04o}), not by root or uid {me} that kvmprov runs as: its commands run as root in the guest; `chown {me} {shown}` if you trust it"
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "user_data_file {shown} (owner uid {owner}, mode {mode:04o}) can be written by group or others, and its commands run as root in the guest: `chmod go-w {shown}`"
        ));
    }
    // Whoever can write a directory above it can replace the file.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        kvmprov_safefs::check_tree(dir).map_err(|e| format!("user_data_file: {e}"))?;
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "user_data_file {shown} is larger than {MAX_FILE_BYTES} bytes"
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("user_data_file: cannot read {shown} as UTF-8 text: {e}"))?;
    Ok(text)
}

/// A user_data mapping as the seed's tree, after refusing what collides with kvmprov's keys.
fn from_tree(sources: &Sources, node: &Node, login: &str) -> Result<CloudConfig, ConfigError> {
    let Some(map) = node.as_mapping() else {
        return Err(sources.invalid(node.span(), NOT_A_MAPPING));
    };
    check_keys(sources, map, login)?;
    Ok(mapping(map))
}

fn check_keys(sources: &Sources, map: &MarkedMappingNode, login: &str) -> Result<(), ConfigError> {
    for (key, value) in map.iter() {
        let name = key.as_str();
        if let Some(why) = merge::owned_key(name) {
            return Err(sources.invalid(
                key.span(),
                format!("user_data key `{name}` is set by kvmprov: {why}"),
            ));
        }
        if JOINED_LISTS.contains(&name) {
            let Some(items) = value.as_sequence() else {
                return Err(
                    sources.invalid(key.span(), format!("user_data key `{name}` must be a list"))
                );
            };
            if name == "users" {
                for item in items.iter() {
                    if let Some(why) = merge::refused_user(&convert(item), login) {
                        return Err(sources.invalid(item.span(), format!("user_data users: {why}")));
                    }
                }
            }
        }
    }
    Ok(())
}

fn mapping(map: &MarkedMappingNode) -> CloudConfig {
    CloudConfig(
        map.iter()
            .map(|(k, v)| (k.as_str().to_string(), convert(v)))
            .collect(),
    )
}

/// A YAML node as the seed's node: a scalar stays plain or quoted as it was written.
fn convert(node: &Node) -> CcNode {
    match node {
        Node::Scalar(s) if s.may_coerce() => CcNode::Plain(s.as_str().to_string()),
        Node::Scalar(s) => CcNode::Quoted(s.as_str().to_string()),
        Node::Sequence(items) => CcNode::Seq(items.iter().map(convert).collect()),
        Node::Mapping(m) => CcNode::Map(mapping(m)),
    }
}

/// `fqdn`: a DNS name of at least two labels whose first label is the instance name (which is
/// the host name: the inventory and `kvmprov ssh` know the guest by it).
pub(super) fn check_fqdn(fqdn: &str, instance: &str) -> Result<(), String> {
    if fqdn.len() > 253 {
        return Err(format!("fqdn `{fqdn}` is longer than 253 characters"));
    }
    let labels: Vec<&str> = fqdn.split('.').collect();
    if labels.len() < 2 {
        return Err(format!(
            "fqdn `{fqdn}` has no domain: write `{instance}.example.com`"
        ));
    }
    for label in &labels {
        valid_instance_name(label)
            .map_err(|m| format!("fqdn `{}`: label `{label}` {m}", fqdn.escape_debug()))?;
    }
    if !labels[0].eq_ignore_ascii_case(instance) {
        return Err(format!(
            "fqdn `{fqdn}` must start with the instance name (`{instance}.…`): it is the host name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
