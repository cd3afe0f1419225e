//! `kvmprov ping`: can we reach the hypervisor, and what does it offer?

use crate::cli::{EXIT_FAILED, EXIT_OK};
use crate::plan::{error_chain, OutputFormat};
use crate::stages::Session;

pub fn run(s: &Session) -> i32 {
    let result = s
        .connect()
        .and_then(|hv| Ok((hv.host_info()?, hv.networks()?)));
    let (info, networks) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            return EXIT_FAILED;
        }
    };
    if s.output == OutputFormat::Json {
        let doc = serde_json::json!({
            "uri": s.cfg.libvirt_uri,
            "host": info,
            "networks": networks,
        });
        println!("{doc:#}");
        return EXIT_OK;
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
    EXIT_OK
}
