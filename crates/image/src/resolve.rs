//! What `latest` is: the download URL, the digest it must hash to, the version, found through
//! the configured checksum manifest (and the JSON manifest beside the image, when it pins a
//! dated build the checksum manifest confirms).

use serde::Serialize;

use crate::cache::cache_file_name;
use crate::manifest::{self, parse_json_manifest, parse_sha512sums, ManifestError};
use crate::url::{self, redact_url};
use crate::{Client, ImageError};

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

/// The last segment of a URL's path (never its query: a token must not name a cache file).
fn file_name_of(url: &str) -> Result<&str, ImageError> {
    url::path_of(url)
        .and_then(|path| path.rsplit('/').next())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| {
            ImageError::Invalid(format!("{} does not end in a file name", redact_url(url)))
        })
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

#[cfg(test)]
mod tests {
    use super::*;

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
