//! Gated check against a real libvirtd (QEMU driver, real storage backend): what the test
//! driver cannot show: qcow2 overlays on a real backing file, upload streams, a started
//! domain from our XML, the DHCP-lease FFI call.
//!
//! Runs only with `KVMPROV_HV_TEST_URI` (e.g. `qemu:///system`) and `KVMPROV_HV_TEST_DIR` (a
//! scratch directory on this machine, which must be the hypervisor host) set; the network is
//! `KVMPROV_HV_TEST_NETWORK` (default `default`). Everything it creates is removed again.
//! Run the daemon inside a network namespace of its own (see DESIGN.md §4).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use kvmprov_hypervisor::xml::{self, DomainSpec, DomainType, KvmprovMetadata};
use kvmprov_hypervisor::{keepalive_deadline, DomainState, Firmware, Hypervisor, PoolAction};

#[test]
fn real_daemon_storage_and_domain() {
    let Some((uri, dir, network)) = real_daemon() else {
        return;
    };
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
    // What the upload reports without asking libvirt again is what libvirt then says.
    let looked = hv.volume_by_path(&seed.path).unwrap().unwrap();
    assert_eq!(
        (
            looked.name.as_str(),
            looked.capacity,
            looked.format.as_deref()
        ),
        (seed.name.as_str(), seed.capacity, seed.format.as_deref())
    );
    assert_eq!(seed.capacity, bytes.len() as u64);

    // Our XML on the real QEMU driver: define, start briefly, destroy, undefine.
    let spec = DomainSpec {
        name: tag.clone(),
        domain_type: DomainType::Qemu,
        vcpus: 1,
        memory_mib: 256,
        disk_path: disk.path.clone(),
        data_disks: vec![],
        seed_path: seed.path.clone(),
        interfaces: vec![xml::InterfaceSpec::virtio_on(&network, &xml::mac_for(&tag))],
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
    assert_eq!(
        hv.dhcp_lease(&network, &spec.interfaces[0].mac).unwrap(),
        None
    );
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

/// The real daemon's URI, scratch directory and network, or `None` (the test is skipped).
fn real_daemon() -> Option<(String, PathBuf, String)> {
    let (Ok(uri), Ok(dir)) = (
        std::env::var("KVMPROV_HV_TEST_URI"),
        std::env::var("KVMPROV_HV_TEST_DIR"),
    ) else {
        eprintln!("skipped: set KVMPROV_HV_TEST_URI and KVMPROV_HV_TEST_DIR to run against a real libvirtd");
        return None;
    };
    let network = std::env::var("KVMPROV_HV_TEST_NETWORK").unwrap_or_else(|_| "default".into());
    Some((uri, PathBuf::from(dir), network))
}

/// A domain of ours with `firmware` on a blank disk (nothing boots: libvirt's choice of
/// firmware is what is looked at).
fn firmware_spec(
    name: &str,
    (disk, seed): (&Path, &Path),
    dir: &Path,
    network: &str,
    firmware: Firmware,
) -> DomainSpec {
    DomainSpec {
        name: name.into(),
        domain_type: DomainType::Qemu,
        vcpus: 1,
        memory_mib: 256,
        disk_path: disk.to_path_buf(),
        // Any file serves as the CD: the guest is destroyed before it reads it.
        data_disks: vec![],
        seed_path: seed.to_path_buf(),
        interfaces: vec![xml::InterfaceSpec::virtio_on(network, &xml::mac_for(name))],
        console_log: dir.join(format!("{name}-console.log")),
        firmware,
        metadata: KvmprovMetadata {
            image_name: "test".into(),
            image_version: None,
            image_sha512: String::new(),
            config_digest: "d".into(),
            instance_id: format!("{name}-1"),
            fields: None,
        },
    }
}

/// libvirt 9.0 refused kvmprov's plain UEFI domain at define ("loader attribute 'secure'
/// cannot be specified when firmware autoselection is enabled"). Both UEFI variants must be
/// defined and started, libvirt must pick OVMF's plain build for the one and the Secure Boot
/// build for the other, and kvmprov must read each back as what it asked for.
#[test]
fn real_daemon_regression_uefi_without_secure_boot_was_refused_at_define() {
    let Some((uri, dir, network)) = real_daemon() else {
        return;
    };
    let hv = Hypervisor::connect(&uri).unwrap();
    let support = hv.firmware_support(DomainType::Qemu).unwrap();
    if !support.efi {
        eprintln!("skipped: no OVMF on this host ({support:?})");
        return;
    }
    hv.start_network(&network).unwrap();
    let tag = format!("kvmhv-fw-{}", std::process::id());
    let disk = dir.join(format!("{tag}.qcow2"));
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .output()
        .expect("qemu-img (qemu-utils) is installed");
    assert!(out.status.success(), "{out:?}");
    let seed = dir.join(format!("{tag}-seed.iso"));
    std::fs::write(&seed, vec![0u8; 64 * 1024]).unwrap();

    let mut variants = vec![(false, "uefi")];
    if support.secure_boot {
        variants.push((true, "uefi+secure-boot"));
    }
    let mut failures = Vec::new();
    for (secure_boot, want) in variants {
        let name = format!("{tag}-{}", if secure_boot { "sb" } else { "plain" });
        let nvram = dir.join(format!("{name}_VARS.fd"));
        let spec = firmware_spec(
            &name,
            (&disk, &seed),
            &dir,
            &network,
            Firmware::Uefi {
                secure_boot,
                nvram: nvram.clone(),
            },
        );
        let result = (|| -> Result<(String, String), String> {
            hv.define(&xml::domain_xml(&spec))
                .map_err(|e| e.to_string())?;
            let defined = xml::parse_domain_xml(&hv.domain_xml(&name).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?
                .firmware;
            hv.start(&name).map_err(|e| e.to_string())?;
            Ok((defined, hv.domain_xml(&name).map_err(|e| e.to_string())?))
        })();
        // Clean up before judging: a failed assertion must not leave a domain behind.
        let _ = hv.destroy(&name);
        let _ = hv.undefine(&name, true);
        let _ = std::fs::remove_file(&nvram);
        let _ = std::fs::remove_file(&spec.console_log);
        match result {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok((defined, live)) => {
                let observed = xml::parse_domain_xml(&live).unwrap();
                let loader = live
                    .lines()
                    .find(|l| l.contains("<loader"))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                eprintln!("{name}: {loader}");
                if defined != want || observed.firmware != want {
                    failures.push(format!(
                        "{name}: read back as {defined} (defined) / {} (running), want {want}",
                        observed.firmware
                    ));
                }
                if observed.nvram.as_deref() != Some(nvram.as_path()) {
                    failures.push(format!(
                        "{name}: NVRAM {:?}, want {nvram:?}",
                        observed.nvram
                    ));
                }
                // Debian's ovmf: the plain build is OVMF_CODE_4M.fd; `.ms`/`.secboot` are the
                // Secure Boot builds.
                let sb_build = loader.contains(".ms.") || loader.contains("secboot");
                if sb_build != secure_boot {
                    failures.push(format!("{name}: libvirt chose {loader}"));
                }
            }
        }
    }
    let _ = std::fs::remove_file(&disk);
    let _ = std::fs::remove_file(&seed);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The daemon's socket for a relay: `KVMPROV_HV_TEST_SOCKET`, or the system libvirtd's on
/// this machine; `None` (the test is skipped) when there is none.
fn daemon_socket(uri: &str) -> Option<PathBuf> {
    let socket = match std::env::var("KVMPROV_HV_TEST_SOCKET") {
        Ok(s) => PathBuf::from(s),
        Err(_) if uri.starts_with("qemu:///system") => PathBuf::from("/run/libvirt/libvirt-sock"),
        Err(_) => {
            eprintln!("skipped: set KVMPROV_HV_TEST_SOCKET to the socket of the daemon at {uri}");
            return None;
        }
    };
    if !socket.exists() {
        eprintln!("skipped: no libvirt socket at {socket:?}");
        return None;
    }
    Some(socket)
}

/// A unix-socket relay between a libvirt client and the daemon's socket that can go silent:
/// once frozen it delivers nothing either way and closes nothing (what a client sees of a
/// daemon stopped with SIGSTOP, or of a network cut), while the real daemon runs on for
/// everyone else. Nothing shared is stopped, so nothing has to be resumed.
struct FreezableRelay {
    frozen: Arc<AtomicBool>,
    path: PathBuf,
}

impl FreezableRelay {
    fn start(path: PathBuf, upstream: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(daemon) = UnixStream::connect(&upstream) else {
                    return;
                };
                for (from, to) in [(&client, &daemon), (&daemon, &client)] {
                    let (Ok(mut from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        return;
                    };
                    let f = f.clone();
                    std::thread::spawn(move || relay(&mut from, to, &f));
                }
            }
        });
        Ok(FreezableRelay { frozen, path })
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl Drop for FreezableRelay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copy `from` to `to` until either end closes; while frozen, read and drop, and keep `to`
/// open even when `from` closes (a silent peer never says goodbye).
fn relay(from: &mut UnixStream, mut to: UnixStream, frozen: &AtomicBool) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    if frozen.load(Ordering::SeqCst) {
        // Hold `to` open until the test process ends.
        std::mem::forget(to);
    } else {
        let _ = to.shutdown(Shutdown::Both);
    }
}

/// A call to a daemon that went silent blocked forever: kvmprov ran no event loop and set no
/// keepalive (a CI run saw one libvirt call wait 14 minutes). Through a relay that goes
/// silent mid-session, the next call must fail within the keepalive deadline (~30 s) with
/// an error that says the connection was lost.
#[test]
fn real_daemon_regression_libvirt_call_hung_without_keepalive() {
    let Some((uri, dir, _)) = real_daemon() else {
        return;
    };
    let Some(socket) = daemon_socket(&uri) else {
        return;
    };
    let relay = FreezableRelay::start(
        dir.join(format!("kvmhv-relay-{}.sock", std::process::id())),
        socket,
    )
    .unwrap();
    let relayed = format!("qemu+unix:///system?socket={}", relay.path.display());
    let hv = Hypervisor::connect(&relayed).unwrap();
    hv.domain_names()
        .expect("the relay passes calls while it is not frozen");

    relay.freeze();
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(hv.domain_names());
    });
    // The deadline and some slack for a loaded machine; the old code never returned.
    let limit = keepalive_deadline() + Duration::from_secs(20);
    match rx.recv_timeout(limit) {
        Err(_) => panic!(
            "a libvirt call to a silent daemon was still blocked after {} s: no keepalive",
            limit.as_secs()
        ),
        Ok(Ok(names)) => panic!("a frozen relay answered: {names:?}"),
        Ok(Err(e)) => {
            let took = started.elapsed();
            eprintln!("failed after {:.1} s: {e}", took.as_secs_f64());
            assert!(e.is_connection_lost(), "{e}");
            assert!(took <= limit, "{took:?}");
        }
    }
}

/// Keepalive starts only once a connection is open: connecting to a daemon that accepted the
/// connection but never answered waited forever. It must fail within the deadline, naming
/// the URI.
#[test]
fn real_daemon_regression_connect_to_a_silent_daemon_hung() {
    let Some((uri, dir, _)) = real_daemon() else {
        return;
    };
    let Some(socket) = daemon_socket(&uri) else {
        return;
    };
    let relay = FreezableRelay::start(
        dir.join(format!("kvmhv-relay-open-{}.sock", std::process::id())),
        socket,
    )
    .unwrap();
    relay.freeze();
    let relayed = format!("qemu+unix:///system?socket={}", relay.path.display());
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let target = relayed.clone();
    std::thread::spawn(move || {
        let _ = tx.send(Hypervisor::connect(&target).map(|_| ()));
    });
    let limit = keepalive_deadline() + Duration::from_secs(20);
    match rx.recv_timeout(limit) {
        Err(_) => panic!(
            "connecting to a silent daemon was still waiting after {} s",
            limit.as_secs()
        ),
        Ok(Ok(())) => panic!("a frozen relay let a connection open"),
        Ok(Err(e)) => {
            let took = started.elapsed();
            eprintln!("failed after {:.1} s: {e}", took.as_secs_f64());
            assert!(e.to_string().contains(&relayed), "{e}");
            assert!(e.to_string().contains("no answer within 30 s"), "{e}");
        }
    }
}
