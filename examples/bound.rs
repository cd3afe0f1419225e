//! The benchmark's lower bound: the libvirt calls provisioning needs and nothing else — per
//! instance an overlay volume, a seed volume upload, define, start — all instances in parallel,
//! no planning, no checks, no output but the elapsed time. `make bench` compares kvmprov with it.
//!
//!   bound URI POOL_NAME POOL_DIR BASE_IMAGE NETWORK COUNT PREFIX

use std::path::PathBuf;
use std::time::Instant;

use kvmprov_hypervisor::xml::{self, DomainSpec, DomainType, KvmprovMetadata};
use kvmprov_hypervisor::Hypervisor;
use kvmprov_seed::{HostKeys, NetworkSpec, NicNetwork, SeedSpec};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 8 {
        eprintln!("usage: bound URI POOL_NAME POOL_DIR BASE_IMAGE NETWORK COUNT PREFIX");
        std::process::exit(2);
    }
    let (uri, pool, dir, base, net) = (
        &args[1],
        &args[2],
        PathBuf::from(&args[3]),
        PathBuf::from(&args[4]),
        &args[5],
    );
    let count: usize = args[6].parse().unwrap_or(10);
    let prefix = &args[7];
    let hv = match Hypervisor::connect(uri) {
        Ok(hv) => hv,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = hv.ensure_dir_pool(pool, &dir) {
        eprintln!("{e}");
        std::process::exit(1);
    }
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
        for (name, iso) in names.iter().zip(&isos) {
            let (hv, dir, base) = (&hv, &dir, &base);
            s.spawn(move || {
                let disk = format!("{name}.qcow2");
                let seed_vol = format!("{name}-seed.iso");
                let result = hv
                    .create_overlay(pool, &disk, base, "qcow2", 4 << 30)
                    .and_then(|_| hv.upload_volume(pool, &seed_vol, iso, "raw"))
                    .and_then(|_| {
                        hv.define(&xml::domain_xml(&DomainSpec {
                            name: name.clone(),
                            domain_type: DomainType::Qemu,
                            vcpus: 1,
                            memory_mib: 256,
                            disk_path: dir.join(&disk),
                            data_disks: vec![],
                            seed_path: dir.join(&seed_vol),
                            interfaces: vec![xml::InterfaceSpec::virtio_on(
                                net,
                                &xml::mac_for(name),
                            )],
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
                        }))
                    })
                    .and_then(|_| hv.start(name));
                if let Err(e) = result {
                    eprintln!("{name}: {e}");
                }
            });
        }
    });
    println!("{:.3}", start.elapsed().as_secs_f64());
}
