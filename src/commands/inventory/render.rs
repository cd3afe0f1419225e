//! The inventory in Ansible's formats: the dynamic-inventory JSON (`--list`, `--host NAME`)
//! and a static YAML file.

use serde_json::{json, Value};

use super::model::Inventory;

/// Output of `kvmprov inventory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Ansible's dynamic-inventory JSON.
    Json,
    /// A static inventory file in Ansible's YAML format.
    Yaml,
}

/// The dynamic-inventory document (`--list`): every group, `all` as their parent, and the host
/// variables in `_meta` so Ansible does not call `--host` once per host.
pub fn to_json(inv: &Inventory) -> Value {
    let mut doc = serde_json::Map::new();
    doc.insert(
        "_meta".into(),
        json!({ "hostvars": serde_json::to_value(&inv.hosts).unwrap_or_default() }),
    );
    doc.insert(
        "all".into(),
        json!({ "children": inv.groups.keys().collect::<Vec<_>>() }),
    );
    for (group, hosts) in &inv.groups {
        doc.insert(group.clone(), json!({ "hosts": hosts }));
    }
    Value::Object(doc)
}

/// `--host NAME`: the host's variables, `{}` when it is not in the inventory (Ansible's rule).
pub fn host_json(inv: &Inventory, name: &str) -> Value {
    inv.hosts
        .get(name)
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or_else(|| json!({}))
}

/// A static inventory in Ansible's YAML format. Every string is written as a JSON string, which
/// is a valid YAML double-quoted scalar: no value can turn into a number, a boolean or syntax;
/// a list (`kvmprov_nics`) as JSON, which is YAML flow style with the same rule inside.
pub fn to_yaml(inv: &Inventory) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut y = String::from(
        "# Ansible inventory of kvmprov's instances (`kvmprov inventory --format yaml`).\nall:\n",
    );
    if inv.hosts.is_empty() {
        y.push_str("  hosts: {}\n");
        return y;
    }
    y.push_str("  hosts:\n");
    for (name, vars) in &inv.hosts {
        y.push_str(&format!("    {}:\n", q(name)));
        // Through serde, so the file always has the same variables as the JSON document.
        if let Ok(Value::Object(vars)) = serde_json::to_value(vars) {
            for (key, value) in vars {
                let shown = match &value {
                    Value::String(s) => q(s),
                    other => other.to_string(),
                };
                y.push_str(&format!("      {key}: {shown}\n"));
            }
        }
    }
    y.push_str("  children:\n");
    for (group, hosts) in &inv.groups {
        y.push_str(&format!("    {group}:\n      hosts:\n"));
        for h in hosts {
            y.push_str(&format!("        {}: {{}}\n", q(h)));
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{build, f, sample, target};
    use super::*;

    #[test]
    fn every_nic_of_an_instance_with_several_is_listed() {
        let mut db = f(
            "db-01",
            "debian-12",
            "qemu:///system",
            Ok(target([192, 168, 122, 9], None)),
        );
        db.nics = vec![
            crate::address::NicAddresses {
                network: Some("default".into()),
                bridge: None,
                mac: "52:54:00:00:00:01".into(),
                primary: true,
                ipv4: Some([192, 168, 122, 9].into()),
                ipv6: None,
            },
            crate::address::NicAddresses {
                network: Some("storage".into()),
                bridge: None,
                mac: "52:54:00:00:00:02".into(),
                primary: false,
                ipv4: Some([10, 77, 0, 10].into()),
                ipv6: Some("fd77::10".parse().unwrap()),
            },
        ];
        let inv = build(&[db]);
        let doc = to_json(&inv);
        let nics = &doc["_meta"]["hostvars"]["db-01"]["kvmprov_nics"];
        assert_eq!(nics[1]["ipv4"], "10.77.0.10");
        assert_eq!(nics[1]["ipv6"], "fd77::10");
        assert_eq!(doc["network_storage"]["hosts"], json!(["db-01"]));
        assert_eq!(doc["network_default"]["hosts"], json!(["db-01"]));
        let y = to_yaml(&inv);
        assert!(
            y.contains(r#"      kvmprov_nics: [{"ipv4":"192.168.122.9","ipv6":null,"mac":"52:54:00:00:00:01","network":"default","primary":true},"#),
            "{y}"
        );
        // A host with one NIC has no kvmprov_nics.
        assert!(to_json(&sample())["_meta"]["hostvars"]["app-01"]
            .get("kvmprov_nics")
            .is_none());
    }

    #[test]
    fn dynamic_json_has_meta_hostvars_and_all() {
        let doc = to_json(&sample());
        assert_eq!(
            doc["_meta"]["hostvars"]["app-01"]["ansible_host"],
            "192.168.122.50"
        );
        assert_eq!(doc["image_debian_12"]["hosts"], json!(["app-01"]));
        let children = doc["all"]["children"].as_array().unwrap();
        assert_eq!(children.len(), 5);
        assert!(doc.get("web-01").is_none());
        assert_eq!(host_json(&sample(), "db-01")["ansible_user"], "debian");
        assert_eq!(host_json(&sample(), "web-01"), json!({}));
    }

    #[test]
    fn empty_inventory_is_still_valid() {
        let inv = build(&[]);
        assert_eq!(
            to_json(&inv),
            json!({"_meta": {"hostvars": {}}, "all": {"children": []}})
        );
        assert!(to_yaml(&inv).ends_with("all:\n  hosts: {}\n"));
    }

    /// The YAML file read back (with the YAML parser kvmprov uses) holds the same hosts, values
    /// and groups as the JSON document.
    #[test]
    fn yaml_is_the_same_inventory() {
        let inv = sample();
        let y = to_yaml(&inv);
        let root = marked_yaml::parse_yaml(0, &y).unwrap();
        let all = root.as_mapping().unwrap().get_mapping("all").unwrap();
        let hosts = all.get_mapping("hosts").unwrap();
        for (name, vars) in &inv.hosts {
            let h = hosts.get_mapping(name).unwrap();
            let doc = serde_json::to_value(vars).unwrap();
            for (k, v) in doc.as_object().unwrap() {
                assert_eq!(
                    h.get_scalar(k).unwrap().as_str(),
                    v.as_str().unwrap(),
                    "{k}"
                );
            }
        }
        let children = all.get_mapping("children").unwrap();
        for (group, members) in &inv.groups {
            let g = children
                .get_mapping(group)
                .unwrap()
                .get_mapping("hosts")
                .unwrap();
            let listed: Vec<&str> = g.keys().map(|k| k.as_str()).collect();
            assert_eq!(listed, *members);
        }
    }

    #[test]
    fn yaml_values_cannot_change_type_or_break_out() {
        let mut t = target([10, 0, 0, 1], None);
        t.user = "yes".into();
        // ssh takes no control character in a path (refused before it gets here): the line
        // break rides in the hypervisor URI instead.
        let uri = "qemu:///system\": x\n  evil: 1";
        let inv = build(&[f("123", "debian-12", uri, Ok(t))]);
        let y = to_yaml(&inv);
        let root = marked_yaml::parse_yaml(0, &y).unwrap();
        let h = root
            .as_mapping()
            .unwrap()
            .get_mapping("all")
            .unwrap()
            .get_mapping("hosts")
            .unwrap()
            .get_mapping("123")
            .unwrap();
        assert_eq!(h.get_scalar("ansible_user").unwrap().as_str(), "yes");
        assert_eq!(h.get_scalar("kvmprov_libvirt_uri").unwrap().as_str(), uri);
        assert!(h.get_node("evil").is_none());
        assert!(y.contains("ansible_user: \"yes\""), "{y}");
    }
}
