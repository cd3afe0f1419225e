//! `kvmprov schema`: the JSON Schema (draft 2020-12) of the variables file, generated from the
//! types the parser deserializes (`config::Vars` and the types of its fields), so the two cannot
//! drift apart: field doc comments become descriptions, serde defaults become `default`, and
//! `deny_unknown_fields` becomes `additionalProperties: false`.
//!
//! The repository ships the output as `vars/kvm-provisioning.schema.json`, which the example
//! variables file names for editors (`# yaml-language-server: $schema=…`).

use schemars::generate::SchemaSettings;

use crate::config::Vars;
use crate::exit::ExitStatus;
use crate::output::Printer;

/// Printed as it is: it needs no variables file.
pub fn run(printer: &Printer) -> ExitStatus {
    match printer.document(&render()) {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            printer.error(&format!("cannot write: {e}"));
            ExitStatus::Failure
        }
    }
}

/// The schema as a JSON document.
pub fn schema() -> serde_json::Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Vars>()
        .to_value()
}

/// The schema as `kvmprov schema` prints it (pretty, without the final newline).
pub fn render() -> String {
    // A `Value` always serializes; the fallback is never taken.
    serde_json::to_string_pretty(&schema()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use serde::de::{self, Deserialize, Deserializer, Visitor};
    use serde_json::{json, Value};

    use super::*;
    use crate::config::{
        self, CatalogImage, CloudInitDefaults, DataDiskDefinition, InstanceDefinition,
        NicDefinition,
    };

    /// The field names serde's derived `Deserialize` accepts for a struct: it hands them to
    /// `deserialize_struct`, which this deserializer records instead of reading anything.
    fn serde_fields<'de, T: Deserialize<'de>>() -> BTreeSet<String> {
        struct Capture<'a>(&'a mut &'static [&'static str]);
        impl<'de> Deserializer<'de> for Capture<'_> {
            type Error = de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(de::Error::custom("fields captured"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(Capture(&mut fields));
        fields.iter().map(|f| f.to_string()).collect()
    }

    /// An object the schema describes: its properties and whether it rejects other keys.
    #[derive(Debug)]
    struct Object {
        properties: BTreeMap<String, Value>,
        required: BTreeSet<String>,
        closed: bool,
    }

    /// Every object in the schema by path (`""` the file, `a[]` the items of list `a`),
    /// following `$ref`, `items`, `anyOf`/`oneOf`/`allOf` and `properties`.
    fn objects(root: &Value) -> BTreeMap<String, Object> {
        fn walk(root: &Value, node: &Value, path: &str, out: &mut BTreeMap<String, Object>) {
            if let Some(r) = node.get("$ref").and_then(Value::as_str) {
                let name = r.trim_start_matches("#/$defs/");
                walk(root, &root["$defs"][name], path, out);
            }
            for key in ["anyOf", "oneOf", "allOf"] {
                for sub in node
                    .get(key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    walk(root, sub, path, out);
                }
            }
            if let Some(items) = node.get("items") {
                walk(root, items, &format!("{path}[]"), out);
            }
            if let Some(props) = node.get("properties").and_then(Value::as_object) {
                // Keys required by an `anyOf` or `oneOf` alternative count as required (an
                // instance's image_name, which its profile can give instead; a NIC's network
                // or bridge).
                let alternatives = ["anyOf", "oneOf"]
                    .into_iter()
                    .filter_map(|k| node.get(k).and_then(Value::as_array))
                    .flatten();
                let required = std::iter::once(node)
                    .chain(alternatives)
                    .filter_map(|n| n.get("required").and_then(Value::as_array))
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                out.insert(
                    path.to_string(),
                    Object {
                        properties: props.clone().into_iter().collect(),
                        required,
                        closed: node.get("additionalProperties") == Some(&json!(false)),
                    },
                );
                for (k, v) in props {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(root, v, &child, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, "", &mut out);
        out
    }

    /// The struct the parser deserializes at each object path.
    fn parser_fields() -> BTreeMap<String, BTreeSet<String>> {
        BTreeMap::from([
            (String::new(), serde_fields::<Vars>()),
            (
                "kvm_cloud_image_catalog[]".into(),
                serde_fields::<CatalogImage>(),
            ),
            (
                "kvm_cloud_init_defaults".into(),
                serde_fields::<CloudInitDefaults>(),
            ),
            (
                "kvm_instance_definitions[]".into(),
                serde_fields::<InstanceDefinition>(),
            ),
            (
                "kvm_instance_definitions[].disks[]".into(),
                serde_fields::<DataDiskDefinition>(),
            ),
            (
                "kvm_instance_definitions[].nics[]".into(),
                serde_fields::<NicDefinition>(),
            ),
        ])
    }

    /// The smallest file the parser accepts: one image, one instance.
    fn minimal() -> Value {
        json!({
            "kvm_cloud_image_catalog": [{
                "image_name": "debian-12",
                "image_url": "https://example.org/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
                "image_checksum_manifest_url": "https://example.org/bookworm/latest/SHA512SUMS"
            }],
            "kvm_instance_definitions": [{ "instance_name": "app-01", "image_name": "debian-12" }]
        })
    }

    /// The smallest item of a list the minimal file leaves out.
    fn minimal_item(list: &str) -> Value {
        match list {
            "nics" => json!({ "network": "default" }),
            "disks" => json!({ "name": "data", "size_gib": 1 }),
            _ => json!({}),
        }
    }

    /// The object at `path` inside `doc` (the first item of a list; a missing list is made
    /// with its smallest item).
    fn at<'a>(doc: &'a mut Value, path: &str) -> &'a mut serde_json::Map<String, Value> {
        let mut node = doc;
        for seg in path.split('.').filter(|s| !s.is_empty()) {
            let (key, item) = match seg.strip_suffix("[]") {
                Some(k) => (k, true),
                None => (seg, false),
            };
            let map = node.as_object_mut().expect("an object on the path");
            node = map.entry(key).or_insert_with(|| {
                if item {
                    json!([minimal_item(key)])
                } else {
                    json!({})
                }
            });
            if item {
                node = &mut node[0];
            }
        }
        node.as_object_mut().expect("an object at the path")
    }

    /// Parse a JSON document (JSON is YAML) with the real parser.
    fn parse(doc: &Value) -> Result<config::Config, String> {
        config::parse(Path::new("vars.yml"), &doc.to_string(), &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn is_draft_2020_12_with_descriptions_and_defaults() {
        let s = schema();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        let props = &s["properties"];
        assert_eq!(props["kvm_hypervisor_host"]["default"], "localhost");
        assert_eq!(props["kvm_runtime_timeout_seconds"]["default"], 900);
        assert_eq!(props["kvm_auto_fix_runtime_pool_access"]["default"], true);
        assert_eq!(
            props["kvm_cloud_init_defaults"]["default"]["user"],
            "debian"
        );
        for (path, obj) in objects(&s) {
            for (key, prop) in &obj.properties {
                assert!(
                    prop.get("description").and_then(Value::as_str).is_some(),
                    "`{path}.{key}` has no description"
                );
                assert!(
                    obj.required.contains(key) || prop.get("default").is_some(),
                    "`{path}.{key}` is optional but has no default"
                );
            }
        }
    }

    /// The schema describes exactly the structs the parser reads, key for key, and rejects
    /// unknown keys exactly where the parser does (everywhere).
    #[test]
    fn schema_and_parser_agree_on_every_key() {
        let objs = objects(&schema());
        let fields = parser_fields();
        assert_eq!(
            objs.keys().collect::<Vec<_>>(),
            fields.keys().collect::<Vec<_>>(),
            "objects in the schema vs structs the parser reads"
        );
        for (path, obj) in &objs {
            let keys: BTreeSet<String> = obj.properties.keys().cloned().collect();
            assert_eq!(keys, fields[path], "keys at `{path}`");
            assert!(
                obj.closed,
                "`{path}` must reject unknown keys in the schema"
            );
            let mut doc = minimal();
            at(&mut doc, path).insert("kvm_not_a_key".into(), json!(1));
            let err = parse(&doc).expect_err(path);
            assert!(err.contains("unknown key `kvm_not_a_key`"), "{path}: {err}");
        }
    }

    /// Every key the schema offers is one the parser accepts, with the schema's default.
    #[test]
    fn parser_accepts_every_schema_key_with_its_default() {
        assert!(parse(&minimal()).is_ok());
        for (path, obj) in objects(&schema()) {
            for (key, prop) in &obj.properties {
                let mut doc = minimal();
                let map = at(&mut doc, &path);
                if map.contains_key(key) {
                    continue; // in the minimal file already, which parses
                }
                map.insert(key.clone(), prop["default"].clone());
                if let Err(e) = parse(&doc) {
                    panic!("`{path}.{key}` = {}: {e}", prop["default"]);
                }
            }
        }
    }

    /// Every bound the schema puts on a number is the parser's: the bounds pass, one beyond
    /// each fails.
    #[test]
    fn numeric_bounds_are_the_parser_bounds() {
        let mut checked = 0;
        for (path, obj) in objects(&schema()) {
            for (key, prop) in &obj.properties {
                let bounds = [
                    (prop.get("minimum").and_then(Value::as_i64), -1),
                    (prop.get("maximum").and_then(Value::as_i64), 1),
                ];
                for (bound, beyond) in bounds {
                    let Some(bound) = bound else { continue };
                    for (value, ok) in [(bound, true), (bound + beyond, false)] {
                        let mut doc = minimal();
                        at(&mut doc, &path).insert(key.clone(), json!(value));
                        assert_eq!(parse(&doc).is_ok(), ok, "`{path}.{key}` = {value}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked >= 4, "vcpus and memory_mib have both bounds");
    }

    /// `-e KEY=VALUE` accepts the same top-level keys as the file.
    #[test]
    fn override_keys_are_the_schema_keys() {
        let root: BTreeSet<String> = objects(&schema())[""].properties.keys().cloned().collect();
        let e: BTreeSet<String> = config::TOP_LEVEL_KEYS
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(root, e);
    }

    #[test]
    fn committed_schema_file_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("vars/kvm-provisioning.schema.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == format!("{}\n", render()),
            "{} is not `kvmprov schema`'s output: run `cargo run -q -- schema > {}`",
            path.display(),
            path.display()
        );
    }

    #[test]
    fn example_names_the_schema_for_editors() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("vars/kvm-provisioning.yml");
        let text = std::fs::read_to_string(example).unwrap();
        assert!(text
            .lines()
            .next()
            .unwrap()
            .starts_with("# yaml-language-server: $schema=kvm-provisioning.schema.json"));
    }
}
