//! Provision stage: per instance, a qcow2 overlay on the cached image, a cloud-init seed ISO and
//! a domain — created only when missing; the overlay and the seed are made concurrently and the
//! domain only after both, so a domain never exists without its disk and seed. Existing
//! domains are never modified; differences from the config are drift.
//!
//! [`run`] observes (pools, images, volumes, domains), plans each instance with the pure
//! [`plan`] module, and applies with [`create`].

mod create;
pub mod disks;
mod nics;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use kvmprov_hypervisor::uri::is_local;
use kvmprov_hypervisor::xml::{self, DomainType};
use kvmprov_hypervisor::{DomainListing, DomainState, HvError, Hypervisor, PoolInfo};
use kvmprov_image::CachedImage;

use disks::{describe_disk, plan_disks, DiskPlan};
use plan::{describe, plan_instance, Backing, Found, InstancePlan};

use crate::config::{Config, Instance};
use crate::host::resolve_domain_type;
use crate::layout::{data_disk_name, disk_name, pool_name_for};
use crate::parallel::parallel;
use crate::report::{Action, Op, Outcome, StageReport};
use crate::settings::Session;
use crate::stages::handoff::Handoff;
use crate::state;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("cloud-init seed: {0}")]
    Seed(#[from] kvmprov_seed::SeedError),
    #[error("{0}")]
    Invalid(String),
}

/// A pool kvmprov uses: its name (libvirt's, when a pool holds the directory already) and
/// what libvirt says of it (`None`: no pool holds the directory).
struct Pool {
    name: String,
    found: Option<PoolInfo>,
}

impl Pool {
    /// The image cache's pool and the instance pool, from one listing of the pools.
    fn observe_both(hv: &Hypervisor, cfg: &Config) -> Result<(Pool, Pool), HvError> {
        let mut found = hv
            .pools_by_paths(&[&cfg.image_cache_path, &cfg.instance_pool_path])?
            .into_iter();
        let mut next = |prefix: &str, path: &std::path::Path| {
            let found = found.next().flatten();
            Pool {
                name: found
                    .as_ref()
                    .map_or_else(|| pool_name_for(prefix, path), |p| p.name.clone()),
                found,
            }
        };
        let cache = next("images", &cfg.image_cache_path);
        Ok((cache, next("instances", &cfg.instance_pool_path)))
    }

    /// The pool's info when it is active.
    fn active(&self) -> Option<&PoolInfo> {
        self.found.as_ref().filter(|p| p.active)
    }
}

pub fn run(s: &Session, hv: &Hypervisor, handoff: &Handoff) -> Result<StageReport, ProvisionError> {
    let host = prepare(s, hv, handoff)?;
    if host.stopped() {
        return Ok(host.report);
    }
    let outcomes = if s.check {
        host.planned()
    } else {
        parallel(host.instances(), s.jobs, |item| host.apply(item))
    };
    Ok(host.finish(outcomes))
}

/// The stage on one host with its once-per-host part done (observed, planned, pools made):
/// what is left is per instance, so a run can take each instance on as soon as it is made.
pub struct Prepared<'a> {
    s: &'a Session,
    /// The pool lines so far.
    report: StageReport,
    planned: Vec<(&'a Instance, InstancePlan)>,
    images: BTreeMap<String, CachedImage>,
    /// The instance pool's data disk volumes: name → virtual size in bytes.
    volumes: BTreeMap<String, u64>,
    /// The host's domains as prepared listed them.
    domains: DomainListing,
    /// The data disk lines of applied instances, each put before its instance's line by
    /// [`Prepared::finish`] (the instance's own line is what the pipeline passes on).
    disk_outcomes: Mutex<Vec<Outcome>>,
    shared: create::Shared<'a>,
}

/// One instance and what provision will do with it.
pub type Planned<'a> = (&'a Instance, InstancePlan);

/// Observe the host, plan every instance, create missing pools (their lines printed) and, when
/// applying, read the operator key.
pub fn prepare<'a>(
    s: &'a Session,
    hv: &'a Hypervisor,
    handoff: &Handoff,
) -> Result<Prepared<'a>, ProvisionError> {
    let cfg = &s.cfg;
    let mut report = StageReport::new("provision");
    let (domain_type, _) =
        resolve_domain_type(cfg.domain_type, &hv.host_info()?).map_err(ProvisionError::Invalid)?;
    let (cache_pool, inst_pool) = Pool::observe_both(hv, cfg)?;
    let images = usable_images(s, hv, handoff, &cache_pool)?;
    // The pool's volume names, listed once; sizes only of the declared data disks (the only
    // sizes a plan compares).
    let listed_volumes: BTreeMap<String, Option<u64>> = match inst_pool.active() {
        Some(p) => {
            hv.refresh_pool(&p.name)?;
            let data: BTreeSet<String> = cfg
                .instances
                .iter()
                .flat_map(|i| i.disks.iter().map(|d| data_disk_name(&i.name, &d.name)))
                .collect();
            hv.volume_names(&p.name, |n| data.contains(n))?
        }
        None => BTreeMap::new(),
    };
    let volumes: BTreeMap<String, u64> = listed_volumes
        .iter()
        .filter_map(|(n, size)| size.map(|size| (n.clone(), size)))
        .collect();
    let domains = hv.list_domains()?;
    let planned = plan_all(
        cfg,
        hv,
        handoff,
        &images,
        (&domains, &listed_volumes),
        domain_type,
    )?;

    report.outcomes = create_pools(
        s,
        hv,
        [
            (&cache_pool, &cfg.image_cache_path),
            (&inst_pool, &cfg.instance_pool_path),
        ],
    );
    // Only when applying: a plan reads no state. Opened through the checked handle: a planted
    // `.kvmprov` or an unsafe pool tree is refused before a key is read or written.
    let (state, operator_public) = if s.check || report.failed() {
        (None, String::new())
    } else {
        // A guest drift re-creates gets a new seed: with the operator key too.
        let needs_work = planned.iter().any(|(_, p)| match p {
            InstancePlan::Create { .. } => true,
            InstancePlan::Drift(_, steps) => crate::drift::plan::removal(steps).is_some(),
            _ => false,
        });
        let st = state::StateDir::open(&cfg.instance_pool_path)?;
        let operator = st.operator_key(needs_work)?;
        (Some(st), operator.map(|k| k.public).unwrap_or_default())
    };
    let qcow2_nvram = if s.check || report.failed() {
        Vec::new()
    } else {
        qcow2_nvram(s, hv, domain_type)
    };
    let shared = create::Shared {
        cfg,
        hv,
        domain_type,
        instance_pool: inst_pool.name,
        listed_volumes: listed_volumes.into_keys().collect(),
        state,
        operator_public,
        qcow2_nvram,
    };
    Ok(Prepared {
        s,
        report,
        planned,
        images,
        volumes,
        domains,
        disk_outcomes: Mutex::new(Vec::new()),
        shared,
    })
}

/// The snapshot-capable UEFI firmware of this hypervisor (`crate::nvram`), per Secure Boot
/// choice its UEFI instances with `snapshot_name` need: only on libvirt 10.10 or newer, and
/// with each qcow2 template made. What cannot be made is a warning, and those instances get
/// the autoselected firmware (their snapshot is then refused, saying why).
fn qcow2_nvram(s: &Session, hv: &Hypervisor, domain_type: DomainType) -> Vec<create::Qcow2Nvram> {
    use crate::config::FirmwareChoice;
    let wanted: Vec<bool> = [false, true]
        .into_iter()
        .filter(|sb| {
            s.cfg.instances.iter().any(|i| {
                i.firmware == FirmwareChoice::Uefi
                    && i.secure_boot == *sb
                    && i.snapshot_name.is_some()
            })
        })
        .collect();
    let capable = hv
        .host_info()
        .is_ok_and(|h| kvmprov_hypervisor::takes_uefi_snapshots(&h.libvirt_version));
    if wanted.is_empty() || !capable {
        return Vec::new();
    }
    let loaders = match hv.firmware_support(domain_type) {
        Ok(f) => f.loaders,
        Err(e) => {
            s.printer.warning(&format!(
                "cannot read the UEFI firmware of {}: {}; UEFI instances get a raw NVRAM (no snapshots)",
                s.cfg.libvirt_uri,
                crate::report::error_chain(&e)
            ));
            return Vec::new();
        }
    };
    let remote = kvmprov_hypervisor::ssh_destination(&s.cfg.libvirt_uri);
    let mut out = Vec::new();
    for secure_boot in wanted {
        let Some((loader, vars)) = crate::nvram::loader_and_vars(&loaders, secure_boot) else {
            s.printer.warning(&format!(
                "{} has no OVMF_CODE_4M{}.fd among its UEFI loaders; its UEFI instances get a raw NVRAM (no snapshots)",
                s.cfg.libvirt_uri,
                if secure_boot { ".ms" } else { "" }
            ));
            continue;
        };
        let template = crate::nvram::template_path(&s.cfg.instance_pool_path, &vars);
        match crate::nvram::ensure_template(remote.as_ref(), &vars, &template) {
            Ok(()) => out.push(create::Qcow2Nvram {
                secure_boot,
                loader,
                template,
            }),
            Err(e) => s.printer.warning(&format!(
                "{}; UEFI instances get a raw NVRAM (no snapshots)",
                crate::report::error_chain(&e)
            )),
        }
    }
    out
}

impl<'a> Prepared<'a> {
    /// A pool could not be made: no instance can be.
    pub fn stopped(&self) -> bool {
        self.report.failed()
    }

    pub fn instances(&self) -> &[Planned<'a>] {
        &self.planned
    }

    /// The state of a domain this stage found and left as it was (plan `Keep` or `Drift`), as
    /// listed when the stage began: runtime need not read it again. `None` for the others.
    pub fn kept_state(&self, (inst, p): &Planned) -> Option<DomainState> {
        match p {
            InstancePlan::Keep | InstancePlan::Drift(..) => {
                self.domains.get(&inst.name).map(|d| d.state)
            }
            _ => None,
        }
    }

    /// `--check`: every instance's line, as planned (printed).
    fn planned(&self) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for (inst, p) in &self.planned {
            let domain_exists = matches!(p, InstancePlan::Keep | InstancePlan::Drift(..));
            for (d, dp) in plan_disks(inst, &self.volumes, domain_exists) {
                let o = Outcome::planned(describe_disk(inst, d, &dp));
                self.s.printer.outcome(&o);
                outcomes.push(o);
            }
            let action = describe(&self.s.cfg, inst, p, self.images.get(&inst.image_name));
            let o = match p {
                InstancePlan::Blocked(why) => Outcome::failure(action, why.clone()),
                _ => Outcome::planned(action),
            };
            self.s.printer.outcome(&o);
            outcomes.push(o);
            if matches!(p, InstancePlan::Create { .. }) {
                for a in nics::planned(inst) {
                    let o = Outcome::planned(a);
                    self.s.printer.outcome(&o);
                    outcomes.push(o);
                }
            }
        }
        outcomes
    }

    /// Create what one instance's plan says; its line printed as soon as it is done.
    pub fn apply(&self, (inst, p): &Planned) -> Outcome {
        let image = self.images.get(&inst.image_name);
        let action = describe(&self.s.cfg, inst, p, image);
        let outcome = match p {
            InstancePlan::Keep | InstancePlan::Drift(..) => {
                self.report_data_disks(inst);
                Outcome::done(action)
            }
            InstancePlan::Blocked(why) => Outcome::failure(action, why.clone()),
            InstancePlan::Create { disk } => match self.make_data_disks(inst) {
                Ok(()) => {
                    crate::report::run(action, || create::create(&self.shared, inst, image, *disk))
                }
                Err(name) => Outcome::failure(
                    action,
                    format!("not created: its data disk {name} could not be created"),
                ),
            },
        };
        self.s.printer.outcome(&outcome);
        outcome
    }

    /// Whether `inst` can be made again after its domain (and, with `disk`, its overlay) is
    /// removed for drift's recreate: asked before anything is removed, so a guest that could
    /// not come back is left as it is. `Err`: why not, one sentence.
    pub fn creatable(&self, inst: &Instance, disk: bool) -> Result<(), String> {
        if self.shared.state.is_none() {
            return Err("kvmprov's state directory was not opened".into());
        }
        if !disk {
            return Ok(());
        }
        match self.images.get(&inst.image_name) {
            Some(image) => create::check_disk_size(inst, image)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err(format!(
                "image `{}` is not cached on this hypervisor: run the image-cache stage first (make image-cache)",
                inst.image_name
            )),
        }
    }

    /// Drift's recreate: `inst`, whose domain (and, with `disk`, overlay) was just removed,
    /// made again as provision makes a missing instance (its data disks kept and attached, a
    /// new seed with a new pinned host key, the overlay when `disk`); its line printed.
    pub fn recreate(&self, inst: &Instance, disk: bool) -> Outcome {
        self.apply(&(inst, InstancePlan::Create { disk }))
    }

    /// One line per data disk of `inst`, whose domain exists (printed): nothing is changed.
    fn report_data_disks(&self, inst: &Instance) {
        let lines: Vec<Outcome> = plan_disks(inst, &self.volumes, true)
            .into_iter()
            .map(|(d, dp)| Outcome::done(describe_disk(inst, d, &dp)))
            .collect();
        for o in &lines {
            self.s.printer.outcome(o);
        }
        if let Ok(mut all) = self.disk_outcomes.lock() {
            all.extend(lines);
        }
    }

    /// One line per data disk of `inst` (printed): the missing ones created when `inst` is
    /// being created. `Err`: the name of the first disk that could not be made.
    fn make_data_disks(&self, inst: &Instance) -> Result<(), String> {
        let mut lines = Vec::new();
        let mut failed = None;
        for (d, dp) in plan_disks(inst, &self.volumes, false) {
            let action = describe_disk(inst, d, &dp);
            let o = match dp {
                DiskPlan::Create if failed.is_none() => crate::report::run(action, || {
                    self.shared
                        .hv
                        .create_volume(
                            &self.shared.instance_pool,
                            &data_disk_name(&inst.name, &d.name),
                            d.size_gib << 30,
                            "qcow2",
                        )
                        .map(|_| ())
                }),
                DiskPlan::Create => Outcome::done(Action::new(
                    &inst.name,
                    Op::Skip,
                    format!("{}: skipped, an earlier data disk failed", action.reason),
                )),
                _ => Outcome::done(action),
            };
            if o.failed() && failed.is_none() {
                failed = Some(d.name.clone());
            }
            self.s.printer.outcome(&o);
            lines.push(o);
        }
        if let Ok(mut all) = self.disk_outcomes.lock() {
            all.extend(lines);
        }
        failed.map_or(Ok(()), Err)
    }

    /// The stage's report: the pool lines, then `outcomes` (the instances', in config order),
    /// each after its data disks' lines.
    pub fn finish(self, outcomes: Vec<Outcome>) -> StageReport {
        let mut report = self.report;
        let mut disks = self.disk_outcomes.into_inner().unwrap_or_default();
        for o in outcomes {
            let (mine, rest): (Vec<Outcome>, Vec<Outcome>) = disks
                .into_iter()
                .partition(|d| d.action.target == o.action.target);
            disks = rest;
            report.outcomes.extend(mine);
            report.outcomes.push(o);
        }
        report.outcomes.extend(disks);
        report
    }
}

/// The cached image versions provision may back overlays with: the ones this run resolved,
/// else the newest cached. A remote hypervisor backs overlays with its own copy: an image the
/// image-cache stage has not uploaded there yet is as good as not cached (in check mode the
/// upload was only planned, so the local cache counts).
fn usable_images(
    s: &Session,
    hv: &Hypervisor,
    handoff: &Handoff,
    cache_pool: &Pool,
) -> Result<BTreeMap<String, CachedImage>, HvError> {
    let cfg = &s.cfg;
    let mut images = handoff.images.clone();
    for inst in &cfg.instances {
        if !images.contains_key(&inst.image_name) {
            if let Ok(Some(c)) =
                kvmprov_image::newest_cached(&cfg.image_cache_path, &inst.image_name)
            {
                images.insert(inst.image_name.clone(), c);
            }
        }
    }
    if s.check || is_local(&cfg.libvirt_uri) {
        return Ok(images);
    }
    // Rescanned: on storage shared with the local cache the files may be there unscanned.
    let Some(pool) = cache_pool.active() else {
        return Ok(BTreeMap::new());
    };
    hv.refresh_pool(&pool.name)?;
    let mut present = BTreeMap::new();
    for (name, c) in images {
        let Some(file) = c.path.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue;
        };
        if hv.volume_exists(&pool.name, &file)?
            && hv.volume_exists(&pool.name, &format!("{file}.json"))?
        {
            present.insert(name, c);
        }
    }
    Ok(present)
}

/// Observe each instance's domain (or its disk, when it has none) and plan it.
fn plan_all<'a>(
    cfg: &'a Config,
    hv: &Hypervisor,
    handoff: &Handoff,
    images: &BTreeMap<String, CachedImage>,
    (domains, volumes): (&DomainListing, &BTreeMap<String, Option<u64>>),
    domain_type: DomainType,
) -> Result<Vec<(&'a Instance, InstancePlan)>, HvError> {
    let mut planned = Vec::new();
    for inst in &cfg.instances {
        let found = match domains.get(&inst.name) {
            Some(listed) => {
                let mut d = xml::parse_domain_xml(&hv.listed_domain_xml(&inst.name, listed)?)?;
                d.autostart = listed.autostart;
                Found::Exists(Box::new(d))
            }
            None => Found::NoDomain {
                disk_exists: volumes.contains_key(&disk_name(&inst.name)),
            },
        };
        let image = match images.get(&inst.image_name) {
            Some(cached) => Backing::Cached(cached),
            // In check mode the image-cache stage only planned its download.
            None if handoff.pending.contains(&inst.image_name) => Backing::Pending,
            None => Backing::Missing,
        };
        planned.push((inst, plan_instance(cfg, inst, image, &found, domain_type)));
    }
    Ok(planned)
}

/// Pools first: a line each when missing (printed), up to the first that cannot be made.
fn create_pools(s: &Session, hv: &Hypervisor, pools: [(&Pool, &PathBuf); 2]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for (pool, path) in pools {
        if pool.active().is_some() {
            continue;
        }
        let outcome = create_pool(s, hv, pool, path);
        s.printer.outcome(&outcome);
        let failed = outcome.failed();
        outcomes.push(outcome);
        if failed {
            break;
        }
    }
    outcomes
}

/// A libvirt dir pool for `path` that is missing or inactive: created (or only planned).
fn create_pool(s: &Session, hv: &Hypervisor, pool: &Pool, path: &std::path::Path) -> Outcome {
    let name = &pool.name;
    let action = Action::new(
        format!("pool {name}"),
        Op::Create,
        format!(
            "libvirt dir pool for {} missing or inactive",
            path.display()
        ),
    );
    if s.check {
        Outcome::planned(action)
    } else {
        crate::report::run(action, || {
            hv.ensure_seen_dir_pool(name, path, pool.found.as_ref())
                .map(|_| ())
        })
    }
}
