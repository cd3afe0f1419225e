//! Integration tests against libvirt's `test:///default` driver: no daemon, a fresh private
//! state per connection.

use std::path::Path;

use kvmprov_hypervisor::xml::{self, DomainSpec, DomainType, KvmprovMetadata};
use kvmprov_hypervisor::{DomainState, Hypervisor};

fn hv() -> Hypervisor {
    Hypervisor::connect("test:///default").expect("test driver")
}

fn spec(name: &str, dir: &Path) -> DomainSpec {
    DomainSpec {
        name: name.into(),
        domain_type: DomainType::Qemu,
        vcpus: 1,
        memory_mib: 512,
        disk_path: dir.join(format!("{name}.qcow2")),
        seed_path: dir.join(format!("{name}-seed.iso")),
        network: "default".into(),
        mac: xml::mac_for(name),
        console_log: dir.join(format!("{name}-console.log")),
        metadata: KvmprovMetadata {
            image_name: "debian-12".into(),
            image_version: None,
            image_sha512: String::new(),
            config_digest: "d".into(),
            instance_id: format!("{name}-1"),
        },
    }
}

#[test]
fn host_info_and_networks() {
    let hv = hv();
    let info = hv.host_info().unwrap();
    assert_eq!(info.driver, "TEST");
    assert!(info.kvm && info.qemu);
    let nets = hv.networks().unwrap();
    assert!(
        nets.iter().any(|n| n.name == "default" && n.active),
        "{nets:?}"
    );
}

#[test]
fn unreachable_daemon_is_one_clear_sentence() {
    let err = match Hypervisor::connect("qemu+unix:///system?socket=/nonexistent/kvmprov.sock") {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with("cannot connect to the hypervisor at qemu+unix:///system"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn domain_lifecycle_and_snapshots() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    hv.define(&xml::domain_xml(&spec("kp-a", dir.path())))
        .unwrap();
    assert_eq!(
        hv.domain("kp-a").unwrap().unwrap().state,
        DomainState::ShutOff
    );
    let observed = xml::parse_domain_xml(&hv.domain_xml("kp-a").unwrap()).unwrap();
    assert_eq!(observed.metadata.unwrap().instance_id, "kp-a-1");
    hv.start("kp-a").unwrap();
    assert_eq!(
        hv.domain("kp-a").unwrap().unwrap().state,
        DomainState::Running
    );
    hv.create_snapshot("kp-a", "baseline", "test").unwrap();
    assert_eq!(hv.snapshots("kp-a").unwrap(), vec!["baseline".to_string()]);
    hv.destroy("kp-a").unwrap();
    hv.undefine("kp-a").unwrap();
    assert!(hv.domain("kp-a").unwrap().is_none());
    let e = hv.undefine("kp-a").unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn pools_and_volumes() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    hv.ensure_dir_pool("kp-pool", &path).unwrap();
    let p = hv.pool("kp-pool").unwrap().unwrap();
    assert!(p.active);
    assert_eq!(hv.pool_by_path(&path).unwrap().unwrap().name, "kp-pool");
    hv.create_overlay(
        "kp-pool",
        "a.qcow2",
        &dir.path().join("base.qcow2"),
        "qcow2",
        1 << 30,
    )
    .unwrap();
    let vols = hv.volumes("kp-pool").unwrap();
    assert!(
        vols.iter()
            .any(|v| v.name == "a.qcow2" && v.capacity == 1 << 30),
        "{vols:?}"
    );
    hv.delete_volume("kp-pool", "a.qcow2").unwrap();
    assert!(hv
        .volumes("kp-pool")
        .unwrap()
        .iter()
        .all(|v| v.name != "a.qcow2"));
    // The test driver has no upload streams: the failed upload must not leave a half volume.
    let e = hv
        .upload_volume("kp-pool", "seed.iso", b"hello", "raw")
        .unwrap_err();
    assert!(e.to_string().contains("upload to seed.iso"), "{e}");
    assert!(hv
        .volumes("kp-pool")
        .unwrap()
        .iter()
        .all(|v| v.name != "seed.iso"));
    assert!(hv.pool("no-such-pool").unwrap().is_none());
}

#[test]
fn volume_exists_looks_up_one_volume() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    hv.ensure_dir_pool("kp-pool2", &dir.path().join("p"))
        .unwrap();
    assert!(!hv.volume_exists("kp-pool2", "a.qcow2").unwrap());
    hv.create_overlay(
        "kp-pool2",
        "a.qcow2",
        &dir.path().join("b.qcow2"),
        "qcow2",
        1 << 30,
    )
    .unwrap();
    assert!(hv.volume_exists("kp-pool2", "a.qcow2").unwrap());
}
