//! kvmprov-image: Debian cloud images, resolved through their checksum manifests, downloaded
//! once (streamed, hashed while written, resumable), verified, and cached under names that carry
//! their checksum, each with a JSON sidecar.
//!
//! The downloader knows nothing of libvirt or of where the bytes will be used.

pub mod manifest;
pub mod qcow2;
mod url;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

pub use manifest::{parse_json_manifest, parse_sha512sums, ManifestError};
pub use url::redact_url;

/// Bytes read per chunk while streaming.
const CHUNK: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: {detail}")]
    Transport {
        url: String,
        detail: String,
        /// The network may recover (reset, timeout); not a bad URL, redirect loop or TLS failure.
        transient: bool,
    },
    #[error("GET {url}: no complete response headers within {seconds}s: the server is too slow or stuck")]
    NoHeaders { url: String, seconds: u64 },
    #[error("GET {url}: too slow: {bytes} bytes arrived in {seconds}s, at least {min} wanted; the {got} bytes so far are kept for the next attempt")]
    TooSlow {
        url: String,
        bytes: u64,
        seconds: u64,
        min: u64,
        got: u64,
    },
    #[error("GET {url}: the connection closed after {got} of {expected} bytes")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error("{url}: {source}")]
    Manifest {
        url: String,
        #[source]
        source: ManifestError,
    },
    #[error("checksum mismatch for {url}: expected sha512 {expected}, got {actual}")]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{json_url} names sha512 {json_sha512} for {file}, but {listings}: a digest the configured checksum manifest does not confirm is not trusted")]
    Unconfirmed {
        json_url: String,
        json_sha512: String,
        file: String,
        /// What the configured manifest lists, and the dated one beside it when it was read.
        listings: String,
    },
    #[error("{url} is not a qcow2 image, so it was not cached")]
    NotQcow2 {
        url: String,
        #[source]
        problem: qcow2::Problem,
    },
    #[error("the image cache is being pruned by another kvmprov run (lock {path} held for more than {seconds}s)")]
    CacheBusy { path: PathBuf, seconds: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ImageError {
    /// Worth another attempt: the network or the server, not the request or the bytes.
    fn transient(&self) -> bool {
        match self {
            ImageError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            ImageError::Transport { transient, .. } => *transient,
            ImageError::Truncated { .. }
            | ImageError::NoHeaders { .. }
            | ImageError::TooSlow { .. } => true,
            _ => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One catalog entry, as the image cache needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub image_name: String,
    pub image_url: String,
    pub checksum_manifest_url: String,
    pub pinned_sha512: Option<String>,
}

/// Where to download an image from and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub image_name: String,
    /// As configured, secrets included (the request needs them); shown only redacted.
    #[serde(serialize_with = "serialize_redacted")]
    pub download_url: String,
    pub sha512: String,
    pub version: Option<String>,
    /// Final name in the cache: `<stem>-<first 16 hex>.<ext>`.
    pub file_name: String,
    /// How the digest was found: `json-manifest`, `sha512sums` or `pinned`.
    pub source: String,
}

fn serialize_redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

/// A verified image in the cache (what its sidecar records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedImage {
    pub image_name: String,
    #[serde(skip)]
    pub path: PathBuf,
    pub sha512: String,
    pub size: u64,
    pub version: Option<String>,
    pub url: String,
    /// Milliseconds since the epoch (orders versions cached within the same second).
    pub cached_at: String,
}

/// Progress of one download.
pub trait Progress {
    fn start(&mut self, total: Option<u64>, resumed_from: u64);
    fn advance(&mut self, bytes: u64);
    fn finish(&mut self);
}

/// No progress output.
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: Option<u64>, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// HTTP with deadlines and bounded retries. Every wait is bounded, also against a server that
/// trickles: per read (`stall`), for the response headers (`header_deadline`), for a whole
/// small document (`text_deadline`) and for an image body by a minimum rate over a window.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    /// Attempts per request (first try included).
    pub attempts: u32,
    /// First retry delay; doubled each time.
    pub backoff: Duration,
    /// Longest wait for a response's status line and headers.
    pub header_deadline: Duration,
    /// Longest time to fetch a whole manifest (a few KiB).
    pub text_deadline: Duration,
    /// An image body must bring at least `min_bytes` per `window`, or the attempt is dropped
    /// (what arrived is kept and resumed): a trickle of bytes, each within the per-read
    /// timeout, would otherwise hold a run forever.
    pub min_bytes: u64,
    pub window: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Self::with_timeouts(Duration::from_secs(10), Duration::from_secs(30))
    }

    /// `connect`: to establish a connection; `stall`: longest wait for any bytes.
    pub fn with_timeouts(connect: Duration, stall: Duration) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(connect)
            .timeout_read(stall)
            .timeout_write(stall)
            .redirects(5)
            .user_agent(concat!("kvmprov/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent,
            attempts: 4,
            backoff: Duration::from_secs(1),
            // Generous for any real mirror: headers come in milliseconds, and 64 KiB per 30 s
            // is ~2 KiB/s, far below a usable link.
            header_deadline: Duration::from_secs(60),
            text_deadline: Duration::from_secs(120),
            min_bytes: 64 * 1024,
            window: Duration::from_secs(30),
        }
    }

    /// Run `f` until it succeeds, fails for good, or the attempts are used up. `url` is only
    /// named in the log, redacted.
    fn retry<T>(
        &self,
        url: &str,
        mut f: impl FnMut() -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let mut delay = self.backoff;
        let mut attempt = 1;
        loop {
            match f() {
                Err(e) if e.transient() && attempt < self.attempts => {
                    tracing::warn!(
                        "{}: {e}; retrying in {:.1}s ({attempt}/{})",
                        redact_url(url),
                        delay.as_secs_f64(),
                        self.attempts
                    );
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Send a GET and wait for the response headers, at most `header_deadline`.
    /// `whole` bounds the body too (small documents).
    fn request(
        &self,
        url: &str,
        headers: &[(&str, String)],
        whole: Option<Duration>,
    ) -> Result<ureq::Response, ImageError> {
        let mut req = self.agent.get(url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        if let Some(d) = whole {
            req = req.timeout(d);
        }
        // ureq bounds each read, not the header phase as a whole: call on a thread and stop
        // waiting at the deadline. A thread left behind ends when its connection does.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(req.call());
        });
        let result = rx
            .recv_timeout(self.header_deadline)
            .map_err(|_| ImageError::NoHeaders {
                url: redact_url(url),
                seconds: self.header_deadline.as_secs(),
            })?;
        match result {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, _)) => Err(ImageError::Status {
                url: redact_url(url),
                status,
            }),
            Err(ureq::Error::Transport(t)) => Err(ImageError::Transport {
                url: redact_url(url),
                transient: transient_kind(t.kind()) && !is_tls(&t),
                detail: transport_detail(&t),
            }),
        }
    }

    /// A small text document (manifest): `http(s)://` or `file://`.
    pub fn get_text(&self, url: &str) -> Result<String, ImageError> {
        if let Some(path) = url::local_path(url) {
            return fs::read_to_string(path).map_err(io_err(Path::new(path)));
        }
        self.retry(url, || {
            let resp = self.request(url, &[], Some(self.text_deadline))?;
            let mut text = String::new();
            resp.into_reader()
                .take(16 * 1024 * 1024)
                .read_to_string(&mut text)
                .map_err(|e| ImageError::Transport {
                    url: redact_url(url),
                    detail: format!("reading the document: {e}"),
                    transient: true,
                })?;
            Ok(text)
        })
    }
}

/// Worth retrying: the network may recover. A bad URL, a redirect loop, a malformed response or
/// a TLS failure will not, and retrying them only delays the error.
fn transient_kind(kind: ureq::ErrorKind) -> bool {
    use ureq::ErrorKind as K;
    matches!(kind, K::Dns | K::ConnectionFailed | K::Io | K::ProxyConnect)
}

/// ureq reports a failed TLS handshake as a failed connection; it is not one a retry fixes
/// (wrong certificate, not a TLS server).
fn is_tls(t: &ureq::Transport) -> bool {
    t.message()
        .is_some_and(|m| m.to_ascii_lowercase().contains("tls"))
}

fn transport_detail(t: &ureq::Transport) -> String {
    use ureq::ErrorKind as K;
    if is_tls(t) {
        return match std::error::Error::source(t) {
            Some(s) => format!("TLS handshake failed: {s}"),
            None => "TLS handshake failed".to_string(),
        };
    }
    let kind = match t.kind() {
        K::Dns => "DNS lookup failed",
        K::ConnectionFailed => "connection failed",
        K::TooManyRedirects => "too many redirects",
        K::InvalidUrl | K::UnknownScheme => "invalid URL",
        K::Io => "I/O error (timeout or connection reset)",
        K::InsecureRequestHttpsOnly => "refused to send an https-only request over http",
        K::BadStatus | K::BadHeader => "malformed HTTP response",
        K::InvalidProxyUrl | K::ProxyConnect | K::ProxyUnauthorized => "proxy error",
        _ => "transport error",
    };
    match t.message() {
        Some(m) => format!("{kind}: {m}"),
        None => match std::error::Error::source(t) {
            Some(s) => format!("{kind}: {s}"),
            None => kind.to_string(),
        },
    }
}

/// The last segment of a URL's path (never its query: a token must not name a cache file).
fn file_name_of(url: &str) -> Result<&str, ImageError> {
    url::path_of(url)
        .and_then(|path| path.rsplit('/').next())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| {
            ImageError::Invalid(format!("{} does not end in a file name", redact_url(url)))
        })
}

/// `debian-12-genericcloud-amd64.qcow2` + digest → `debian-12-genericcloud-amd64-<16 hex>.qcow2`.
pub fn cache_file_name(image_file: &str, sha512: &str) -> String {
    let short = &sha512[..16.min(sha512.len())];
    match image_file.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}-{short}.{ext}"),
        None => format!("{image_file}-{short}"),
    }
}

/// Find out what `latest` is: URL, digest and version.
///
/// Trust: the configured checksum manifest is the only authority for a digest. The JSON manifest
/// beside the image may pin `latest` to its dated build (closing the race between the image and
/// `SHA512SUMS` under `latest/`), but its digest counts only when the configured `SHA512SUMS`,
/// or the dated directory's one at the same place, lists it: whoever controls the image host
/// must not control what is "verified".
pub fn resolve(client: &Client, entry: &CatalogEntry) -> Result<Resolved, ImageError> {
    let image_file = file_name_of(&entry.image_url)?.to_string();
    if let Some(sum) = &entry.pinned_sha512 {
        let sha512 = sum.to_ascii_lowercase();
        return Ok(Resolved {
            image_name: entry.image_name.clone(),
            download_url: entry.image_url.clone(),
            file_name: cache_file_name(&image_file, &sha512),
            sha512,
            version: None,
            source: "pinned".into(),
        });
    }
    let manifest_url = &entry.checksum_manifest_url;
    let sums = client.get_text(manifest_url)?;
    let listed = match parse_sha512sums(&sums, &image_file) {
        Ok(sum) => Some(sum),
        Err(ManifestError::Missing { .. }) => None,
        Err(source) => {
            return Err(ImageError::Manifest {
                url: redact_url(manifest_url),
                source,
            })
        }
    };

    if let Some((json_url, pin)) = json_pin(client, &entry.image_url)? {
        confirm_pin(
            client,
            manifest_url,
            &image_file,
            listed.as_deref(),
            &json_url,
            &pin,
        )?;
        return Ok(Resolved {
            image_name: entry.image_name.clone(),
            download_url: dated_url(&entry.image_url, &pin.dated_ref)?,
            file_name: cache_file_name(&image_file, &pin.sha512),
            sha512: pin.sha512,
            version: pin.version,
            source: "json-manifest".into(),
        });
    }

    let sha512 = listed.ok_or_else(|| ImageError::Manifest {
        url: redact_url(manifest_url),
        source: ManifestError::Missing {
            file: image_file.clone(),
        },
    })?;
    Ok(Resolved {
        image_name: entry.image_name.clone(),
        download_url: entry.image_url.clone(),
        file_name: cache_file_name(&image_file, &sha512),
        sha512,
        version: None,
        source: "sha512sums".into(),
    })
}

/// The JSON manifest's digest must be confirmed by the configured manifest: its `latest/` line
/// for the image (`listed`), or — `latest` moved between our requests — the line for the dated
/// file in the dated directory's `SHA512SUMS` on the configured manifest's host, never the
/// image host's. That dated file must be a build of the same image in the same suite: the JSON
/// manifest may not swap in another variant or release that Debian happens to list.
fn confirm_pin(
    client: &Client,
    manifest_url: &str,
    image_file: &str,
    listed: Option<&str>,
    json_url: &str,
    pin: &manifest::JsonPin,
) -> Result<(), ImageError> {
    if listed == Some(pin.sha512.as_str()) {
        return Ok(());
    }
    let dated_file = pin.dated_ref.rsplit('/').next().unwrap_or(&pin.dated_ref);
    let configured = format!(
        "the configured checksum manifest {} lists {} for {image_file}",
        redact_url(manifest_url),
        listed.map_or_else(|| "no digest".to_string(), |l| format!("sha512 {l}"))
    );
    let refuse = |dated: Option<(&str, Option<&str>)>| ImageError::Unconfirmed {
        json_url: redact_url(json_url),
        json_sha512: pin.sha512.clone(),
        file: dated_file.to_string(),
        listings: match dated {
            None => configured.clone(),
            Some((url, listed)) => format!(
                "{configured} and {} lists {} for it",
                redact_url(url),
                listed.map_or_else(|| "no digest".to_string(), |l| format!("sha512 {l}"))
            ),
        },
    };
    let dated_sums = dated_sums_url(manifest_url, &pin.dated_ref)
        .filter(|_| is_build_of(dated_file, image_file));
    let Some(dated_sums) = dated_sums else {
        return Err(refuse(None));
    };
    let text = match client.get_text(&dated_sums) {
        Ok(t) => t,
        // No such dated directory where the configured manifest lives: nothing confirms it.
        Err(ImageError::Status {
            status: 404 | 410, ..
        }) => return Err(refuse(Some((&dated_sums, None)))),
        Err(e) => return Err(e),
    };
    match parse_sha512sums(&text, dated_file) {
        Ok(sum) if sum == pin.sha512 => {
            tracing::info!(
                "{} moved while it was read; {} confirms the dated build {dated_file}",
                redact_url(manifest_url),
                redact_url(&dated_sums)
            );
            Ok(())
        }
        Ok(sum) => Err(refuse(Some((&dated_sums, Some(&sum))))),
        Err(ManifestError::Missing { .. }) => Err(refuse(Some((&dated_sums, None)))),
        Err(source) => Err(ImageError::Manifest {
            url: redact_url(&dated_sums),
            source,
        }),
    }
}

/// `<dir>/<stem>.json` beside an http(s) image URL and what it says, if the server has one
/// (404: none).
fn json_pin(
    client: &Client,
    image_url: &str,
) -> Result<Option<(String, manifest::JsonPin)>, ImageError> {
    if !image_url.starts_with("http://") && !image_url.starts_with("https://") {
        return Ok(None);
    }
    let (base, query) = url::split_query(image_url);
    let Some((dir, file)) = base.rsplit_once('/') else {
        return Ok(None);
    };
    let stem = file.rsplit_once('.').map(|(s, _)| s).unwrap_or(file);
    let url = format!("{dir}/{stem}.json{query}");
    match client.get_text(&url) {
        Ok(text) => match parse_json_manifest(&text) {
            Ok(pin) => Ok(Some((url, pin))),
            Err(source) => Err(ImageError::Manifest {
                url: redact_url(&url),
                source,
            }),
        },
        Err(ImageError::Status {
            status: 404 | 410, ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `…/<base>/<suite>/latest/<file>` with `dated_ref` (relative to `<base>`) → `…/<base>/<dated_ref>`.
fn replace_suite_latest(url: &str, dated_ref: &str) -> Option<String> {
    let (base, query) = url::split_query(url);
    let mut parts: Vec<&str> = base.split('/').collect();
    // scheme:, "", host, at least one base segment, suite, latest, file.
    if parts.len() < 6 {
        return None;
    }
    parts.truncate(parts.len() - 3);
    Some(format!("{}/{dated_ref}{query}", parts.join("/")))
}

/// The dated URL: `data.ref` is relative to the directory holding `<suite>/latest/`.
fn dated_url(image_url: &str, dated_ref: &str) -> Result<String, ImageError> {
    replace_suite_latest(image_url, dated_ref).ok_or_else(|| {
        ImageError::Invalid(format!(
            "{} is not laid out as <base>/<suite>/latest/<file>",
            redact_url(image_url)
        ))
    })
}

/// The dated build's `SHA512SUMS` at the same place as the configured manifest:
/// `https://h/images/cloud/bookworm/latest/SHA512SUMS` and `bookworm/20250210-2019/…` →
/// `https://h/images/cloud/bookworm/20250210-2019/SHA512SUMS`. `None` when the configured
/// manifest is not a `<suite>/latest/` one, or the dated build is of another suite.
fn dated_sums_url(manifest_url: &str, dated_ref: &str) -> Option<String> {
    let (base, _) = url::split_query(manifest_url);
    let mut segments = base.rsplit('/');
    let name = segments.next()?;
    if segments.next() != Some("latest") {
        return None;
    }
    let suite = segments.next()?;
    let (dated_dir, _) = dated_ref.rsplit_once('/')?;
    if dated_dir.split('/').next() != Some(suite) {
        return None;
    }
    replace_suite_latest(manifest_url, &format!("{dated_dir}/{name}"))
}

/// `debian-12-genericcloud-amd64-20250210-2019.qcow2` is a build of
/// `debian-12-genericcloud-amd64.qcow2`: the same stem and extension around a version.
fn is_build_of(dated_file: &str, image_file: &str) -> bool {
    let (stem, ext) = image_file.rsplit_once('.').unwrap_or((image_file, ""));
    dated_file
        .strip_prefix(stem)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_suffix(ext))
        .is_some_and(|version| version.len() > 1 && version.ends_with('.'))
}

/// A `Write` sink that SHA-512-hashes what it is given (re-hashing a remote copy as it streams).
#[derive(Default)]
pub struct Sha512Writer(Sha512);

impl Sha512Writer {
    pub fn hex(self) -> String {
        hex(&self.0.finalize())
    }
}

impl std::io::Write for Sha512Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The sidecar of a cached image: `<file>.json`.
pub fn sidecar_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn part_path(cache_dir: &Path, file_name: &str) -> PathBuf {
    cache_dir.join(format!("{file_name}.part"))
}

fn part_meta_path(cache_dir: &Path, file_name: &str) -> PathBuf {
    cache_dir.join(format!("{file_name}.part.json"))
}

/// Is this version cached? Only `stat`s: the file and its sidecar exist and the size matches.
pub fn lookup(cache_dir: &Path, resolved: &Resolved) -> Result<Option<CachedImage>, ImageError> {
    let path = cache_dir.join(&resolved.file_name);
    let Some(cached) = read_sidecar(&path)? else {
        return Ok(None);
    };
    match fs::metadata(&path) {
        Ok(m) if m.len() == cached.size && cached.sha512 == resolved.sha512 => Ok(Some(cached)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn read_sidecar(image: &Path) -> Result<Option<CachedImage>, ImageError> {
    let side = sidecar_path(image);
    let text = match fs::read_to_string(&side) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&side)(e)),
    };
    match serde_json::from_str::<CachedImage>(&text) {
        // A damaged sidecar (a truncated digest) is no proof of anything: not cached.
        Ok(c) if !is_sha512_hex(&c.sha512) => {
            tracing::warn!(
                "ignoring sidecar {}: its sha512 is not 128 hex digits",
                side.display()
            );
            Ok(None)
        }
        Ok(mut c) => {
            c.path = image.to_path_buf();
            // Sidecars written before URLs were redacted may still hold a secret.
            c.url = redact_url(&c.url);
            Ok(Some(c))
        }
        Err(e) => {
            tracing::warn!("ignoring unreadable sidecar {}: {e}", side.display());
            Ok(None)
        }
    }
}

/// Every cached image (by sidecar), newest first.
pub fn list_cached(cache_dir: &Path) -> Result<Vec<CachedImage>, ImageError> {
    let entries = match fs::read_dir(cache_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(cache_dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(cache_dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".json")
            || name.ends_with(".part")
            || name.ends_with(".lock")
            || name.ends_with(".tmp")
        {
            continue;
        }
        if let Some(c) = read_sidecar(&path)? {
            if path.is_file() {
                out.push(c);
            }
        }
    }
    out.sort_by(|a, b| {
        let t = |c: &CachedImage| c.cached_at.parse::<u128>().unwrap_or(0);
        t(b).cmp(&t(a)).then_with(|| a.path.cmp(&b.path))
    });
    Ok(out)
}

/// The newest cached version of `image_name`.
pub fn newest_cached(
    cache_dir: &Path,
    image_name: &str,
) -> Result<Option<CachedImage>, ImageError> {
    Ok(list_cached(cache_dir)?
        .into_iter()
        .find(|c| c.image_name == image_name))
}

fn is_sha512_hex(s: &str) -> bool {
    s.len() == 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Re-hash a file and compare.
pub fn verify(path: &Path, sha512: &str) -> Result<(), ImageError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha512::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let actual = hex(&h.finalize());
    if actual != sha512 {
        return Err(ImageError::DigestMismatch {
            url: path.display().to_string(),
            expected: sha512.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Move a damaged file (and its sidecar) aside; never delete it silently.
pub fn quarantine(path: &Path) -> Result<PathBuf, ImageError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{stamp}"));
    let aside = PathBuf::from(aside);
    fs::rename(path, &aside).map_err(io_err(path))?;
    let side = sidecar_path(path);
    if side.exists() {
        fs::remove_file(&side).map_err(io_err(&side))?;
    }
    Ok(aside)
}

/// What we remember about a partial download, to resume it safely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartMeta {
    /// Redacted: compared with the redacted download URL, never shown with its secrets.
    url: String,
    sha512: String,
    validator: Option<String>,
}

/// The cache-wide lock file: a run holds it shared while it uses cached images, prune holds it
/// exclusively while it deletes.
const CACHE_LOCK: &str = ".kvmprov-cache.lock";
/// Longest wait for a prune to release the cache: it decides in seconds.
const PRUNE_WAIT: Duration = Duration::from_secs(60);

/// An advisory lock (`flock`) on a file in the cache; released when dropped.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Open a lock file, never through a symlink someone planted in the cache directory.
    fn open(path: &Path) -> Result<File, ImageError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err(path))
    }

    /// For a run that uses cached images: waits while a prune deletes, at most `PRUNE_WAIT`
    /// (a prune stuck on an unreachable hypervisor must not hold a run forever).
    pub fn shared(cache_dir: &Path) -> Result<CacheLock, ImageError> {
        let wait = PRUNE_WAIT;
        fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
        let path = cache_dir.join(CACHE_LOCK);
        let file = Self::open(&path)?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock_shared() {
                Ok(()) => return Ok(CacheLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(ImageError::CacheBusy {
                        path,
                        seconds: wait.as_secs(),
                    })
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
        }
    }

    /// For prune: the whole cache, or `None` while any run uses it (a run may be between its
    /// download and its use of a version).
    pub fn try_exclusive(cache_dir: &Path) -> Result<Option<CacheLock>, ImageError> {
        fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
        let path = cache_dir.join(CACHE_LOCK);
        let file = Self::open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(CacheLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }

    /// One writer per cache file: waits for another run writing the same version.
    fn writer(cache_dir: &Path, file_name: &str) -> Result<CacheLock, ImageError> {
        let path = writer_lock_path(cache_dir, file_name);
        let file = Self::open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!("another run is downloading {file_name}; waiting for it");
                // No deadline of our own: the other writer's download is bounded by its client's.
                file.lock().map_err(io_err(&path))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        Ok(CacheLock { _file: file })
    }
}

/// The lock file of one cache file's writer: `.<file>.lock` (hidden, like the cache's own lock:
/// listings of the cache show images, sidecars and parts).
pub fn writer_lock_path(cache_dir: &Path, file_name: &str) -> PathBuf {
    cache_dir.join(format!(".{file_name}.lock"))
}

/// Download, verify and cache one image. Resumes a `.part` left by an earlier attempt.
/// Another run downloading the same version is waited for, and its finished file is used.
pub fn download(
    client: &Client,
    cache_dir: &Path,
    resolved: &Resolved,
    progress: &mut dyn Progress,
) -> Result<CachedImage, ImageError> {
    // Shared: a prune deletes nothing while this version is being written.
    let _cache = CacheLock::shared(cache_dir)?;
    // The part file keeps its name (the next run resumes it), so only one run may write it.
    let _writer = CacheLock::writer(cache_dir, &resolved.file_name)?;
    if let Some(done) = lookup(cache_dir, resolved)? {
        return Ok(done);
    }
    let url = resolved.download_url.as_str();
    let part = part_path(cache_dir, &resolved.file_name);
    let meta_path = part_meta_path(cache_dir, &resolved.file_name);
    let discard = || {
        let _ = fs::remove_file(&part);
        let _ = fs::remove_file(&meta_path);
    };
    let result = client.retry(url, || {
        fetch_into(client, &part, &meta_path, resolved, progress)
    });
    progress.finish();
    let (size, actual) = match result {
        Ok(r) => r,
        Err(e) => {
            if !e.transient() {
                // Bad bytes or a refused request: nothing here is worth resuming.
                discard();
            }
            return Err(e);
        }
    };
    if actual != resolved.sha512 {
        discard();
        return Err(ImageError::DigestMismatch {
            url: redact_url(url),
            expected: resolved.sha512.clone(),
            actual,
        });
    }
    // Before the rename: what is not a qcow2 never enters the cache, so never becomes the base
    // of an overlay.
    match qcow2::read_header(&part) {
        Ok(_) => {}
        Err(qcow2::Qcow2Error::Invalid { problem, .. }) => {
            discard();
            return Err(ImageError::NotQcow2 {
                url: redact_url(url),
                problem,
            });
        }
        Err(qcow2::Qcow2Error::Io { path, source }) => return Err(ImageError::Io { path, source }),
    }
    let final_path = cache_dir.join(&resolved.file_name);
    let cached = CachedImage {
        image_name: resolved.image_name.clone(),
        path: final_path.clone(),
        sha512: resolved.sha512.clone(),
        size,
        version: resolved.version.clone(),
        url: redact_url(url),
        cached_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            .to_string(),
    };
    // Sidecar first, then the image under its final name: a kill in between leaves a sidecar
    // without image (ignored by lookup), never an image without its record.
    write_atomic(
        &sidecar_path(&final_path),
        serde_json::to_string_pretty(&cached)
            .map_err(|e| ImageError::Invalid(e.to_string()))?
            .as_bytes(),
    )?;
    fs::rename(&part, &final_path).map_err(io_err(&final_path))?;
    let _ = fs::remove_file(&meta_path);
    Ok(cached)
}

/// Write a file under a temporary name unique to this writer, then rename it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Where an attempt's bytes come from: the HTTP response, or the local file of a `file://` URL.
struct Body {
    reader: Box<dyn Read>,
    /// Bytes still to come, if known.
    length: Option<u64>,
    /// The part file is continued (the server answered the Range request).
    appending: bool,
    validator: Option<String>,
}

/// Open the body of one attempt, asking for the rest of the part file when it can be proven
/// to be the same file.
fn open_body(
    client: &Client,
    part: &Path,
    meta_path: &Path,
    resolved: &Resolved,
) -> Result<Body, ImageError> {
    let url = resolved.download_url.as_str();
    if let Some(path) = url::local_path(url) {
        // A local copy is read whole (no validator, so never resumed): it is fast.
        let path = Path::new(path);
        let file = File::open(path).map_err(io_err(path))?;
        let length = file.metadata().map_err(io_err(path))?.len();
        return Ok(Body {
            reader: Box::new(file),
            length: Some(length),
            appending: false,
            validator: None,
        });
    }
    let meta: Option<PartMeta> = fs::read_to_string(meta_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    // Resume only what we can prove is the same file: same URL, digest and a validator.
    let resumable = match &meta {
        Some(m) if have > 0 => {
            m.url == redact_url(url) && m.sha512 == resolved.sha512 && m.validator.is_some()
        }
        _ => false,
    };
    let mut headers = Vec::new();
    if resumable {
        headers.push(("Range", format!("bytes={have}-")));
        if let Some(v) = meta.as_ref().and_then(|m| m.validator.clone()) {
            headers.push(("If-Range", v));
        }
    }
    let resp = match client.request(url, &headers, None) {
        // The part already holds every byte.
        Err(ImageError::Status { status: 416, .. }) if resumable => {
            fs::remove_file(part).map_err(io_err(part))?;
            return Err(ImageError::Truncated {
                url: redact_url(url),
                got: 0,
                expected: have,
            });
        }
        other => other?,
    };
    let validator = resp
        .header("ETag")
        .or_else(|| resp.header("Last-Modified"))
        .map(String::from);
    Ok(Body {
        appending: resumable && resp.status() == 206,
        length: resp.header("Content-Length").and_then(|v| v.parse().ok()),
        validator,
        reader: Box::new(resp.into_reader()),
    })
}

/// One attempt: continue the part file (hashing what it has first), stream the rest into it.
/// Returns the total size and the digest of the whole file.
fn fetch_into(
    client: &Client,
    part: &Path,
    meta_path: &Path,
    resolved: &Resolved,
    progress: &mut dyn Progress,
) -> Result<(u64, String), ImageError> {
    let url = resolved.download_url.as_str();
    let Body {
        reader,
        length,
        appending,
        validator,
    } = open_body(client, part, meta_path, resolved)?;
    let start = if appending {
        fs::metadata(part).map_err(io_err(part))?.len()
    } else {
        0
    };
    write_atomic(
        meta_path,
        serde_json::to_string(&PartMeta {
            url: redact_url(url),
            sha512: resolved.sha512.clone(),
            validator,
        })
        .map_err(|e| ImageError::Invalid(e.to_string()))?
        .as_bytes(),
    )?;

    let mut hasher = Sha512::new();
    let mut file = if appending {
        // Hash what we already have, then append.
        let mut f = File::open(part).map_err(io_err(part))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = f.read(&mut buf).map_err(io_err(part))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        OpenOptions::new()
            .append(true)
            .open(part)
            .map_err(io_err(part))?
    } else {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(part)
            .map_err(io_err(part))?
    };
    progress.start(length.map(|l| l + start), start);
    // Network reads on this thread; SHA-512 and the file write on another, so they overlap
    // (on two cores that is what keeps up with `curl | sha512sum`). The writer syncs the file
    // whatever happens, so a failed attempt leaves all it received for the next one.
    // Buffers go round between the two threads (fresh 1 MiB allocations each time would cost
    // a page fault per 4 KiB).
    const BUFFERS: usize = 4;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    let (spare_tx, spare_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        let _ = spare_tx.send(vec![0u8; CHUNK]);
    }
    let (received, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<Sha512> {
            let mut result = Ok(());
            for chunk in rx {
                result = file.write_all(&chunk);
                if result.is_err() {
                    break;
                }
                hasher.update(&chunk);
                let _ = spare_tx.send(chunk);
            }
            let synced = file.sync_all();
            result.and(synced).map(|()| hasher)
        });
        let received = receive(
            client,
            reader,
            length.is_some(),
            url,
            start,
            progress,
            &tx,
            &spare_rx,
        );
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
        (received, written)
    });
    let hasher = written.map_err(io_err(part))?;
    let got = received?;
    if let Some(expected) = length {
        if got < expected {
            return Err(ImageError::Truncated {
                url: redact_url(url),
                got: start + got,
                expected: start + expected,
            });
        }
    }
    Ok((start + got, hex(&hasher.finalize())))
}

/// Read the body in chunks and hand them to the writer, enforcing the minimum rate.
/// Returns the body bytes received. Stops early (`Ok`) when the writer has gone: its error
/// is the one to report.
#[allow(clippy::too_many_arguments)]
fn receive(
    client: &Client,
    mut reader: Box<dyn Read>,
    length_known: bool,
    url: &str,
    start: u64,
    progress: &mut dyn Progress,
    tx: &std::sync::mpsc::SyncSender<Vec<u8>>,
    spare: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<u64, ImageError> {
    let mut got: u64 = 0;
    let mut window_start = Instant::now();
    let mut window_bytes: u64 = 0;
    // No spare buffer: the writer has stopped, and its error is the one to report.
    while let Ok(mut buf) = spare.recv() {
        // Fill a whole chunk (socket reads return less): fewer, larger hand-offs.
        buf.resize(CHUNK, 0);
        let mut n = 0;
        let mut failure = None;
        let mut ended = false;
        while n < CHUNK {
            match reader.read(&mut buf[n..]) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // ureq knows the Content-Length: a body that ends early is a truncation.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && length_known => {
                    ended = true;
                    break;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            // A trickle must not sit in a half-full buffer past the rate check.
            if window_start.elapsed() >= client.window {
                break;
            }
        }
        buf.truncate(n);
        if n > 0 && tx.send(buf).is_err() {
            break;
        }
        got += n as u64;
        progress.advance(n as u64);
        window_bytes += n as u64;
        let spent = window_start.elapsed();
        if spent >= client.window {
            if window_bytes < client.min_bytes {
                return Err(ImageError::TooSlow {
                    url: redact_url(url),
                    bytes: window_bytes,
                    seconds: spent.as_secs(),
                    min: client.min_bytes,
                    got: start + got,
                });
            }
            window_start = Instant::now();
            window_bytes = 0;
        }
        if let Some(e) = failure {
            return Err(ImageError::Transport {
                url: redact_url(url),
                detail: format!("reading the body after {} bytes: {e}", start + got),
                transient: true,
            });
        }
        if ended {
            break;
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_carry_the_digest() {
        assert_eq!(
            cache_file_name("debian-12-genericcloud-amd64.qcow2", &"ab".repeat(64)),
            "debian-12-genericcloud-amd64-abababababababab.qcow2"
        );
    }

    #[test]
    fn dated_sums_sit_beside_the_configured_manifest() {
        let sums = "https://h/images/cloud/bookworm/latest/SHA512SUMS";
        let dated = "bookworm/20250210-2019/debian-12-genericcloud-amd64-20250210-2019.qcow2";
        assert_eq!(
            dated_sums_url(sums, dated).as_deref(),
            Some("https://h/images/cloud/bookworm/20250210-2019/SHA512SUMS")
        );
        // Another suite, or a manifest outside a `latest/` directory: no dated manifest.
        assert_eq!(dated_sums_url(sums, "trixie/20250814-2204/x.qcow2"), None);
        assert_eq!(dated_sums_url("file:///srv/SHA512SUMS", dated), None);
        let image = "debian-12-genericcloud-amd64.qcow2";
        assert!(is_build_of(
            "debian-12-genericcloud-amd64-20250210-2019.qcow2",
            image
        ));
        assert!(!is_build_of(
            "debian-12-nocloud-amd64-20250210-2019.qcow2",
            image
        ));
        assert!(!is_build_of(
            "debian-12-genericcloud-amd64-20250210-2019.raw",
            image
        ));
        assert!(!is_build_of(image, image));
    }

    #[test]
    fn dated_url_replaces_suite_latest_file() {
        assert_eq!(
            dated_url(
                "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
                "bookworm/20241004-1890/debian-12-genericcloud-amd64-20241004-1890.qcow2"
            )
            .unwrap(),
            "https://cloud.debian.org/images/cloud/bookworm/20241004-1890/debian-12-genericcloud-amd64-20241004-1890.qcow2"
        );
    }
}
