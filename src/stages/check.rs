//! `kvmprov check`: the variables file validated offline, summarised.

use crate::exit::ExitStatus;
use crate::plan::OutputFormat;
use crate::settings::Session;

pub fn run(s: &Session) -> ExitStatus {
    let cfg = &s.cfg;
    if s.output == OutputFormat::Json {
        match serde_json::to_string_pretty(cfg) {
            Ok(doc) => println!("{doc}"),
            Err(e) => {
                eprintln!("error: cannot render the configuration as JSON: {e}");
                return ExitStatus::Usage;
            }
        }
        return ExitStatus::Success;
    }
    println!("{}: ok", cfg.source.display());
    println!(
        "  hypervisor      {} ({})",
        cfg.hypervisor_host, cfg.libvirt_uri
    );
    println!("  domain type     {:?}", cfg.domain_type);
    println!("  stage           {}", cfg.stage.as_str());
    println!("  image cache     {}", cfg.image_cache_path.display());
    println!("  instance pool   {}", cfg.instance_pool_path.display());
    println!(
        "  images          {} in catalog, {} used",
        cfg.catalog.len(),
        cfg.used_images().len()
    );
    for c in &cfg.catalog {
        let used = if cfg
            .used_images()
            .iter()
            .any(|u| u.image_name == c.image_name)
        {
            "used"
        } else {
            "unused"
        };
        let url = kvmprov_image::redact_url(&c.image_url);
        println!("    {:<14} {:<6} {url}", c.image_name, used);
    }
    println!("  instances       {}", cfg.instances.len());
    for i in &cfg.instances {
        let ip = i
            .ipv4
            .as_ref()
            .map(|s| s.address.to_string())
            .unwrap_or_else(|| "dhcp".to_string());
        let snap = i.snapshot_name.as_deref().unwrap_or("-");
        let on = if i.libvirt_uri == cfg.libvirt_uri {
            String::new()
        } else {
            format!(" on {}", i.libvirt_uri)
        };
        println!(
            "    {:<14} {:<10} {} vCPU {:>6} MiB {:>5} GiB  net {} ip {} snapshot {}{on}",
            i.name, i.image_name, i.vcpus, i.memory_mib, i.disk_size_gib, i.network, ip, snap
        );
    }
    println!(
        "  cleanup         confirmed={} remove_disks={}",
        cfg.cleanup_confirmed, cfg.cleanup_remove_disks
    );
    ExitStatus::Success
}
