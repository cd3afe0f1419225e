//! Download one image into the cache: streamed into a `.part` file, SHA-512 hashed while it is
//! written (on a second thread), resumed with `Range` after an interruption, checked to be a
//! qcow2 and renamed into place only when the digest matches.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::cache::{lookup, sidecar_path};
use crate::digest::hex;
use crate::error::{io_err, ImageError};
use crate::lock::CacheLock;
use crate::url::{self, redact_url};
use crate::{qcow2, CachedImage, Client, Resolved};

/// Bytes read per chunk while streaming.
pub(crate) const CHUNK: usize = 1024 * 1024;

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

fn part_path(cache_dir: &Path, file_name: &str) -> PathBuf {
    cache_dir.join(format!("{file_name}.part"))
}

fn part_meta_path(cache_dir: &Path, file_name: &str) -> PathBuf {
    cache_dir.join(format!("{file_name}.part.json"))
}

/// What we remember about a partial download, to resume it safely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartMeta {
    /// Redacted: compared with the redacted download URL, never shown with its secrets.
    url: String,
    sha512: String,
    validator: Option<String>,
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
