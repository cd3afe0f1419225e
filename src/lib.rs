//! kvmprov: provision Debian cloud-image VMs on KVM/libvirt from one YAML file.
//!
//! Data flows one way: `cli` → `commands` → `settings` → `stages` → (`kvmprov_image`,
//! `kvmprov_seed`, `kvmprov_hypervisor`, `ssh`). `cli` holds the arguments and one `match`
//! over the commands; each command is a file in `commands`. Lower layers never read the config
//! file; only `output` prints. No stage imports a sibling stage and no command another command:
//! what several of them need lives below them (`layout`, `firmware`, `host`, `domains`, `drift`,
//! `login`, `address`, `lock`, `report`, `parallel`).
pub mod address;
pub mod cli;
pub mod cloud_init;
pub mod commands;
pub mod config;
pub mod console;
pub mod digest;
pub mod domains;
pub mod drift;
pub mod exit;
pub mod firmware;
pub mod host;
pub mod layout;
pub mod lock;
pub mod login;
pub mod nvram;
pub mod output;
pub mod parallel;
pub mod process;
pub mod report;
pub mod settings;
pub mod snapshot;
pub mod ssh;
pub mod stages;
pub mod state;
pub mod terminal;
