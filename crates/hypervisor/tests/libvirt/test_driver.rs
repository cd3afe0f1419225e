//! Tests against libvirt's test driver: no daemon, milliseconds.
//!
//! `test:///default` state is shared by the connections open at the same time in one process,
//! so each test uses names of its own; tests that need a private world load a node file
//! (`test:///path/node.xml`), which every connection parses afresh.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use kvmprov_hypervisor::xml::{self, DomainSpec, DomainType, KvmprovMetadata};
use kvmprov_hypervisor::{DomainState, HvError, Hypervisor, PoolAction};

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
        data_disks: vec![],
        seed_path: dir.join(format!("{name}-seed.iso")),
        interfaces: vec![xml::InterfaceSpec::virtio_on(
            "default",
            &xml::mac_for(name),
        )],
        console_log: dir.join(format!("{name}-console.log")),
        firmware: kvmprov_hypervisor::Firmware::Bios,
        metadata: KvmprovMetadata {
            image_name: "debian-12".into(),
            image_version: Some("20241004-1890".into()),
            image_sha512: "ab".repeat(64),
            config_digest: "d".into(),
            instance_id: format!("{name}-1"),
            fields: Some(vec![
                ("disk_size_gib".into(), "20".into()),
                ("runcmd".into(), "[\"echo 'a' > /b\"]".into()),
            ]),
        },
    }
}

#[test]
fn connect_and_host_info() {
    let hv = hv();
    assert_eq!(hv.uri(), "test:///default");
    let info = hv.host_info().unwrap();
    assert_eq!(info.driver, "TEST");
    assert!(info.kvm && info.qemu, "{info:?}");
    assert!(!info.hostname.is_empty());
    assert_eq!(info.libvirt_version.split('.').count(), 3, "{info:?}");
    assert_eq!(info.hypervisor_version.split('.').count(), 3, "{info:?}");
}

#[test]
fn the_handle_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Hypervisor>();
    let hv = hv();
    std::thread::scope(|s| {
        let a = s.spawn(|| hv.domains().map(|d| d.len()));
        let b = s.spawn(|| hv.networks().map(|n| n.len()));
        assert!(a.join().unwrap().is_ok());
        assert!(b.join().unwrap().is_ok());
    });
}

#[test]
fn unreachable_daemon_is_one_clear_sentence() {
    let uri = "qemu+unix:///system?socket=/nonexistent/kvmprov.sock";
    let err = match Hypervisor::connect(uri) {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with(&format!("cannot connect to the hypervisor at {uri}: ")),
        "{err}"
    );
    // libvirt's own reason, naming the socket, on one line.
    assert!(err.contains("/nonexistent/kvmprov.sock"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    assert_eq!(err.matches("cannot connect").count(), 1, "{err}");
}

#[test]
fn networks_with_bridge_and_ipv4() {
    let hv = hv();
    let nets = hv.networks().unwrap();
    let def = nets
        .iter()
        .find(|n| n.name == "default")
        .unwrap_or_else(|| panic!("{nets:?}"));
    assert!(def.active);
    assert_eq!(def.bridge.as_deref(), Some("virbr0"));
    assert_eq!(def.forward.as_deref(), Some("nat"));
    let ip = def.ipv4.as_ref().unwrap();
    assert_eq!(ip.address, Ipv4Addr::new(192, 168, 122, 1));
    assert_eq!(ip.prefix, 24);
    assert_eq!(
        ip.dhcp_range,
        Some((
            Ipv4Addr::new(192, 168, 122, 2),
            Ipv4Addr::new(192, 168, 122, 254)
        ))
    );
    // Starting an active network is a no-op; a missing one is "not found".
    hv.start_network("default").unwrap();
    let e = hv.start_network("kp-no-such-net").unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("kp-no-such-net"), "{e}");
}

#[test]
fn dhcp_lease_errors_name_the_network() {
    let hv = hv();
    let e = hv
        .dhcp_lease("kp-no-such-net", "52:54:00:00:00:01")
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    // The test driver has no DHCP server: an error naming what was asked, not a crash.
    let e = hv.dhcp_lease("default", "52:54:00:00:00:01").unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("read DHCP leases of 52:54:00:00:00:01 on network default: "),
        "{text}"
    );
    assert!(matches!(
        hv.dhcp_lease("default", "52:54\0"),
        Err(HvError::Invalid { .. })
    ));
}

#[test]
fn pools_are_found_by_name_and_path() {
    let hv = hv();
    let p = hv.pool("default-pool").unwrap().unwrap();
    assert!(p.active);
    assert_eq!(p.path, PathBuf::from("/default-pool"));
    assert_eq!(
        hv.pool_by_path(Path::new("/default-pool/"))
            .unwrap()
            .unwrap()
            .name,
        "default-pool"
    );
    assert!(hv.pool("kp-no-such-pool").unwrap().is_none());
    assert!(hv
        .pool_by_path(Path::new("/kp/no/such/dir"))
        .unwrap()
        .is_none());
}

#[test]
fn ensure_dir_pool_defines_once_and_reuses_by_path() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");

    let first = hv.ensure_dir_pool("kp-ensure", &path).unwrap();
    assert_eq!(first.action, PoolAction::Defined);
    assert_eq!(first.pool.name, "kp-ensure");
    assert_eq!(first.pool.path, path);
    assert!(first.pool.active);

    let again = hv.ensure_dir_pool("kp-ensure", &path).unwrap();
    assert_eq!(again.action, PoolAction::Existed);

    // Another name for the same directory: the existing pool is reused, not duplicated.
    let other = hv.ensure_dir_pool("kp-ensure-2", &path).unwrap();
    assert_eq!(other.action, PoolAction::Existed);
    assert_eq!(other.pool.name, "kp-ensure");
    assert!(hv.pool("kp-ensure-2").unwrap().is_none());

    // The name taken by a pool elsewhere is an error naming both directories.
    let elsewhere = dir.path().join("elsewhere");
    let e = hv.ensure_dir_pool("kp-ensure", &elsewhere).unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&elsewhere.display().to_string()), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");

    hv.remove_pool("kp-ensure").unwrap();
    assert!(hv.pool("kp-ensure").unwrap().is_none());
    assert!(hv.remove_pool("kp-ensure").unwrap_err().is_not_found());
}

#[test]
fn pools_by_paths_answers_each_path_from_one_listing() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    hv.ensure_dir_pool("kp-both", &path).unwrap();
    let missing = dir.path().join("missing");
    let found = hv
        .pools_by_paths(&[&missing, Path::new("/default-pool/"), &path])
        .unwrap();
    let names: Vec<Option<&str>> = found
        .iter()
        .map(|p| p.as_ref().map(|p| p.name.as_str()))
        .collect();
    assert_eq!(names, [None, Some("default-pool"), Some("kp-both")]);
    let both = found[2].as_ref().unwrap();
    assert!(both.active);
    assert_eq!(both.path, path);
    hv.remove_pool("kp-both").unwrap();
}

#[test]
fn ensure_seen_dir_pool_creates_a_missing_pool_and_starts_a_seen_inactive_one() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    let made = hv.ensure_seen_dir_pool("kp-seen", &path, None).unwrap();
    assert_eq!(made.action, PoolAction::Defined);
    assert!(made.pool.active);

    // Stopped behind kvmprov's back (the test driver shares its state between connections).
    let other = virt::connect::Connect::open(Some("test:///default")).unwrap();
    other
        .lookup_storage_pool_by_name("kp-seen")
        .unwrap()
        .destroy()
        .unwrap();
    let seen = hv.pool_by_path(&path).unwrap().unwrap();
    assert!(!seen.active);
    let started = hv
        .ensure_seen_dir_pool("kp-seen-2", &path, Some(&seen))
        .unwrap();
    assert_eq!(started.action, PoolAction::Started);
    assert_eq!(started.pool.name, "kp-seen");
    assert!(started.pool.active);
    assert!(hv.pool("kp-seen-2").unwrap().is_none());
    hv.remove_pool("kp-seen").unwrap();
}

#[test]
fn volumes_create_list_delete() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vols");
    hv.ensure_dir_pool("kp-vols", &path).unwrap();
    let base = dir.path().join("base.qcow2");

    let v = hv
        .create_overlay("kp-vols", "a.qcow2", &base, "qcow2", 1 << 30)
        .unwrap();
    assert_eq!(v.name, "a.qcow2");
    assert_eq!(v.capacity, 1 << 30);
    assert_eq!(v.format.as_deref(), Some("qcow2"));
    assert_eq!(v.backing_path.as_deref(), Some(base.as_path()));
    assert_eq!(v.path, path.join("a.qcow2"));
    // Found by path too (how a remote domain's disk leads to its backing image).
    let by_path = hv.volume_by_path(&path.join("a.qcow2")).unwrap().unwrap();
    assert_eq!(by_path.backing_path.as_deref(), Some(base.as_path()));
    assert!(hv
        .volume_by_path(&path.join("not-a-volume.qcow2"))
        .unwrap()
        .is_none());

    let vols = hv.volumes("kp-vols").unwrap();
    assert_eq!(
        vols.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        vec!["a.qcow2"]
    );

    // A name taken is libvirt's error, naming the volume.
    let e = hv
        .create_overlay("kp-vols", "a.qcow2", &base, "qcow2", 1 << 30)
        .unwrap_err();
    assert!(e.to_string().contains("a.qcow2"), "{e}");

    hv.delete_volume("kp-vols", "a.qcow2").unwrap();
    assert!(hv.volumes("kp-vols").unwrap().is_empty());
    let e = hv.delete_volume("kp-vols", "a.qcow2").unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let e = hv.volumes("kp-no-such-pool").unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn a_failed_upload_leaves_no_half_volume() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    hv.ensure_dir_pool("kp-upload", &dir.path().join("up"))
        .unwrap();
    // The test driver has no upload streams: the volume is created, the upload fails.
    let e = hv
        .upload_volume("kp-upload", "seed.iso", b"hello", "raw")
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("upload volume seed.iso to pool kp-upload: "),
        "{e}"
    );
    assert!(hv.volumes("kp-upload").unwrap().is_empty());
}

#[test]
fn domain_lifecycle_and_snapshots() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    let s = spec("kp-life", dir.path());
    hv.define(&xml::domain_xml(&s)).unwrap();

    let d = hv.domain("kp-life").unwrap().unwrap();
    assert_eq!(d.state, DomainState::ShutOff);
    assert!(d.persistent);
    assert_eq!(d.uuid.len(), 36, "{d:?}");
    assert!(hv.domains().unwrap().iter().any(|x| x.name == "kp-life"));
    let names = hv.domain_names().unwrap();
    assert!(names.iter().any(|n| n == "kp-life"), "{names:?}");
    assert!(names.windows(2).all(|w| w[0] <= w[1]), "sorted: {names:?}");

    hv.start("kp-life").unwrap();
    assert_eq!(
        hv.domain("kp-life").unwrap().unwrap().state,
        DomainState::Running
    );
    // The test driver answers for an agent: one address per NIC, matched by MAC.
    let ip = hv.agent_ipv4("kp-life", &s.interfaces[0].mac).unwrap();
    assert!(
        ip.is_some_and(|ip| ip.octets()[..3] == [192, 168, 122]),
        "{ip:?}"
    );
    assert_eq!(
        hv.agent_ipv4("kp-life", &s.interfaces[0].mac.to_uppercase())
            .unwrap(),
        ip
    );
    assert_eq!(hv.agent_ipv4("kp-life", "52:54:00:ff:ff:ff").unwrap(), None);
    // The test driver reports a running domain's CPU time as the wall clock.
    let cpu = hv.cpu_seconds("kp-life").unwrap();
    assert!(cpu > 1.0e9, "{cpu}");
    let e = hv.cpu_seconds("kp-missing").unwrap_err();
    assert!(
        e.is_not_found() && e.to_string().contains("kp-missing"),
        "{e}"
    );
    hv.set_autostart("kp-life", true).unwrap();

    assert!(hv.snapshots("kp-life").unwrap().is_empty());
    hv.create_snapshot("kp-life", "baseline", "after the first successful boot")
        .unwrap();
    assert_eq!(hv.snapshots("kp-life").unwrap(), vec!["baseline"]);
    let e = hv
        .create_snapshot("kp-life", "baseline", "again")
        .unwrap_err();
    assert!(e.to_string().contains("baseline"), "{e}");

    // A paused domain is resumed by start, not refused as already active.
    virt::connect::Connect::open(Some("test:///default"))
        .and_then(|c| c.lookup_domain_by_name("kp-life"))
        .and_then(|d| d.suspend())
        .unwrap();
    assert_eq!(
        hv.domain("kp-life").unwrap().unwrap().state,
        DomainState::Paused
    );
    hv.start("kp-life").unwrap();
    assert_eq!(
        hv.domain("kp-life").unwrap().unwrap().state,
        DomainState::Running
    );

    hv.shutdown("kp-life").unwrap();
    assert_eq!(
        hv.domain("kp-life").unwrap().unwrap().state,
        DomainState::ShutOff
    );
    hv.start("kp-life").unwrap();
    hv.destroy("kp-life").unwrap();
    assert_eq!(
        hv.domain("kp-life").unwrap().unwrap().state,
        DomainState::ShutOff
    );

    // Snapshot metadata goes with the domain.
    hv.undefine("kp-life", true).unwrap();
    assert!(hv.domain("kp-life").unwrap().is_none());
    assert!(hv.domains().unwrap().iter().all(|x| x.name != "kp-life"));
    let e = hv.undefine("kp-life", true).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("kp-life"), "{e}");
    assert!(hv.start("kp-life").unwrap_err().is_not_found());
}

#[test]
fn domain_xml_round_trips_through_libvirt() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    // Hostile characters in the name, paths and metadata survive libvirt's parser.
    let mut s = spec("kp-rt&<'\">", dir.path());
    s.disk_path = dir.path().join("d isk&'<>.qcow2");
    s.metadata.image_name = "debian-12 <\"&'>".into();
    hv.define(&xml::domain_xml(&s)).unwrap();

    let text = hv.domain_xml(&s.name).unwrap();
    let o = xml::parse_domain_xml(&text).unwrap();
    assert_eq!(o.vcpus, 1);
    assert_eq!(o.memory_mib, 512);
    assert_eq!(o.networks, vec!["default"]);
    assert_eq!(o.macs, vec![s.interfaces[0].mac.clone()]);
    assert_eq!(o.disk_paths, vec![s.disk_path.clone(), s.seed_path.clone()]);
    assert_eq!(o.domain_type.as_deref(), Some("qemu"));
    assert_eq!(o.metadata, Some(s.metadata.clone()));
    let files = xml::used_files(&text).unwrap();
    assert!(files.iter().any(|f| f.path() == s.console_log), "{files:?}");

    // Our XML carries no UUID, so a second define of the same name cannot replace the
    // domain (libvirt says the name is taken): a racing run fails instead of clobbering.
    s.vcpus = 2;
    let e = hv.define(&xml::domain_xml(&s)).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    let o = xml::parse_domain_xml(&hv.domain_xml(&s.name).unwrap()).unwrap();
    assert_eq!(o.vcpus, 1);
    hv.undefine(&s.name, true).unwrap();
}

#[test]
fn bad_xml_is_libvirts_error_with_context() {
    let hv = hv();
    let e = hv.define("<domain type='qemu'><name>x</name>").unwrap_err();
    assert!(e.to_string().starts_with("define domain: "), "{e}");
    assert!(!e.is_not_found());
}

/// A private world from a node file: objects defined there exist only for this connection.
#[test]
fn node_file_worlds_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.xml");
    std::fs::write(
        &node,
        "<node>\n<network><name>lab</name><bridge name='virbr7'/>\
         <ip address='10.7.0.1' prefix='24'/></network>\n</node>\n",
    )
    .unwrap();
    let uri = format!("test://{}", node.display());
    let a = Hypervisor::connect(&uri).unwrap();
    let nets = a.networks().unwrap();
    assert_eq!(nets.len(), 1, "{nets:?}");
    assert_eq!(nets[0].name, "lab");
    assert_eq!(nets[0].forward, None);
    assert_eq!(nets[0].ipv4.as_ref().and_then(|i| i.dhcp_range), None);

    a.define(&xml::domain_xml(&spec("kp-private", dir.path())))
        .unwrap();
    let b = Hypervisor::connect(&uri).unwrap();
    assert!(b.domain("kp-private").unwrap().is_none());
    assert!(a.domain("kp-private").unwrap().is_some());
}

#[test]
fn regression_parallel_provision_checks_its_seed_with_one_lookup_not_a_racing_listing() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    hv.ensure_dir_pool("kp-exists", &dir.path().join("p"))
        .unwrap();
    assert!(!hv.volume_exists("kp-exists", "a.qcow2").unwrap());
    hv.create_overlay(
        "kp-exists",
        "a.qcow2",
        &dir.path().join("b.qcow2"),
        "qcow2",
        1 << 30,
    )
    .unwrap();
    assert!(hv.volume_exists("kp-exists", "a.qcow2").unwrap());
}

#[test]
fn regression_cleanup_removed_the_managed_save_of_a_domain_kvmprov_did_not_create() {
    let hv = hv();
    // Defined by someone else (the replaced Ansible playbook): no kvmprov metadata.
    hv.define(
        "<domain type='test'><name>kp-foreign-save</name><memory unit='MiB'>64</memory>\
         <os><type>hvm</type></os></domain>",
    )
    .unwrap();
    hv.start("kp-foreign-save").unwrap();
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    let d = conn.lookup_domain_by_name("kp-foreign-save").unwrap();
    d.managed_save(0).unwrap();
    assert!(d.has_managed_save(0).unwrap());

    let e = hv.undefine("kp-foreign-save", false).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("virsh managedsave-remove kp-foreign-save"),
        "{text}"
    );
    assert_eq!(text.matches(". ").count(), 0, "one sentence: {text}");
    // Nothing was removed: the domain and its saved state are still there.
    assert!(hv.domain("kp-foreign-save").unwrap().is_some());
    assert!(d.has_managed_save(0).unwrap());

    // A domain kvmprov created loses its managed-save image with it.
    hv.undefine("kp-foreign-save", true).unwrap();
    assert!(hv.domain("kp-foreign-save").unwrap().is_none());
}

#[test]
fn snapshots_listed_reverted_and_deleted() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    hv.define(&xml::domain_xml(&spec("kp-snaps", dir.path())))
        .unwrap();
    assert!(hv.snapshot_infos("kp-snaps").unwrap().is_empty());

    // Taken shut off, then running: each records the state it was taken in.
    hv.create_snapshot("kp-snaps", "cold", "shut off").unwrap();
    hv.start("kp-snaps").unwrap();
    hv.create_snapshot("kp-snaps", "warm", "running").unwrap();
    let infos = hv.snapshot_infos("kp-snaps").unwrap();
    let got: Vec<(&str, &str, bool)> = infos
        .iter()
        .map(|i| (i.facts.name.as_str(), i.facts.state.as_str(), i.current))
        .collect();
    assert_eq!(
        got,
        vec![("cold", "shutoff", false), ("warm", "running", true)]
    );
    assert_eq!(infos[0].facts.description.as_deref(), Some("shut off"));
    assert!(infos.iter().all(|i| i.facts.created.is_some()), "{infos:?}");

    // Reverting to the shut-off one stops the guest; to the running one starts it again.
    hv.revert_snapshot("kp-snaps", "cold").unwrap();
    let state = |hv: &Hypervisor| hv.domain("kp-snaps").unwrap().unwrap().state;
    assert_eq!(state(&hv), DomainState::ShutOff);
    hv.revert_snapshot("kp-snaps", "warm").unwrap();
    assert_eq!(state(&hv), DomainState::Running);

    let e = hv.revert_snapshot("kp-snaps", "nope").unwrap_err();
    assert!(
        e.to_string().contains("snapshot nope of domain kp-snaps"),
        "{e}"
    );
    hv.delete_snapshot("kp-snaps", "cold").unwrap();
    assert_eq!(hv.snapshots("kp-snaps").unwrap(), vec!["warm"]);
    let e = hv.delete_snapshot("kp-snaps", "cold").unwrap_err();
    assert!(e.to_string().contains("cold"), "{e}");
    hv.destroy("kp-snaps").unwrap();
    hv.undefine("kp-snaps", true).unwrap();
}

#[test]
fn one_listing_reads_every_domains_state_persistence_and_autostart() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    for name in ["kp-ls-off", "kp-ls-on", "kp-ls-auto"] {
        hv.define(&xml::domain_xml(&spec(name, dir.path())))
            .unwrap();
    }
    hv.start("kp-ls-on").unwrap();
    hv.set_autostart("kp-ls-auto", true).unwrap();
    let before = hv.calls();
    let listing = hv.list_domains().unwrap();
    // A fixed number of calls, however many domains the host has.
    assert_eq!(hv.calls() - before, 6);
    for name in ["kp-ls-off", "kp-ls-on", "kp-ls-auto"] {
        let listed = listing.get(name).unwrap();
        let one = hv.domain(name).unwrap().unwrap();
        assert_eq!(listed.state, one.state, "{name}");
        assert_eq!(listed.persistent, one.persistent, "{name}");
        assert_eq!(listed.autostart, hv.autostart(name).unwrap(), "{name}");
        assert_eq!(
            hv.listed_domain_xml(name, listed).unwrap(),
            hv.domain_xml(name).unwrap()
        );
        assert_eq!(hv.domain_state(name).unwrap(), Some(one.state));
    }
    assert_eq!(listing.get("kp-ls-on").unwrap().state, DomainState::Running);
    assert!(listing.get("kp-ls-auto").unwrap().autostart);
    assert!(!listing.get("kp-ls-off").unwrap().autostart);
    assert!(listing.get("kp-ls-none").is_none());
    assert_eq!(hv.domain_state("kp-ls-none").unwrap(), None);
}

#[test]
fn volume_names_come_from_one_listing_with_sizes_only_where_asked() {
    let hv = hv();
    let dir = tempfile::tempdir().unwrap();
    hv.ensure_dir_pool("kp-names", &dir.path().join("names"))
        .unwrap();
    hv.create_volume("kp-names", "a.qcow2", 1 << 30, "qcow2")
        .unwrap();
    hv.create_volume("kp-names", "b.qcow2", 2 << 30, "qcow2")
        .unwrap();
    let before = hv.calls();
    let names = hv.volume_names("kp-names", |n| n == "b.qcow2").unwrap();
    // The pool's lookup, the listing, and one size.
    assert_eq!(hv.calls() - before, 3);
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec![
            ("a.qcow2".to_string(), None),
            ("b.qcow2".to_string(), Some(2 << 30))
        ]
    );
}
