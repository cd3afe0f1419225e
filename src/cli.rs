//! Command-line interface: the arguments, and the one `match` ([`run`]) that hands each
//! command to its file in [`crate::commands`].

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::commands;
use crate::config::{self, StageChoice};
use crate::exit::ExitStatus;
use crate::output::{OutputFormat, Printer};
use crate::report::error_chain;
use crate::settings::{Options, Session};
use crate::snapshot::Verb;

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
    /// Start declared instances (all without NAME) and wait until each answers over SSH with
    /// cloud-init done.
    Start(StartArgs),
    /// Shut down declared instances (ACPI; all without NAME), waiting up to --timeout for each
    /// to power off; one still running fails, or is powered off with --force.
    Stop(StopArgs),
    /// Reboot declared instances (ACPI; all without NAME), then wait for a new boot to answer
    /// over SSH with cloud-init done; one still in its old boot after --timeout fails, or is
    /// reset with --force.
    Restart(StopArgs),
    /// Attach to an instance's serial console through libvirt (Ctrl+] ends it), or print its
    /// console log (--log).
    Console(ConsoleArgs),
    /// Open an SSH session to an instance, with its pinned host key.
    Ssh(SshArgs),
    /// List, take, revert to and delete snapshots of declared instances.
    #[command(
        long_about = "List, take, revert to and delete snapshots of declared instances: \
            libvirt's internal snapshots (the disks and, of a running guest, its memory). \
            Every verb takes --check (print the plan, change nothing) and --output json; \
            a name that is not a declared instance is a usage error (exit 2) and nothing is \
            asked or changed. `revert` only prints its plan unless --yes is given.\n\n\
            UEFI guests: libvirt 10.10 or newer on the hypervisor, with the qcow2 NVRAM \
            kvmprov gives UEFI guests it defines there; older libvirt is refused, naming its \
            version."
    )]
    Snapshot(SnapshotArgs),
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
    #[arg(long, value_enum, default_value_t = commands::inventory::Format::Json, conflicts_with = "host")]
    pub format: commands::inventory::Format,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub action: SnapshotAction,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotAction {
    /// The snapshots of the declared instances (or of those named): when taken, the guest's
    /// state then, which is current.
    List {
        /// Declared instance names (default: all).
        names: Vec<String>,
    },
    /// Take a snapshot of an instance (of a running guest: disks and memory).
    Create {
        /// The instance name.
        name: String,
        /// The snapshot's name (letters, digits, `-`, `_`, `.`; not starting with `.`).
        snapshot: String,
    },
    /// Bring an instance back to a snapshot: prints the plan only, unless --yes.
    Revert {
        /// The instance name.
        name: String,
        /// The snapshot's name.
        snapshot: String,
        /// Really revert (what the disks got since the snapshot is lost).
        #[arg(long)]
        yes: bool,
    },
    /// Delete a snapshot of an instance (the guest keeps its current state).
    Delete {
        /// The instance name.
        name: String,
        /// The snapshot's name.
        snapshot: String,
    },
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
    pub stage: Option<StageChoice>,
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
pub struct StartArgs {
    /// Declared instances to work on (default: all of them); any other name is an error.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Declared instances to work on (default: all of them); any other name is an error.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Seconds a guest gets to power off (stop) or to leave its boot (restart) after the ACPI
    /// request.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    /// stop: power off a guest still running after --timeout; restart: reset one still in its
    /// old boot.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// The instance name.
    pub name: String,
    /// Print the console log kvmprov keeps (sanitized) instead of attaching.
    #[arg(long)]
    pub log: bool,
    /// With --log: keep printing what the guest writes (a log on this machine).
    #[arg(long, requires = "log")]
    pub follow: bool,
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
    stop_on_signals(Printer::new(cli.global.output));
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

/// Ctrl-C and SIGTERM stop a run at once, with the conventional exit codes (130, 143). Nothing
/// needs undoing: every step is safe to resume (partial downloads have temporary names, a
/// half-made instance is reused or replaced by the next run); only our ssh children are stopped.
fn stop_on_signals(printer: Printer) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            // `console` may have the terminal in raw mode, and exiting does not unwind.
            crate::terminal::restore();
            let what = if sig == SIGINT {
                "interrupted"
            } else {
                "terminated"
            };
            printer.note(&format!(
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

/// The whole program: every command, and the file that runs it. Those that print something
/// about kvmprov itself (schema, completions, man) need no variables file; every other reads
/// it first ([`with_session`]).
fn run(cli: Cli) -> ExitStatus {
    let g = &cli.global;
    let name = cli.command.name();
    match cli.command {
        Command::Check => with_session(g, name, |s| commands::check::run(&s)),
        Command::Ping => with_session(g, name, |s| commands::ping::run(&s)),
        Command::Preflight => with_session(g, name, |s| commands::preflight::run(&s)),
        Command::ImageCache(ImageCacheArgs {
            action: Some(ImageCacheAction::Prune { yes }),
            ..
        }) => with_session(g, name, |s| commands::image_cache_prune::run(&s, yes)),
        Command::ImageCache(args) => {
            with_session(g, name, |s| commands::image_cache::run(&s, args.all))
        }
        Command::Provision(args) => with_session(g, name, |s| {
            commands::provision::run(&s, args.stage, args.runtime.no_wait)
        }),
        Command::Runtime(args) => {
            with_session(g, name, |s| commands::runtime::run(&s, args.no_wait))
        }
        Command::Cleanup => with_session(g, name, |s| commands::cleanup::run(&s)),
        Command::Status => with_session(g, name, |s| commands::status::run(&s)),
        Command::Start(args) => with_session(g, name, |s| commands::start::run(&s, &args.names)),
        Command::Stop(args) => with_session(g, name, |s| {
            commands::stop::run(&s, &args.names, args.force, secs(args.timeout))
        }),
        Command::Restart(args) => with_session(g, name, |s| {
            commands::restart::run(&s, &args.names, args.force, secs(args.timeout))
        }),
        Command::Console(args) => with_session(g, name, |s| {
            commands::console::run(&s, &args.name, args.log, args.follow)
        }),
        Command::Ssh(args) => with_session(g, name, |s| {
            commands::ssh::run(&s, &args.name, &args.command)
        }),
        Command::Snapshot(SnapshotArgs { action }) => with_session(g, name, |s| match action {
            SnapshotAction::List { names } => commands::snapshot_list::run(&s, &names),
            SnapshotAction::Create { name, snapshot } => {
                commands::snapshot::run(&s, Verb::Create, &name, &snapshot, false)
            }
            SnapshotAction::Revert {
                name,
                snapshot,
                yes,
            } => commands::snapshot::run(&s, Verb::Revert, &name, &snapshot, yes),
            SnapshotAction::Delete { name, snapshot } => {
                commands::snapshot::run(&s, Verb::Delete, &name, &snapshot, false)
            }
        }),
        Command::Inventory(args) => with_session(g, name, |s| {
            commands::inventory::run(&s, args.host.as_deref(), args.format)
        }),
        Command::Schema => commands::schema::run(&Printer::new(g.output)),
        Command::Completions { shell } => {
            commands::completions::run(&Printer::new(g.output), shell, &mut Cli::command())
        }
        Command::Man { out_dir } => {
            commands::man::run(&Printer::new(g.output), Cli::command(), out_dir.as_deref())
        }
    }
}

fn secs(s: u64) -> std::time::Duration {
    std::time::Duration::from_secs(s)
}

/// Read the variables file and run `command` with the session; an invalid file ends the
/// command before it starts (exit 2), in the command's `--output json` envelope when it has one.
fn with_session(
    g: &GlobalArgs,
    name: Option<&str>,
    command: impl FnOnce(Session) -> ExitStatus,
) -> ExitStatus {
    match config::load(&g.config, &g.extra) {
        Ok(cfg) => command(Session::new(
            cfg,
            Options {
                check: g.check,
                output: g.output,
                jobs: g.jobs.map(usize::from),
            },
        )),
        Err(e) => {
            Printer::new(g.output).failure(name, &error_chain(&e));
            ExitStatus::Usage
        }
    }
}

impl Command {
    /// The command's name in its `--output json` envelope; `None` for those that print another
    /// format (Ansible's inventory, the JSON Schema, completions, man pages) or hand over to ssh.
    pub fn name(&self) -> Option<&'static str> {
        Some(match self {
            Command::Check => commands::check::NAME,
            Command::Ping => commands::ping::NAME,
            Command::Preflight => commands::preflight::NAME,
            Command::ImageCache(ImageCacheArgs {
                action: Some(ImageCacheAction::Prune { .. }),
                ..
            }) => commands::image_cache_prune::NAME,
            Command::ImageCache(_) => commands::image_cache::NAME,
            Command::Provision(_) => commands::provision::NAME,
            Command::Runtime(_) => commands::runtime::NAME,
            Command::Cleanup => commands::cleanup::NAME,
            Command::Status => commands::status::NAME,
            Command::Start(_) => commands::start::NAME,
            Command::Stop(_) => commands::stop::NAME,
            Command::Restart(_) => commands::restart::NAME,
            Command::Snapshot(SnapshotArgs { action }) => match action {
                SnapshotAction::List { .. } => commands::snapshot_list::NAME,
                SnapshotAction::Create { .. } => commands::snapshot::name(Verb::Create),
                SnapshotAction::Revert { .. } => commands::snapshot::name(Verb::Revert),
                SnapshotAction::Delete { .. } => commands::snapshot::name(Verb::Delete),
            },
            Command::Ssh(_)
            | Command::Console(_)
            | Command::Inventory(_)
            | Command::Schema
            | Command::Completions { .. }
            | Command::Man { .. } => return None,
        })
    }
}
