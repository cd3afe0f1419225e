//! The crate's error type: what failed (a request, a manifest, a digest, a file) and why.

use std::path::{Path, PathBuf};

use crate::manifest::ManifestError;
use crate::qcow2;

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
    #[error("{path} has been locked by {holder} for more than {seconds}s, so {what}: let that process finish, or end it if it is stuck")]
    LockBusy {
        path: PathBuf,
        /// `process 1234 (kvmprov)`, or `another process` when /proc/locks does not say.
        holder: String,
        seconds: u64,
        what: String,
    },
    #[error("GET {url}: the body ({got} bytes, as announced or received so far) is larger than {limit} bytes, more than {why}; what was received was discarded")]
    TooLarge {
        url: String,
        got: u64,
        limit: u64,
        why: String,
    },
    #[error("GET {url}: {dir} has {available} bytes free, and {needed} are needed ({why}); the partial download was discarded: free space there and run again")]
    NoSpace {
        url: String,
        dir: PathBuf,
        available: u64,
        needed: u64,
        why: String,
    },
    #[error(transparent)]
    Fs(#[from] kvmprov_safefs::FsError),
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
    pub(crate) fn transient(&self) -> bool {
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

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}
