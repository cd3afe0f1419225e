//! The login user's password: which of `password`, `password_hash` and `password_file` gives
//! it (at most one), the checks of each, and reading the file as ssh reads a key (owned by the
//! running user, not readable by group or others, no symlink followed). Neither a password nor
//! a hash is ever put into an error message.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::diagnostics::Locator;
use super::raw::{CloudInitDefaults, Secret};
use super::ConfigError;

/// Largest password file read: a password is one line; this bounds memory on a wrong path.
const MAX_PASSWORD_FILE_BYTES: u64 = 64 * 1024;

/// Where the login user's password comes from. `Debug` shows no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginPassword {
    /// `password`: plain in the variables file.
    Plain(Secret),
    /// `password_hash`: a SHA-512 crypt hash, used as it is.
    Hash(Secret),
    /// `password_file`: the first line of the file at `path`, read when the config was loaded.
    File { path: PathBuf, plain: Secret },
}

impl LoginPassword {
    /// The SHA-512 crypt hash the guest's `/etc/shadow` gets (a plain password is hashed with a
    /// fresh salt).
    pub fn crypt_hash(&self) -> Result<String, kvmprov_seed::SeedError> {
        match self {
            LoginPassword::Plain(p) | LoginPassword::File { plain: p, .. } => {
                kvmprov_seed::hash_password(p.expose())
            }
            LoginPassword::Hash(h) => Ok(h.expose().to_string()),
        }
    }

    /// What drift digests: the plain password (as kvmprov always has, so a domain made before
    /// the other sources existed shows no drift), or the hash marked as one.
    pub fn drift_material(&self) -> String {
        match self {
            LoginPassword::Plain(p) | LoginPassword::File { plain: p, .. } => {
                p.expose().to_string()
            }
            LoginPassword::Hash(h) => format!("sha512-crypt:{}", h.expose()),
        }
    }
}

/// The password source `ci` names, checked; `base` is the variables file's directory.
pub(super) fn resolve(
    at: Locator,
    ci: &CloudInitDefaults,
    base: &Path,
) -> Result<Option<LoginPassword>, ConfigError> {
    let set: Vec<&str> = [
        ("password", ci.password.is_some()),
        ("password_hash", ci.password_hash.is_some()),
        ("password_file", ci.password_file.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, is)| is.then_some(name))
    .collect();
    if set.len() > 1 {
        return Err(at.key(set[1]).error(format!(
            "{} cannot be used together: set one of password, password_hash or password_file",
            set.join(" and ")
        )));
    }
    if let Some(p) = &ci.password {
        if p.expose().is_empty() {
            return Err(at
                .key("password")
                .error("password is empty: remove the key to lock password login instead"));
        }
        return Ok(Some(LoginPassword::Plain(p.clone())));
    }
    if let Some(h) = &ci.password_hash {
        check_sha512_crypt(h.expose()).map_err(|m| at.key("password_hash").error(m))?;
        return Ok(Some(LoginPassword::Hash(h.clone())));
    }
    if let Some(file) = &ci.password_file {
        let path = base.join(file);
        let plain = read_password_file(&path).map_err(|m| at.key("password_file").error(m))?;
        return Ok(Some(LoginPassword::File { path, plain }));
    }
    Ok(None)
}

/// `$6$[rounds=N$]SALT$HASH` as crypt(3) writes it: a salt of up to 16 and a hash of 86
/// characters of `./0-9A-Za-z`. The message never repeats the value.
pub(super) fn check_sha512_crypt(hash: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "password_hash is not a SHA-512 crypt hash ({why}); make one with `mkpasswd -m sha-512` or `openssl passwd -6` (the value is not shown)"
        ))
    };
    let crypt_char = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    let Some(rest) = hash.strip_prefix("$6$") else {
        return bad("it does not start with `$6$`");
    };
    let rest = match rest.strip_prefix("rounds=") {
        Some(r) => {
            let Some((n, after)) = r.split_once('$') else {
                return bad("`rounds=` is not followed by `$`");
            };
            match n.parse::<u32>() {
                Ok(n) if (1000..=999_999_999).contains(&n) => after,
                _ => return bad("rounds must be a number from 1000 to 999999999"),
            }
        }
        None => rest,
    };
    let Some((salt, digest)) = rest.split_once('$') else {
        return bad("it has no `$` between salt and hash");
    };
    if salt.len() > 16 || !salt.chars().all(crypt_char) {
        return bad("the salt must be up to 16 characters of `./0-9A-Za-z`");
    }
    if digest.len() != 86 || !digest.chars().all(crypt_char) {
        return bad("the hash part must be 86 characters of `./0-9A-Za-z`");
    }
    Ok(())
}

/// The first line of `path`, its line ending stripped. Refused, like ssh refuses a private
/// key, unless it belongs to the running user and neither group nor others can read it; a
/// symbolic link at its name is not followed.
fn read_password_file(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    let mut file = kvmprov_safefs::open_regular(path).map_err(|e| format!("password_file: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("password_file: cannot inspect {shown}: {e}"))?;
    let (owner, mode, me) = (meta.uid(), meta.mode() & 0o7777, kvmprov_safefs::euid());
    if owner != me {
        return Err(format!(
            "password_file {shown} is owned by uid {owner} (mode {mode:04o}), not by uid {me} that kvmprov runs as: `chown {me} {shown}`"
        ));
    }
    if mode & 0o077 != 0 {
        return Err(format!(
            "password_file {shown} (owner uid {owner}, mode {mode:04o}) can be read or written by group or others: `chmod 600 {shown}`"
        ));
    }
    if meta.len() > MAX_PASSWORD_FILE_BYTES {
        return Err(format!(
            "password_file {shown} is larger than {MAX_PASSWORD_FILE_BYTES} bytes; a password file holds one line"
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("password_file: cannot read {shown}: {e}"))?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("password_file {shown} is not UTF-8 text"))?;
    let line = text.split('\n').next().unwrap_or_default();
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        return Err(format!(
            "password_file {shown}: the first line is empty (remove password_file to lock password login instead)"
        ));
    }
    Ok(Secret::new(line))
}

#[cfg(test)]
mod tests;
