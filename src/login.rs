//! How kvmprov logs in to an instance: the operator key provision generated, the instance's
//! pinned host key (written as a known_hosts file for the address it is reached at) and the
//! hop through a remote hypervisor. Runtime, `status`, `ssh` and the inventory all log in so.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use kvmprov_hypervisor::SshDest;

use crate::config::Instance;
use crate::settings::Session;
use crate::ssh::SshTarget;
use crate::state::{self, StateDir, StateError};

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("no operator key in {}: was `{instance}` provisioned by kvmprov?", dir.display())]
    NoOperatorKey { dir: PathBuf, instance: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Everything but the address needed to log in to one instance.
#[derive(Debug, Clone)]
pub struct Login {
    user: String,
    identity: PathBuf,
    /// The checked state directory the pinned keys are read from and known_hosts written to.
    state: Arc<StateDir>,
    libvirt_uri: String,
    instance: String,
    jump: Option<SshDest>,
}

impl Login {
    /// `s` is the session of the instance's own hypervisor (`Session::for_host`).
    pub fn new(s: &Session, inst: &Instance) -> Result<Login, LoginError> {
        let no_key = || LoginError::NoOperatorKey {
            dir: state::state_dir(&s.cfg.instance_pool_path),
            instance: inst.name.clone(),
        };
        let st = StateDir::open_existing(&s.cfg.instance_pool_path)?.ok_or_else(no_key)?;
        let key = st.operator_key(false)?.ok_or_else(no_key)?;
        Ok(Login {
            user: s.cfg.cloud_init.user.clone(),
            identity: key.private_path,
            state: Arc::new(st),
            libvirt_uri: inst.libvirt_uri.clone(),
            instance: inst.name.clone(),
            // Guests of a remote hypervisor sit on its NAT network: reach them through it.
            jump: kvmprov_hypervisor::ssh_destination(&s.cfg.libvirt_uri),
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The hypervisor logins go through, if it is remote.
    pub fn jump(&self) -> Option<&SshDest> {
        self.jump.as_ref()
    }

    /// The SSH target at `addr`, its known_hosts file naming that address.
    pub fn target(&self, addr: Ipv4Addr) -> Result<SshTarget, StateError> {
        Ok(SshTarget {
            user: self.user.clone(),
            addr: IpAddr::V4(addr),
            identity: self.identity.clone(),
            known_hosts: self.state.known_hosts_for(
                &self.libvirt_uri,
                &self.instance,
                &addr.to_string(),
            )?,
            jump: self.jump.clone(),
        })
    }
}
