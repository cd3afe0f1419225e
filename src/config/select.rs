//! Narrowing a config to the instances a day-two verb names (`start`, `stop`, `restart`): the
//! strict rule cleanup keeps, declared instances only, names compared byte for byte. No names:
//! every declared instance. A name that is not declared is an error (exit 2) before anything
//! is looked at, so a typo never acts on some instances and not on others.

use super::{did_you_mean, Config};

/// A name given on the command line that the variables file does not declare.
#[derive(Debug, thiserror::Error)]
#[error("`{name}` is not a declared instance of {file} (declared: {declared}){hint}; nothing was changed")]
pub struct UndeclaredInstance {
    pub name: String,
    pub file: String,
    pub declared: String,
    pub hint: String,
}

impl Config {
    /// The error for `name`, which the variables file does not declare.
    pub fn undeclared(&self, name: &str) -> UndeclaredInstance {
        let declared: Vec<&str> = self.instances.iter().map(|i| i.name.as_str()).collect();
        UndeclaredInstance {
            name: name.to_string(),
            file: self.source.display().to_string(),
            declared: if declared.is_empty() {
                "none".to_string()
            } else {
                declared.join(", ")
            },
            hint: did_you_mean(name, &declared),
        }
    }

    /// The config with only the instances `names` names, in declaration order (each once);
    /// all of them when `names` is empty.
    pub fn select(&self, names: &[String]) -> Result<Config, UndeclaredInstance> {
        if let Some(bad) = names.iter().find(|n| self.instance(n).is_none()) {
            return Err(self.undeclared(bad));
        }
        let mut c = self.clone();
        if !names.is_empty() {
            c.instances.retain(|i| names.contains(&i.name));
            let kept = &c.instances;
            c.origins
                .retain(|o| kept.iter().any(|i| i.name == o.instance));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn cfg() -> super::Config {
        let text = "kvm_cloud_image_catalog:\n  - {image_name: d, image_url: http://x/a.qcow2, image_checksum_manifest_url: http://x/S}\n\
            kvm_instance_definitions:\n  - {instance_name: app-01, image_name: d}\n  - {instance_name: app-02, image_name: d}\n  - {instance_name: db-01, image_name: d}\n";
        crate::config::parse(Path::new("vars.yml"), text, &[]).unwrap()
    }

    fn names(c: &super::Config) -> Vec<&str> {
        c.instances.iter().map(|i| i.name.as_str()).collect()
    }

    #[test]
    fn no_names_select_every_declared_instance() {
        assert_eq!(
            names(&cfg().select(&[]).unwrap()),
            ["app-01", "app-02", "db-01"]
        );
    }

    #[test]
    fn names_select_those_instances_in_declaration_order() {
        let c = cfg()
            .select(&["db-01".into(), "app-01".into(), "db-01".into()])
            .unwrap();
        assert_eq!(names(&c), ["app-01", "db-01"]);
    }

    /// Byte for byte, like cleanup: no case folding, no prefixes, no globs.
    #[test]
    fn an_undeclared_name_is_an_error_that_names_it_and_the_declared_ones() {
        for bad in ["APP-01", "app-0", "app-*", "app-01 ", ""] {
            let e = cfg()
                .select(&["app-02".into(), bad.into()])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("`{bad}` is not a declared instance of vars.yml (declared: app-01, app-02, db-01)")), "{e}");
            assert!(e.ends_with("nothing was changed"), "{e}");
        }
        let e = cfg().select(&["app-O1".into()]).unwrap_err().to_string();
        assert!(e.contains("did you mean `app-01`?"), "{e}");
    }
}
