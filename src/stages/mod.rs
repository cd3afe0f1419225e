//! The stages: preflight → image-cache → provision → runtime, and cleanup; and the commands
//! that look without changing anything: `check`, `ping`, `status` (with `ssh`).
//!
//! Each stage observes the hypervisor, plans with a pure function, and applies the plan (or,
//! with `--check`, only prints it). No stage module imports another: what several need lives
//! below them (`settings`, `layout`, `instance`, `host`, `domains`, `run`, `lock`, …). This
//! module is the one place that knows them all: it runs the selected stages on every
//! hypervisor, in order.

pub mod check;
pub mod cleanup;
pub mod image_cache;
pub mod ping;
mod pipeline;
pub mod preflight;
pub mod provision;
pub mod runtime;
pub mod status;

use kvmprov_hypervisor::Hypervisor;

use crate::host::is_local;
use crate::lock::lock_all;
use crate::parallel::parallel;
use crate::plan::{error_chain, StageReport};
use crate::run::{host_error, Handoff, StageError};
use crate::settings::{Session, Stage};

/// Run stages in order, stopping at the first stage that fails. Images are fetched once into
/// the local cache; then each hypervisor runs its stages under its own lock, all of them in
/// parallel, so one host that is down fails only its own instances.
pub fn run_stages(s: &Session, stages: &[Stage]) -> Result<Vec<StageReport>, StageError> {
    run_stages_with(s, stages, false)
}

/// `run_stages`; `all_images` fetches the whole catalog, not only the images instances use.
///
/// Order: every host's preflight (in parallel), so nothing is downloaded for a host that cannot
/// take it; then the images, once, into the local cache; then each host's remaining stages
/// (in parallel). A host that cannot be reached or fails a stage stops there; the others go on.
pub fn run_stages_with(
    s: &Session,
    stages: &[Stage],
    all_images: bool,
) -> Result<Vec<StageReport>, StageError> {
    let hosts = s.per_host();
    let locks = if s.check {
        Vec::new()
    } else {
        lock_all(&hosts).map_err(|e| StageError::new(Vec::new(), &e))?
    };
    let _cache = image_cache::hold_cache(s, stages).map_err(|e| StageError::new(Vec::new(), &e))?;
    let multi = hosts.len() > 1;
    let mut runs = connect(&hosts, stages);
    let mut handoff = Handoff::default();

    if stages.contains(&Stage::Preflight) {
        on_each_host(&mut runs, |r| {
            vec![r.stage(Stage::Preflight, &handoff, multi)]
        });
    }
    let fetched = fetch_images(s, stages, all_images, &runs, &mut handoff)?;
    if !fetched.as_ref().is_some_and(StageReport::failed) {
        let rest: Vec<Stage> = stages
            .iter()
            .copied()
            .filter(|st| *st != Stage::Preflight)
            .collect();
        on_each_host(&mut runs, |r| r.stages(&rest, &handoff, multi));
    }
    drop(locks);
    collect(runs, fetched, multi, stages.contains(&Stage::Preflight))
}

/// Connect to every hypervisor at once. `image-cache` alone needs no local hypervisor: it
/// only fills the local cache.
fn connect<'a>(hosts: &'a [Session], stages: &[Stage]) -> Vec<HostRun<'a>> {
    let image_cache_only = stages.iter().all(|st| *st == Stage::ImageCache);
    let conns = parallel(hosts, hosts.len(), |h| {
        if image_cache_only && is_local(&h.cfg.libvirt_uri) {
            None
        } else {
            Some(h.connect())
        }
    });
    hosts
        .iter()
        .zip(conns)
        .map(|(h, c)| HostRun {
            s: h,
            error: c
                .as_ref()
                .and_then(|c| c.as_ref().err())
                .map(|e| error_chain(e)),
            hv: c.and_then(Result::ok),
            reports: Vec::new(),
        })
        .collect()
}

/// Run `work` on every host at once; each host takes in its results in order.
fn on_each_host(runs: &mut [HostRun], work: impl Fn(&HostRun) -> Vec<StageDone> + Sync) {
    let done = parallel(runs, runs.len(), work);
    for (r, ds) in runs.iter_mut().zip(done) {
        for d in ds {
            r.absorb(d);
        }
    }
}

/// The images, once, into the local cache: when the run has the image-cache stage and some
/// host still goes on.
fn fetch_images(
    s: &Session,
    stages: &[Stage],
    all_images: bool,
    runs: &[HostRun],
    handoff: &mut Handoff,
) -> Result<Option<StageReport>, StageError> {
    if !stages.contains(&Stage::ImageCache) || !runs.iter().any(HostRun::going) {
        return Ok(None);
    }
    s.printer.stage_header("image-cache", s.check);
    image_cache::run(s, all_images, handoff)
        .map(Some)
        .map_err(|e| StageError {
            reports: Vec::new(),
            error: format!("image-cache stage: {}", error_chain(&e)),
        })
}

/// The run's reports: a single host reads in stage order; several read image-cache, then per
/// host. Failed if any host stopped with an error.
fn collect(
    runs: Vec<HostRun>,
    fetched: Option<StageReport>,
    multi: bool,
    had_preflight: bool,
) -> Result<Vec<StageReport>, StageError> {
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    let fetched_at = if multi { 0 } else { usize::from(had_preflight) };
    for r in runs {
        reports.extend(r.reports);
        if let Some(e) = r.error {
            errors.push(host_error(multi, &r.s.cfg.libvirt_uri, e));
        }
    }
    if let Some(f) = fetched {
        reports.insert(fetched_at.min(reports.len()), f);
    }
    StageError::collect(reports, errors)
}

/// One hypervisor's part of a run: its connection, reports so far and why it stopped.
struct HostRun<'a> {
    s: &'a Session,
    hv: Option<Hypervisor>,
    reports: Vec<StageReport>,
    /// Could not connect, or a stage could not run: the host is done.
    error: Option<String>,
}

/// A stage's result on one host: a report, nothing to do (`None`), or why it could not run.
type StageDone = Result<Option<StageReport>, String>;

impl HostRun<'_> {
    /// Still worked on: no error, no failed stage.
    fn going(&self) -> bool {
        self.error.is_none() && !self.reports.iter().any(StageReport::failed)
    }

    /// `stages` in order, up to the first that fails or cannot run. Provision followed by
    /// runtime (and not only planned) runs as one pipeline per instance ([`pipeline`]).
    fn stages(&self, stages: &[Stage], handoff: &Handoff, label: bool) -> Vec<StageDone> {
        let mut out = Vec::new();
        let mut rest = stages;
        while let Some(st) = rest.first() {
            let pipelined = !self.s.check && rest.starts_with(&[Stage::Provision, Stage::Runtime]);
            let (done, taken) = if pipelined {
                (self.provision_then_runtime(handoff, label), 2)
            } else {
                (vec![self.stage(*st, handoff, label)], 1)
            };
            rest = &rest[taken..];
            let stop = done.iter().any(|d| match d {
                Ok(Some(report)) => report.failed(),
                Ok(None) => false,
                Err(_) => true,
            });
            out.extend(done);
            if stop {
                break;
            }
        }
        out
    }

    fn stage(&self, stage: Stage, handoff: &Handoff, label: bool) -> StageDone {
        let (Some(hv), true) = (&self.hv, self.going()) else {
            return Ok(None);
        };
        let s = self.s;
        let name = match stage {
            // A local hypervisor reads the local cache: nothing to upload.
            Stage::ImageCache if is_local(&s.cfg.libvirt_uri) => return Ok(None),
            Stage::ImageCache => "image-upload",
            st => st.as_str(),
        };
        s.printer.stage_header(&self.header(name, label), s.check);
        // Each stage's own error type, flattened to its cause chain.
        let result: Result<StageReport, String> = match stage {
            Stage::Preflight => preflight::run(s, hv).map_err(|e| error_chain(&e)),
            Stage::ImageCache => Ok(image_cache::distribute(s, hv, &handoff.images)),
            Stage::Provision => provision::run(s, hv, handoff).map_err(|e| error_chain(&e)),
            Stage::Runtime => runtime::run(s, hv).map_err(|e| error_chain(&e)),
        };
        self.done(stage, result, label)
    }

    /// A stage's header: its name, and the host's when the run spans several.
    fn header(&self, name: &str, label: bool) -> String {
        match label {
            true => format!("{name} @ {}", self.s.cfg.libvirt_uri),
            false => name.to_string(),
        }
    }

    /// A stage's result, its report labelled with the host when the run spans several.
    fn done(&self, stage: Stage, result: Result<StageReport, String>, label: bool) -> StageDone {
        result
            .map(|mut r| {
                r.host = label.then(|| self.s.cfg.libvirt_uri.clone());
                Some(r)
            })
            .map_err(|e| format!("{} stage: {e}", stage.as_str()))
    }

    fn absorb(&mut self, done: StageDone) {
        match done {
            Ok(Some(r)) => self.reports.push(r),
            Ok(None) => {}
            Err(e) => self.error = Some(e),
        }
    }
}
