//! What `latest` is: the download URL, the digest it must hash to, the version, found through
//! the configured checksum manifest (and the JSON manifest beside the image, when it pins a
//! dated build the checksum manifest confirms).

use serde::Serialize;

use crate::cache::cache_file_name;
use crate::digest::Sha512;
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

    if let Some((json_url, json_text, pin)) = json_pin(client, &entry.image_url)? {
        // Only the shape `<suite>/<build>/<stem>-<build>.<ext>` of the configured image's own
        // suite is accepted; the URL is then made from the checked build id alone.
        let dated_file = dated_file_name(&image_file, &pin.build);
        let suite = suite_of(&entry.image_url);
        if suite.map(|s| format!("{s}/{}/{dated_file}", pin.build)) != Some(pin.dated_ref.clone()) {
            return Err(ImageError::Invalid(format!(
                "{} names {:?}, not build {} of {image_file} in the suite of {}: nothing is \
                 fetched from it; check the image URL and the mirror",
                redact_url(&json_url),
                pin.dated_ref,
                pin.build,
                redact_url(&entry.image_url)
            )));
        }
        let sums = Sums {
            url: manifest_url,
            listed: listed.as_deref(),
        };
        confirm_pin(client, &sums, &image_file, &json_url, &json_text, &pin)?;
        return Ok(Resolved {
            image_name: entry.image_name.clone(),
            download_url: dated_url(&entry.image_url, &pin.build, &dated_file)?,
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

/// The configured checksum manifest as read.
struct Sums<'a> {
    url: &'a str,
    /// Its line for the image.
    listed: Option<&'a str>,
}

/// The JSON manifest's digest must be confirmed by the configured manifest:
/// - its `latest/` line for the image (read again once: `latest` may have moved on to the
///   pinned build since it was first read);
/// - or, when `latest` moved, the dated directory's `SHA512SUMS` beside the configured manifest
///   (never on the image host), built from the checked build id, and only for a build at least
///   as new as the one `latest` names: a mirror must not roll a fleet back to an old build.
///   Which build `latest` is comes only from the configured manifest: its line for
///   `<stem>.json` confirms a JSON manifest (the one already read, or the one beside the
///   configured manifest), and that names the build.
fn confirm_pin(
    client: &Client,
    sums: &Sums,
    image_file: &str,
    json_url: &str,
    json_text: &str,
    pin: &manifest::JsonPin,
) -> Result<(), ImageError> {
    if sums.listed == Some(pin.sha512.as_str()) {
        return Ok(());
    }
    let again = client.get_text(sums.url)?;
    let listed_now = match parse_sha512sums(&again, image_file) {
        Ok(sum) => Some(sum),
        Err(ManifestError::Missing { .. }) => None,
        Err(source) => {
            return Err(ImageError::Manifest {
                url: redact_url(sums.url),
                source,
            })
        }
    };
    if listed_now.as_deref() == Some(pin.sha512.as_str()) {
        tracing::info!(
            "{} moved on to build {} while it was read",
            redact_url(sums.url),
            pin.build
        );
        return Ok(());
    }
    let dated_file = dated_file_name(image_file, &pin.build);
    let configured = format!(
        "the configured checksum manifest {} lists {} for {image_file}",
        redact_url(sums.url),
        listed_now
            .as_deref()
            .map_or_else(|| "no digest".to_string(), |l| format!("sha512 {l}"))
    );
    let refuse = |why: String| ImageError::Unconfirmed {
        json_url: redact_url(json_url),
        json_sha512: pin.sha512.clone(),
        file: dated_file.clone(),
        listings: format!("{configured}{why}"),
    };
    let latest = match latest_build(client, sums.url, &again, image_file, json_text)? {
        Some(b) => b,
        None => {
            return Err(refuse(format!(
                " and no JSON manifest it lists tells which build `latest` is, so build {} \
                 cannot be shown to be at least as new",
                pin.build
            )))
        }
    };
    if pin.build < latest {
        return Err(refuse(format!(
            " (build {latest}), and the pinned build {} is older: a mirror must not roll the \
             image back",
            pin.build
        )));
    }
    let Some(dated_sums) = dated_sums_url(sums.url, &pin.build) else {
        return Err(refuse(String::new()));
    };
    let text = match client.get_text(&dated_sums) {
        Ok(t) => t,
        // No such dated directory where the configured manifest lives: nothing confirms it.
        Err(ImageError::Status {
            status: 404 | 410, ..
        }) => {
            return Err(refuse(format!(
                " and {} does not exist",
                redact_url(&dated_sums)
            )))
        }
        Err(e) => return Err(e),
    };
    let listing = |l: Option<&str>| {
        format!(
            " and {} lists {} for it",
            redact_url(&dated_sums),
            l.map_or_else(|| "no digest".to_string(), |l| format!("sha512 {l}"))
        )
    };
    match parse_sha512sums(&text, &dated_file) {
        Ok(sum) if sum == pin.sha512 => {
            tracing::info!(
                "{} moved while it was read; {} confirms the newer dated build {}",
                redact_url(sums.url),
                redact_url(&dated_sums),
                pin.build
            );
            Ok(())
        }
        Ok(sum) => Err(refuse(listing(Some(&sum)))),
        Err(ManifestError::Missing { .. }) => Err(refuse(listing(None))),
        Err(source) => Err(ImageError::Manifest {
            url: redact_url(&dated_sums),
            source,
        }),
    }
}

/// The build `latest` is, as the configured manifest (`sums_text`, read from `sums_url`) says:
/// its line for `<stem>.json` must match a JSON manifest, either the one read beside the image
/// or the one beside the configured manifest; that manifest's build id is the answer.
fn latest_build(
    client: &Client,
    sums_url: &str,
    sums_text: &str,
    image_file: &str,
    json_text: &str,
) -> Result<Option<String>, ImageError> {
    let stem = image_file
        .rsplit_once('.')
        .map(|(s, _)| s)
        .unwrap_or(image_file);
    let json_name = format!("{stem}.json");
    let Ok(json_sum) = parse_sha512sums(sums_text, &json_name) else {
        return Ok(None);
    };
    let confirmed = |text: &str| {
        let mut h = Sha512::default();
        h.update(text.as_bytes());
        h.hex() == json_sum
    };
    let text = if confirmed(json_text) {
        json_text.to_string()
    } else {
        let (base, query) = url::split_query(sums_url);
        let Some((dir, _)) = base.rsplit_once('/') else {
            return Ok(None);
        };
        let beside = format!("{dir}/{json_name}{query}");
        match client.get_text(&beside) {
            Ok(t) if confirmed(&t) => t,
            Ok(_)
            | Err(ImageError::Status {
                status: 404 | 410, ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        }
    };
    Ok(parse_json_manifest(&text).ok().map(|p| p.build))
}

/// `<dir>/<stem>.json` beside an http(s) image URL and what it says, if the server has one
/// (404: none).
fn json_pin(
    client: &Client,
    image_url: &str,
) -> Result<Option<(String, String, manifest::JsonPin)>, ImageError> {
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
            Ok(pin) => Ok(Some((url, text, pin))),
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

/// `…/<base>/<suite>/latest/<file>` with `rest` (relative to `<base>`) → `…/<base>/<rest>`.
fn replace_suite_latest(url: &str, rest: &str) -> Option<String> {
    let (base, query) = url::split_query(url);
    let mut parts: Vec<&str> = base.split('/').collect();
    // scheme:, "", host, at least one base segment, suite, latest, file.
    if parts.len() < 6 || parts[parts.len() - 2] != "latest" {
        return None;
    }
    parts.truncate(parts.len() - 3);
    Some(format!("{}/{rest}{query}", parts.join("/")))
}

/// The `<suite>` of a `…/<suite>/latest/<file>` URL.
fn suite_of(url: &str) -> Option<&str> {
    let (base, _) = url::split_query(url);
    let mut segments = base.rsplit('/');
    let _file = segments.next()?;
    if segments.next() != Some("latest") {
        return None;
    }
    segments.next().filter(|s| !s.is_empty())
}

/// `debian-12-genericcloud-amd64.qcow2` of build `20250210-2019` →
/// `debian-12-genericcloud-amd64-20250210-2019.qcow2`.
fn dated_file_name(image_file: &str, build: &str) -> String {
    match image_file.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}-{build}.{ext}"),
        None => format!("{image_file}-{build}"),
    }
}

/// The dated URL, `<base>/<suite>/<build>/<dated file>`, made from a checked build id only.
fn dated_url(image_url: &str, build: &str, dated_file: &str) -> Result<String, ImageError> {
    suite_of(image_url)
        .and_then(|suite| replace_suite_latest(image_url, &format!("{suite}/{build}/{dated_file}")))
        .ok_or_else(|| {
            ImageError::Invalid(format!(
                "{} is not laid out as <base>/<suite>/latest/<file>",
                redact_url(image_url)
            ))
        })
}

/// The dated build's `SHA512SUMS` at the same place as the configured manifest:
/// `https://h/images/cloud/bookworm/latest/SHA512SUMS` and build `20250210-2019` →
/// `https://h/images/cloud/bookworm/20250210-2019/SHA512SUMS`. `None` when the configured
/// manifest is not a `<suite>/latest/` one.
fn dated_sums_url(manifest_url: &str, build: &str) -> Option<String> {
    let suite = suite_of(manifest_url)?;
    let (base, _) = url::split_query(manifest_url);
    let name = base.rsplit('/').next()?;
    replace_suite_latest(manifest_url, &format!("{suite}/{build}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_sums_sit_beside_the_configured_manifest() {
        let sums = "https://h/images/cloud/bookworm/latest/SHA512SUMS?t=1";
        assert_eq!(
            dated_sums_url(sums, "20250210-2019").as_deref(),
            Some("https://h/images/cloud/bookworm/20250210-2019/SHA512SUMS?t=1")
        );
        assert_eq!(
            dated_sums_url("file:///srv/SHA512SUMS", "20250210-2019"),
            None
        );
        assert_eq!(
            dated_file_name("debian-12-genericcloud-amd64.qcow2", "20250210-2019"),
            "debian-12-genericcloud-amd64-20250210-2019.qcow2"
        );
    }

    #[test]
    fn dated_url_replaces_suite_latest_file() {
        assert_eq!(
            dated_url(
                "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
                "20241004-1890",
                "debian-12-genericcloud-amd64-20241004-1890.qcow2"
            )
            .unwrap(),
            "https://cloud.debian.org/images/cloud/bookworm/20241004-1890/debian-12-genericcloud-amd64-20241004-1890.qcow2"
        );
        assert!(dated_url("https://h/a/b/c/x.qcow2", "20241004-1890", "x.qcow2").is_err());
    }
}
