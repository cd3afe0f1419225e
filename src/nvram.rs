//! The qcow2 UEFI variable store that lets libvirt snapshot a UEFI guest (libvirt 10.10 or
//! newer; `crate::snapshot`). Given to UEFI instances with `snapshot_name` on such a hypervisor:
//! firmware autoselection cannot choose a qcow2 NVRAM (Debian's firmware descriptors are raw
//! only) and libvirt does not convert the raw template itself, so kvmprov names the OVMF loader
//! and a qcow2 copy of its variable store template, made once per hypervisor in the instance
//! pool with `qemu-img convert` (locally through a checked directory handle, remotely over
//! SSH). libvirt copies that template to the instance's `<name>_VARS.fd` at its first start;
//! cleanup deletes that file with the instance, never the shared template.

use std::path::{Path, PathBuf};
use std::process::Command;

use kvmprov_hypervisor::SshDest;

/// The OVMF loader to name for a guest with or without Secure Boot, among the loaders libvirt
/// reports (`FirmwareSupport::loaders`), and the raw variable store template that goes with it.
/// Debian's `ovmf`: `OVMF_CODE_4M.fd` with `OVMF_VARS_4M.fd`; Secure Boot with Microsoft's keys
/// enrolled: `OVMF_CODE_4M.ms.fd` with `OVMF_VARS_4M.ms.fd` (the keys are in the template).
pub fn loader_and_vars(loaders: &[String], secure_boot: bool) -> Option<(PathBuf, PathBuf)> {
    let wanted = if secure_boot {
        "OVMF_CODE_4M.ms.fd"
    } else {
        "OVMF_CODE_4M.fd"
    };
    let loader = loaders
        .iter()
        .map(PathBuf::from)
        .find(|l| l.file_name().is_some_and(|n| n == wanted))?;
    let vars = loader.with_file_name(wanted.replace("CODE", "VARS"));
    Some((loader, vars))
}

/// Where the qcow2 copy of `vars` lives in the instance pool: `kvmprov-OVMF_VARS_4M.ms.qcow2`.
pub fn template_path(pool: &Path, vars: &Path) -> PathBuf {
    let stem = vars
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".fd").to_string())
        .unwrap_or_default();
    pool.join(format!("kvmprov-{stem}.qcow2"))
}

#[derive(Debug, thiserror::Error)]
pub enum NvramError {
    #[error("cannot make the qcow2 UEFI variable store template {}: {detail}", .path.display())]
    Convert { path: PathBuf, detail: String },
    #[error(transparent)]
    Fs(#[from] kvmprov_safefs::FsError),
}

/// Make `template` (a qcow2 copy of the raw `vars`) unless it exists: on this machine, or on
/// `remote` over SSH (as the SSH user, then under `sudo -n`).
pub fn ensure_template(
    remote: Option<&SshDest>,
    vars: &Path,
    template: &Path,
) -> Result<(), NvramError> {
    let failed = |detail: String| NvramError::Convert {
        path: template.to_path_buf(),
        detail,
    };
    let (Some(dir), Some(name)) = (template.parent(), template.file_name()) else {
        return Err(failed("not a file in a directory".into()));
    };
    let name = name.to_string_lossy();
    if let Some(dest) = remote {
        // Converted beside it and renamed: a half-written template is never used.
        let script = "test -f \"$2\" || { qemu-img convert -f raw -O qcow2 \"$1\" \"$2.part\" && mv -f \"$2.part\" \"$2\"; }";
        let argv: Vec<String> = ["sh", "-c", script, "sh"]
            .into_iter()
            .map(String::from)
            .chain([vars.display().to_string(), template.display().to_string()])
            .collect();
        let timeout = std::time::Duration::from_secs(60);
        let mut said = Vec::new();
        for argv in [
            argv.clone(),
            [vec!["sudo".into(), "-n".into()], argv].concat(),
        ] {
            match crate::ssh::hypervisor_run(dest, &argv, timeout) {
                Ok(o) if o.code == Some(0) => return Ok(()),
                Ok(o) => said.push(o.stderr.trim().to_string()),
                Err(e) => said.push(e.to_string()),
            }
        }
        return Err(failed(format!(
            "on {}: {}",
            dest.display(),
            said.join("; with sudo -n: ")
        )));
    }
    let dir = kvmprov_safefs::Dir::trusted(dir)?;
    match dir.stat(&name)? {
        // Only a regular file root or this user owns: libvirt reads the template as root.
        Some(e) if e.kind == kvmprov_safefs::FileType::RegularFile && (e.uid == 0 || e.uid == kvmprov_safefs::euid()) => {
            return Ok(())
        }
        Some(_) => {
            return Err(failed(
                "a file of that name exists that kvmprov did not make (not a regular file of root's): remove it".into(),
            ))
        }
        None => {}
    }
    let (tmp, _file) = dir.create_temp(".kvmprov-nvram-", 0o644)?;
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(vars)
        .arg(dir.join(&tmp))
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(dir.rename(&tmp, &name)?),
        other => {
            let _ = dir.remove_file(&tmp);
            Err(failed(match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => format!("cannot run qemu-img: {e}"),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_loaders_and_their_variable_stores() {
        let loaders: Vec<String> = [
            "OVMF_CODE_4M.secboot.fd",
            "OVMF_CODE_4M.ms.fd",
            "OVMF_CODE_4M.snakeoil.fd",
            "OVMF_CODE_4M.fd",
        ]
        .iter()
        .map(|n| format!("/usr/share/OVMF/{n}"))
        .collect();
        let (l, v) = loader_and_vars(&loaders, true).unwrap();
        assert_eq!(l, Path::new("/usr/share/OVMF/OVMF_CODE_4M.ms.fd"));
        assert_eq!(v, Path::new("/usr/share/OVMF/OVMF_VARS_4M.ms.fd"));
        let (l, v) = loader_and_vars(&loaders, false).unwrap();
        assert_eq!(l, Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"));
        assert_eq!(v, Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd"));
        assert_eq!(loader_and_vars(&loaders[..1], true), None);
        assert_eq!(
            template_path(Path::new("/p"), &v),
            Path::new("/p/kvmprov-OVMF_VARS_4M.qcow2")
        );
    }
}
