//! Image cache against a local HTTP mirror on 127.0.0.1 laid out like cloud.debian.org, with
//! scripted faults and a log of every request (path, Range header, body bytes sent).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use kvmprov_image::{download, lookup, resolve, CatalogEntry, Client, ImageError, Silent};
use sha2::{Digest, Sha512};

#[derive(Clone, Debug)]
enum Fault {
    /// Send only this fraction of the body, then close.
    DropAt(f64),
    Status(u16),
    /// Send headers, then nothing.
    Stall,
    FlipByte,
    /// Slow-loris: headers, then one body byte every 50 ms.
    TrickleBody,
    /// Slow-loris: the status line and headers one byte every 50 ms.
    TrickleHeaders,
    /// 302 to this path.
    Redirect(String),
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    faults: HashMap<String, Vec<Fault>>,
    log: Vec<(String, Option<String>, usize)>,
}

struct Mirror {
    base: String,
    state: Arc<Mutex<State>>,
}

impl Mirror {
    fn start() -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/images/cloud", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || serve(conn, st));
            }
        });
        Mirror { base, state }
    }

    fn put(&self, path: &str, bytes: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), bytes);
    }

    fn fault(&self, path: &str, f: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(path.to_string())
            .or_default()
            .push(f);
    }

    /// Body bytes served for paths containing `needle`.
    fn served(&self, needle: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(p, _, _)| p.contains(needle))
            .map(|(_, _, n)| n)
            .sum()
    }

    fn ranges(&self, needle: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(p, _, _)| p.contains(needle))
            .filter_map(|(_, r, _)| r.clone())
            .collect()
    }

    /// Publish `image` as build `version` of bookworm and point latest at it.
    fn publish(&self, version: &str, image: &[u8], with_json: bool) -> String {
        let stem = "debian-12-genericcloud-amd64";
        let sum = hex(image);
        let dated = format!("/images/cloud/bookworm/{version}/{stem}-{version}.qcow2");
        self.put(&dated, image.to_vec());
        self.put(
            &format!("/images/cloud/bookworm/{version}/SHA512SUMS"),
            format!("{sum}  {stem}-{version}.qcow2\n").into_bytes(),
        );
        self.put(
            &format!("/images/cloud/bookworm/latest/{stem}.qcow2"),
            image.to_vec(),
        );
        self.put(
            "/images/cloud/bookworm/latest/SHA512SUMS",
            format!("{}  other.qcow2\n{sum}  {stem}.qcow2\n", "0".repeat(128)).into_bytes(),
        );
        let json_path = format!("/images/cloud/bookworm/latest/{stem}.json");
        if with_json {
            let b64 =
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha512::digest(image));
            let doc = serde_json::json!({"items": [
                {"kind": "Build", "data": {"info": {"arch": "amd64", "release": "bookworm"}}},
                {"kind": "Upload", "data": {"ref": format!("bookworm/{version}/{stem}-{version}.qcow2")},
                 "metadata": {"labels": {"upload.cloud.debian.org/image-format": "qcow2", "cloud.debian.org/version": version},
                              "annotations": {"cloud.debian.org/digest": format!("sha512:{b64}")}}}]});
            self.put(&json_path, doc.to_string().into_bytes());
        } else {
            self.state.lock().unwrap().files.remove(&json_path);
        }
        sum
    }

    fn entry(&self) -> CatalogEntry {
        CatalogEntry {
            image_name: "debian-12".into(),
            image_url: format!(
                "{}/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
                self.base
            ),
            checksum_manifest_url: format!("{}/bookworm/latest/SHA512SUMS", self.base),
            pinned_sha512: None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    Sha512::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn serve(mut conn: TcpStream, st: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h
            .strip_prefix("Range: ")
            .or_else(|| h.strip_prefix("range: "))
        {
            range = Some(v.trim().to_string());
        }
    }
    let (body, fault) = {
        let mut s = st.lock().unwrap();
        let fault = s.faults.get_mut(&path).and_then(|f| {
            if f.is_empty() {
                None
            } else {
                Some(f.remove(0))
            }
        });
        (s.files.get(&path).cloned(), fault)
    };
    let mut sent = 0;
    let respond = |conn: &mut TcpStream, status: &str, headers: &str, body: &[u8]| {
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
            body.len()
        );
        let _ = conn.write_all(body);
    };
    match (body, fault) {
        (_, Some(Fault::Status(code))) => respond(&mut conn, &format!("{code} Fault"), "", b""),
        (_, Some(Fault::Redirect(to))) => {
            respond(&mut conn, "302 Found", &format!("Location: {to}\r\n"), b"")
        }
        (_, Some(Fault::TrickleHeaders)) => {
            // At most 30 s: the client must give up long before.
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: "
                .iter()
                .chain([b'a'; 600].iter())
            {
                if conn.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        (None, _) => respond(&mut conn, "404 Not Found", "", b""),
        (Some(mut body), fault) => {
            if let Some(Fault::FlipByte) = fault {
                let mid = body.len() / 2;
                body[mid] ^= 0xff;
            }
            let etag = format!("\"{}\"", &hex(&body)[..16]);
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n < body.len());
            let (status, part, extra) = match start {
                Some(s) => (
                    "206 Partial Content",
                    &body[s..],
                    format!(
                        "Content-Range: bytes {s}-{}/{}\r\nETag: {etag}\r\n",
                        body.len() - 1,
                        body.len()
                    ),
                ),
                None => ("200 OK", &body[..], format!("ETag: {etag}\r\n")),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                part.len()
            );
            match fault {
                Some(Fault::DropAt(f)) => {
                    let n = (part.len() as f64 * f) as usize;
                    let _ = conn.write_all(&part[..n]);
                    sent = n;
                }
                Some(Fault::Stall) => std::thread::sleep(Duration::from_secs(6)),
                Some(Fault::TrickleBody) => {
                    for b in part.iter().take(600) {
                        if conn.write_all(&[*b]).is_err() {
                            break;
                        }
                        sent += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                _ => {
                    let _ = conn.write_all(part);
                    sent = part.len();
                }
            }
        }
    }
    let _ = conn.flush();
    st.lock().unwrap().log.push((path, range, sent));
}

fn payload(seed: u8, len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Short waits, but with room for a loaded machine: a test is about bounds, not speed.
fn fast_client() -> Client {
    let mut c = Client::with_timeouts(Duration::from_secs(2), Duration::from_secs(3));
    c.backoff = Duration::from_millis(10);
    c.header_deadline = Duration::from_secs(5);
    c.text_deadline = Duration::from_secs(5);
    c.window = Duration::from_secs(2);
    c.min_bytes = 1024;
    c
}

/// A fault's error: bounded in time, one sentence naming the URL, nothing under a final name.
fn assert_fault(e: &ImageError, url: &str, took: Duration, says: &str, dir: &std::path::Path) {
    let text = e.to_string();
    eprintln!("fault reported after {:.1}s: {text}", took.as_secs_f64());
    assert!(took < Duration::from_secs(20), "took {took:?}: {text}");
    assert!(!text.contains('\n'), "one sentence: {text}");
    assert!(text.contains(url), "names the URL: {text}");
    assert!(text.contains(says), "says `{says}`: {text}");
    let finals: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.contains(".part"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        finals.is_empty(),
        "only temporary files may remain: {finals:?}"
    );
}

const MIB: usize = 1 << 20;

#[test]
fn fresh_cache_then_no_bytes_on_rerun() {
    let m = Mirror::start();
    let sum = m.publish("20241004-1890", &payload(1, 2 * MIB), true);
    let dir = tempfile::tempdir().unwrap();
    let c = fast_client();
    let r = resolve(&c, &m.entry()).unwrap();
    assert_eq!(r.source, "json-manifest");
    assert_eq!(r.version.as_deref(), Some("20241004-1890"));
    assert!(
        r.download_url.contains("/bookworm/20241004-1890/"),
        "{}",
        r.download_url
    );
    assert!(lookup(dir.path(), &r).unwrap().is_none());
    let cached = download(&c, dir.path(), &r, &mut Silent).unwrap();
    assert_eq!(cached.sha512, sum);
    assert_eq!(
        cached.path.file_name().unwrap().to_str().unwrap(),
        format!("debian-12-genericcloud-amd64-{}.qcow2", &sum[..16])
    );
    assert!(kvmprov_image::sidecar_path(&cached.path).exists());
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let before = m.served(".qcow2");
    assert_eq!(before, 2 * MIB);
    // The second run: resolve + lookup only.
    let r2 = resolve(&c, &m.entry()).unwrap();
    assert!(lookup(dir.path(), &r2).unwrap().is_some());
    assert_eq!(m.served(".qcow2"), before, "no image bytes on a re-run");
}

#[test]
fn new_latest_gives_second_file_and_keeps_the_first() {
    let m = Mirror::start();
    let dir = tempfile::tempdir().unwrap();
    let c = fast_client();
    m.publish("20241004-1890", &payload(2, MIB), true);
    let first = download(
        &c,
        dir.path(),
        &resolve(&c, &m.entry()).unwrap(),
        &mut Silent,
    )
    .unwrap();
    let first_bytes = std::fs::read(&first.path).unwrap();
    m.publish("20241105-1920", &payload(3, MIB), true);
    let second = download(
        &c,
        dir.path(),
        &resolve(&c, &m.entry()).unwrap(),
        &mut Silent,
    )
    .unwrap();
    assert_ne!(first.path, second.path);
    assert_eq!(std::fs::read(&first.path).unwrap(), first_bytes);
    let listed = kvmprov_image::list_cached(dir.path()).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        kvmprov_image::newest_cached(dir.path(), "debian-12")
            .unwrap()
            .unwrap()
            .version
            .as_deref(),
        Some("20241105-1920")
    );
}

#[test]
fn dropped_connection_resumes_with_range() {
    let m = Mirror::start();
    let image = payload(4, 3 * MIB);
    m.publish("20241004-1890", &image, true);
    let dated =
        "/images/cloud/bookworm/20241004-1890/debian-12-genericcloud-amd64-20241004-1890.qcow2";
    m.fault(dated, Fault::DropAt(0.4));
    let dir = tempfile::tempdir().unwrap();
    let c = fast_client();
    let cached = download(
        &c,
        dir.path(),
        &resolve(&c, &m.entry()).unwrap(),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(std::fs::read(&cached.path).unwrap(), image);
    let first = (image.len() as f64 * 0.4) as usize;
    assert_eq!(m.ranges(dated), vec![format!("bytes={first}-")]);
    assert_eq!(
        m.served(dated),
        image.len(),
        "only the missing bytes were sent again"
    );
}

#[test]
fn flipped_byte_fails_with_both_digests_and_leaves_nothing() {
    let m = Mirror::start();
    let image = payload(5, MIB);
    let sum = m.publish("20241004-1890", &image, false);
    m.fault(
        "/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
        Fault::FlipByte,
    );
    let dir = tempfile::tempdir().unwrap();
    let c = fast_client();
    let r = resolve(&c, &m.entry()).unwrap();
    assert_eq!(r.source, "sha512sums");
    let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{msg}");
    assert!(msg.contains(&sum), "{msg}");
    let mut bad = image.clone();
    bad[image.len() / 2] ^= 0xff;
    assert!(msg.contains(&hex(&bad)), "{msg}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no final file, no part"
    );
}

#[test]
fn manifest_without_the_file() {
    let m = Mirror::start();
    m.publish("20241004-1890", &payload(6, 1000), false);
    m.put(
        "/images/cloud/bookworm/latest/SHA512SUMS",
        format!("{}  other.qcow2\n", "a".repeat(128)).into_bytes(),
    );
    let e = resolve(&fast_client(), &m.entry()).unwrap_err().to_string();
    assert!(
        e.contains("SHA512SUMS") && e.contains("no line for `debian-12-genericcloud-amd64.qcow2`"),
        "{e}"
    );
}

#[test]
fn not_found_is_one_sentence() {
    let m = Mirror::start();
    let e = resolve(&fast_client(), &m.entry()).unwrap_err().to_string();
    assert!(e.contains("HTTP 404") && e.contains("SHA512SUMS"), "{e}");
}

#[test]
fn server_error_then_success_is_retried() {
    let m = Mirror::start();
    let image = payload(7, MIB);
    m.publish("20241004-1890", &image, false);
    let latest = "/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2";
    m.fault(latest, Fault::Status(500));
    let dir = tempfile::tempdir().unwrap();
    let c = fast_client();
    let cached = download(
        &c,
        dir.path(),
        &resolve(&c, &m.entry()).unwrap(),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(std::fs::read(cached.path).unwrap(), image);
}

#[test]
fn stalled_server_times_out() {
    let m = Mirror::start();
    m.publish("20241004-1890", &payload(8, MIB), false);
    let latest = "/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2";
    for _ in 0..4 {
        m.fault(latest, Fault::Stall);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = fast_client();
    c.attempts = 2;
    let r = resolve(&c, &m.entry()).unwrap();
    let t = Instant::now();
    let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(e.to_string().contains(&r.download_url), "{e}");
}

const LATEST: &str = "/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2";

#[test]
fn regression_slow_loris_body_held_the_download_forever() {
    let m = Mirror::start();
    m.publish("20241004-1890", &payload(20, MIB), false);
    m.fault(LATEST, Fault::TrickleBody);
    m.fault(LATEST, Fault::TrickleBody);
    let dir = tempfile::tempdir().unwrap();
    let mut c = fast_client();
    c.attempts = 2;
    let r = resolve(&c, &m.entry()).unwrap();
    let t = Instant::now();
    let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    assert!(matches!(e, ImageError::TooSlow { .. }), "{e:?}");
    assert_fault(&e, &r.download_url, t.elapsed(), "too slow", dir.path());
    // What trickled in is kept and resumed: the next run completes with a Range request.
    let cached = download(&c, dir.path(), &r, &mut Silent).unwrap();
    assert_eq!(cached.size, MIB as u64);
    assert!(m.ranges(".qcow2").iter().any(|r| r.starts_with("bytes=")));
}

#[test]
fn regression_slow_loris_headers_held_the_request_forever() {
    let m = Mirror::start();
    m.publish("20241004-1890", &payload(21, MIB), false);
    m.fault(LATEST, Fault::TrickleHeaders);
    m.fault(LATEST, Fault::TrickleHeaders);
    let dir = tempfile::tempdir().unwrap();
    let mut c = fast_client();
    c.attempts = 2;
    c.header_deadline = Duration::from_secs(1);
    let r = resolve(&c, &m.entry()).unwrap();
    let t = Instant::now();
    let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    assert!(matches!(e, ImageError::NoHeaders { .. }), "{e:?}");
    assert_fault(
        &e,
        &r.download_url,
        t.elapsed(),
        "no complete response headers",
        dir.path(),
    );
}

#[test]
fn regression_slow_loris_manifest_held_resolve_forever() {
    let m = Mirror::start();
    m.publish("20241004-1890", &payload(22, MIB), false);
    let sums = "/images/cloud/bookworm/latest/SHA512SUMS";
    for _ in 0..2 {
        m.fault(sums, Fault::TrickleHeaders);
    }
    let mut c = fast_client();
    c.attempts = 2;
    c.header_deadline = Duration::from_secs(1);
    let t = Instant::now();
    let e = resolve(&c, &m.entry()).unwrap_err();
    let dir = tempfile::tempdir().unwrap();
    assert_fault(
        &e,
        sums,
        t.elapsed(),
        "no complete response headers",
        dir.path(),
    );
}

#[test]
fn regression_short_body_with_correct_length_was_a_generic_io_error() {
    let m = Mirror::start();
    m.publish("20241004-1890", &payload(23, MIB), false);
    for _ in 0..3 {
        m.fault(LATEST, Fault::DropAt(0.0));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = fast_client();
    c.attempts = 3;
    let r = resolve(&c, &m.entry()).unwrap();
    let t = Instant::now();
    let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    assert!(matches!(e, ImageError::Truncated { .. }), "{e:?}");
    assert_fault(
        &e,
        &r.download_url,
        t.elapsed(),
        &format!("closed after 0 of {MIB} bytes"),
        dir.path(),
    );
}

#[test]
fn regression_redirect_loop_was_retried_four_times() {
    let m = Mirror::start();
    m.publish("20241004-1890", &payload(24, MIB), false);
    let loop_a = "/images/cloud/bookworm/latest/loop-a.qcow2";
    let loop_b = "/images/cloud/bookworm/latest/loop-b.qcow2";
    for _ in 0..10 {
        m.fault(loop_a, Fault::Redirect(loop_b.into()));
        m.fault(loop_b, Fault::Redirect(loop_a.into()));
    }
    let dir = tempfile::tempdir().unwrap();
    let c = fast_client();
    let mut r = resolve(&c, &m.entry()).unwrap();
    r.download_url = format!("{}{}", m.base.trim_end_matches("/images/cloud"), loop_a);
    let t = Instant::now();
    let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    assert_fault(
        &e,
        &r.download_url,
        t.elapsed(),
        "too many redirects",
        dir.path(),
    );
    // One attempt: 6 requests (the first and 5 redirects), not 4 attempts' worth.
    let hops = m
        .state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|(p, _, _)| p.contains("loop-"))
        .count();
    assert!(hops <= 6, "{hops} requests");
}

#[test]
fn regression_tls_failure_was_retried_four_times() {
    // A "server" on 127.0.0.1 that answers a TLS hello with plain text.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hellos = Arc::new(Mutex::new(0usize));
    let count = hellos.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            *count.lock().unwrap() += 1;
            let mut buf = [0u8; 512];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let url = format!("https://127.0.0.1:{port}/images/cloud/bookworm/latest/SHA512SUMS");
    let c = fast_client();
    let t = Instant::now();
    let e = c.get_text(&url).unwrap_err();
    let dir = tempfile::tempdir().unwrap();
    assert_fault(&e, &url, t.elapsed(), "TLS", dir.path());
    assert_eq!(*hellos.lock().unwrap(), 1, "a TLS failure is not retried");
}

#[test]
fn file_manifest_and_pinned_digest() {
    let m = Mirror::start();
    let image = payload(9, 1000);
    let sum = m.publish("20241004-1890", &image, false);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("SHA512SUMS");
    std::fs::write(
        &manifest,
        format!("{sum}  debian-12-genericcloud-amd64.qcow2\n"),
    )
    .unwrap();
    let mut entry = m.entry();
    entry.checksum_manifest_url = format!("file://{}", manifest.display());
    assert_eq!(resolve(&fast_client(), &entry).unwrap().sha512, sum);
    entry.pinned_sha512 = Some(sum.to_uppercase());
    let r = resolve(&fast_client(), &entry).unwrap();
    assert_eq!(
        (r.sha512.as_str(), r.source.as_str()),
        (sum.as_str(), "pinned")
    );
}

#[test]
fn killed_download_part_is_resumed_by_the_next_run() {
    let m = Mirror::start();
    let image = payload(10, 2 * MIB);
    m.publish("20241004-1890", &image, true);
    let dated =
        "/images/cloud/bookworm/20241004-1890/debian-12-genericcloud-amd64-20241004-1890.qcow2";
    // First run: every attempt drops, as if the network went away; the part stays.
    for _ in 0..4 {
        m.fault(dated, Fault::DropAt(0.0));
    }
    m.fault(dated, Fault::DropAt(0.5));
    let dir = tempfile::tempdir().unwrap();
    let mut c = fast_client();
    c.attempts = 1;
    let r = resolve(&c, &m.entry()).unwrap();
    let _ = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    let _ = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    let _ = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    let _ = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    // A body shorter than its Content-Length is a truncation, and the part is kept.
    assert!(matches!(e, ImageError::Truncated { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("after {MIB} of {} bytes", 2 * MIB)),
        "{e}"
    );
    let part = dir.path().join(format!("{}.part", r.file_name));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), MIB as u64);
    // Next run continues from the part.
    let cached = download(&c, dir.path(), &r, &mut Silent).unwrap();
    assert_eq!(std::fs::read(cached.path).unwrap(), image);
    assert_eq!(m.ranges(dated).last().unwrap(), &format!("bytes={MIB}-"));
}
