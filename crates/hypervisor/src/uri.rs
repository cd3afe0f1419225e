//! libvirt URIs, `driver[+transport]://[user@][host][:port][/path][?query]`: the one parser of
//! their parts, and the SSH destination of an ssh transport. Pure: nothing here connects.

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
}
