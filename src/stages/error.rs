//! Why a run of stages could not go on ([`StageError`]), kept typed until it is shown: each
//! variant is named after the operation that failed and holds that operation's own error. Only
//! the output layer turns it into text (`report::error_chain`), so the words are the same as
//! they always were: `provision stage: …`, `<uri>: …` when a run spans several hypervisors.

use kvmprov_hypervisor::HvError;

use crate::lock::LockError;
use crate::report::error_chain;
use crate::stages::image_cache::HoldCacheError;
use crate::stages::provision::ProvisionError;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Another run holds a hypervisor's lock, or the lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The image cache is unsafe, or cannot be held against a prune.
    #[error(transparent)]
    HoldCache(#[from] HoldCacheError),
    /// A hypervisor does not answer.
    #[error("{source}")]
    Connect {
        uri: String,
        #[source]
        source: HvError,
    },
    #[error("preflight stage")]
    Preflight(#[source] HvError),
    #[error("provision stage")]
    Provision(#[source] ProvisionError),
    #[error("runtime stage")]
    Runtime(#[source] HvError),
    /// A day-two verb (`start`, `stop`, `restart`) could not observe the hypervisor.
    #[error("{verb}")]
    Lifecycle {
        verb: &'static str,
        #[source]
        source: HvError,
    },
    /// Cleanup could not observe the hypervisor.
    #[error(transparent)]
    Cleanup(HvError),
    /// One hypervisor's error in a run that spans several: named by its URI.
    #[error("{uri}")]
    OnHost {
        uri: String,
        #[source]
        source: Box<StageError>,
    },
    /// Several hypervisors stopped; each of their errors, in the config's order.
    #[error("{}", several(.0))]
    Hosts(Vec<StageError>),
}

impl StageError {
    /// `self` named by the hypervisor `uri` when the run spans several hosts.
    pub fn on_host(self, several_hosts: bool, uri: &str) -> Self {
        if several_hosts {
            StageError::OnHost {
                uri: uri.to_string(),
                source: Box::new(self),
            }
        } else {
            self
        }
    }

    /// One error for the hosts that stopped: the only one, or all of them. `None` if none did.
    pub fn of_hosts(mut errors: Vec<StageError>) -> Option<StageError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(StageError::Hosts(errors)),
        }
    }
}

fn several(errors: &[StageError]) -> String {
    errors
        .iter()
        .map(|e| error_chain(e))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(text: &str) -> HvError {
        HvError::Invalid {
            what: "network".into(),
            reason: text.to_string(),
        }
    }

    /// The words scripts and the e2e tests grep for: the stage's name, then the cause; the
    /// host's URI first when a run spans several, errors of several hosts joined by `; `.
    #[test]
    fn shown_as_before_the_errors_were_typed() {
        let one = StageError::Preflight(hv("no `default`"));
        assert_eq!(error_chain(&one), "preflight stage: network: no `default`");
        assert_eq!(
            error_chain(&StageError::Preflight(hv("x")).on_host(false, "qemu:///system")),
            "preflight stage: network: x"
        );
        let both = StageError::of_hosts(vec![
            StageError::Runtime(hv("gone")).on_host(true, "qemu:///system"),
            StageError::Connect {
                uri: "qemu+ssh://hv2/system".into(),
                source: hv("unreachable"),
            }
            .on_host(true, "qemu+ssh://hv2/system"),
        ]);
        assert_eq!(
            error_chain(&both.unwrap()),
            "qemu:///system: runtime stage: network: gone; qemu+ssh://hv2/system: network: unreachable"
        );
        assert!(StageError::of_hosts(Vec::new()).is_none());
    }
}
