//! kvmprov-hypervisor: the only code that talks to libvirt.
//!
//! A thin, typed layer over the `virt` crate, one file per object: the connection and host
//! facts (`connection`), how long a silent daemon is given (`keepalive`), networks and their DHCP leases (`network`), `dir` storage pools and
//! volumes with uploads through streams (`storage`), a domain's serial console as a stream
//! (`console`), domains, snapshots and guest-agent addresses (`domain`), a defined domain
//! changed in place (`domain_change`). It works the same for `qemu:///system`, `qemu+ssh://host/system` and
//! libvirt's `test:///default` driver. `uri` parses libvirt URIs; `xml` holds what the XML
//! looks like, both ways, as pure functions.
//!
//! Every error names what was being done and carries libvirt's own message on one line.

mod connection;
mod console;
mod domain;
mod domain_change;
mod error;
mod keepalive;
mod network;
mod snapshot;
mod storage;
pub mod uri;
pub mod xml;

pub use connection::{HostInfo, Hypervisor};
pub use console::Console;
pub use domain::{DomainInfo, DomainListing, DomainState, ListedDomain};
pub use error::HvError;
pub use keepalive::{keepalive_deadline, KEEPALIVE_COUNT, KEEPALIVE_INTERVAL};
pub use network::NetworkInfo;
pub use snapshot::{
    takes_uefi_snapshots, uefi_snapshot_libvirt, SnapshotInfo, UEFI_SNAPSHOT_LIBVIRT,
};
pub use storage::{PoolAction, PoolInfo, PoolOutcome, VolumeInfo};
pub use uri::{ssh_destination, SshDest};
pub use xml::{domain_types, DomainType, Firmware, FirmwareSupport, NetworkIpv4};
