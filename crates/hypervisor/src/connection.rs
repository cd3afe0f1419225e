//! The libvirt connection and the host facts it gives: versions, domain types, firmware.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Once, OnceLock};
use std::time::Duration;

use serde::Serialize;
use virt::connect::Connect;

use crate::error::{lv, one_line};
use crate::keepalive::{keepalive_deadline, KEEPALIVE_COUNT, KEEPALIVE_INTERVAL};
use crate::xml::{self, DomainType, FirmwareSupport};
use crate::HvError;

/// Host facts for `ping` and preflight.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub hostname: String,
    pub libvirt_version: String,
    /// `QEMU`, `TEST`, ...
    pub driver: String,
    pub hypervisor_version: String,
    /// Domain type `kvm` offered for x86_64 guests.
    pub kvm: bool,
    /// Domain type `qemu` (TCG) offered for x86_64 guests.
    pub qemu: bool,
    /// uid:gid qemu runs as (libvirt's DAC base label), when the host says.
    pub qemu_ids: Option<(u32, u32)>,
}

/// A libvirt connection.
pub struct Hypervisor {
    pub(crate) conn: Connect,
    uri: String,
    /// `host_info`, read once per connection: preflight and provision both ask, and the
    /// capabilities XML alone takes libvirt ~1.5 ms to build.
    host: OnceLock<HostInfo>,
    /// libvirt calls made on this connection (issue 27: calls per instance, and no step may
    /// cost one listing per instance); logged at debug level when the connection closes.
    calls: AtomicU64,
}

/// libvirt's default event loop, registered once per process and run by one thread for the
/// rest of it. Keepalive needs it (libvirt sends its pings and notices missing answers from
/// the loop's timers), and it must be registered before the first connection opens: a
/// connection opened earlier never gets keepalive.
fn event_loop() -> Result<(), HvError> {
    static LOOP: OnceLock<Result<(), String>> = OnceLock::new();
    LOOP.get_or_init(|| {
        virt::event::event_register_default_impl().map_err(|e| one_line(e.message()))?;
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                // One iteration waits for and dispatches the next event or timer.
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::warn!("libvirt event loop: {}", one_line(e.message()));
                    // Do not spin on an error that repeats.
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start its thread: {e}"))
    })
    .clone()
    .map_err(|reason| HvError::EventLoop { reason })
}

/// `virConnectOpen` within `keepalive_deadline()`: keepalive starts only once the connection
/// is open, and a daemon that accepted the connection but never answers (stopped, hung) kept
/// the open waiting forever. The open runs in a thread of its own; when it gives no answer in
/// time that thread is left behind (libvirt cannot cancel it) and its late connection, if
/// any, is closed when it arrives.
fn open(uri: &str) -> Result<Connect, HvError> {
    let failed = |message: String| HvError::Connect {
        uri: uri.to_string(),
        message,
    };
    let (tx, rx) = mpsc::channel();
    let target = uri.to_string();
    std::thread::Builder::new()
        .name("libvirt-connect".into())
        .spawn(move || {
            // libvirt's error is per thread: read it here.
            let opened = Connect::open(Some(&target)).map_err(|e| one_line(e.message()));
            // Nobody listens any more when connect gave up: the connection is dropped (closed).
            let _ = tx.send(opened);
        })
        .map_err(|e| failed(format!("cannot start a thread to connect: {e}")))?;
    let limit = keepalive_deadline();
    // Over SSH with an operator at the terminal, ssh may be asking for a passphrase or a host
    // key confirmation: no deadline then (the operator can interrupt; scripts and CI, with no
    // terminal, keep it).
    let scheme = uri.split("://").next().unwrap_or_default();
    if scheme.contains("ssh") && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return rx
            .recv()
            .map_err(|_| failed("the connecting thread ended without an answer".to_string()))?
            .map_err(failed);
    }
    match rx.recv_timeout(limit) {
        Ok(opened) => opened.map_err(failed),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(failed(format!(
            "no answer within {} s: is libvirtd there stopped or hung, or the network to its host cut? run again once it answers",
            limit.as_secs()
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(failed(
            "the connecting thread ended without an answer".to_string(),
        )),
    }
}

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

impl Hypervisor {
    /// Open `uri` with keepalive on (see `KEEPALIVE_INTERVAL`). The error is one sentence
    /// naming the URI, with libvirt's reason.
    pub fn connect(uri: &str) -> Result<Self, HvError> {
        // libvirt prints every error to stderr unless told not to; we report them ourselves.
        static QUIET: Once = Once::new();
        QUIET.call_once(virt::error::clear_error_callback);
        event_loop()?;
        let conn = open(uri)?;
        // Drivers that run in this process (`test:///`) have no daemon to lose and no
        // keepalive: they say "unsupported", which is fine.
        if let Err(e) = conn
            .set_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            .map_err(lv(format!("enable keepalive on the connection to {uri}")))
        {
            if !e.is_unsupported() {
                return Err(e);
            }
        }
        Ok(Hypervisor {
            conn,
            uri: uri.to_string(),
            host: OnceLock::new(),
            calls: AtomicU64::new(0),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The libvirt calls made on this connection so far (each API call that goes to the
    /// daemon, a stream chunk included; not the ones libvirt answers locally, like a name).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Count one libvirt call and name it in its error (`lv` for calls libvirt answers
    /// locally, which are not counted).
    /// A lost connection's error names this hypervisor ([`HvError::lost_on`]).
    pub(crate) fn lv<'a>(
        &'a self,
        what: impl Into<String> + 'a,
    ) -> impl FnOnce(virt::error::Error) -> HvError + 'a {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let what = what.into();
        // Each call by kind (`KVMPROV_LOG=kvmprov_hypervisor=trace`): where a run's calls go.
        tracing::trace!("libvirt call on {}: {what}", self.uri);
        let named = lv(what);
        move |e| named(e).lost_on(&self.uri)
    }

    /// Versions, host name, driver and the x86_64 domain types the host offers (read once per
    /// connection; none of it changes while kvmprov runs).
    pub fn host_info(&self) -> Result<HostInfo, HvError> {
        if let Some(h) = self.host.get() {
            return Ok(h.clone());
        }
        let h = self.read_host_info()?;
        Ok(self.host.get_or_init(|| h).clone())
    }

    fn read_host_info(&self) -> Result<HostInfo, HvError> {
        let caps = self
            .conn
            .capabilities()
            .map_err(self.lv("read capabilities"))?;
        let (kvm, qemu) = xml::domain_types(&caps)?;
        Ok(HostInfo {
            hostname: self.conn.hostname().map_err(self.lv("read host name"))?,
            libvirt_version: version_string(
                self.conn
                    .lib_version()
                    .map_err(self.lv("read libvirt version"))?,
            ),
            driver: self
                .conn
                .driver_type()
                .map_err(self.lv("read driver type"))?,
            hypervisor_version: version_string(
                self.conn
                    .hyp_version()
                    .map_err(self.lv("read hypervisor version"))?,
            ),
            kvm,
            qemu,
            qemu_ids: xml::dac_baselabel(&caps)?,
        })
    }

    /// Which firmware q35 guests of `domain_type` can boot with here (OVMF installed?).
    pub fn firmware_support(&self, domain_type: DomainType) -> Result<FirmwareSupport, HvError> {
        let caps = self
            .conn
            .domain_capabilities(
                None,
                Some("x86_64"),
                Some("q35"),
                Some(domain_type.as_str()),
                0,
            )
            .map_err(self.lv(format!(
                "read the {} domain capabilities",
                domain_type.as_str()
            )))?;
        xml::parse_firmware_support(&caps)
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        tracing::debug!("{}: {} libvirt calls", self.uri, self.calls());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dotted() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_015), "7.2.15");
    }
}
