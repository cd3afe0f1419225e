//! The settings layer: the variables file (already resolved into a [`Config`]) and the global
//! command-line options, combined once into an immutable [`Session`] that every command and
//! stage reads; and the settings of the commands that run stages ([`StageSettings`]), resolved
//! by those commands alone.
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

/// The stages a [`StageChoice`] (`kvm_provision_stage`, `provision --stage`) names, in order.
pub fn stages_of(choice: StageChoice) -> Vec<Stage> {
    match choice {
        StageChoice::Full => Stage::ALL.to_vec(),
        StageChoice::Preflight => vec![Stage::Preflight],
        StageChoice::ImageCache => vec![Stage::ImageCache],
        StageChoice::Provision => vec![Stage::Provision],
        StageChoice::Runtime => vec![Stage::Runtime],
    }
}

/// How a command that runs stages (`preflight`, `image-cache`, `provision`, `runtime`) runs
/// them: resolved once, by that command, from its arguments and the config. Only the stage
/// runner reads it; other commands never see these fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSettings {
    /// The stages to run, in order.
    pub stages: Vec<Stage>,
    /// `--no-wait`: runtime only starts the domains.
    pub no_wait: bool,
    /// `image-cache --all`: every catalog image, not only those instances use.
    pub all_images: bool,
}

impl StageSettings {
    /// One stage, with the defaults.
    pub fn only(stage: Stage) -> Self {
        StageSettings {
            stages: vec![stage],
            no_wait: false,
            all_images: false,
        }
    }

    /// `kvmprov provision`: the stages `--stage` names, else `kvm_provision_stage`.
    pub fn provision(cfg: &Config, stage: Option<StageChoice>, no_wait: bool) -> Self {
        StageSettings {
            stages: stages_of(stage.unwrap_or(cfg.stage)),
            no_wait,
            all_images: false,
        }
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
}

/// One invocation: the resolved config and how to run. Never changed once built.
pub struct Session {
    pub cfg: Config,
    pub check: bool,
    pub output: OutputFormat,
    pub jobs: usize,
    pub printer: Printer,
}

impl Session {
    pub fn new(cfg: Config, opts: Options) -> Self {
        let jobs = opts
            .jobs
            .unwrap_or_else(|| cfg.instances.len().clamp(1, DEFAULT_MAX_JOBS))
            .max(1);
        Session {
            cfg,
            check: opts.check,
            output: opts.output,
            jobs,
            printer: Printer::new(opts.output),
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
            stages_of(StageChoice::Full),
            vec![
                Stage::Preflight,
                Stage::ImageCache,
                Stage::Provision,
                Stage::Runtime
            ]
        );
        assert_eq!(stages_of(StageChoice::Runtime), vec![Stage::Runtime]);
    }

    /// `--stage` and `kvm_provision_stage` are one enum: the same names, and a single stage
    /// is named as the stage itself.
    #[test]
    fn stage_names_are_the_config_names() {
        for choice in [
            StageChoice::Full,
            StageChoice::Preflight,
            StageChoice::ImageCache,
            StageChoice::Provision,
            StageChoice::Runtime,
        ] {
            let parsed = <StageChoice as clap::ValueEnum>::from_str(choice.as_str(), false);
            assert_eq!(parsed, Ok(choice));
            if let [one] = stages_of(choice)[..] {
                assert_eq!(one.as_str(), choice.as_str());
            }
        }
    }

    #[test]
    fn the_command_line_stage_wins_over_the_config() {
        let text = "kvm_provision_stage: runtime\n\
            kvm_cloud_image_catalog:\n  - {image_name: d, image_url: http://x/a.qcow2, image_checksum_manifest_url: http://x/S}\n\
            kvm_instance_definitions:\n  - {instance_name: app-01, image_name: d}\n";
        let cfg = crate::config::parse(std::path::Path::new("t.yml"), text, &[]).unwrap();
        let from_file = StageSettings::provision(&cfg, None, false);
        assert_eq!(from_file.stages, vec![Stage::Runtime]);
        let from_args = StageSettings::provision(&cfg, Some(StageChoice::Preflight), true);
        assert_eq!(from_args.stages, vec![Stage::Preflight]);
        assert!(from_args.no_wait);
    }
}
