//! What `KVMPROV_LOG` prints: never a URL's credentials or query, at any level (README,
//! Security). Runs the binary against a local HTTP mirror on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

/// A mirror that serves `image` and a `SHA512SUMS` for it, and 404 for anything else.
fn serve(image: Vec<u8>) -> String {
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha512::digest(&image));
    let sums = format!("{sum}  debian-12-genericcloud-amd64.qcow2\n").into_bytes();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            let (status, body): (&str, &[u8]) = if path.ends_with("/SHA512SUMS") {
                ("200 OK", &sums)
            } else if path.ends_with(".qcow2") {
                ("200 OK", &image)
            } else {
                ("404 Not Found", b"")
            };
            let mut conn = conn;
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(body);
        }
    });
    format!("http://kvm:S3cretPw@{addr}/images/cloud/bookworm/latest")
}

#[test]
fn regression_kvmprov_log_debug_printed_url_credentials() {
    let mut image = vec![0u8; 64 * 1024];
    image[..4].copy_from_slice(b"QFI\xfb");
    image[4..8].copy_from_slice(&3u32.to_be_bytes());
    image[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
    let base = serve(image);
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("vars.yml");
    std::fs::write(
        &cfg,
        format!(
            "kvm_libvirt_uri: \"test:///default\"\nkvm_domain_type: qemu\n\
             kvm_image_cache_path: {0}/images\nkvm_instance_disk_pool_path: {0}/instances\n\
             kvm_cloud_image_catalog:\n  - image_name: debian-12\n\
             \x20   image_url: {base}/debian-12-genericcloud-amd64.qcow2?token=T0KENsecret\n\
             \x20   image_checksum_manifest_url: {base}/SHA512SUMS?token=T0KENsecret\n\
             kvm_instance_definitions:\n  - instance_name: app-01\n    image_name: debian-12\n\
             \x20   vcpus: 1\n    memory_mib: 512\n",
            t.path().display()
        ),
    )
    .unwrap();
    for level in [
        "trace",
        "debug",
        "ureq=trace,rustls=trace,trace",
        "kvmprov=trace",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kvmprov"))
            .args(["-vvv", "-c", cfg.to_str().unwrap(), "image-cache"])
            .env("KVMPROV_LOG", level)
            .output()
            .expect("run kvmprov");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "KVMPROV_LOG={level}: {said}");
        assert!(
            !said.contains("S3cretPw") && !said.contains("T0KENsecret"),
            "KVMPROV_LOG={level} shows a secret: {said}"
        );
        // The log is on: kvmprov's own lines are there.
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("INFO")
                || String::from_utf8_lossy(&out.stderr).contains("DEBUG"),
            "KVMPROV_LOG={level} logged nothing: {said}"
        );
    }
}
