//! The stages: preflight → image-cache → provision → runtime, and cleanup.
//!
//! Each stage observes the hypervisor, plans with a pure function, and applies the plan (or,
//! with `--check`, only prints it). Every stage has the same entry point,
//! `run(&Session, &Hypervisor, &Handoff) -> Result<StageReport, <its own error>>` (runtime's
//! also takes [`recreate`]'s parts). No stage imports another: what several need lives below
//! them (`settings`, `layout`, `firmware`, `host`, `domains`, `lock`, …) or is the stage
//! boundary here ([`handoff`], [`error`]); what joins two stages' parts is here too
//! ([`pipeline`], [`recreate`]).
//!
//! - [`hosts`]: runs the selected stages on every hypervisor, in parallel, in order
//! - [`pipeline`]: provision straight on to runtime, instance by instance (`full`, applying)
//! - [`recreate`]: cleanup's and provision's parts of drift's recreate, handed to runtime
//! - [`handoff`]: what a stage reads besides the session and the hypervisor
//! - [`error`]: why a run stopped, typed until the output layer shows it

pub mod cleanup;
pub mod error;
pub mod handoff;
pub mod hosts;
pub mod image_cache;
mod pipeline;
pub mod preflight;
pub mod provision;
pub mod recreate;
pub mod runtime;

pub use error::StageError;
pub use handoff::Handoff;
pub use hosts::{run, RunReport};
