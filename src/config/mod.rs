//! The variables file (`vars/kvm-provisioning.yml`): parsing, `-e` overrides, defaults and
//! validation into resolved [`Config`] settings.
//!
//! Parsing keeps the YAML node tree (with positions) beside the typed values, so that every
//! error — a serde type error, an unknown key or a rule broken across fields — names the file,
//! line and column (or the `-e` argument) it comes from. The steps, one module each:
//!
//! | module | step |
//! |---|---|
//! | `document` | text + `-e` arguments → one YAML node tree with positions |
//! | `profiles` | `kvm_instance_profiles` laid under the instances naming them, in the tree; origins |
//! | `raw` | node tree → the file's serde types ([`Vars`]), defaults filled in |
//! | `resolve` | [`Vars`] → [`Config`]: rules across fields, each error located in the tree |
//! | `validate` | checks of single values (names, paths, URLs, addresses) |
//! | `nics` | an instance's `nics:` list → its resolved [`Nic`]s (the shorthand is `resolve`'s) |
//! | `user_data` | the operator's cloud-config (inline or a file): read, checked, converted |
//! | `disks` | an instance's data disks: their form in the file, checks, resolved form |
//! | `password` | the login password's source (`password`, `password_hash`, `password_file`) |
//! | `resolved` | [`Config`] and [`Instance`]: what the stages read |
//! | `select` | the instances a day-two verb names (declared only, byte for byte) |
//! | `diagnostics` | [`Location`], [`ConfigError`], the wording of YAML and serde errors |

mod diagnostics;
mod disks;
mod document;
mod nics;
mod password;
mod profiles;
mod raw;
mod resolve;
mod resolved;
mod select;
mod user_data;
mod validate;

use std::path::Path;

pub use diagnostics::{did_you_mean, ConfigError, Location};
pub use disks::{DataDisk, DataDiskDefinition, Filesystem};
pub use password::LoginPassword;
pub use raw::{
    CatalogImage, CloudInitDefaults, DomainTypeChoice, FirmwareChoice, InstanceDefinition,
    InstanceProfile, NicDefinition, NicModel, Secret, StageChoice, UserData, Vars, TOP_LEVEL_KEYS,
};
pub use resolved::{Attachment, Config, Instance, Nic, NicIpv4, StaticIpv4, StaticIpv6};
pub use resolved::{FieldOrigin, Origins};
pub use select::UndeclaredInstance;
pub use validate::{libvirt_uri_for, valid_instance_name, valid_snapshot_name};

use diagnostics::{Locator, Sources};

/// Largest variables file we read: a real one is a few KiB; this bounds memory on hostile input.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

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

/// Parse text as if it came from `path` (used by `load` and the tests). Pure but for the files
/// the settings name (`user_data_file`, `password_file`), read relative to `path`'s directory.
pub fn parse(path: &Path, text: &str, overrides: &[String]) -> Result<Config, ConfigError> {
    let sources = Sources { path, overrides };
    let mut root = document::build(&sources, text)?;
    let profiles = profiles::expand(&sources, &mut root)?;
    let vars: Vars = marked_yaml::from_node(&document::coercible(&root))
        .map_err(|e| sources.serde_error(&root, e))?;
    resolve::resolve(Locator::new(&sources, &root), path, vars, &profiles)
}

#[cfg(test)]
mod tests;
