//! HTTP for manifests and images: deadlines on every wait, bounded retries of what may recover.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::error::{io_err, ImageError};
use crate::url::{self, redact_url};

/// HTTP with deadlines and bounded retries. Every wait is bounded, also against a server that
/// trickles: per read (`stall`), for the response headers (`header_deadline`), for a whole
/// small document (`text_deadline`) and for an image body by a minimum rate over a window.
#[derive(Clone)]
pub struct Client {
    /// For `http://` URLs.
    agent: ureq::Agent,
    /// For `https://` URLs: `https_only`, so no redirect takes a request given as https to
    /// plain http (where anyone on the path reads its credentials and swaps its bytes).
    https_agent: ureq::Agent,
    connect: Duration,
    stall: Duration,
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
    /// Longest wait for the cache-wide lock that a prune holds exclusively.
    pub lock_wait: Duration,
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
        let (agent, https_agent) = agents(connect, stall, None);
        Client {
            agent,
            https_agent,
            connect,
            stall,
            attempts: 4,
            backoff: Duration::from_secs(1),
            // Generous for any real mirror: headers come in milliseconds, and 64 KiB per 30 s
            // is ~2 KiB/s, far below a usable link.
            header_deadline: Duration::from_secs(60),
            text_deadline: Duration::from_secs(120),
            min_bytes: 64 * 1024,
            window: Duration::from_secs(30),
            lock_wait: Duration::from_secs(60),
        }
    }

    /// Trust these root certificates (a private mirror's CA) instead of the built-in web roots.
    pub fn trusting(mut self, roots: rustls::RootCertStore) -> Result<Client, ImageError> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ImageError::Invalid(format!("cannot set up TLS with these roots: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (agent, https_agent) =
            agents(self.connect, self.stall, Some(std::sync::Arc::new(config)));
        self.agent = agent;
        self.https_agent = https_agent;
        Ok(self)
    }

    /// Run `f` until it succeeds, fails for good, or the attempts are used up. `url` is only
    /// named in the log, redacted.
    pub(crate) fn retry<T>(
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
    pub(crate) fn request(
        &self,
        url: &str,
        headers: &[(&str, String)],
        whole: Option<Duration>,
    ) -> Result<ureq::Response, ImageError> {
        let https = url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        let agent = if https {
            &self.https_agent
        } else {
            &self.agent
        };
        let mut req = agent.get(url);
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

/// The agents for http and https URLs (see [`Client`]): the same deadlines and redirect limit.
fn agents(
    connect: Duration,
    stall: Duration,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> (ureq::Agent, ureq::Agent) {
    let builder = || {
        let b = ureq::AgentBuilder::new()
            .timeout_connect(connect)
            .timeout_read(stall)
            .timeout_write(stall)
            .redirects(5)
            .user_agent(concat!("kvmprov/", env!("CARGO_PKG_VERSION")));
        match &tls {
            Some(c) => b.tls_config(c.clone()),
            None => b,
        }
    };
    (builder().build(), builder().https_only(true).build())
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
        K::InsecureRequestHttpsOnly => {
            "refused to follow a redirect from https to plain http (credentials and bytes would \
             travel unencrypted): point the URL at the https address the mirror serves"
        }
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
