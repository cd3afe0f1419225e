//! kvmprov-image: Debian cloud images, resolved through their checksum manifests, downloaded
//! once (streamed, hashed while written, resumable), verified, and cached under names that carry
//! their checksum, each with a JSON sidecar.
//!
//! The downloader knows nothing of libvirt or of where the bytes will be used.
//!
//! One file per concern: `resolve` (what `latest` is: URL, digest, version), `client` (HTTP with
//! deadlines and retries), `download` (the resumable, hashed download loop), `cache` (layout,
//! sidecars, lookups), `lock` (who may write or prune the cache), `digest` (SHA-512 helpers),
//! `manifest` (checksum manifests), `qcow2` (header checks), `error`.

mod cache;
mod client;
mod digest;
mod download;
mod error;
mod lock;
pub mod manifest;
pub mod qcow2;
mod resolve;
mod url;

pub use cache::{
    cache_file_name, list_cached, lookup, newest_cached, quarantine, sidecar_path, CachedImage,
};
pub use client::Client;
pub use digest::{verify, Sha512Writer};
pub use download::{download, Progress, Silent};
pub use error::ImageError;
pub use lock::{writer_lock_path, CacheLock};
pub use manifest::{parse_json_manifest, parse_sha512sums, ManifestError};
pub use resolve::{resolve, CatalogEntry, Resolved};
pub use url::redact_url;
