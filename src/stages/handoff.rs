//! What a stage reads besides the session and its hypervisor ([`Handoff`]): how the command runs
//! the stages, and what the stages before it found.

use std::collections::BTreeMap;

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
