//! `kvmprov ping`: can we reach the hypervisor, and what does it offer?

use crate::exit::ExitStatus;
use crate::output::Probe;
use crate::report::error_chain;
use crate::settings::Session;

/// The command's name in its `--output json` envelope.
pub const NAME: &str = "ping";

/// Every hypervisor the config names; fails if any is unreachable.
pub fn run(s: &Session) -> ExitStatus {
    let probes: Vec<Probe> = s.per_host().iter().map(probe).collect();
    s.printer.hypervisors(&probes);
    ExitStatus::failed_if(probes.iter().any(|p| p.error.is_some()))
}

fn probe(s: &Session) -> Probe {
    let uri = s.cfg.libvirt_uri.clone();
    let result = s
        .connect()
        .and_then(|hv| Ok((hv.host_info()?, hv.networks()?)));
    match result {
        Ok((info, networks)) => Probe {
            uri,
            host: Some(info),
            networks,
            error: None,
            hint: None,
        },
        Err(e) => Probe {
            hint: remote_hint(&uri),
            uri,
            host: None,
            networks: Vec::new(),
            error: Some(error_chain(&e)),
        },
    }
}

/// What to try when a remote hypervisor does not answer: libvirt's ssh transport runs the
/// operator's `ssh` non-interactively.
fn remote_hint(uri: &str) -> Option<String> {
    kvmprov_hypervisor::ssh_destination(uri).map(|d| {
        format!(
            "hint: libvirt reaches {} with your ssh setup and no prompts: `ssh -o BatchMode=yes {} {} virsh -c qemu:///system version` must work (key in ssh-agent or ~/.ssh/config, host key in known_hosts)",
            d.host,
            d.args().join(" "),
            d.host
        )
    })
}
