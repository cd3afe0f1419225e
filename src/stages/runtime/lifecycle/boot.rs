//! Telling one boot of a guest from the next: its kernel's boot id
//! (`/proc/sys/kernel/random/boot_id`, a random UUID each boot), read over SSH with the pinned
//! host key. `restart` reads it before the reboot and waits for another: the old boot's sshd
//! may still answer for a while after the reboot request, and must not count as "ready".

use std::net::Ipv4Addr;
use std::time::Duration;

use kvmprov_hypervisor::{Hypervisor, NetworkInfo};

use crate::address;
use crate::config::Instance;
use crate::login::Login;
use crate::ssh;

/// One boot's id, checked to be a UUID (the guest wrote it: nothing else is kept or shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootId(String);

impl BootId {
    /// The id in a guest's answer, if it is one.
    pub fn parse(text: &str) -> Option<BootId> {
        let t = text.trim();
        let uuid = t.len() == 36
            && t.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            });
        uuid.then(|| BootId(t.to_ascii_lowercase()))
    }
}

impl std::fmt::Display for BootId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How long one read of the boot id may take: the guest is up (or going down), so a short
/// answer or none.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The guest's current boot id, or `None` when it has no address or does not let us log in
/// now (down, booting, going down).
pub fn read(
    hv: &Hypervisor,
    networks: &[NetworkInfo],
    inst: &Instance,
    pool: &std::path::Path,
    login: &Login,
) -> Option<BootId> {
    let addr: Ipv4Addr = address::current(hv, networks, inst, pool).ok().flatten()?;
    let target = login.target(addr).ok()?;
    let out = ssh::ssh_run(&target, "cat /proc/sys/kernel/random/boot_id", READ_TIMEOUT).ok()?;
    (out.code == Some(0)).then(|| BootId::parse(&out.stdout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_uuid_is_a_boot_id() {
        let id = BootId::parse("3F2A1c0e-0b1d-4e8f-9a7b-1c2d3e4f5a6b\n").unwrap();
        assert_eq!(id.to_string(), "3f2a1c0e-0b1d-4e8f-9a7b-1c2d3e4f5a6b");
        for bad in [
            "",
            "\x1b]0;owned\x07",
            "3f2a1c0e-0b1d-4e8f-9a7b-1c2d3e4f5a6b7",
            "3f2a1c0e+0b1d-4e8f-9a7b-1c2d3e4f5a6b",
            "zf2a1c0e-0b1d-4e8f-9a7b-1c2d3e4f5a6b",
        ] {
            assert_eq!(BootId::parse(bad), None, "{bad:?}");
        }
    }
}
