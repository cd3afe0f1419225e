//! The settings layer: the variables file (already resolved into a [`Config`]) and the command
//! line, combined once into an immutable [`Session`] that every command and stage reads.
//!
//! Here, not in `cli`, so that nothing below the command line needs to know about clap's
//! argument types; and built in one step, so no code sees a half-made session.

use kvmprov_hypervisor::Hypervisor;

use crate::config::{Config, StageChoice};
use crate::output::{OutputFormat, Printer};

/// Most instances worked on at once by default: beyond this the host, not kvmprov, is the limit.
const DEFAULT_MAX_JOBS: usize = 8;

/// One stage of a provisioning run, in the order `full` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Preflight,
    ImageCache,
    Provision,
    Runtime,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 4] = [
        Stage::Preflight,
        Stage::ImageCache,
        Stage::Provision,
        Stage::Runtime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Preflight => "preflight",
            Stage::ImageCache => "image-cache",
            Stage::Provision => "provision",
            Stage::Runtime => "runtime",
        }
    }
}

/// What `kvmprov provision` runs: every stage (`full`) or only one (`kvm_provision_stage`, as
/// in the Ansible project kvmprov replaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageSelection {
    Full,
    Only(Stage),
}

impl StageSelection {
    /// The stages to run, in order.
    pub fn stages(self) -> Vec<Stage> {
        match self {
            StageSelection::Full => Stage::ALL.to_vec(),
            StageSelection::Only(stage) => vec![stage],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StageSelection::Full => "full",
            StageSelection::Only(stage) => stage.as_str(),
        }
    }
}

impl From<StageChoice> for StageSelection {
    fn from(choice: StageChoice) -> Self {
        match choice {
            StageChoice::Full => StageSelection::Full,
            StageChoice::Preflight => StageSelection::Only(Stage::Preflight),
            StageChoice::ImageCache => StageSelection::Only(Stage::ImageCache),
            StageChoice::Provision => StageSelection::Only(Stage::Provision),
            StageChoice::Runtime => StageSelection::Only(Stage::Runtime),
        }
    }
}

/// `--stage` is parsed by clap straight into a selection (the same names as
/// `kvm_provision_stage`), so no string is looked at twice.
impl clap::ValueEnum for StageSelection {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            StageSelection::Full,
            StageSelection::Only(Stage::Preflight),
            StageSelection::Only(Stage::ImageCache),
            StageSelection::Only(Stage::Provision),
            StageSelection::Only(Stage::Runtime),
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// What the command line adds to the variables file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--check`: plan only.
    pub check: bool,
    pub output: OutputFormat,
    /// `--jobs`; default: one per instance, at most [`DEFAULT_MAX_JOBS`].
    pub jobs: Option<usize>,
    /// `--no-wait`: runtime only starts the domains.
    pub no_wait: bool,
    /// `provision --stage`; default: `kvm_provision_stage`.
    pub stage: Option<StageSelection>,
}

/// One invocation: the resolved config and how to run. Never changed once built.
pub struct Session {
    pub cfg: Config,
    pub check: bool,
    pub output: OutputFormat,
    pub jobs: usize,
    pub printer: Printer,
    /// Runtime only starts domains (`--no-wait`).
    pub no_wait: bool,
    /// The stages `provision` runs: `--stage`, else `kvm_provision_stage`.
    pub stages: StageSelection,
}

impl Session {
    pub fn new(cfg: Config, opts: Options) -> Self {
        let jobs = opts
            .jobs
            .unwrap_or_else(|| cfg.instances.len().clamp(1, DEFAULT_MAX_JOBS))
            .max(1);
        Session {
            stages: opts.stage.unwrap_or_else(|| cfg.stage.into()),
            cfg,
            check: opts.check,
            output: opts.output,
            jobs,
            printer: Printer::new(opts.output),
            no_wait: opts.no_wait,
        }
    }

    /// The same settings over another config (narrowed to some hosts or instances).
    pub fn with_config(&self, cfg: Config) -> Session {
        Session {
            cfg,
            check: self.check,
            output: self.output,
            jobs: self.jobs,
            printer: self.printer.clone(),
            no_wait: self.no_wait,
            stages: self.stages,
        }
    }

    /// This session narrowed to one hypervisor and its instances.
    pub fn for_host(&self, uri: &str) -> Session {
        self.with_config(self.cfg.for_host(uri))
    }

    /// One session per hypervisor the config names (one, unless instances name their own).
    pub fn per_host(&self) -> Vec<Session> {
        self.cfg.hosts().iter().map(|h| self.for_host(h)).collect()
    }

    pub fn connect(&self) -> Result<Hypervisor, kvmprov_hypervisor::HvError> {
        Hypervisor::connect(&self.cfg.libvirt_uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_expands_to_four_stages_in_order() {
        assert_eq!(
            StageSelection::from(StageChoice::Full).stages(),
            vec![
                Stage::Preflight,
                Stage::ImageCache,
                Stage::Provision,
                Stage::Runtime
            ]
        );
        assert_eq!(
            StageSelection::from(StageChoice::Runtime).stages(),
            vec![Stage::Runtime]
        );
    }

    #[test]
    fn stage_names_are_the_config_names() {
        for choice in [
            StageChoice::Full,
            StageChoice::Preflight,
            StageChoice::ImageCache,
            StageChoice::Provision,
            StageChoice::Runtime,
        ] {
            assert_eq!(StageSelection::from(choice).as_str(), choice.as_str());
            let parsed = <StageSelection as clap::ValueEnum>::from_str(choice.as_str(), false);
            assert_eq!(parsed, Ok(StageSelection::from(choice)));
        }
    }
}
