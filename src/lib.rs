//! kvmprov: provision Debian cloud-image VMs on KVM/libvirt from one YAML file.
//!
//! Data flows one way: `cli` → `settings` → `stages` → (`kvmprov_image`, `kvmprov_seed`,
//! `kvmprov_hypervisor`, `ssh`). Lower layers never read the config file; only `output` prints. The
//! stages import no sibling stage: what several of them need lives below them (`layout`,
//! `instance`, `host`, `domains`, `drift`, `login`, `address`, `lock`, `run`, `parallel`).
pub mod address;
pub mod cli;
pub mod cloud_init;
pub mod config;
pub mod console;
pub mod digest;
pub mod domains;
pub mod drift;
pub mod exit;
pub mod host;
pub mod instance;
pub mod inventory;
pub mod layout;
pub mod lock;
pub mod login;
pub mod output;
pub mod parallel;
pub mod plan;
pub mod process;
pub mod run;
pub mod schema;
pub mod settings;
pub mod ssh;
pub mod stages;
pub mod state;
