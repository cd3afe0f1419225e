//! Command-line interface: arguments, dispatch, output and exit codes.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config;
use crate::exit::ExitStatus;
use crate::output::{self, OutputFormat};
use crate::plan::{error_chain, StageReport};
use crate::run::StageError;
use crate::settings::{Options, Session, Stage, StageSelection};
use crate::stages;

#[derive(Parser, Debug)]
#[command(
    name = "kvmprov",
    version,
    about = "Provision Debian cloud-image VMs on KVM/libvirt from one YAML file",
    long_about = "Provision Debian cloud-image VMs on KVM/libvirt from one YAML file.\n\n\
        kvmprov caches verified Debian cloud images, creates per-instance overlay disks and \
        cloud-init seeds, defines and starts libvirt domains, waits until each guest answers \
        over SSH (with pinned host keys), takes optional snapshots and cleans up strictly \
        within the declared instances.\n\n\
        Stages: preflight -> image-cache -> provision -> runtime (`provision` runs the stage \
        named by kvm_provision_stage; `full` runs all four). Every command that changes \
        something accepts --check to print its plan and change nothing.\n\n\
        Hypervisors: kvm_hypervisor_host (localhost, or [user@]host over qemu+ssh) and an \
        optional hypervisor_host per instance; several hosts are worked on in parallel, images \
        are downloaded once and uploaded to each through libvirt.",
    after_help = "Exit codes: 0 success, 1 a stage failed, 2 usage or configuration error, 130/143 stopped by Ctrl-C/SIGTERM (safe to run again)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// The variables file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "vars/kvm-provisioning.yml",
        env = "KVMPROV_CONFIG",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// Override a top-level variable; VALUE is YAML (`true` is a boolean). Repeatable.
    #[arg(
        short = 'e',
        long = "extra-var",
        global = true,
        value_name = "KEY=VALUE"
    )]
    pub extra: Vec<String>,
    /// Print the plan and change nothing.
    #[arg(long, global = true)]
    pub check: bool,
    /// Output format: human (progress and a summary table) or json (one document on stdout).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Instances worked on at once (default: all, at most 8).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: Option<u16>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate the variables file offline and print a summary.
    Check,
    /// Connect to the hypervisor and print versions, domain types and networks.
    Ping,
    /// Check the hypervisor: reachable, domain type, networks, pool paths and access, free space.
    Preflight,
    /// Download, verify and cache the catalog images used by the instances.
    ImageCache(ImageCacheArgs),
    /// Run the stage named by kvm_provision_stage (`full`: all stages).
    Provision(ProvisionArgs),
    /// Start declared domains, wait for SSH and cloud-init, take snapshots.
    Runtime(RuntimeArgs),
    /// Remove declared instances (plan only unless kvm_cleanup_confirmed=true).
    Cleanup,
    /// Show each declared instance: state, domain type, image, IP, SSH, snapshots.
    Status,
    /// Open an SSH session to an instance, with its pinned host key.
    Ssh(SshArgs),
    /// Print an Ansible inventory of the declared instances that are running.
    #[command(
        long_about = "Print an Ansible inventory of the declared instances that are running \
            and have an address: groups per image, hypervisor and network; host variables \
            that make Ansible log in like kvmprov (operator key, pinned host key with \
            StrictHostKeyChecking=yes, through a remote hypervisor). Instances left out are \
            named on stderr with the reason.\n\n\
            As a dynamic inventory: `ansible -i inventory.sh all -m ping` with inventory.sh \
            running `exec kvmprov -c FILE inventory \"$@\"` (or the binary itself, which \
            answers `kvmprov --list` and `kvmprov --host NAME`, reading KVMPROV_CONFIG). \
            As a file: `kvmprov inventory --format yaml > inventory.yml`."
    )]
    Inventory(InventoryArgs),
    /// Print the JSON Schema of the variables file (for editors and validators).
    Schema,
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a directory.
    Man {
        /// Write kvmprov.1 and a page per subcommand (kvmprov-inventory.1, …) here.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct InventoryArgs {
    /// Every group and host, with `_meta.hostvars` (the default; what Ansible asks a script for).
    #[arg(long, conflicts_with = "host")]
    pub list: bool,
    /// Only this instance's variables, as JSON (`{}` when it is not running).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// json: Ansible's dynamic-inventory document; yaml: a static inventory file.
    #[arg(long, value_enum, default_value_t = crate::inventory::Format::Json, conflicts_with = "host")]
    pub format: crate::inventory::Format,
}

#[derive(Args, Debug)]
pub struct ImageCacheArgs {
    /// Cache every catalog image, not only those instances use.
    #[arg(long)]
    pub all: bool,
    #[command(subcommand)]
    pub action: Option<ImageCacheAction>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCacheAction {
    /// List cached image versions no domain's disk nor any disk in an instance pool is backed
    /// by; delete them with --yes.
    Prune {
        /// Really delete them.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args, Debug)]
pub struct ProvisionArgs {
    /// Run this stage instead of kvm_provision_stage.
    #[arg(long, value_enum)]
    pub stage: Option<StageSelection>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct RuntimeArgs {
    /// Runtime only starts the domains: no waiting for SSH/cloud-init, no snapshots.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Args, Debug)]
pub struct SshArgs {
    /// The instance name.
    pub name: String,
    /// A command to run instead of an interactive shell.
    #[arg(trailing_var_arg = true)]
    pub command: Vec<String>,
}

/// Parse arguments, run, and say how it ended.
pub fn main() -> ExitStatus {
    let cli = match Cli::try_parse_from(ansible_script_form(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` are "errors" that print to stdout and succeed.
            let status = if e.use_stderr() {
                ExitStatus::Usage
            } else {
                ExitStatus::Success
            };
            let _ = e.print();
            return status;
        }
    };
    init_logging(cli.global.verbose);
    stop_on_signals();
    run(cli)
}

/// Ansible runs an inventory script as `SCRIPT --list` or `SCRIPT --host NAME`: those two forms
/// (otherwise usage errors) mean `inventory --list` and `inventory --host NAME`, so the binary
/// itself can be given to `ansible -i`.
fn ansible_script_form(mut args: Vec<OsString>) -> Vec<OsString> {
    let first = args.get(1).and_then(|a| a.to_str());
    if matches!(
        (first, args.len()),
        (Some("--list"), 2) | (Some("--host"), 3)
    ) {
        args.insert(1, "inventory".into());
    }
    args
}

/// The commands that print something about kvmprov itself: they need no variables file.
fn print_static(command: &Command) -> Option<ExitStatus> {
    let mut out = output::stdout();
    let written = match command {
        Command::Schema => {
            output::document(&crate::schema::render());
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "kvmprov", &mut out);
            Ok(())
        }
        Command::Man { out_dir: None } => clap_mangen::Man::new(Cli::command()).render(&mut out),
        Command::Man { out_dir: Some(dir) } => clap_mangen::generate_to(Cli::command(), dir),
        _ => return None,
    };
    Some(match written {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            output::error(&format!("cannot write: {e}"));
            ExitStatus::Failure
        }
    })
}

/// Ctrl-C and SIGTERM stop a run at once, with the conventional exit codes (130, 143). Nothing
/// needs undoing: every step is safe to resume (partial downloads have temporary names, a
/// half-made instance is reused or replaced by the next run); only our ssh children are stopped.
fn stop_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let what = if sig == SIGINT {
                "interrupted"
            } else {
                "terminated"
            };
            output::note(&format!(
                "\nkvmprov: {what}; stopped. The next run resumes partial downloads and reuses or replaces anything half-made."
            ));
            crate::process::stop_children();
            std::process::exit(128 + sig);
        }
    });
}

/// Only kvmprov's own crates log, whatever `KVMPROV_LOG` says (`debug`, `trace`, `ureq=trace`):
/// they show URLs redacted, while third-party crates print them whole (ureq's debug log:
/// `sending request GET http://user:password@host/…?token=…`). A second filter, so a directive
/// of the user's can lower kvmprov's levels but never let another crate through.
fn own_targets_only() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    // Targets match by prefix: `kvmprov` covers kvmprov_image, kvmprov_hypervisor, …
    Targets::new()
        .with_default(LevelFilter::OFF)
        .with_target("kvmprov", LevelFilter::TRACE)
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // `KVMPROV_LOG=target=level,…` (or one level) overrides -v. `Targets`, not `EnvFilter`:
    // the same syntax for what kvmprov logs, without the regex engine in the build.
    let filter: Targets = std::env::var("KVMPROV_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            format!(
                "kvmprov={level},kvmprov_image={level},kvmprov_seed={level},kvmprov_hypervisor={level}"
            )
            .parse()
            .unwrap_or_default()
        });
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .with(filter)
        .with(own_targets_only())
        .try_init();
}

fn run(cli: Cli) -> ExitStatus {
    if let Some(status) = print_static(&cli.command) {
        return status;
    }
    let g = &cli.global;
    let cfg = match config::load(&g.config, &g.extra) {
        Ok(cfg) => cfg,
        Err(e) => {
            output::Printer::new(g.output).failure(cli.command.name(), &error_chain(&e));
            return ExitStatus::Usage;
        }
    };
    let session = Session::new(cfg, options(&cli));
    let command = cli.command.name().unwrap_or_default();
    let result = match cli.command {
        Command::Check => return stages::check::run(&session),
        Command::Ping => return stages::ping::run(&session),
        Command::Ssh(args) => return stages::status::ssh(&session, &args.name, &args.command),
        Command::Status => return stages::status::run(&session),
        Command::Inventory(args) => {
            return crate::inventory::run(&session, args.host.as_deref(), args.format)
        }
        // Printed by `print_static` above, without a variables file.
        Command::Schema | Command::Completions { .. } | Command::Man { .. } => {
            return ExitStatus::Success
        }
        Command::Preflight => stages::run_stages(&session, &[Stage::Preflight]),
        Command::ImageCache(args) => match args.action {
            Some(ImageCacheAction::Prune { yes }) => stages::image_cache::prune(&session, yes),
            None => stages::run_stages_with(&session, &[Stage::ImageCache], args.all),
        },
        Command::Provision(_) => stages::run_stages(&session, &session.stages.stages()),
        Command::Runtime(_) => stages::run_stages(&session, &[Stage::Runtime]),
        Command::Cleanup => stages::cleanup::run(&session),
    };
    finish(&session, command, result)
}

/// What the command line adds to the variables file's settings.
fn options(cli: &Cli) -> Options {
    let g = &cli.global;
    let (no_wait, stage) = match &cli.command {
        Command::Provision(a) => (a.runtime.no_wait, a.stage),
        Command::Runtime(a) => (a.no_wait, None),
        _ => (false, None),
    };
    Options {
        check: g.check,
        output: g.output,
        jobs: g.jobs.map(usize::from),
        no_wait,
        stage,
    }
}

/// Print the summary (human) or the JSON document, and pick the exit status.
fn finish(
    session: &Session,
    command: &str,
    result: Result<Vec<StageReport>, StageError>,
) -> ExitStatus {
    let (reports, fatal) = match result {
        Ok(r) => (r, None),
        Err(StageError { reports, error }) => (reports, Some(error)),
    };
    session
        .printer
        .stages(command, session.check, &reports, fatal.as_deref());
    ExitStatus::failed_if(fatal.is_some() || reports.iter().any(StageReport::failed))
}

impl Command {
    /// The command's name in its `--output json` envelope; `None` for those that print another
    /// format (Ansible's inventory, the JSON Schema, completions, man pages) or hand over to ssh.
    pub fn name(&self) -> Option<&'static str> {
        Some(match self {
            Command::Check => "check",
            Command::Ping => "ping",
            Command::Preflight => "preflight",
            Command::ImageCache(ImageCacheArgs {
                action: Some(ImageCacheAction::Prune { .. }),
                ..
            }) => "image-cache prune",
            Command::ImageCache(_) => "image-cache",
            Command::Provision(_) => "provision",
            Command::Runtime(_) => "runtime",
            Command::Cleanup => "cleanup",
            Command::Status => "status",
            Command::Ssh(_)
            | Command::Inventory(_)
            | Command::Schema
            | Command::Completions { .. }
            | Command::Man { .. } => return None,
        })
    }
}
