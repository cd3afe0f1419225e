//! Debian's checksum manifests, parsed without I/O: `SHA512SUMS` lines and the per-image JSON
//! manifest that pins `latest` to a dated build.

use base64::Engine;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "line {line}: malformed checksum line (expected `<128 hex digits>  <file name>`): {text:?}"
    )]
    Malformed { line: usize, text: String },
    #[error("no line for `{file}`")]
    Missing { file: String },
    #[error("invalid JSON manifest: {0}")]
    Json(String),
    #[error("the JSON manifest has no qcow2 upload item")]
    NoUpload,
    #[error("the JSON manifest digest `{0}` is not `sha512:<base64>` of 64 bytes")]
    Digest(String),
    #[error(
        "the JSON manifest's `data.ref` {0:?} is not `<suite>/<YYYYMMDD-NNNN>/<file name>` \
         (letters, digits, `.`, `_`, `-` only), so no URL is made from it"
    )]
    Ref(String),
    #[error("the JSON manifest names version {label:?} but its `data.ref` names build {build:?}")]
    Version { label: String, build: String },
}

/// The SHA-512 (lowercase hex) recorded for `file_name` in a `SHA512SUMS` text.
/// Lines are `<hex>  <name>` (text mode) or `<hex> *<name>` (binary mode); CRLF is accepted.
pub fn parse_sha512sums(text: &str, file_name: &str) -> Result<String, ManifestError> {
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed = || ManifestError::Malformed {
            line: i + 1,
            text: line.chars().take(200).collect(),
        };
        let (hex, rest) = line.split_once(' ').ok_or_else(malformed)?;
        let name = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(malformed)?;
        if hex.len() != 128 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
            return Err(malformed());
        }
        if name == file_name {
            return Ok(hex.to_ascii_lowercase());
        }
    }
    Err(ManifestError::Missing {
        file: file_name.to_string(),
    })
}

/// What the per-image JSON manifest says about the qcow2 build behind `latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPin {
    /// Path of the dated file relative to the `images/cloud/` base, e.g.
    /// `bookworm/20241004-1890/debian-12-genericcloud-amd64-20241004-1890.qcow2`: checked to be
    /// `<suite>/<build>/<file>`, but URLs are built from `build` only (a ref is the image host's).
    pub dated_ref: String,
    /// The dated build, `YYYYMMDD-NNNN` (checked), from `data.ref`.
    pub build: String,
    pub version: Option<String>,
    /// Lowercase hex.
    pub sha512: String,
}

/// Parse the JSON manifest (`items` with `kind: Upload` carrying `data.ref`, the format label,
/// the version label and the `sha512:<base64>` digest annotation).
pub fn parse_json_manifest(text: &str) -> Result<JsonPin, ManifestError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ManifestError::Json(e.to_string()))?;
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| ManifestError::Json("no `items` list".into()))?;
    let upload = items
        .iter()
        .filter(|i| i.get("kind").and_then(Value::as_str) == Some("Upload"))
        .find(|i| {
            let format = i
                .pointer("/metadata/labels/upload.cloud.debian.org~1image-format")
                .and_then(Value::as_str);
            let reference = i.pointer("/data/ref").and_then(Value::as_str).unwrap_or("");
            format == Some("qcow2") || (format.is_none() && reference.ends_with(".qcow2"))
        })
        .ok_or(ManifestError::NoUpload)?;
    let dated_ref = upload
        .pointer("/data/ref")
        .and_then(Value::as_str)
        .ok_or_else(|| ManifestError::Json("upload item has no `data.ref`".into()))?
        .to_string();
    let build = ref_build(&dated_ref)
        .ok_or_else(|| ManifestError::Ref(dated_ref.chars().take(200).collect()))?
        .to_string();
    let version = upload
        .pointer("/metadata/labels/cloud.debian.org~1version")
        .and_then(Value::as_str)
        .map(String::from);
    if let Some(label) = version.as_ref().filter(|v| **v != build) {
        return Err(ManifestError::Version {
            label: label.chars().take(100).collect(),
            build,
        });
    }
    let digest = upload
        .pointer("/metadata/annotations/cloud.debian.org~1digest")
        .and_then(Value::as_str)
        .ok_or_else(|| ManifestError::Json("upload item has no digest annotation".into()))?;
    Ok(JsonPin {
        dated_ref,
        build,
        version,
        sha512: digest_to_hex(digest)?,
    })
}

/// A dated build id: `YYYYMMDD-NNNN` (`20250210-2019`), digits only; ids of this shape order
/// as strings in the order they were built.
pub fn is_build_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 13
        && b[8] == b'-'
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[9..].iter().all(u8::is_ascii_digit)
}

/// The build id of a `data.ref` laid out as `<suite>/<build>/<file>`, each part a plain name
/// (no `..`, `\`, `?`, `#`, `%` or anything a URL parser reinterprets); `None` otherwise.
fn ref_build(dated_ref: &str) -> Option<&str> {
    let plain = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    match dated_ref.split('/').collect::<Vec<_>>().as_slice() {
        [suite, build, file] if plain(suite) && is_build_id(build) && plain(file) => Some(build),
        _ => None,
    }
}

/// `sha512:<base64, padding optional>` → lowercase hex.
pub fn digest_to_hex(digest: &str) -> Result<String, ManifestError> {
    let bad = || ManifestError::Digest(digest.chars().take(120).collect());
    let b64 = digest.strip_prefix("sha512:").ok_or_else(bad)?;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64.trim_end_matches('='))
        .map_err(|_| bad())?;
    if bytes.len() != 64 {
        return Err(bad());
    }
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aa";
    fn hex(c: &str) -> String {
        c.repeat(64)
    }

    #[test]
    fn sums_text_binary_and_crlf() {
        let text = format!(
            "{}  other.qcow2\r\n{} *debian-12.qcow2\r\n",
            hex("11"),
            hex("AB")
        );
        assert_eq!(
            parse_sha512sums(&text, "debian-12.qcow2").unwrap(),
            hex("ab")
        );
        let text = format!("{}  debian-12.qcow2\n", hex(A));
        assert_eq!(parse_sha512sums(&text, "debian-12.qcow2").unwrap(), hex(A));
    }

    #[test]
    fn sums_missing_and_malformed() {
        let text = format!("{}  other.qcow2\n", hex(A));
        assert_eq!(
            parse_sha512sums(&text, "x.qcow2"),
            Err(ManifestError::Missing {
                file: "x.qcow2".into()
            })
        );
        let text = format!("{}  ok\nzz{}  bad\n", hex(A), &hex(A)[2..]);
        assert!(matches!(
            parse_sha512sums(&text, "x"),
            Err(ManifestError::Malformed { line: 2, .. })
        ));
        let text = format!("{}  short\n", &hex(A)[..100]);
        assert!(matches!(
            parse_sha512sums(&text, "x"),
            Err(ManifestError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse_sha512sums("nospace\n", "x"),
            Err(ManifestError::Malformed { line: 1, .. })
        ));
    }

    fn manifest(digest: &str) -> String {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"kind": "Build", "data": {"info": {"arch": "amd64", "release": "bookworm"}}},
                {"kind": "Upload",
                 "data": {"ref": "bookworm/20241004-1890/debian-12-genericcloud-amd64-20241004-1890.qcow2"},
                 "metadata": {
                    "labels": {"upload.cloud.debian.org/image-format": "qcow2", "cloud.debian.org/version": "20241004-1890"},
                    "annotations": {"cloud.debian.org/digest": digest}}},
                {"kind": "Upload",
                 "data": {"ref": "bookworm/20241004-1890/debian-12-genericcloud-amd64-20241004-1890.raw"},
                 "metadata": {"labels": {"upload.cloud.debian.org/image-format": "raw"}}}
            ]
        })
        .to_string()
    }

    #[test]
    fn json_manifest_pins_dated_build() {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode([0xabu8; 64]);
        let pin = parse_json_manifest(&manifest(&format!("sha512:{b64}"))).unwrap();
        assert_eq!(pin.version.as_deref(), Some("20241004-1890"));
        assert!(pin.dated_ref.ends_with("-20241004-1890.qcow2"));
        assert_eq!(pin.sha512, hex("ab"));
    }

    #[test]
    fn json_manifest_errors() {
        assert!(matches!(
            parse_json_manifest("{"),
            Err(ManifestError::Json(_))
        ));
        assert_eq!(
            parse_json_manifest(r#"{"items": []}"#),
            Err(ManifestError::NoUpload)
        );
        assert!(matches!(
            parse_json_manifest(&manifest("sha256:abc")),
            Err(ManifestError::Digest(_))
        ));
        assert!(matches!(
            parse_json_manifest(&manifest("sha512:AAAA")),
            Err(ManifestError::Digest(_))
        ));
    }

    #[test]
    fn regression_data_ref_escaped_the_suite() {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode([0xabu8; 64]);
        let good = manifest(&format!("sha512:{b64}"));
        let file = "debian-12-genericcloud-amd64-20241004-1890.qcow2";
        for bad in [
            format!("bookworm/..\\..\\..\\x/{file}"),
            format!("bookworm/20241004-1890/{file}?x"),
            format!("bookworm/20241004-1890/{file}#x"),
            format!("bookworm/20241004-1890/%2e%2e/{file}"),
            format!("bookworm/20241004-1890/../{file}"),
            format!("bookworm/2024-10-04/{file}"),
            format!("/bookworm/20241004-1890/{file}"),
        ] {
            let mut v: Value = serde_json::from_str(&good).unwrap();
            v["items"][1]["data"]["ref"] = Value::String(bad.clone());
            let got = parse_json_manifest(&v.to_string());
            assert!(matches!(got, Err(ManifestError::Ref(_))), "{bad}: {got:?}");
        }
        let text = good.replace(
            "\"cloud.debian.org/version\":\"20241004-1890\"",
            "\"cloud.debian.org/version\":\"20991231-0000\"",
        );
        assert!(matches!(
            parse_json_manifest(&text),
            Err(ManifestError::Version { .. })
        ));
        assert!(is_build_id("20250210-2019") && !is_build_id("2025021-02019"));
    }

    #[test]
    fn padded_base64_is_accepted() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 64]);
        assert!(b64.ends_with('='));
        assert_eq!(digest_to_hex(&format!("sha512:{b64}")).unwrap(), hex("01"));
    }
}
