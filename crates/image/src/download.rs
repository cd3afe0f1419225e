//! Download one image into the cache: streamed into a `.part` file and SHA-512 hashed in the
//! same pass (network reads, file writes and hashing each on a thread of their own), resumed
//! with `Range` after an interruption, checked to be a qcow2 and renamed into place only when
//! the digest matches.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kvmprov_safefs::Dir;
use serde::{Deserialize, Serialize};

use crate::cache::{lookup_in, open_cache_dir, sidecar_name};
use crate::digest::{hash_reader, Sha512, CHUNK};
use crate::error::{io_err, ImageError};
use crate::lock::CacheLock;
use crate::url::{self, redact_url};
use crate::{qcow2, CachedImage, Client, Resolved};

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

/// What we remember about a partial download, to resume it safely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartMeta {
    /// Redacted: compared with the redacted download URL, never shown with its secrets.
    url: String,
    sha512: String,
    validator: Option<String>,
}

/// The names one download uses inside the cache directory.
struct Names {
    part: String,
    meta: String,
}

/// Download, verify and cache one image. Resumes a `.part` left by an earlier attempt.
/// Another run downloading the same version is waited for, and its finished file is used.
///
/// Every file is reached through the cache directory's handle (safefs): the `.part` is created
/// with `O_EXCL|O_NOFOLLOW` or resumed only if it is a regular file of the running user, and
/// only that file, through the same handle, is renamed into place.
pub fn download(
    client: &Client,
    cache_dir: &Path,
    resolved: &Resolved,
    progress: &mut dyn Progress,
) -> Result<CachedImage, ImageError> {
    let dir = open_cache_dir(cache_dir)?;
    // Shared: a prune deletes nothing while this version is being written.
    let _cache = CacheLock::shared_in(&dir, client.lock_wait)?;
    let names = Names {
        part: format!("{}.part", resolved.file_name),
        meta: format!("{}.part.json", resolved.file_name),
    };
    // The part file keeps its name (the next run resumes it), so only one run may write it. The
    // other writer's attempt is bounded by its client's deadlines: it shows progress at least
    // once per header deadline plus rate window, or it is stuck.
    let _writer = CacheLock::writer(
        &dir,
        &resolved.file_name,
        &names.part,
        client.header_deadline + client.window,
    )?;
    if let Some(done) = lookup_in(&dir, &resolved.file_name, &resolved.sha512)? {
        return Ok(done);
    }
    let url = resolved.download_url.as_str();
    let discard = || {
        let _ = dir.remove_file(&names.part);
        let _ = dir.remove_file(&names.meta);
    };
    let result = client.retry(url, || fetch_into(client, &dir, &names, resolved, progress));
    progress.finish();
    let (size, actual, header) = match result {
        Ok(r) => r,
        Err(e) => {
            if !e.transient() {
                // Bad bytes, too many of them, or a refused request: nothing worth resuming.
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
    // of an overlay. The header was checked as it arrived (it sets the size cap); a body too
    // short to hold one is refused here.
    if let Err(problem) = header {
        discard();
        return Err(ImageError::NotQcow2 {
            url: redact_url(url),
            problem,
        });
    }
    let cached = CachedImage {
        image_name: resolved.image_name.clone(),
        path: dir.join(&resolved.file_name),
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
    dir.write_atomic(
        &sidecar_name(&resolved.file_name),
        serde_json::to_string_pretty(&cached)
            .map_err(|e| ImageError::Invalid(e.to_string()))?
            .as_bytes(),
        0o644,
    )?;
    dir.rename(&names.part, &resolved.file_name)?;
    let _ = dir.remove_file(&names.meta);
    Ok(cached)
}

/// The first bytes of a file (as many of the qcow2 header as there are), read at offset 0.
fn read_head(file: &File) -> std::io::Result<Vec<u8>> {
    let mut head = vec![0u8; HEADER_BYTES];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(n);
    Ok(head)
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

/// A `.part` that may be resumed: the running user's own regular file (opened without following
/// a link), with the record of what it is a part of.
struct Resumable {
    file: File,
    have: u64,
    meta: PartMeta,
}

/// The part file of an earlier attempt, if it can be proven to be the same download: same URL,
/// digest and a validator, and at least a qcow2 header long (the size cap is read from it).
fn resumable(
    dir: &Dir,
    names: &Names,
    resolved: &Resolved,
) -> Result<Option<Resumable>, ImageError> {
    let Some(text) = dir.read_own(&names.meta)? else {
        return Ok(None);
    };
    let Ok(meta) = serde_json::from_slice::<PartMeta>(&text) else {
        return Ok(None);
    };
    if meta.url != redact_url(&resolved.download_url)
        || meta.sha512 != resolved.sha512
        || meta.validator.is_none()
    {
        return Ok(None);
    }
    // A link, another user's file or one others may write is refused, not resumed: an error
    // that names it (and the part is then discarded as the link, never its target).
    let Some(file) = dir.open_file(&names.part, true, true)? else {
        return Ok(None);
    };
    let have = file
        .metadata()
        .map_err(io_err(&dir.join(&names.part)))?
        .len();
    if have < HEADER_BYTES as u64 {
        return Ok(None);
    }
    Ok(Some(Resumable { file, have, meta }))
}

/// Open the body of one attempt, asking for the rest of the part file when it can be proven
/// to be the same file.
fn open_body(
    client: &Client,
    resolved: &Resolved,
    resume: Option<&Resumable>,
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
    let mut headers = Vec::new();
    if let Some(r) = resume {
        headers.push(("Range", format!("bytes={}-", r.have)));
        if let Some(v) = r.meta.validator.clone() {
            headers.push(("If-Range", v));
        }
    }
    let resp = match client.request(url, &headers, None) {
        // The part already holds every byte (or more): start again.
        Err(ImageError::Status { status: 416, .. }) if resume.is_some() => {
            return Err(ImageError::Truncated {
                url: redact_url(url),
                got: 0,
                expected: resume.map_or(0, |r| r.have),
            });
        }
        other => other?,
    };
    let validator = resp
        .header("ETag")
        .or_else(|| resp.header("Last-Modified"))
        .map(String::from);
    Ok(Body {
        appending: resume.is_some() && resp.status() == 206,
        length: resp.header("Content-Length").and_then(|v| v.parse().ok()),
        validator,
        reader: Box::new(resp.into_reader()),
    })
}

/// One attempt: continue the part file (hashing what it has first), stream the rest into it.
/// Returns the total size, the digest of the whole file and whether its header is a qcow2's.
fn fetch_into(
    client: &Client,
    dir: &Dir,
    names: &Names,
    resolved: &Resolved,
    progress: &mut dyn Progress,
) -> Result<(u64, String, Result<(), qcow2::Problem>), ImageError> {
    let url = resolved.download_url.as_str();
    let part_path = dir.join(&names.part);
    let resume = resumable(dir, names, resolved)?;
    let body = open_body(client, resolved, resume.as_ref());
    if let (Err(ImageError::Truncated { got: 0, .. }), Some(_)) = (&body, &resume) {
        // 416: what the part holds is not a prefix of this file; the next attempt starts anew.
        dir.remove_file(&names.part)?;
    }
    let Body {
        reader,
        length,
        appending,
        validator,
    } = body?;
    dir.write_atomic(
        &names.meta,
        serde_json::to_string(&PartMeta {
            url: redact_url(url),
            sha512: resolved.sha512.clone(),
            validator,
        })
        .map_err(|e| ImageError::Invalid(e.to_string()))?
        .as_bytes(),
        0o600,
    )?;

    let (start, hasher, file, head) = match resume {
        Some(r) if appending => {
            // Hash what we already have (through the checked handle), then append.
            let mut file = r.file;
            let hasher = hash_from_start(&mut file).map_err(io_err(&part_path))?;
            let head = read_head(&file).map_err(io_err(&part_path))?;
            file.seek(SeekFrom::Start(r.have))
                .map_err(io_err(&part_path))?;
            (r.have, hasher, file, Some(head))
        }
        _ => {
            // A new file that nobody can have planted: whatever had the name (an old part, or a
            // link) is removed as a name first, never followed.
            dir.remove_file(&names.part)?;
            let file = dir.create_new(&names.part, 0o644)?;
            (0, Sha512::default(), file, None)
        }
    };
    let mut limit = Limit::new(dir, url, start, length, head)?;
    progress.start(length.map(|l| l + start), start);
    let (received, written) = pipeline(file, hasher, |tx, spare| {
        receive(
            client,
            reader,
            length.is_some(),
            url,
            start,
            &mut limit,
            progress,
            tx,
            spare,
        )
    });
    // The body's own error (too large, not a qcow2) explains a writer that stopped because the
    // reader did.
    let got = received?;
    let hasher = written.map_err(io_err(&part_path))?;
    if let Some(expected) = length {
        if got < expected {
            return Err(ImageError::Truncated {
                url: redact_url(url),
                got: start + got,
                expected: start + expected,
            });
        }
    }
    Ok((start + got, hasher.hex(), limit.header()))
}

/// Hash a whole file from its start, through its handle.
fn hash_from_start(file: &mut File) -> std::io::Result<Sha512> {
    file.seek(SeekFrom::Start(0))?;
    hash_reader(file)
}

/// The qcow2 header fields kvmprov reads (magic, version, virtual size) are in its first 32 bytes.
const HEADER_BYTES: usize = 32;

/// Fixed room for a qcow2's own metadata beyond the share that grows with its size: the header
/// cluster, L1 and refcount tables of a tiny image with 2 MiB clusters.
const QCOW2_SLACK: u64 = 32 << 20;
/// Free space left untouched on the cache's filesystem.
const FREE_RESERVE: u64 = 64 << 20;
/// The free space is looked at again after every this many bytes.
const SPACE_EVERY: u64 = 256 << 20;

/// The most bytes a qcow2 of this header's virtual size can hold: the data itself plus its
/// metadata (L2 entries of 8 or 16 bytes and refcounts of up to 8 bytes per cluster, at least
/// 512 bytes each: under 1/8 of the data) plus fixed room. Internal snapshots are not counted:
/// a cloud image has none.
fn qcow2_size_bound(virtual_size: u64) -> u64 {
    virtual_size
        .saturating_add(virtual_size / 8)
        .saturating_add(QCOW2_SLACK)
}

/// How many bytes the body may bring, and the free-space checks: known once the first bytes
/// (the qcow2 header) are in, bounded by the free space before and during the write.
struct Limit<'a> {
    dir: &'a Dir,
    url: &'a str,
    /// Total file size allowed (`u64::MAX` until the header is read).
    max: u64,
    why: String,
    /// The header's bytes while it is incomplete; `None` once it is parsed.
    head: Option<Vec<u8>>,
    /// The whole file's size if the server said it.
    total: Option<u64>,
    /// Total size at which free space is looked at next.
    next_space_check: u64,
}

impl<'a> Limit<'a> {
    fn new(
        dir: &'a Dir,
        url: &'a str,
        start: u64,
        length: Option<u64>,
        head: Option<Vec<u8>>,
    ) -> Result<Limit<'a>, ImageError> {
        let mut limit = Limit {
            dir,
            url,
            max: u64::MAX,
            why: String::new(),
            head: Some(Vec::new()),
            total: length.map(|l| start + l),
            next_space_check: start,
        };
        if let Some(head) = head {
            limit.take_head(&head, start)?;
        }
        // Before a byte is written: room for what the server says is coming.
        limit.check_space(start)?;
        Ok(limit)
    }

    /// Collect the header from the first bytes; once complete, set the cap from it.
    fn take_head(&mut self, bytes: &[u8], total: u64) -> Result<(), ImageError> {
        let Some(head) = self.head.as_mut() else {
            return Ok(());
        };
        let want = HEADER_BYTES - head.len();
        head.extend_from_slice(&bytes[..want.min(bytes.len())]);
        if head.len() < HEADER_BYTES {
            return Ok(());
        }
        let header = qcow2::parse_header(head).map_err(|problem| ImageError::NotQcow2 {
            url: redact_url(self.url),
            problem,
        })?;
        self.head = None;
        self.max = qcow2_size_bound(header.size);
        self.why = format!(
            "a qcow2 of the virtual size its header states ({} bytes) can hold",
            header.size
        );
        match self.total {
            Some(t) if t > self.max => Err(self.too_large(t.max(total))),
            _ => Ok(()),
        }
    }

    /// The header, once the whole body is in: a body shorter than a header is no qcow2.
    fn header(&self) -> Result<(), qcow2::Problem> {
        match &self.head {
            None => Ok(()),
            Some(head) => qcow2::parse_header(head).map(|_| ()),
        }
    }

    fn too_large(&self, got: u64) -> ImageError {
        ImageError::TooLarge {
            url: redact_url(self.url),
            got,
            limit: self.max,
            why: self.why.clone(),
        }
    }

    /// Room for the rest of the file (when its size is known) and the reserve, at `total` bytes.
    fn check_space(&mut self, total: u64) -> Result<(), ImageError> {
        let available = available_bytes(self.dir)?;
        let rest = self.total.map_or(0, |t| t.saturating_sub(total));
        let needed = rest.saturating_add(FREE_RESERVE);
        self.next_space_check = total.saturating_add(SPACE_EVERY);
        if available < needed {
            return Err(ImageError::NoSpace {
                url: redact_url(self.url),
                dir: self.dir.path().to_path_buf(),
                available,
                needed,
                why: match self.total {
                    Some(_) => format!(
                        "{rest} more bytes of the image and {FREE_RESERVE} left free on its filesystem"
                    ),
                    None => format!("{FREE_RESERVE} left free on its filesystem"),
                },
            });
        }
        Ok(())
    }

    /// The next `n` bytes (the start of `chunk`) arrive at `total` bytes so far: refuse them
    /// past the cap, read the header from them, look at the free space now and then. Cheap
    /// unless a check is due.
    fn admit(&mut self, chunk: &[u8], total: u64) -> Result<(), ImageError> {
        let after = total + chunk.len() as u64;
        if self.head.is_some() {
            self.take_head(chunk, after)?;
        }
        if after > self.max {
            return Err(self.too_large(after));
        }
        if after >= self.next_space_check {
            self.check_space(after)?;
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
fn available_bytes(dir: &Dir) -> Result<u64, ImageError> {
    use std::os::fd::AsRawFd;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: fstatvfs writes a `statvfs` into the buffer it is given and reads nothing of ours;
    // the descriptor is the directory's, open while `dir` lives.
    let rc = unsafe { libc::fstatvfs(dir.fd().as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io_err(dir.path())(std::io::Error::last_os_error()));
    }
    // SAFETY: rc == 0: the kernel filled the struct.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Chunks in flight: the memory bound (`BUFFERS` × `CHUNK`), and enough that a stall of one
/// stage (a slow socket read, a write that waits for the disk) does not stop the others at once.
const BUFFERS: usize = 6;

/// Network reads on the calling thread (`read` fills chunks from `spare` and sends them on), the
/// file write on a second thread and SHA-512 on a third, so all three overlap and a download
/// goes at the speed of the slowest of them (SHA-512), not of their sum: on two cores that is
/// what keeps up with `curl | sha512sum`, which writes no file at all.
/// The chunks go round reader → writer → hasher → reader (fresh 1 MiB allocations would cost a
/// page fault per 4 KiB). The file is synced whatever happens, so a failed attempt leaves all
/// it received for the next one. Returns what `read` returned and, once the file is synced,
/// the hasher.
fn pipeline<R>(
    mut file: File,
    mut hasher: Sha512,
    read: impl FnOnce(&SyncSender<Vec<u8>>, &Receiver<Vec<u8>>) -> R,
) -> (R, std::io::Result<Sha512>) {
    let (to_write, write_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    let (to_hash, hash_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    let (spare_tx, spare_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        let _ = spare_tx.send(vec![0u8; CHUNK]);
    }
    std::thread::scope(|scope| {
        // A stage that stops drops its ends of the channels, which stops the others in turn.
        let writer = scope.spawn(move || -> std::io::Result<()> {
            let mut result = Ok(());
            for chunk in write_rx {
                result = file.write_all(&chunk);
                start_writeback(&file);
                if result.is_err() || to_hash.send(chunk).is_err() {
                    break;
                }
            }
            let synced = file.sync_all();
            result.and(synced)
        });
        let hashing = scope.spawn(move || {
            for chunk in hash_rx {
                hasher.update(&chunk);
                let _ = spare_tx.send(chunk);
            }
            hasher
        });
        let received = read(&to_write, &spare_rx);
        drop(to_write);
        let panicked = |what| std::io::Error::other(format!("the {what} thread panicked"));
        let written = writer.join().unwrap_or_else(|_| Err(panicked("writer")));
        let hashed = hashing.join().map_err(|_| panicked("hashing"));
        (received, written.and(hashed))
    })
}

/// Ask the kernel to start writing the file's dirty pages to disk now, without waiting for
/// them: the disk then works while the download goes on, not all in the final `sync_all`
/// (which took ~1 s for 1 GiB here on an idle disk, several on a busy one). Only a hint: if it
/// fails, `sync_all` still writes everything.
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a syscall on a descriptor `file` holds open; it reads and writes no memory of ours.
    // Offset 0 and length 0 mean the whole file; pages already being written are skipped.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
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
    limit: &mut Limit,
    progress: &mut dyn Progress,
    tx: &SyncSender<Vec<u8>>,
    spare: &Receiver<Vec<u8>>,
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
        // Before it is written: bytes past the cap (or a body that is not a qcow2) go nowhere.
        limit.admit(&buf, start + got)?;
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
    use std::fs;

    /// Bytes per test chunk: small, so that debug-build hashing stays fast.
    const LEN: usize = 4096;

    /// Feed `chunks` through the pipeline the way `receive` does; returns how many were taken.
    fn feed(file: File, chunks: usize) -> (usize, std::io::Result<Sha512>) {
        pipeline(file, Sha512::default(), |tx, spare| {
            let mut sent = 0;
            for i in 0..chunks {
                let Ok(mut buf) = spare.recv() else { break };
                buf.clear();
                buf.resize(LEN, i as u8);
                if tx.send(buf).is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        })
    }

    #[test]
    fn pipeline_writes_and_hashes_every_chunk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let chunks = 3 * BUFFERS + 1;
        let (sent, hashed) = feed(File::create(&path).unwrap(), chunks);
        assert_eq!(sent, chunks);
        let written = fs::read(&path).unwrap();
        let expected: Vec<u8> = (0..chunks).flat_map(|i| vec![i as u8; LEN]).collect();
        assert!(written == expected, "the file holds the chunks in order");
        let mut whole = Sha512::default();
        whole.update(&expected);
        assert_eq!(hashed.unwrap().hex(), whole.hex());
    }

    #[test]
    fn a_failed_write_stops_the_reader_and_is_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        fs::write(&path, b"").unwrap();
        // Read-only: the first write fails.
        let (sent, hashed) = feed(File::open(&path).unwrap(), 100 * BUFFERS);
        assert!(
            sent < 100 * BUFFERS,
            "the reader went on after the writer failed"
        );
        assert!(hashed.is_err());
    }
}
