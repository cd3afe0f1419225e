//! The benchmark's lower bound: the libvirt calls provisioning needs and nothing else — per
//! instance an overlay volume, a seed volume upload, define, start — all instances in parallel,
//! no planning, no checks, no output but the elapsed time. `make bench` compares kvmprov with it.
//!
//!   bound URI[,URI...] POOL_NAME POOL_DIR BASE_IMAGE NETWORK COUNT PREFIX [JOBS]
//!
//! With several URIs (a fleet) the instances go round-robin to the hosts (PREFIX-01 to the
//! first, -02 to the second, …, as tests/bench/fleet.sh declares them for kvmprov), every host
//! is worked on at once, each by JOBS threads taking its instances from one queue (default:
//! one thread per instance), over one connection per host: kvmprov's parallelism. Connecting
//! and making the pools are not timed. Domains get 256 MiB unless `BOUND_MEMORY_MIB` says.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use kvmprov_hypervisor::xml::{self, DomainSpec, DomainType, KvmprovMetadata};
use kvmprov_hypervisor::{HvError, Hypervisor};
use kvmprov_seed::{HostKeys, NetworkSpec, NicNetwork, SeedSpec};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 8 && args.len() != 9 {
        eprintln!(
            "usage: bound URI[,URI...] POOL_NAME POOL_DIR BASE_IMAGE NETWORK COUNT PREFIX [JOBS]"
        );
        std::process::exit(2);
    }
    let (uris, pool, dir, base, net) = (
        args[1].split(',').collect::<Vec<_>>(),
        &args[2],
        PathBuf::from(&args[3]),
        PathBuf::from(&args[4]),
        &args[5],
    );
    let count: usize = args[6].parse().unwrap_or(10);
    let prefix = &args[7];
    let jobs: usize = args
        .get(8)
        .and_then(|j| j.parse().ok())
        .unwrap_or(count)
        .max(1);
    let hvs: Vec<Hypervisor> = uris
        .iter()
        .map(|uri| {
            Hypervisor::connect(uri)
                .and_then(|hv| hv.ensure_dir_pool(pool, &dir).map(|_| hv))
                .unwrap_or_else(|e| {
                    eprintln!("{e}");
                    std::process::exit(1);
                })
        })
        .collect();
    // The seed bytes are made once, outside the timing: only libvirt calls are measured.
    let keys = HostKeys::generate().expect("key");
    let seed = |name: &str| SeedSpec {
        instance_id: format!("{name}-1"),
        hostname: name.to_string(),
        user: "debian".into(),
        password_hash: None,
        ssh_authorized_keys: vec![],
        ssh_password_authentication: false,
        host_keys: keys.clone(),
        network: vec![NicNetwork::only(NetworkSpec::Dhcp {
            mac: xml::mac_for(name),
        })],
        packages: vec![],
        runcmd: vec![],
        fqdn: None,
        user_data: Default::default(),
        data_filesystems: vec![],
    };
    let names: Vec<String> = (1..=count).map(|i| format!("{prefix}-{i:02}")).collect();
    let isos: Vec<Vec<u8>> = names
        .iter()
        .map(|n| kvmprov_seed::build_iso(&seed(n)).expect("iso"))
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        let hosts = hvs.len();
        for (h, hv) in hvs.iter().enumerate() {
            let (dir, base, names, isos) = (&dir, &base, &names, &isos);
            s.spawn(move || {
                // This host's instances, round-robin, taken by `jobs` threads from one queue.
                let mine: Vec<usize> = (h..count).step_by(hosts).collect();
                let next = AtomicUsize::new(0);
                let (mine, next) = (&mine, &next);
                std::thread::scope(|s| {
                    for _ in 0..jobs.min(mine.len()) {
                        s.spawn(move || {
                            while let Some(&i) = mine.get(next.fetch_add(1, Ordering::Relaxed)) {
                                if let Err(e) = one(hv, pool, dir, base, net, &names[i], &isos[i]) {
                                    eprintln!("{}: {e}", names[i]);
                                }
                            }
                        });
                    }
                });
            });
        }
    });
    println!("{:.3}", start.elapsed().as_secs_f64());
}

/// One instance: its overlay, its seed upload, define, start.
fn one(
    hv: &Hypervisor,
    pool: &str,
    dir: &Path,
    base: &Path,
    net: &str,
    name: &str,
    iso: &[u8],
) -> Result<(), HvError> {
    let disk = format!("{name}.qcow2");
    let seed_vol = format!("{name}-seed.iso");
    hv.create_overlay(pool, &disk, base, "qcow2", 4 << 30)?;
    hv.upload_volume(pool, &seed_vol, iso, "raw")?;
    hv.define(&xml::domain_xml(&DomainSpec {
        name: name.to_string(),
        domain_type: DomainType::Qemu,
        vcpus: 1,
        memory_mib: std::env::var("BOUND_MEMORY_MIB")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(256),
        disk_path: dir.join(&disk),
        data_disks: vec![],
        seed_path: dir.join(&seed_vol),
        interfaces: vec![xml::InterfaceSpec::virtio_on(net, &xml::mac_for(name))],
        console_log: dir.join(format!("{name}-console.log")),
        firmware: kvmprov_hypervisor::Firmware::Bios,
        metadata: KvmprovMetadata {
            image_name: "bench".into(),
            image_version: None,
            image_sha512: String::new(),
            config_digest: String::new(),
            instance_id: format!("{name}-1"),
            fields: None,
        },
    }))?;
    hv.start(name)
}
