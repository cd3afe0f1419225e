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
    /// The whole body, 64 KiB every 20 ms: slow enough for a second run to meet this one.
    Slow,
    /// No Content-Length: these bytes, then zeros until the client hangs up (at most 1 GiB).
    Endless(Vec<u8>),
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    faults: HashMap<String, Vec<Fault>>,
    log: Vec<(String, Option<String>, usize)>,
    /// Connections accepted and not yet logged: a client may have its answer before the server
    /// thread has written the log line.
    open: usize,
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
                st.lock().unwrap().open += 1;
                std::thread::spawn(move || {
                    serve(conn, st.clone());
                    st.lock().unwrap().open -= 1;
                });
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

    /// Wait (at most 5 s) until every accepted connection has been logged.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.state.lock().unwrap().open > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Body bytes served for paths containing `needle`.
    fn served(&self, needle: &str) -> usize {
        self.settle();
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(p, _, _)| p.contains(needle))
            .map(|(_, _, n)| n)
            .sum()
    }

    /// Requests for paths containing `needle`.
    fn requests(&self, needle: &str) -> usize {
        self.settle();
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(p, _, _)| p.contains(needle))
            .count()
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
        let json_path = format!("/images/cloud/bookworm/latest/{stem}.json");
        // Like Debian's: `latest/SHA512SUMS` lists the JSON manifest beside the image too.
        let json = json_manifest(version, image);
        let json_line = if with_json {
            format!("{}  {stem}.json\n", hex(json.as_bytes()))
        } else {
            String::new()
        };
        self.put(
            "/images/cloud/bookworm/latest/SHA512SUMS",
            format!(
                "{}  other.qcow2\n{json_line}{sum}  {stem}.qcow2\n",
                "0".repeat(128)
            )
            .into_bytes(),
        );
        if with_json {
            self.put(&json_path, json.into_bytes());
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

/// Debian's per-image JSON manifest naming build `version` of bookworm with `image`'s digest.
fn json_manifest(version: &str, image: &[u8]) -> String {
    let stem = "debian-12-genericcloud-amd64";
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha512::digest(image));
    serde_json::json!({"items": [
        {"kind": "Build", "data": {"info": {"arch": "amd64", "release": "bookworm"}}},
        {"kind": "Upload", "data": {"ref": format!("bookworm/{version}/{stem}-{version}.qcow2")},
         "metadata": {"labels": {"upload.cloud.debian.org/image-format": "qcow2", "cloud.debian.org/version": version},
                      "annotations": {"cloud.debian.org/digest": format!("sha512:{b64}")}}}]})
    .to_string()
}

/// The names in a cache directory, lock files left out (they stay, empty, by design).
fn cache_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(Sha512::digest(bytes))
}

fn serve(mut conn: TcpStream, st: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Tokens in the query do not change the file served.
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target).to_string();
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
        (_, Some(Fault::Endless(head))) => {
            let _ = write!(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            if conn.write_all(&head).is_ok() {
                sent = head.len();
                let zeros = vec![0u8; 1 << 20];
                for _ in 0..1024 {
                    if conn.write_all(&zeros).is_err() {
                        break;
                    }
                    sent += zeros.len();
                }
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
                Some(Fault::Slow) => {
                    for chunk in part.chunks(64 * 1024) {
                        if conn.write_all(chunk).is_err() {
                            break;
                        }
                        sent += chunk.len();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
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

/// `len` bytes that start like a qcow2 image (v3, 1 GiB virtual), the rest pseudo-random.
fn payload(seed: u8, len: usize) -> Vec<u8> {
    let mut bytes = noise(seed, len);
    let mut header = [0u8; 32];
    header[..4].copy_from_slice(b"QFI\xfb");
    header[4..8].copy_from_slice(&3u32.to_be_bytes());
    header[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
    let n = header.len().min(len);
    bytes[..n].copy_from_slice(&header[..n]);
    bytes
}

/// `len` pseudo-random bytes: not an image.
fn noise(seed: u8, len: usize) -> Vec<u8> {
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
    let finals: Vec<_> = cache_files(dir)
        .into_iter()
        .filter(|n| !n.contains(".part"))
        .collect();
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
    assert!(lookup(dir.path(), &r.file_name, &r.sha512)
        .unwrap()
        .is_none());
    let cached = download(&c, dir.path(), &r, &mut Silent).unwrap();
    assert_eq!(cached.sha512, sum);
    assert_eq!(
        cached.path.file_name().unwrap().to_str().unwrap(),
        format!("debian-12-genericcloud-amd64-{}.qcow2", &sum[..16])
    );
    assert!(kvmprov_image::sidecar_path(&cached.path).exists());
    let files = cache_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let before = m.served(".qcow2");
    assert_eq!(before, 2 * MIB);
    // The second run: resolve + lookup only.
    let r2 = resolve(&c, &m.entry()).unwrap();
    assert!(lookup(dir.path(), &r2.file_name, &r2.sha512)
        .unwrap()
        .is_some());
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
        cache_files(dir.path()),
        Vec::<String>::new(),
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

/// One sentence: no line breaks.
fn one_sentence(e: &ImageError) -> String {
    let text = e.to_string();
    eprintln!("reported: {text}");
    assert!(!text.contains('\n'), "one sentence: {text}");
    text
}

#[test]
fn regression_json_manifest_digest_overrode_configured_sha512sums() {
    // The image host serves another build than the configured manifest's host lists, with a
    // JSON manifest and a dated SHA512SUMS of its own to match it.
    let images = Mirror::start();
    let sums = Mirror::start();
    let good = payload(30, MIB);
    let evil = payload(31, MIB);
    let good_sum = sums.publish("20241004-1890", &good, true);
    let evil_sum = images.publish("20241004-1890", &evil, true);
    let mut entry = images.entry();
    entry.checksum_manifest_url = sums.entry().checksum_manifest_url;
    let c = fast_client();

    let e = resolve(&c, &entry).unwrap_err();
    let text = one_sentence(&e);
    assert!(text.contains("not trusted"), "{text}");
    let json_url = format!(
        "{}/bookworm/latest/debian-12-genericcloud-amd64.json",
        images.base
    );
    // The dated SHA512SUMS is looked up beside the configured manifest, not on the image host.
    let dated_sums = format!("{}/bookworm/20241004-1890/SHA512SUMS", sums.base);
    for part in [&json_url, &dated_sums, &evil_sum, &good_sum] {
        assert!(text.contains(part.as_str()), "names {part}: {text}");
    }
    assert_eq!(
        images.requests("SHA512SUMS"),
        0,
        "the image host is no authority"
    );

    // Not listed at all by the configured manifest: refused too, not skipped.
    sums.put(
        "/images/cloud/bookworm/latest/SHA512SUMS",
        format!("{}  other.qcow2\n", "0".repeat(128)).into_bytes(),
    );
    sums.put(
        "/images/cloud/bookworm/20241004-1890/SHA512SUMS",
        Vec::new(),
    );
    let e = resolve(&c, &entry).unwrap_err();
    let text = one_sentence(&e);
    assert!(text.contains("not trusted"), "{text}");
    assert!(
        text.contains(&evil_sum)
            && text.contains("lists no digest for debian-12-genericcloud-amd64.qcow2"),
        "{text}"
    );
}

#[test]
fn regression_json_manifest_pinned_an_older_build_than_latest() {
    // The configured manifest's host: `latest` is build 20241105-1920 (its JSON manifest listed
    // in its SHA512SUMS), and the older 20241004-1890 still has its dated directory.
    let sums = Mirror::start();
    let images = Mirror::start();
    let old = payload(32, MIB);
    let new = payload(33, MIB);
    let old_sum = sums.publish("20241004-1890", &old, true);
    let new_sum = sums.publish("20241105-1920", &new, true);
    // The image host's JSON manifest pins the old build (a mirror rolling the fleet back).
    images.publish("20241004-1890", &old, true);
    let mut entry = images.entry();
    entry.checksum_manifest_url = sums.entry().checksum_manifest_url;
    let c = fast_client();
    let e = resolve(&c, &entry).unwrap_err();
    let text = one_sentence(&e);
    assert!(
        text.contains("not trusted")
            && text.contains("build 20241105-1920")
            && text.contains("older")
            && text.contains(&old_sum)
            && text.contains(&new_sum),
        "{text}"
    );
    assert_eq!(
        sums.requests("/bookworm/20241004-1890/SHA512SUMS"),
        0,
        "an older dated manifest is not even asked"
    );

    // One host for both, its JSON not the one `latest/SHA512SUMS` lists: which build `latest`
    // is cannot be told, so no dated manifest confirms the pin either.
    let m = Mirror::start();
    m.publish("20241105-1920", &new, false);
    m.publish("20241004-1890", &old, true);
    m.put(
        "/images/cloud/bookworm/latest/SHA512SUMS",
        format!("{new_sum}  debian-12-genericcloud-amd64.qcow2\n").into_bytes(),
    );
    let e = resolve(&c, &m.entry()).unwrap_err();
    let text = one_sentence(&e);
    assert!(text.contains("which build `latest` is"), "{text}");
}

#[test]
fn a_newer_pinned_build_is_confirmed_by_its_dated_sha512sums_beside_the_configured_one() {
    // `latest` moved on between the configured manifest and the JSON manifest: the image host
    // already pins 20241105-1920; the configured host's `latest` still names 20241004-1890.
    let sums = Mirror::start();
    let images = Mirror::start();
    let old = payload(46, MIB);
    let new = payload(47, MIB);
    sums.publish("20241004-1890", &old, true);
    let new_sum = hex(&new);
    sums.put(
        "/images/cloud/bookworm/20241105-1920/SHA512SUMS",
        format!("{new_sum}  debian-12-genericcloud-amd64-20241105-1920.qcow2\n").into_bytes(),
    );
    images.publish("20241105-1920", &new, true);
    let mut entry = images.entry();
    entry.checksum_manifest_url = sums.entry().checksum_manifest_url;
    let c = fast_client();
    let r = resolve(&c, &entry).unwrap();
    assert_eq!(r.sha512, new_sum);
    assert_eq!(r.version.as_deref(), Some("20241105-1920"));
    assert!(r.download_url.starts_with(&images.base), "{r:?}");
    assert_eq!(sums.requests("/bookworm/20241105-1920/SHA512SUMS"), 1);
    let dir = tempfile::tempdir().unwrap();
    let cached = download(&c, dir.path(), &r, &mut Silent).unwrap();
    assert_eq!(std::fs::read(cached.path).unwrap(), new);
}

#[test]
fn regression_data_ref_escaped_the_suite() {
    let image = payload(48, MIB);
    let file = "debian-12-genericcloud-amd64-20241004-1890.qcow2";
    for bad in [
        format!("bookworm/..\\..\\..\\x/{file}"),
        format!("bookworm/20241004-1890/{file}?x"),
        format!("bookworm/20241004-1890/{file}#x"),
        format!("trixie/20241004-1890/{file}"),
        "bookworm/20241004-1890/debian-12-nocloud-amd64-20241004-1890.qcow2".to_string(),
    ] {
        let m = Mirror::start();
        m.publish("20241004-1890", &image, true);
        // The configured `latest` lists another digest: the pin would need a dated manifest.
        m.put(
            "/images/cloud/bookworm/latest/SHA512SUMS",
            format!("{}  debian-12-genericcloud-amd64.qcow2\n", "1".repeat(128)).into_bytes(),
        );
        let mut json: serde_json::Value =
            serde_json::from_str(&json_manifest("20241004-1890", &image)).unwrap();
        json["items"][1]["data"]["ref"] = serde_json::Value::String(bad.clone());
        m.put(
            "/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.json",
            json.to_string().into_bytes(),
        );
        let c = fast_client();
        let got = resolve(&c, &m.entry());
        m.settle();
        let paths: Vec<String> = m
            .state
            .lock()
            .unwrap()
            .log
            .iter()
            .map(|(p, _, _)| p.clone())
            .collect();
        let e = got.expect_err(&format!("{bad} was accepted"));
        let text = one_sentence(&e);
        assert!(
            paths
                .iter()
                .all(|p| p.starts_with("/images/cloud/bookworm/latest/")),
            "{bad}: requests outside the configured `latest/`: {paths:?} ({text})"
        );
    }
}
#[test]
fn regression_file_image_url_failed_with_empty_host() {
    let src = tempfile::tempdir().unwrap();
    let image = payload(34, MIB + 123);
    let file = src.path().join("debian-12-genericcloud-amd64.qcow2");
    std::fs::write(&file, &image).unwrap();
    std::fs::write(
        src.path().join("SHA512SUMS"),
        format!("{}  debian-12-genericcloud-amd64.qcow2\n", hex(&image)),
    )
    .unwrap();
    let entry = CatalogEntry {
        image_name: "debian-12".into(),
        image_url: format!("file://{}", file.display()),
        checksum_manifest_url: format!("file://{}/SHA512SUMS", src.path().display()),
        pinned_sha512: None,
    };
    let c = fast_client();
    let r = resolve(&c, &entry).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cached = download(&c, dir.path(), &r, &mut Silent).unwrap();
    // Same layout as an http download: the name carries the digest, a sidecar records it.
    let name = format!("debian-12-genericcloud-amd64-{}.qcow2", &hex(&image)[..16]);
    let mut files = cache_files(dir.path());
    files.sort();
    assert_eq!(files, vec![name.clone(), format!("{name}.json")]);
    assert_eq!(std::fs::read(&cached.path).unwrap(), image);
    let side = std::fs::read_to_string(kvmprov_image::sidecar_path(&cached.path)).unwrap();
    assert!(
        side.contains(&entry.image_url) && side.contains(&hex(&image)),
        "{side}"
    );
    assert_eq!(
        lookup(dir.path(), &r.file_name, &r.sha512)
            .unwrap()
            .unwrap()
            .sha512,
        hex(&image)
    );

    // The same verification: a changed file is refused and nothing is cached.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(&file, payload(35, MIB)).unwrap();
    let e = download(&c, other.path(), &r, &mut Silent).unwrap_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    assert!(cache_files(other.path()).is_empty());
}

#[test]
fn regression_non_qcow2_download_was_cached() {
    let cases = [
        (noise(36, MIB), "QFI\\xfb"),
        (
            {
                // A qcow2 header whose virtual size is 0.
                let mut p = payload(37, MIB);
                p[24..32].copy_from_slice(&0u64.to_be_bytes());
                p
            },
            "virtual size of 0",
        ),
    ];
    for (body, says) in cases {
        let m = Mirror::start();
        m.publish("20241004-1890", &body, false);
        let c = fast_client();
        let r = resolve(&c, &m.entry()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
        // What the stage prints: the error and its causes, one sentence.
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text = format!("{text}: {c}");
            cause = c.source();
        }
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.contains(&r.download_url) && text.contains("not a qcow2") && text.contains(says),
            "{text}"
        );
        assert!(cache_files(dir.path()).is_empty(), "nothing cached");
        assert!(lookup(dir.path(), &r.file_name, &r.sha512)
            .unwrap()
            .is_none());
    }
}

#[test]
fn regression_url_credentials_leaked_into_names_sidecars_and_errors() {
    let m = Mirror::start();
    let image = payload(38, MIB);
    m.publish("20241004-1890", &image, true);
    let secret = m.base.replace("http://", "http://kvm:pa55word@");
    let entry = CatalogEntry {
        image_name: "debian-12".into(),
        image_url: format!(
            "{secret}/bookworm/latest/debian-12-genericcloud-amd64.qcow2?token=t0ps3cret"
        ),
        checksum_manifest_url: format!("{secret}/bookworm/latest/SHA512SUMS?token=t0ps3cret"),
        pinned_sha512: None,
    };
    let leaks = |what: &str, text: &str| {
        assert!(
            !text.contains("pa55word") && !text.contains("t0ps3cret"),
            "{what} leaks a secret: {text}"
        );
    };
    let c = fast_client();
    let r = resolve(&c, &entry).unwrap();
    // The request still carries the token; only what is shown is redacted.
    assert!(r.download_url.contains("t0ps3cret"));
    leaks("the cache file name", &r.file_name);
    leaks("the resolved JSON", &serde_json::to_string(&r).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cached = download(&c, dir.path(), &r, &mut Silent).unwrap();
    assert_eq!(std::fs::read(&cached.path).unwrap(), image);
    leaks("the cached url", &cached.url);
    leaks(
        "the sidecar",
        &std::fs::read_to_string(kvmprov_image::sidecar_path(&cached.path)).unwrap(),
    );
    for name in std::fs::read_dir(dir.path()).unwrap() {
        leaks(
            "a cache file name",
            &name.unwrap().file_name().to_string_lossy(),
        );
    }
    assert!(
        cached.url.contains("***@") && cached.url.ends_with("?***"),
        "{}",
        cached.url
    );

    // Errors name the URL redacted.
    let mut missing = entry.clone();
    missing.checksum_manifest_url = format!("{secret}/nowhere/latest/SHA512SUMS?token=t0ps3cret");
    let e = resolve(&c, &missing).unwrap_err().to_string();
    leaks("an error", &e);
    assert!(
        e.contains("HTTP 404") && e.contains("/nowhere/latest/SHA512SUMS?***"),
        "{e}"
    );
    let mut gone = r.clone();
    gone.download_url = format!("{secret}/bookworm/latest/gone.qcow2?token=t0ps3cret");
    gone.file_name = "gone.qcow2".into();
    let e = download(&c, dir.path(), &gone, &mut Silent)
        .unwrap_err()
        .to_string();
    leaks("a download error", &e);
}

#[test]
fn regression_two_runs_truncated_each_others_part() {
    let m = Mirror::start();
    let image = payload(39, 2 * MIB);
    m.publish("20241004-1890", &image, false);
    m.fault(LATEST, Fault::Slow);
    m.fault(LATEST, Fault::Slow);
    let dir = tempfile::tempdir().unwrap();
    let c = fast_client();
    let r = resolve(&c, &m.entry()).unwrap();
    // Two runs (different instance pools, one cache) fetch the same version at once.
    let (a, b) = std::thread::scope(|scope| {
        let first = scope.spawn(|| download(&c, dir.path(), &r, &mut Silent));
        std::thread::sleep(Duration::from_millis(150));
        let second = scope.spawn(|| download(&c.clone(), dir.path(), &r, &mut Silent));
        (first.join().unwrap(), second.join().unwrap())
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.path, b.path);
    assert_eq!(std::fs::read(&a.path).unwrap(), image);
    // The second waited for the first and found its finished file.
    assert_eq!(m.served(".qcow2"), image.len(), "downloaded once");
    assert_eq!(
        cache_files(dir.path()).len(),
        2,
        "{:?}",
        cache_files(dir.path())
    );
}

/// Debian's real files (`shared/debian-cloud/`, beside the repository), or `None` with a
/// visible note: they are data for tests, not part of the project.
fn debian_cloud(name: &str) -> Option<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/debian-cloud");
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            eprintln!("SKIPPED: {} not readable ({e})", dir.join(name).display());
            None
        }
    }
}

#[test]
fn real_debian_json_manifest_is_confirmed_only_by_the_configured_sums() {
    let (Some(json), Some(latest_sums)) = (
        debian_cloud("bookworm-20250210-2019-debian-12-genericcloud-amd64.json"),
        debian_cloud("bookworm-latest-SHA512SUMS"),
    ) else {
        return;
    };
    // The real `latest/SHA512SUMS` is of a later build than the real JSON manifest: `latest`
    // moved, as it does between two requests.
    let pinned = kvmprov_image::parse_json_manifest(std::str::from_utf8(&json).unwrap()).unwrap();
    let listed = kvmprov_image::parse_sha512sums(
        std::str::from_utf8(&latest_sums).unwrap(),
        "debian-12-genericcloud-amd64.qcow2",
    )
    .unwrap();
    assert_ne!(pinned.sha512, listed);
    let m = Mirror::start();
    m.put("/images/cloud/bookworm/latest/SHA512SUMS", latest_sums);
    m.put(
        "/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.json",
        json,
    );
    let c = fast_client();

    // No dated SHA512SUMS beside the configured one: refused, both digests named.
    let e = resolve(&c, &m.entry()).unwrap_err();
    let text = one_sentence(&e);
    for part in [&pinned.sha512, &listed, &m.entry().checksum_manifest_url] {
        assert!(text.contains(part.as_str()), "names {part}: {text}");
    }
    assert!(text.contains("not trusted"), "{text}");

    // Even with a dated directory that lists the pinned build: the real `latest/SHA512SUMS`
    // lists a JSON manifest other than this one, so the build `latest` is cannot be told and an
    // older build is not taken for it.
    m.put(
        "/images/cloud/bookworm/20250210-2019/SHA512SUMS",
        format!(
            "{}  debian-12-genericcloud-amd64-20250210-2019.qcow2\n",
            pinned.sha512
        )
        .into_bytes(),
    );
    let e = resolve(&c, &m.entry()).unwrap_err();
    let text = one_sentence(&e);
    assert!(text.contains("not trusted"), "{text}");
}

/// Is this test running as root (chown to another user needs it)?
fn root() -> bool {
    let me = kvmprov_safefs::euid();
    if me != 0 {
        eprintln!("SKIPPED part of this test: it needs root to chown files to another user");
    }
    me == 0
}

fn chown_nobody(path: &std::path::Path) {
    std::os::unix::fs::lchown(path, Some(65534), Some(65534)).unwrap();
}

#[test]
fn regression_part_symlink_made_root_overwrite_another_file() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = Mirror::start();
    let image = payload(40, 2 * MIB);
    m.publish("20241004-1890", &image, false);
    let c = fast_client();
    let r = resolve(&c, &m.entry()).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let victim = elsewhere.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let untouched = || assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

    // A fresh download: the planted link is replaced by a file of our own, never followed.
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join(format!("{}.part", r.file_name));
    std::os::unix::fs::symlink(&victim, &part).unwrap();
    let cached = download(&c, dir.path(), &r, &mut Silent).unwrap();
    untouched();
    let meta = std::fs::symlink_metadata(&cached.path).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the cached image is a regular file"
    );
    assert_eq!(std::fs::read(&cached.path).unwrap(), image);

    // A "resumable" part that is a link: refused (not appended to), and removed as the link.
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join(format!("{}.part", r.file_name));
    let record = serde_json::json!({"url": kvmprov_image::redact_url(&r.download_url),
                                    "sha512": r.sha512, "validator": "\"x\""})
    .to_string();
    std::fs::write(
        dir.path().join(format!("{}.part.json", r.file_name)),
        &record,
    )
    .unwrap();
    std::os::unix::fs::symlink(&victim, &part).unwrap();
    let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    let text = one_sentence(&e);
    untouched();
    assert!(
        text.contains("symbolic link") && text.contains(".part"),
        "{text}"
    );
    assert!(
        std::fs::symlink_metadata(&part).is_err(),
        "the link is gone"
    );

    // Another user's part is not resumed, and so never renamed into the cache.
    if root() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join(format!("{}.part", r.file_name));
        std::fs::write(&part, &image[..MIB]).unwrap();
        std::fs::write(
            dir.path().join(format!("{}.part.json", r.file_name)),
            &record,
        )
        .unwrap();
        chown_nobody(&part);
        let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
        let text = one_sentence(&e);
        assert!(text.contains("owned by uid 65534"), "{text}");
        let cached = dir.path().join(&r.file_name);
        assert!(
            std::fs::symlink_metadata(&cached).map_or(true, |m| m.uid() != 65534),
            "another user's file became the cached image"
        );
    }

    // A cache directory others can write (the 1777 of the report) is refused, with the fix.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    let text = one_sentence(&e);
    assert!(text.contains("chmod o-w"), "{text}");
    assert!(cache_files(dir.path()).is_empty());
}

#[test]
fn regression_cache_lock_files_anyone_could_open_and_hold() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = Mirror::start();
    m.publish("20241004-1890", &payload(41, MIB), false);
    let c = fast_client();
    let r = resolve(&c, &m.entry()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    download(&c, dir.path(), &r, &mut Silent).unwrap();
    let mut locks = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with(".lock") {
            let mode = e.metadata().unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{:?} is {mode:o}", e.file_name());
            locks += 1;
        }
    }
    assert_eq!(locks, 2, "the cache lock and the writer lock");

    // A lock file 0644 from an older kvmprov is narrowed; another user's is refused.
    let lock = dir.path().join(".kvmprov-cache.lock");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
    download(&c, dir.path(), &r, &mut Silent).unwrap();
    assert_eq!(std::fs::metadata(&lock).unwrap().mode() & 0o777, 0o600);
    if root() {
        chown_nobody(&lock);
        let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
        let text = one_sentence(&e);
        assert!(
            text.contains(".kvmprov-cache.lock") && text.contains("owned by uid 65534"),
            "{text}"
        );
    }
}

/// Hold an exclusive `flock` on `path` from this process (as another user's process did).
fn hold(path: &std::path::Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.lock().unwrap();
    f
}

#[test]
fn regression_held_writer_lock_made_the_download_wait_forever() {
    let m = Mirror::start();
    m.publish("20241004-1890", &payload(42, MIB), false);
    let mut c = fast_client();
    c.header_deadline = Duration::from_secs(1);
    c.window = Duration::from_secs(1);
    let r = resolve(&c, &m.entry()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _held = hold(&dir.path().join(format!(".{}.lock", r.file_name)));
    let (tx, rx) = std::sync::mpsc::channel();
    let (c2, r2, path) = (c.clone(), r.clone(), dir.path().to_path_buf());
    let t = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(download(&c2, &path, &r2, &mut Silent));
    });
    let e = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the download still waits for the writer lock after 30 s")
        .unwrap_err();
    let text = one_sentence(&e);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(
        text.contains(&format!("process {}", std::process::id()))
            && text.contains("no progress")
            && !text.contains("pruned"),
        "{text}"
    );
}

#[test]
fn regression_held_cache_lock_was_reported_as_a_prune() {
    let m = Mirror::start();
    m.publish("20241004-1890", &payload(43, MIB), false);
    let mut c = fast_client();
    c.lock_wait = Duration::from_secs(1);
    let r = resolve(&c, &m.entry()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _held = hold(&dir.path().join(".kvmprov-cache.lock"));
    let t = Instant::now();
    let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    let text = one_sentence(&e);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        text.contains(&format!("process {}", std::process::id())) && !text.contains("being pruned"),
        "{text}"
    );
}

#[test]
fn regression_unbounded_image_body_filled_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut small = payload(44, 64);
    small[24..32].copy_from_slice(&(MIB as u64).to_be_bytes());
    // Zeros (not a qcow2 at all), then a qcow2 header that states 1 MiB followed by zeros.
    for (head, says) in [(Vec::new(), "not a qcow2"), (small, "more than a qcow2")] {
        let m = Mirror::start();
        m.publish("20241004-1890", &payload(45, MIB), false);
        m.fault(LATEST, Fault::Endless(head));
        let mut c = fast_client();
        c.attempts = 1;
        let r = resolve(&c, &m.entry()).unwrap();
        let t = Instant::now();
        let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
        let mut text = one_sentence(&e);
        if let Some(cause) = std::error::Error::source(&e) {
            text = format!("{text}: {cause}");
        }
        assert!(text.contains(says), "{text}");
        // A hang guard, not a speed target: the cap is what `served` checks. The unoptimized
        // test build hashes ~100 MiB here, which took 21–28 s on two cores shared with guests.
        assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
        let served = m.served(".qcow2");
        assert!(served < 96 * MIB, "{served} bytes were taken");
        assert!(
            cache_files(dir.path()).is_empty(),
            "nothing kept for resume: {:?}",
            cache_files(dir.path())
        );
    }
}

/// An https server on 127.0.0.1 (certificate for 127.0.0.1 from the test CA in `tests/tls/`)
/// that answers every request with a redirect to `location`; returns its base URL.
fn https_redirector(location: String) -> String {
    use std::sync::Arc;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let cert =
        rustls::pki_types::CertificateDer::from(std::fs::read(dir.join("leaf.der")).unwrap());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
        std::fs::read(dir.join("leaf.key.der")).unwrap().into(),
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let tls = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut stream = rustls::StreamOwned::new(tls, conn);
            let mut reader = BufReader::new(&mut stream);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.flush();
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    });
    format!("https://{addr}")
}

fn test_ca_client() -> Client {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            std::fs::read(dir.join("ca.der")).unwrap(),
        ))
        .unwrap();
    fast_client().trusting(roots).unwrap()
}

#[test]
fn regression_https_to_http_redirect_was_followed() {
    let m = Mirror::start();
    m.publish("20241004-1890", &payload(49, MIB), false);
    let plain = format!("{}/bookworm/latest/SHA512SUMS", m.base);
    let https = https_redirector(plain.clone());
    let c = test_ca_client();
    let url = format!("{https}/images/cloud/bookworm/latest/SHA512SUMS");
    let t = Instant::now();
    let e = c.get_text(&url).unwrap_err();
    let dir = tempfile::tempdir().unwrap();
    assert_fault(
        &e,
        &url,
        t.elapsed(),
        "from https to plain http",
        dir.path(),
    );
    assert_eq!(m.requests("SHA512SUMS"), 0, "nothing was fetched over http");

    // The same for an image download, and for a manifest URL redirected to https: followed.
    let image_url =
        format!("{https}/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2");
    let mut r = resolve(&fast_client(), &m.entry()).unwrap();
    r.download_url = image_url.clone();
    let e = download(&c, dir.path(), &r, &mut Silent).unwrap_err();
    assert_fault(
        &e,
        &image_url,
        t.elapsed(),
        "from https to plain http",
        dir.path(),
    );
    assert_eq!(m.served(".qcow2"), 0, "no image bytes over http");
    // A relative Location keeps the scheme: a loop of https redirects.
    let https_again = https_redirector("/again".to_string());
    let e = c
        .get_text(&format!("{https_again}/x"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("too many redirects"),
        "https → https is followed: {e}"
    );
}
