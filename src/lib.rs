//! kvmprov: provision Debian cloud-image VMs on KVM/libvirt from one YAML file.
//!
//! Data flows one way: `config` → `stages` → (`kvmprov_image`, `kvmprov_seed`,
//! `kvmprov_hypervisor`, `guest`). Lower layers never read the config file or print.
pub mod address;
pub mod cli;
pub mod config;
pub mod guest;
pub mod inventory;
pub mod output;
pub mod plan;
pub mod schema;
pub mod stages;
pub mod state;
