//! `kvmprov ping`: can we reach the hypervisor, and what does it offer?

use crate::exit::ExitStatus;
use crate::plan::{error_chain, OutputFormat};
use crate::settings::Session;

/// Every hypervisor the config names; fails if any is unreachable.
pub fn run(s: &Session) -> ExitStatus {
    let mut status = ExitStatus::Success;
    for h in s.per_host() {
        if one(&h) != ExitStatus::Success {
            status = ExitStatus::Failure;
        }
    }
    status
}

fn one(s: &Session) -> ExitStatus {
    let result = s
        .connect()
        .and_then(|hv| Ok((hv.host_info()?, hv.networks()?)));
    let (info, networks) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            if let Some(hint) = remote_hint(&s.cfg.libvirt_uri) {
                eprintln!("{hint}");
            }
            return ExitStatus::Failure;
        }
    };
    if s.output == OutputFormat::Json {
        let doc = serde_json::json!({
            "uri": s.cfg.libvirt_uri,
            "host": info,
            "networks": networks,
        });
        println!("{doc:#}");
        return ExitStatus::Success;
    }
    let yes_no = |b: bool| if b { "available" } else { "not available" };
    println!("hypervisor {} reachable", s.cfg.libvirt_uri);
    println!("  host name          {}", info.hostname);
    println!("  libvirt version    {}", info.libvirt_version);
    println!(
        "  hypervisor         {} {}",
        info.driver, info.hypervisor_version
    );
    println!("  domain type kvm    {}", yes_no(info.kvm));
    println!("  domain type qemu   {}", yes_no(info.qemu));
    println!(
        "  networks           {}",
        if networks.is_empty() { "none" } else { "" }
    );
    for n in &networks {
        println!(
            "    {:<20} {:<8} autostart={:<3} bridge={}",
            n.name,
            if n.active { "active" } else { "inactive" },
            if n.autostart { "yes" } else { "no" },
            n.bridge.as_deref().unwrap_or("-")
        );
    }
    ExitStatus::Success
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
