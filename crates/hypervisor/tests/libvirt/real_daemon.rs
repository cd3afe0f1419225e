//! Gated check against a real libvirtd (QEMU driver, real storage backend): what the test
//! driver cannot show: qcow2 overlays on a real backing file, upload streams, a started
//! domain from our XML, the DHCP-lease FFI call.
//!
//! Runs only with `KVMPROV_HV_TEST_URI` (e.g. `qemu:///system`) and `KVMPROV_HV_TEST_DIR` (a
//! scratch directory on this machine, which must be the hypervisor host) set; the network is
//! `KVMPROV_HV_TEST_NETWORK` (default `default`). Everything it creates is removed again.
//! Run the daemon inside a network namespace of its own (see DESIGN.md §4).

use std::path::PathBuf;
use std::process::Command;

use kvmprov_hypervisor::xml::{self, DomainSpec, DomainType, KvmprovMetadata};
use kvmprov_hypervisor::{DomainState, Hypervisor, PoolAction};

#[test]
fn real_daemon_storage_and_domain() {
    let (Ok(uri), Ok(dir)) = (
        std::env::var("KVMPROV_HV_TEST_URI"),
        std::env::var("KVMPROV_HV_TEST_DIR"),
    ) else {
        eprintln!("skipped: set KVMPROV_HV_TEST_URI and KVMPROV_HV_TEST_DIR to run against a real libvirtd");
        return;
    };
    let network = std::env::var("KVMPROV_HV_TEST_NETWORK").unwrap_or_else(|_| "default".into());
    let dir = PathBuf::from(dir);
    let tag = format!("kvmhv-test-{}", std::process::id());
    let hv = Hypervisor::connect(&uri).unwrap();
    let host = hv.host_info().unwrap();
    eprintln!("{host:?}");
    assert!(host.qemu, "no TCG domain type offered: {host:?}");

    // A base image outside the pool, like the image cache.
    let base = dir.join(format!("{tag}-base.qcow2"));
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("1G")
        .output()
        .expect("qemu-img (qemu-utils) is installed");
    assert!(out.status.success(), "{out:?}");

    let pool_dir = dir.join(&tag);
    let made = hv.ensure_dir_pool(&tag, &pool_dir).unwrap();
    assert_eq!(made.action, PoolAction::Defined);
    assert!(pool_dir.is_dir(), "build created the directory");
    assert_eq!(
        hv.ensure_dir_pool(&tag, &pool_dir).unwrap().action,
        PoolAction::Existed
    );

    let disk = hv
        .create_overlay(&tag, "vm.qcow2", &base, "qcow2", 2 << 30)
        .unwrap();
    assert_eq!(disk.capacity, 2 << 30);
    assert_eq!(disk.format.as_deref(), Some("qcow2"));
    assert_eq!(disk.backing_path.as_deref(), Some(base.as_path()));
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&disk.path)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains(&*base.to_string_lossy()), "{info}");

    // Bigger than one stream chunk, and not a multiple of it.
    let bytes: Vec<u8> = (0..700_001u32).map(|i| (i % 251) as u8).collect();
    let seed = hv.upload_volume(&tag, "seed.iso", &bytes, "raw").unwrap();
    assert_eq!(std::fs::read(&seed.path).unwrap(), bytes);

    // Our XML on the real QEMU driver: define, start briefly, destroy, undefine.
    let spec = DomainSpec {
        name: tag.clone(),
        domain_type: DomainType::Qemu,
        vcpus: 1,
        memory_mib: 256,
        disk_path: disk.path.clone(),
        seed_path: seed.path.clone(),
        network: network.clone(),
        mac: xml::mac_for(&tag),
        console_log: pool_dir.join("console.log"),
        firmware: kvmprov_hypervisor::Firmware::Bios,
        metadata: KvmprovMetadata {
            image_name: "test".into(),
            image_version: None,
            image_sha512: String::new(),
            config_digest: "d".into(),
            instance_id: format!("{tag}-1"),
            fields: None,
        },
    };
    hv.start_network(&network).unwrap();
    hv.define(&xml::domain_xml(&spec)).unwrap();
    let observed = xml::parse_domain_xml(&hv.domain_xml(&tag).unwrap()).unwrap();
    assert_eq!(
        observed.disk_paths,
        vec![disk.path.clone(), seed.path.clone()]
    );
    assert_eq!(observed.metadata.as_ref(), Some(&spec.metadata));
    hv.start(&tag).unwrap();
    assert_eq!(
        hv.domain(&tag).unwrap().unwrap().state,
        DomainState::Running
    );
    // The FFI call: a real driver answers (no lease yet for a guest without an OS).
    assert_eq!(hv.dhcp_lease(&network, &spec.mac).unwrap(), None);
    assert!(spec.console_log.exists(), "serial log file created");
    hv.destroy(&tag).unwrap();
    hv.undefine(&tag, true).unwrap();
    assert!(hv.domain(&tag).unwrap().is_none());

    hv.delete_volume(&tag, "vm.qcow2").unwrap();
    hv.delete_volume(&tag, "seed.iso").unwrap();
    hv.remove_pool(&tag).unwrap();
    assert!(hv.pool(&tag).unwrap().is_none());
    let _ = std::fs::remove_file(&spec.console_log);
    let _ = std::fs::remove_dir(&pool_dir);
    let _ = std::fs::remove_file(&base);
}
