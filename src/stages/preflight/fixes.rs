//! Preflight's fixes: the repairs kvmprov may make on the hypervisor (create a directory or a
//! dir pool, start a network, grant the qemu user traverse with an ACL).

use std::path::PathBuf;
use std::process::Command;

use kvmprov_hypervisor::{Hypervisor, SshDest};

use super::plan::Fix;
use super::probes::hypervisor_run_as_root;

#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setfacl on {path} failed: {detail}")]
    Acl { path: PathBuf, detail: String },
    #[error(transparent)]
    Hypervisor(#[from] kvmprov_hypervisor::HvError),
}

/// Apply one fix; `remote`: the hypervisor over SSH, where ACLs are set as root.
pub(super) fn apply(hv: &Hypervisor, remote: Option<&SshDest>, fix: &Fix) -> Result<(), FixError> {
    match fix {
        Fix::CreatePool { name, path } => hv
            .ensure_dir_pool(name, path)
            .map(|_| ())
            .map_err(FixError::from),
        Fix::GrantTraverse { user, dirs } if remote.is_some() => {
            let dest = remote.ok_or_else(|| FixError::Acl {
                path: PathBuf::new(),
                detail: "no remote host".into(),
            })?;
            let mut argv = vec!["setfacl".to_string(), "-m".into(), format!("u:{user}:x")];
            argv.extend(dirs.iter().map(|d| d.display().to_string()));
            hypervisor_run_as_root(dest, &argv)
                .map(|_| ())
                .map_err(|detail| FixError::Acl {
                    path: dirs.first().cloned().unwrap_or_default(),
                    detail,
                })
        }
        Fix::CreateDir(path) => {
            std::fs::create_dir_all(path).map_err(|source| FixError::CreateDir {
                path: path.clone(),
                source,
            })
        }
        Fix::StartNetwork(name) => Ok(hv.start_network(name)?),
        Fix::GrantTraverse { user, dirs } => {
            for d in dirs {
                let out = Command::new("setfacl")
                    .arg("-m")
                    .arg(format!("u:{user}:x"))
                    .arg(d)
                    .output()
                    .map_err(|e| FixError::Acl {
                        path: d.clone(),
                        detail: e.to_string(),
                    })?;
                if !out.status.success() {
                    return Err(FixError::Acl {
                        path: d.clone(),
                        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
            }
            Ok(())
        }
    }
}
