//! A guest's graceful restart: asked to power off (ACPI), waited for until it is off, started
//! again, then waited for until it is ready (SSH with the pinned host key, cloud-init done).
//! Drift's rollout restarts guests with it: a changed definition takes effect only in a new QEMU
//! process, so the guest is powered off and started (the `restart` verb reboots in place instead:
//! [`super`]).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvmprov_hypervisor::{DomainState, HvError, Hypervisor, NetworkInfo};

use super::{wait, RuntimeError};
use crate::config::Instance;
use crate::settings::Session;

/// How long a guest is given to power off after the ACPI request before it is forced off.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(120);

/// A restart that went through: when the guest went down and when it was ready again (Unix
/// seconds: several guests' windows compare), and the wait's summary line.
#[derive(Debug, Clone)]
pub struct Restarted {
    pub down_at: f64,
    pub ready_at: f64,
    /// It did not power off within [`SHUTDOWN_GRACE`] and was forced off.
    pub forced: bool,
    pub summary: String,
}

impl Restarted {
    /// `unavailable 93.1 s (unix 1765100000.2 to 1765100093.3); ready at …`
    pub fn describe(&self) -> String {
        format!(
            "{}unavailable {:.1} s (unix {:.1} to {:.1}); {}",
            if self.forced {
                "forced off after the grace period; "
            } else {
                ""
            },
            self.ready_at - self.down_at,
            self.down_at,
            self.ready_at,
            self.summary
        )
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Ask `name` to shut down (ACPI) and wait up to `timeout` for it to be off (or gone): `true`
/// when it is. One loop for `stop` and for drift's restart.
pub fn shut_down_within(hv: &Hypervisor, name: &str, timeout: Duration) -> Result<bool, HvError> {
    hv.shutdown(name)?;
    let deadline = Instant::now() + timeout;
    loop {
        if matches!(
            hv.domain(name)?.map(|d| d.state),
            Some(DomainState::ShutOff) | None
        ) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(super::POLL_STATE);
    }
}

/// Power the guest off gracefully (forced after [`SHUTDOWN_GRACE`]); `true` when forced.
/// A guest already off is left so.
pub fn power_off(hv: &Hypervisor, name: &str) -> Result<bool, RuntimeError> {
    if matches!(
        hv.domain(name)?.map(|d| d.state),
        Some(DomainState::ShutOff) | None
    ) {
        return Ok(false);
    }
    if shut_down_within(hv, name, SHUTDOWN_GRACE)? {
        return Ok(false);
    }
    tracing::warn!("{name}: not off {SHUTDOWN_GRACE:?} after the ACPI request: forced off");
    hv.destroy(name)?;
    Ok(true)
}

/// Restart `inst` gracefully and wait until it is ready; `networks`: the hypervisor's, to find
/// its address.
pub fn restart(
    s: &Session,
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    inst: &Instance,
) -> Result<Restarted, RuntimeError> {
    restart_with(s, hv, networks, inst, || Ok(()))
}

/// [`restart`] with `while_off` done between the power-off and the start (drift's recreate
/// makes the domain anew there); when it fails the guest stays off.
pub fn restart_with(
    s: &Session,
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    inst: &Instance,
    while_off: impl FnOnce() -> Result<(), RuntimeError>,
) -> Result<Restarted, RuntimeError> {
    let down_at = unix_now();
    let forced = power_off(hv, &inst.name)?;
    while_off()?;
    hv.start(&inst.name)?;
    let summary = wait::wait_ready(s, hv, networks, inst)?;
    Ok(Restarted {
        down_at,
        ready_at: unix_now(),
        forced,
        summary,
    })
}
