//! `kvm_instance_profiles`: named sets of instance fields. Owns checking the profiles, laying
//! the profile an instance names under the instance's own mapping in the document tree — before
//! serde reads it, so every instance field, present and future, works in a profile without code
//! of its own, and an error points at the line where the bad value was written, in the profile
//! or the instance — and saying where each of an instance's effective values came from.
//!
//! The instance's own field replaces the profile's whole (lists too). `user_data` and
//! `user_data_file` are the exception: they are layered, `kvm_cloud_init_defaults` first, then
//! the profile's, then the instance's (`resolve` does it, with [`layered_source`]).

use std::sync::OnceLock;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, Node};
use marked_yaml::Span;

use super::diagnostics::{did_you_mean, Locator, Sources};
use super::document::coercible;
use super::nics::SHORTHAND;
use super::raw::InstanceDefinition;
use super::resolved::{FieldOrigin, Instance, Origins, BUILT_IN};
use super::validate::valid_simple_name;
use super::ConfigError;

/// The top-level key of the profiles.
pub(super) const KEY: &str = "kvm_instance_profiles";

/// The key an instance names its profile with.
const PROFILE: &str = "profile";

/// Fields a profile may not set, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("instance_name", "each instance names itself"),
    (PROFILE, "profiles do not name other profiles"),
];

/// Fields layered (defaults → profile → instance) rather than replaced: not copied into the
/// instance here; `resolve` reads the profile's with [`layered_source`].
const LAYERED: &[&str] = &["user_data", "user_data_file"];

/// For each instance (by index in `kvm_instance_definitions`): the profile it names and the
/// fields it took from it.
#[derive(Default)]
pub(super) struct Expanded(Vec<Option<Taken>>);

struct Taken {
    profile: String,
    fields: Vec<String>,
}

impl Expanded {
    fn of(&self, index: usize) -> Option<&Taken> {
        self.0.get(index).and_then(Option::as_ref)
    }

    /// The profile instance `index` names.
    pub fn profile(&self, index: usize) -> Option<&str> {
        self.of(index).map(|t| t.profile.as_str())
    }
}

/// Check `kvm_instance_profiles` and lay each instance's profile under it, in `root`.
pub(super) fn expand(sources: &Sources, root: &mut Node) -> Result<Expanded, ConfigError> {
    let Some(map) = root.as_mapping() else {
        // Not a mapping: serde says so, located.
        return Ok(Expanded::default());
    };
    let profiles = match map.get_node(KEY) {
        None => MarkedMappingNode::new_empty(Span::new_blank()),
        Some(Node::Mapping(m)) => m.clone(),
        Some(other) => {
            return Err(sources.invalid(
                other.span(),
                format!("{KEY} must be a mapping of profile names to instance fields"),
            ))
        }
    };
    check_profiles(sources, &profiles)?;
    let names: Vec<&str> = profiles.keys().map(|k| k.as_str()).collect();
    let mut expanded = Vec::new();
    let instances = root.as_mapping_mut().and_then(|m| {
        m.get_mut(&MarkedScalarNode::new(
            Span::new_blank(),
            "kvm_instance_definitions",
        ))
    });
    let Some(Node::Sequence(instances)) = instances else {
        // Absent, or not a list: serde says so, located.
        return Ok(Expanded::default());
    };
    for instance in instances.iter_mut() {
        let Node::Mapping(instance) = instance else {
            expanded.push(None);
            continue;
        };
        let Some(named) = instance.get_node(PROFILE) else {
            expanded.push(None);
            continue;
        };
        let Some(name) = named.as_scalar().cloned() else {
            return Err(sources.invalid(named.span(), "profile must be the name of a profile"));
        };
        let Some(profile) = profiles.get_mapping(name.as_str()) else {
            let known = if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            };
            return Err(sources.invalid(
                name.span(),
                format!(
                    "profile `{}` is not in {KEY} (known: {known}){}",
                    name.as_str(),
                    did_you_mean(name.as_str(), &names)
                ),
            ));
        };
        let mut fields = Vec::new();
        for (key, value) in profile.iter() {
            if LAYERED.contains(&key.as_str()) || instance.contains_key(key) {
                continue;
            }
            // The node keeps its position: an error in it points into the profile.
            instance.insert(key.clone(), value.clone());
            fields.push(key.as_str().to_string());
        }
        expanded.push(Some(Taken {
            profile: name.as_str().to_string(),
            fields,
        }));
    }
    Ok(Expanded(expanded))
}

/// Each profile: a simple name, a mapping, no field it may not set, and every field one an
/// instance takes, of the type an instance takes — the errors an instance would give, at the
/// profile's line, whether or not an instance uses the profile.
fn check_profiles(sources: &Sources, profiles: &MarkedMappingNode) -> Result<(), ConfigError> {
    for (name, profile) in profiles.iter() {
        valid_simple_name(name.as_str())
            .map_err(|m| sources.invalid(name.span(), format!("profile name {m}")))?;
        let Some(fields) = profile.as_mapping() else {
            return Err(sources.invalid(
                profile.span(),
                format!(
                    "profile `{}` must be a mapping of instance fields",
                    name.as_str()
                ),
            ));
        };
        for (key, _) in fields.iter() {
            if let Some((_, why)) = FORBIDDEN.iter().find(|(f, _)| *f == key.as_str()) {
                return Err(sources.invalid(
                    key.span(),
                    format!("a profile cannot set `{}`: {why}", key.as_str()),
                ));
            }
        }
        // The fields an instance must have are given stand-ins, so that only what the
        // profile wrote is judged.
        let mut probe = fields.clone();
        for required in ["instance_name", "image_name"] {
            let key = MarkedScalarNode::new(Span::new_blank(), required);
            if !probe.contains_key(&key) {
                probe.insert(
                    key,
                    Node::from(MarkedScalarNode::new(Span::new_blank(), "x")),
                );
            }
        }
        let probe = Node::from(probe);
        marked_yaml::from_node::<InstanceDefinition>(&coercible(&probe))
            .map_err(|e| sources.serde_error(&probe, e))?;
    }
    Ok(())
}

/// Where `instance`'s profile holds its `user_data` or `user_data_file`, with the file it
/// names: the layer between `kvm_cloud_init_defaults`' and the instance's own. `None` when the
/// instance names no profile or its profile sets neither.
pub(super) fn layered_source<'a>(
    doc: Locator<'a>,
    expanded: &Expanded,
    index: usize,
) -> Option<(Locator<'a>, Option<std::path::PathBuf>)> {
    let at = doc.key(KEY).key(expanded.profile(index)?);
    if !LAYERED.iter().any(|k| at.key(k).is_set()) {
        return None;
    }
    let file = at
        .key("user_data_file")
        .node()
        .and_then(Node::as_scalar)
        .map(|s| std::path::PathBuf::from(s.as_str()));
    Some((at, file))
}

/// Fields that fall back to a top-level key: (field, key).
const GLOBAL_FALLBACKS: &[(&str, &str)] = &[
    ("firmware", "kvm_default_firmware"),
    ("libvirt_network_name", "kvm_default_libvirt_network_name"),
    ("hypervisor_host", "kvm_hypervisor_host"),
];

/// The origins of instance `index`'s values, when it names a profile. `doc` is the document's
/// root, `d` the instance as serde read it (profile laid under), `inst` it resolved.
pub(super) fn origins(
    doc: Locator,
    expanded: &Expanded,
    index: usize,
    d: &InstanceDefinition,
    inst: &Instance,
) -> Option<Origins> {
    let taken = expanded.of(index)?;
    let at = doc.key("kvm_instance_definitions").index(index);
    let from_profile = format!("profile {}", taken.profile);
    let raw = serde_json::to_value(d).unwrap_or_default();
    let mut fields = Vec::new();
    for &field in instance_fields() {
        if matches!(field, "instance_name" | PROFILE | "user_data_file") {
            continue;
        }
        // With `nics`, the one-NIC shorthand is unused: where its default would come from
        // says nothing about the instance (whose NICs `nics` lists).
        if !d.nics.is_empty() && SHORTHAND.contains(&field) {
            continue;
        }
        let own = at.key(field).is_set() && !taken.fields.iter().any(|f| f == field);
        let (value, from) = if field == "user_data" {
            let mut layers = Vec::new();
            let defaults = doc.key("kvm_cloud_init_defaults");
            if LAYERED.iter().any(|k| defaults.key(k).is_set()) {
                layers.push("kvm_cloud_init_defaults".to_string());
            }
            let profile = doc.key(KEY).key(&taken.profile);
            if LAYERED.iter().any(|k| profile.key(k).is_set()) {
                layers.push(from_profile.clone());
            }
            if LAYERED.iter().any(|k| at.key(k).is_set()) {
                layers.push("instance".to_string());
            }
            let from = if layers.is_empty() {
                BUILT_IN.to_string()
            } else {
                layers.join(" + ")
            };
            (inst.user_data.to_json(), from)
        } else if own {
            (raw_value(&raw, field), "instance".to_string())
        } else if taken.fields.iter().any(|f| f == field) {
            (raw_value(&raw, field), from_profile.clone())
        } else if let Some((_, key)) = GLOBAL_FALLBACKS.iter().find(|(f, _)| *f == field) {
            let value = match field {
                "firmware" => serde_json::Value::from(inst.firmware.as_str()),
                "libvirt_network_name" => serde_json::Value::from(inst.attach.name()),
                _ => serde_json::Value::from(inst.libvirt_uri.as_str()),
            };
            // kvm_libvirt_uri, when set, wins over kvm_hypervisor_host.
            let uri_set = doc
                .key("kvm_libvirt_uri")
                .node()
                .and_then(Node::as_scalar)
                .is_some_and(|s| !s.as_str().trim().is_empty());
            let key = if field == "hypervisor_host" && uri_set {
                "kvm_libvirt_uri"
            } else {
                key
            };
            let from = if doc.key(key).is_set() {
                key.to_string()
            } else {
                format!("{BUILT_IN} ({key})")
            };
            (value, from)
        } else {
            (raw_value(&raw, field), BUILT_IN.to_string())
        };
        fields.push(FieldOrigin {
            field: field.to_string(),
            value,
            from,
        });
    }
    Some(Origins {
        instance: inst.name.clone(),
        profile: taken.profile.clone(),
        fields,
    })
}

/// The field's value as serde read it; a field serde leaves out of the serialised form at its
/// default (an empty list, no value) is that default, as the JSON Schema states it.
fn raw_value(raw: &serde_json::Value, field: &str) -> serde_json::Value {
    raw.get(field)
        .cloned()
        .unwrap_or_else(|| schema_default(field))
}

/// The `default` the JSON Schema gives an instance field (`[]` for a list), else null.
fn schema_default(field: &str) -> serde_json::Value {
    static SCHEMA: OnceLock<serde_json::Value> = OnceLock::new();
    let schema = SCHEMA.get_or_init(|| schemars::schema_for!(InstanceDefinition).to_value());
    schema
        .get("properties")
        .and_then(|p| p.get(field))
        .and_then(|f| f.get("default"))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Every field of an instance definition, in declaration order: asked of serde itself (the
/// unknown-field error lists them), so a field added to [`InstanceDefinition`] is listed
/// without code here.
fn instance_fields() -> &'static [&'static str] {
    static FIELDS: OnceLock<&'static [&'static str]> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let mut probe = MarkedMappingNode::new_empty(Span::new_blank());
        probe.insert(
            MarkedScalarNode::new(Span::new_blank(), "\u{0}"),
            Node::from(MarkedScalarNode::new(Span::new_blank(), "")),
        );
        match marked_yaml::from_node::<InstanceDefinition>(&Node::from(probe)) {
            Err(e) => match &*e {
                marked_yaml::Error::UnknownFieldError(_, expected, _) => expected,
                _ => &[],
            },
            Ok(_) => &[],
        }
    })
}

#[cfg(test)]
mod tests;
