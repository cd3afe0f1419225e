//! The few URL facts the image cache needs, without a URL parser: the form shown to people
//! (credentials and tokens hidden), the file name of the path, and the query kept apart from
//! the path it belongs to.

/// The URL as it may be shown: `https://user:pw@host/path?token=x` → `https://***@host/path?***`.
/// Credentials and query strings (tokens, signatures) never reach a file name, a sidecar, a plan
/// line, a log or JSON output: every place that shows a URL shows this.
pub fn redact_url(url: &str) -> String {
    let (base, tail) = split_query(url);
    let hidden_tail = if tail.is_empty() { "" } else { "?***" };
    let Some((scheme, rest)) = base.split_once("://") else {
        return format!("{base}{hidden_tail}");
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    format!("{scheme}://{host}{path}{hidden_tail}")
}

/// `(everything before the query or fragment, the `?…`/`#…` rest)`. URLs derived from a
/// configured one (the JSON manifest beside it, the dated build) carry its query on.
pub(crate) fn split_query(url: &str) -> (&str, &str) {
    url.split_at(url.find(['?', '#']).unwrap_or(url.len()))
}

/// The path of a `scheme://authority/path` URL, without query; `None` without a scheme.
pub(crate) fn path_of(url: &str) -> Option<&str> {
    let (base, _) = split_query(url);
    let (_, rest) = base.split_once("://")?;
    Some(&rest[rest.find('/').unwrap_or(rest.len())..])
}

/// The local path of a `file://` URL (`file:///srv/x` → `/srv/x`); `None` for other schemes.
pub(crate) fn local_path(url: &str) -> Option<&str> {
    url.strip_prefix("file://").map(|p| split_query(p).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_queries_are_hidden() {
        assert_eq!(
            redact_url("https://user:pw@host/images/a.qcow2?token=s3cr3t"),
            "https://***@host/images/a.qcow2?***"
        );
        assert_eq!(
            redact_url("http://h:8080/a/SHA512SUMS#frag"),
            "http://h:8080/a/SHA512SUMS?***"
        );
        assert_eq!(
            redact_url("https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS"),
            "https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS"
        );
        assert_eq!(redact_url("file:///srv/a.qcow2"), "file:///srv/a.qcow2");
        assert_eq!(redact_url("https://u@h"), "https://***@h");
        // Shown twice (an error naming a redacted URL) is still the same.
        let once = redact_url("https://u:p@h/x?t=1");
        assert_eq!(redact_url(&once), once);
    }

    #[test]
    fn paths_without_queries() {
        assert_eq!(path_of("https://u:p@h/a/b.qcow2?t=1"), Some("/a/b.qcow2"));
        assert_eq!(path_of("https://h"), Some(""));
        assert_eq!(path_of("file:///srv/b.qcow2"), Some("/srv/b.qcow2"));
        assert_eq!(path_of("no-scheme"), None);
        assert_eq!(local_path("file:///srv/b.qcow2"), Some("/srv/b.qcow2"));
        assert_eq!(local_path("http://h/b"), None);
    }
}
