//! The crate's one error type, shared by every object: each libvirt call fails the same way
//! (what we were doing, libvirt's message and code), and callers ask the same questions of it
//! (`is_not_found`, `is_connection_lost`) whatever the object.

/// A libvirt failure, with what we were doing.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("cannot connect to the hypervisor at {uri}: {message}")]
    Connect { uri: String, message: String },
    /// Without libvirt's event loop no connection gets keepalive, and a call to a dead daemon
    /// would never end: refuse to connect at all.
    #[error("cannot start libvirt's event loop (needed for keepalive on hypervisor connections): {reason}; kvmprov connects to no hypervisor without it")]
    EventLoop { reason: String },
    #[error("{what}: {message}")]
    Libvirt {
        what: String,
        message: String,
        /// libvirt's error number (`virErrorNumber`), for `is_not_found`.
        code: Option<u32>,
    },
    #[error("{what}: {source}")]
    Xml {
        what: String,
        #[source]
        source: roxmltree::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// kvmprov keeps the managed-save image of a domain it did not create.
    #[error("undefine domain {name}: it has a managed-save image, which kvmprov does not delete for a domain it did not create; remove it with `virsh managedsave-remove {name}` and run cleanup again")]
    ForeignManagedSave { name: String },
}

impl HvError {
    /// The object (domain, network, pool, volume, snapshot) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code_is(&[
            virt_sys::VIR_ERR_NO_DOMAIN,
            virt_sys::VIR_ERR_NO_NETWORK,
            virt_sys::VIR_ERR_NO_STORAGE_POOL,
            virt_sys::VIR_ERR_NO_STORAGE_VOL,
            virt_sys::VIR_ERR_NO_DOMAIN_SNAPSHOT,
        ])
    }

    /// The daemon went away (restarted, stopped, or the ssh link to it broke).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, HvError::Libvirt { message, .. } if message.contains(LOST_HINT))
    }

    /// A lost connection's error names the hypervisor it was lost to: in a run over several,
    /// the lines of their instances interleave, and "the connection was lost" alone does not
    /// say whose. Other errors are left as they are.
    pub(crate) fn lost_on(self, uri: &str) -> HvError {
        match self {
            HvError::Libvirt {
                what,
                message,
                code,
            } if message.contains(LOST_HINT) => HvError::Libvirt {
                what,
                message: message.replacen(LOST_HINT, &format!("{LOST_HINT} on {uri}"), 1),
                code,
            },
            e => e,
        }
    }

    /// The driver does not support the call or one of its flags.
    pub(crate) fn is_unsupported(&self) -> bool {
        self.code_is(&[
            virt_sys::VIR_ERR_NO_SUPPORT,
            virt_sys::VIR_ERR_INVALID_ARG,
            virt_sys::VIR_ERR_ARGUMENT_UNSUPPORTED,
        ])
    }

    fn code_is(&self, codes: &[u32]) -> bool {
        matches!(self, HvError::Libvirt { code: Some(c), .. } if codes.contains(c))
    }
}

/// libvirt messages can carry the stderr of ssh or a helper: keep one line.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Map a libvirt error to `HvError::Libvirt`, saying what we were doing.
pub(crate) fn lv(what: impl Into<String>) -> impl FnOnce(virt::error::Error) -> HvError {
    let what = what.into();
    move |e| HvError::Libvirt {
        what,
        message: with_hint(one_line(e.message())),
        code: Some(e.code().to_raw()),
    }
}

const LOST_HINT: &str = "the connection to libvirtd was lost";

/// libvirt's words for a connection whose daemon went away are cryptic; say what happened.
fn with_hint(message: String) -> String {
    const LOST: &[&str] = &[
        "client socket is closed",
        "End of file while reading data",
        "Broken pipe",
        "Connection reset by peer",
    ];
    // libvirt's own words when keepalive gave up on a silent daemon.
    if message.contains("keepalive timeout") {
        let secs = crate::keepalive::keepalive_deadline().as_secs();
        return format!("{message} ({LOST_HINT}: it did not answer for {secs} s; is the daemon stopped or hung, or the network to its host cut? run again once it answers)");
    }
    if LOST.iter().any(|l| message.contains(l)) {
        format!("{message} ({LOST_HINT}: was the daemon restarted or stopped, or, over qemu+ssh, the ssh link to its host lost? run again once it is back)")
    } else {
        message
    }
}

/// `Ok(None)` for a not-found error, the error otherwise.
pub(crate) fn none_if_missing<T>(r: Result<T, HvError>) -> Result<Option<T>, HvError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// What `info` says of each listed object, sorted by `name`, leaving out the objects that
/// vanished (undefined or deleted between the listing and the look at them).
pub(crate) fn infos_of_listed<O, I>(
    listed: Vec<O>,
    info: impl Fn(&O) -> Result<I, HvError>,
    name: impl Fn(&I) -> &str,
) -> Result<Vec<I>, HvError> {
    let mut out = Vec::with_capacity(listed.len());
    for object in &listed {
        if let Some(i) = none_if_missing(info(object))? {
            out.push(i);
        }
    }
    out.sort_by(|a, b| name(a).cmp(name(b)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_lost_libvirtd_connection_was_a_cryptic_socket_error() {
        assert!(with_hint("internal error: client socket is closed".into())
            .contains("connection to libvirtd was lost"));
        assert_eq!(with_hint("Domain not found".into()), "Domain not found");
    }

    #[test]
    fn keepalive_timeout_is_a_lost_connection_naming_the_silence() {
        let e = HvError::Libvirt {
            what: "list domains".into(),
            message: with_hint("internal error: connection closed due to keepalive timeout".into()),
            code: Some(virt_sys::VIR_ERR_INTERNAL_ERROR),
        };
        assert!(e.is_connection_lost(), "{e}");
        assert!(e.to_string().contains("did not answer for 30 s"), "{e}");
    }

    #[test]
    fn regression_lost_connection_did_not_name_the_hypervisor() {
        let lost = HvError::Libvirt {
            what: "start domain web-05".into(),
            message: with_hint("End of file while reading data: Input/output error".into()),
            code: Some(virt_sys::VIR_ERR_SYSTEM_ERROR),
        }
        .lost_on("qemu+ssh://root@hv2/system");
        assert!(lost.is_connection_lost(), "{lost}");
        assert!(
            lost.to_string()
                .contains("the connection to libvirtd was lost on qemu+ssh://root@hv2/system:"),
            "{lost}"
        );
        let other = HvError::Libvirt {
            what: "x".into(),
            message: "Domain not found".into(),
            code: None,
        }
        .lost_on("qemu+ssh://root@hv2/system");
        assert_eq!(other.to_string(), "x: Domain not found");
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(
            one_line("Cannot recv data: Host key verification failed.\r\n: Connection reset\n"),
            "Cannot recv data: Host key verification failed. : Connection reset"
        );
    }

    #[test]
    fn not_found_and_unsupported_codes() {
        let e = |code| HvError::Libvirt {
            what: "x".into(),
            message: "y".into(),
            code: Some(code),
        };
        assert!(e(virt_sys::VIR_ERR_NO_DOMAIN).is_not_found());
        assert!(!e(virt_sys::VIR_ERR_OPERATION_FAILED).is_not_found());
        assert!(e(virt_sys::VIR_ERR_NO_SUPPORT).is_unsupported());
        assert!(!e(virt_sys::VIR_ERR_NO_DOMAIN).is_unsupported());
    }
}
