//! libvirt URIs, `driver[+transport]://[user@][host][:port][/path][?query]`: the one owner of
//! what a URI says. It parses the parts, decides whether the hypervisor is this machine
//! ([`is_local`]), gives the SSH destination of an ssh transport ([`ssh_destination`]) and the
//! one spelling kvmprov keys its local state by ([`canonical_uri`]). Nothing else in kvmprov
//! looks inside a URI. Pure: nothing here connects.

/// A libvirt URI's parts, borrowed from its text as written: nothing is decoded, lower-cased or
/// checked (a port may be `""` or `x`); callers that compare or use a part decide that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibvirtUri<'a> {
    /// `qemu+ssh`, `qemu`, `test`.
    pub scheme: &'a str,
    /// Before the last `@` of the authority.
    pub user: Option<&'a str>,
    /// `None` for a local URI (`qemu:///system`); an IPv6 literal without its brackets.
    pub host: Option<&'a str>,
    /// The host was written in brackets (`[fe80::1]`).
    pub bracketed: bool,
    /// After the host's `:`.
    pub port: Option<&'a str>,
    /// From the first `/` after the authority: `/system`, `/session`, or empty.
    pub path: &'a str,
    /// After the first `?`, without it.
    pub query: Option<&'a str>,
}

impl<'a> LibvirtUri<'a> {
    /// `None` when `uri` has no `://` or an IPv6 literal lacks its `]`. The query starts at the
    /// first `?` and the authority ends at the first `/` before it (RFC 3986: neither may
    /// appear in an authority), so `?keyfile=/k@x` never leaks into the host or user.
    pub fn parse(uri: &'a str) -> Option<Self> {
        let (scheme, rest) = uri.split_once("://")?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let bracketed = host_port.starts_with('[');
        let (host, port) = match host_port.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']')?;
                (h, after.strip_prefix(':'))
            }
            None => match host_port.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (host_port, None),
            },
        };
        Some(LibvirtUri {
            scheme,
            user,
            host: (!host.is_empty()).then_some(host),
            bracketed,
            port,
            path,
            query,
        })
    }

    /// `ssh` of `qemu+ssh`; `None` for the driver's default transport.
    pub fn transport(&self) -> Option<&'a str> {
        self.scheme.split_once('+').map(|(_, t)| t)
    }

    /// The transport runs over SSH (`ssh`, `libssh`, `libssh2`).
    pub fn is_ssh(&self) -> bool {
        matches!(self.transport(), Some("ssh" | "libssh" | "libssh2"))
    }

    /// The value of `key=…` in the query, as written.
    pub fn query_param(&self, key: &str) -> Option<&'a str> {
        self.query?
            .split('&')
            .find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }
}

/// Where `ssh` goes for a `qemu+ssh://[user@]host[:port]/system[?keyfile=…]` URI: the
/// hypervisor as an SSH destination, for guest checks through it and for commands on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshDest {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub keyfile: Option<String>,
}

impl SshDest {
    /// Options that make `ssh … host` reach it the way libvirt does.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(p) = self.port {
            a.extend(["-p".to_string(), p.to_string()]);
        }
        if let Some(u) = &self.user {
            a.extend(["-l".to_string(), u.clone()]);
        }
        if let Some(k) = &self.keyfile {
            a.extend(["-i".to_string(), k.clone()]);
        }
        a
    }

    /// The `ssh` command line that reaches it, for commands printed for the operator to type.
    pub fn command_line(&self) -> String {
        let mut words = vec!["ssh".to_string()];
        if let Some(p) = self.port {
            words.push(format!("-p {p}"));
        }
        if let Some(k) = &self.keyfile {
            words.push(format!("-i {k}"));
        }
        words.push(self.display());
        words.join(" ")
    }

    /// Whether commands run there as root (`None`: ssh's own config decides the user).
    pub fn is_root(&self) -> bool {
        self.user.as_deref() == Some("root")
    }

    /// `[user@]host` for messages.
    pub fn display(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }
}

/// Pure: the SSH destination of a libvirt URI, `None` when the transport is not SSH, the URI
/// names no host, or its port is not a number.
pub fn ssh_destination(uri: &str) -> Option<SshDest> {
    let u = LibvirtUri::parse(uri)?;
    if !u.is_ssh() {
        return None;
    }
    let port = match u.port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some(SshDest {
        user: u.user.map(String::from),
        host: u.host?.to_string(),
        port,
        keyfile: u.query_param("keyfile").map(String::from),
    })
}

/// Is the hypervisor of `uri` this machine, so that its paths are our paths (the image cache is
/// read in place, console logs are read here, ACLs are set here)?
///
/// libvirt reaches this machine's daemon through a Unix socket: the driver's default transport
/// without a host (`qemu:///system`, `test:///default`, with or without `?socket=…`) or the
/// `unix` transport (`qemu+unix:///system?socket=/run/x/libvirt-sock`: how a second local
/// libvirtd is reached), whatever host it names, a Unix socket being always local. Every other
/// transport (`ssh`, `libssh`, `libssh2`, `tcp`, `tls`, `ext`), and the default one with a host
/// (libvirt then uses TLS), is a network hop to what may be another machine: remote. That
/// includes `qemu+ssh://localhost/system`: ssh may land anywhere (a `Host localhost` entry, a
/// port forwarded into a container, another mount namespace), and treating a remote machine as
/// local reads and writes the wrong files, while treating this machine as remote only costs an
/// upload (which `image-cache` skips when the pool's file is the cached file itself). What is
/// not a URI is not this machine.
pub fn is_local(uri: &str) -> bool {
    let Some(u) = LibvirtUri::parse(uri.trim()) else {
        return false;
    };
    match u.transport() {
        Some(t) => t.eq_ignore_ascii_case("unix"),
        None => u.host.is_none(),
    }
}

/// The URI kvmprov's local state is keyed by: one spelling per hypervisor. Scheme and host are
/// lower-cased, the transport's default port, a trailing `/` and the SSH user are dropped (the
/// same host reached as another user is the same hypervisor), except for `/session` URIs, where
/// the user names whose libvirt it is. What is not a URI (no `://`, an unclosed `[`) is only
/// trimmed. Run lock and pinned host key file names are derived from it: a spelling that
/// changes orphans existing users' locks and pinned keys.
pub fn canonical_uri(uri: &str) -> String {
    let uri = uri.trim();
    let Some(u) = LibvirtUri::parse(uri) else {
        return uri.to_string();
    };
    let scheme = u.scheme.to_ascii_lowercase();
    let host = u.host.unwrap_or("");
    let host = if u.bracketed {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let transport = u.transport().map(str::to_ascii_lowercase);
    let default_port = match transport.as_deref() {
        Some("ssh" | "libssh" | "libssh2") => Some("22"),
        Some("tcp") => Some("16509"),
        Some("tls") | None => Some("16514"),
        Some(_) => None,
    };
    let port = u.port.filter(|p| !p.is_empty() && Some(*p) != default_port);
    let path = match u.path.trim_end_matches('/') {
        "" => u.path,
        trimmed => trimmed,
    };
    let mut out = format!("{scheme}://");
    if let Some(user) = u.user.filter(|_| path.ends_with("/session")) {
        out.push_str(user);
        out.push('@');
    }
    out.push_str(&host.to_ascii_lowercase());
    if let Some(p) = port {
        out.push(':');
        out.push_str(p);
    }
    out.push_str(path);
    if let Some(q) = u.query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_destinations_of_uris() {
        let d = ssh_destination("qemu+ssh://admin@hv1.example/system").unwrap();
        assert_eq!(
            (d.user.as_deref(), d.host.as_str(), d.port),
            (Some("admin"), "hv1.example", None)
        );
        assert_eq!(d.display(), "admin@hv1.example");
        let d = ssh_destination("qemu+ssh://hv2:2222/system?keyfile=/k/id&no_verify=1").unwrap();
        assert_eq!(d.port, Some(2222));
        assert_eq!(d.keyfile.as_deref(), Some("/k/id"));
        assert_eq!(d.args(), ["-p", "2222", "-i", "/k/id"]);
        // What the operator is told to type reaches the same port with the same key.
        assert_eq!(d.command_line(), "ssh -p 2222 -i /k/id hv2");
        assert!(!d.is_root());
        let d = ssh_destination("qemu+libssh2://root@[fd00::5]:22/system").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("fd00::5", Some(22)));
        assert!(d.is_root());
        for local in [
            "qemu:///system",
            "test:///default",
            "qemu+tls://hv/system",
            "qemu+ssh:///system",
            "qemu+ssh://h:x/system",
        ] {
            assert_eq!(ssh_destination(local), None, "{local}");
        }
    }

    /// (user, host, port, path, query).
    type Parts<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
        Option<&'a str>,
    );

    fn parts(uri: &str) -> Option<Parts<'_>> {
        LibvirtUri::parse(uri).map(|u| (u.user, u.host, u.port, u.path, u.query))
    }

    #[test]
    fn parts_of_uris() {
        assert_eq!(
            parts("qemu:///system"),
            Some((None, None, None, "/system", None))
        );
        assert_eq!(
            parts("test:///default"),
            Some((None, None, None, "/default", None))
        );
        assert_eq!(
            parts("qemu+ssh://user@host:2222/system?keyfile=/k/id&no_verify=1"),
            Some((
                Some("user"),
                Some("host"),
                Some("2222"),
                "/system",
                Some("keyfile=/k/id&no_verify=1")
            ))
        );
        let v6 = LibvirtUri::parse("qemu+ssh://[fe80::1]:22/system").unwrap();
        assert_eq!(
            (v6.host, v6.port, v6.bracketed),
            (Some("fe80::1"), Some("22"), true)
        );
        let tls = LibvirtUri::parse("qemu+tls://hv/system").unwrap();
        assert_eq!(
            (tls.transport(), tls.is_ssh(), tls.host),
            (Some("tls"), false, Some("hv"))
        );
        let plain = LibvirtUri::parse("qemu://hv1/system").unwrap();
        assert_eq!((plain.scheme, plain.transport()), ("qemu", None));
        assert!(LibvirtUri::parse("qemu+libssh2://h/system")
            .unwrap()
            .is_ssh());
    }

    #[test]
    fn odd_uris() {
        // Not a URI, or an IPv6 literal left open.
        assert_eq!(parts("localhost"), None);
        assert_eq!(parts(""), None);
        assert_eq!(parts("qemu+ssh://[fe80::1/system"), None);
        // No host: a user alone, an empty bracket, nothing at all.
        assert_eq!(parts("qemu+ssh://admin@/system").map(|p| p.1), Some(None));
        assert_eq!(parts("qemu+ssh://[]/system").map(|p| p.1), Some(None));
        assert_eq!(parts("qemu+ssh://"), Some((None, None, None, "", None)));
        // A port as written, empty or not a number; a trailing slash kept.
        assert_eq!(parts("qemu+ssh://h:/system").map(|p| p.2), Some(Some("")));
        assert_eq!(
            parts("qemu+ssh://h:x/").map(|p| (p.2, p.3)),
            Some((Some("x"), "/"))
        );
        // The query ends the authority even without a path; `@` and `/` in it stay there.
        assert_eq!(
            parts("qemu+ssh://h?keyfile=/k@x"),
            Some((None, Some("h"), None, "", Some("keyfile=/k@x")))
        );
        // The last `@` separates the user; text after `]` that is no port is ignored.
        assert_eq!(
            parts("qemu+ssh://a@b@h/s").map(|p| (p.0, p.1)),
            Some((Some("a@b"), Some("h")))
        );
        assert_eq!(
            parts("qemu+ssh://[fd00::5]x/s").map(|p| (p.1, p.2)),
            Some((Some("fd00::5"), None))
        );
        // Not a prefix match: `keyfilex=` is another parameter.
        let u = LibvirtUri::parse("qemu+ssh://h/s?keyfilex=1&keyfile=/k").unwrap();
        assert_eq!(u.query_param("keyfile"), Some("/k"));
        assert_eq!(u.query_param("mode"), None);
    }

    #[test]
    fn ssh_destination_reads_the_query_without_a_path() {
        let d = ssh_destination("qemu+ssh://root@hv?keyfile=/k/id").unwrap();
        assert_eq!(
            (d.host.as_str(), d.keyfile.as_deref()),
            ("hv", Some("/k/id"))
        );
    }

    /// `host::is_local` was a prefix test (`qemu:///`, `test:///`): `qemu+unix:///system`, and
    /// `qemu+unix:///system?socket=…` (how a second local libvirtd is reached) were taken for a
    /// remote hypervisor: images were uploaded through libvirt instead of read in place, ACLs and
    /// console logs looked for over SSH, and prune and cleanup compared paths as remote ones.
    #[test]
    fn regression_qemu_unix_uri_was_treated_as_a_remote_hypervisor() {
        assert!(is_local("qemu+unix:///system"));
        assert!(is_local(
            "qemu+unix:///system?socket=/run/kvmprov-twin/libvirt/libvirt-sock"
        ));
        assert!(is_local("qemu:///system?socket=/run/x/libvirt-sock"));
    }

    #[test]
    fn which_uris_are_this_machine() {
        for (uri, local) in [
            ("qemu:///system", true),
            ("qemu:///system/", true),
            ("qemu:///session", true),
            ("QEMU:///system", true),
            (" qemu:///system ", true),
            ("qemu:///system?socket=/run/libvirt/libvirt-sock", true),
            ("test:///default", true),
            ("test:///tmp/node.xml", true),
            ("qemu+unix:///system", true),
            ("QEMU+UNIX:///system", true),
            ("qemu+unix:///session", true),
            ("qemu+unix:///system?socket=/s/libvirt-sock", true),
            // A Unix socket is on this machine whatever host the URI names.
            ("qemu+unix://localhost/system", true),
            // Network transports: a hop to what may be another machine.
            ("qemu+ssh://hv1/system", false),
            ("qemu+ssh://root@hv1:2222/system?keyfile=/k", false),
            ("qemu+ssh://localhost/system", false),
            ("qemu+ssh://127.0.0.1/system", false),
            ("qemu+libssh://hv1/system", false),
            ("qemu+libssh2://hv1/system", false),
            ("qemu+tcp://hv1/system", false),
            ("qemu+tcp://localhost/system", false),
            ("qemu+tls://hv1/system", false),
            ("qemu+ext:///system?command=/bin/x", false),
            // The default transport with a host is TLS.
            ("qemu://hv1/system", false),
            ("qemu://localhost/system", false),
            ("qemu://[fe80::1]/system", false),
            // Not URIs.
            ("", false),
            ("localhost", false),
            ("qemu:/system", false),
        ] {
            assert_eq!(is_local(uri), local, "{uri}");
        }
    }

    #[test]
    fn canonical_uri_spellings() {
        for (given, want) in [
            ("qemu:///system", "qemu:///system"),
            ("qemu:///system/", "qemu:///system"),
            ("QEMU+SSH://HV1/system", "qemu+ssh://hv1/system"),
            ("qemu+ssh://hv1:22/system", "qemu+ssh://hv1/system"),
            ("qemu+ssh://admin@hv1/system", "qemu+ssh://hv1/system"),
            ("qemu+ssh://hv1:2222/system", "qemu+ssh://hv1:2222/system"),
            (
                "qemu+ssh://alice@hv1/session",
                "qemu+ssh://alice@hv1/session",
            ),
            ("qemu+tcp://hv1:16509/system", "qemu+tcp://hv1/system"),
            ("qemu://hv1:16514/system", "qemu://hv1/system"),
            (
                "qemu+ssh://[fe80::1]:22/system",
                "qemu+ssh://[fe80::1]/system",
            ),
            (
                "qemu+ssh://hv1/system?keyfile=/k",
                "qemu+ssh://hv1/system?keyfile=/k",
            ),
            ("test:///default", "test:///default"),
        ] {
            assert_eq!(canonical_uri(given), want, "{given}");
        }
    }
}
