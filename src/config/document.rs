//! The settings as one YAML node tree with positions: the file's text, each `-e` argument laid
//! over it, nulls dropped. serde reads the typed values from this tree, and errors found later
//! are located in it.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, Node};
use marked_yaml::{LoaderOptions, Span};

use super::diagnostics::{did_you_mean, load_error_message, shown_argument, Sources};
use super::raw::TOP_LEVEL_KEYS;
use super::ConfigError;

/// Parse the file's text and lay the `-e` arguments of `sources` over it.
pub(super) fn build(sources: &Sources, text: &str) -> Result<Node, ConfigError> {
    // An empty file is an empty mapping: every default applies.
    let mut root = if text.trim().is_empty() {
        Node::from(MarkedMappingNode::new_empty(Span::new_blank()))
    } else {
        marked_yaml::parse_yaml_with_options(0, text, loader_options())
            .map_err(|e| sources.load_error(e))?
    };
    for (i, arg) in sources.overrides.iter().enumerate() {
        apply_override(&mut root, i + 1, arg)?;
    }
    drop_nulls(&mut root);
    start_mappings_at_first_key(&mut root);
    Ok(root)
}

/// The loader places a block mapping at its first `:` (`- name: a` starts at the colon); an
/// error about the whole mapping (a missing field) should name where it begins, its first key.
fn start_mappings_at_first_key(node: &mut Node) {
    match node {
        Node::Mapping(m) => {
            if let Some(first) = m.keys().next().and_then(|k| k.span().start()).copied() {
                m.span_mut().set_start(Some(first));
            }
            m.values_mut().for_each(start_mappings_at_first_key);
        }
        Node::Sequence(s) => s.iter_mut().for_each(start_mappings_at_first_key),
        Node::Scalar(_) => {}
    }
}

pub(super) fn loader_options() -> LoaderOptions {
    // Duplicate keys silently losing a value is the kind of thing that deletes the wrong VM.
    // Scalars remember whether they were quoted: user_data passes them on as written.
    LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true)
}

/// The tree as serde reads it: every scalar may be coerced (`"2"` is a number where a number is
/// expected), as the settings have always been read; only user_data needs the quoting.
pub(super) fn coercible(node: &Node) -> Node {
    let mut node = node.clone();
    fn walk(node: &mut Node) {
        match node {
            Node::Scalar(s) => s.set_coerce(true),
            Node::Mapping(m) => m.values_mut().for_each(walk),
            Node::Sequence(s) => s.iter_mut().for_each(walk),
        }
    }
    walk(&mut node);
    node
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
