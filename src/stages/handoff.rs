//! What a stage reads besides the session and its hypervisor ([`Handoff`]): how the command runs
//! the stages, and what the stages before it found.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};

use kvmprov_image::CachedImage;

/// What a stage reads besides the session and its hypervisor, one per run. The command sets
/// how the stages run (`no_wait`, `several_hosts`); the image-cache stage fills in the images
/// before the stages that use them run.
#[derive(Default)]
pub struct Handoff {
    /// Runtime only starts the domains (`--no-wait`): no waiting for SSH or cloud-init, no
    /// snapshots.
    pub no_wait: bool,
    /// The run spans several hypervisors: headers and reports name the host.
    pub several_hosts: bool,
    /// image_name → the cached version this run resolved (image-cache stage).
    pub images: BTreeMap<String, CachedImage>,
    /// Image names a `--check` run would download: provision plans their instances as if the
    /// image were cached.
    pub pending: Vec<String>,
    /// libvirt URI → the access check of that remote hypervisor's pool directories, made over
    /// SSH while its libvirt connection was being made (preflight uses it when it agrees).
    pub access_ahead: BTreeMap<String, AccessAhead>,
}

impl Handoff {
    /// A stage's header: its name, and the host's when the run spans several.
    pub fn header(&self, name: &str, uri: &str) -> String {
        if self.several_hosts {
            format!("{name} @ {uri}")
        } else {
            name.to_string()
        }
    }

    /// The host a stage's report names: the hypervisor's URI when the run spans several.
    pub fn host(&self, uri: &str) -> Option<String> {
        self.several_hosts.then(|| uri.to_string())
    }
}

/// A remote hypervisor's access check made while kvmprov connects to its libvirt (both cost an
/// SSH connection, ~0.4–1 s each): the uid:gid qemu runs as is read there from `virsh
/// capabilities`, the same base label kvmprov_hypervisor reads through the connection, and
/// the answer is used only when the two agree.
///
/// Made by preflight (`access_ahead`); defined here, where the runner hands it over.
#[derive(Debug, Clone)]
pub struct AccessAhead {
    /// The uid:gid the check ran as.
    pub(crate) ids: (u32, u32),
    /// The paths whose every ancestor it checked.
    pub(crate) paths: Vec<PathBuf>,
    /// The directories that uid:gid could not traverse.
    pub(crate) blocked: Vec<PathBuf>,
}

impl AccessAhead {
    /// The directories blocked on the way to `paths`, when this check was made as `ids` and
    /// covered them all.
    pub(crate) fn answer_for(&self, ids: (u32, u32), paths: &[&Path]) -> Option<Vec<PathBuf>> {
        (self.ids == ids && paths.iter().all(|p| self.paths.iter().any(|q| q == p)))
            .then(|| self.blocked.clone())
    }
}
