//! Which domain type the instances get on a hypervisor, from what it offers. (Whether a
//! hypervisor is this machine is its URI's to say: `kvmprov_hypervisor::uri::is_local`.)

use kvmprov_hypervisor::{DomainType, HostInfo};

use crate::config::DomainTypeChoice;

/// The domain type `kvm_domain_type` resolves to on this host and a sentence saying why, or
/// why the wanted one is unavailable.
pub fn resolve_domain_type(
    choice: DomainTypeChoice,
    host: &HostInfo,
) -> Result<(DomainType, String), String> {
    match choice {
        DomainTypeChoice::Kvm if host.kvm => Ok((DomainType::Kvm, "kvm requested and available".into())),
        DomainTypeChoice::Kvm => Err(
            "kvm requested but the hypervisor does not offer it (no /dev/kvm access?); set kvm_domain_type: qemu to emulate (slow) or auto".into(),
        ),
        DomainTypeChoice::Qemu if host.qemu => Ok((DomainType::Qemu, "qemu (TCG emulation) requested and available".into())),
        DomainTypeChoice::Qemu => Err("qemu requested but the hypervisor offers no x86_64 qemu emulator".into()),
        DomainTypeChoice::Auto if host.kvm => Ok((DomainType::Kvm, "auto: kvm is available".into())),
        DomainTypeChoice::Auto if host.qemu => Ok((
            DomainType::Qemu,
            "auto: kvm is not available, using qemu (TCG emulation, slower)".into(),
        )),
        DomainTypeChoice::Auto => Err("the hypervisor offers neither kvm nor qemu domains for x86_64".into()),
    }
}
