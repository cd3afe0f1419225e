//! The stages: preflight → image-cache → provision → runtime, and cleanup; and the commands
//! that look without changing anything: `check`, `ping`, `status` (with `ssh`).
//!
//! Each stage observes the hypervisor, plans with a pure function, and applies the plan (or,
//! with `--check`, only prints it). No stage module imports another: what several need lives
//! below them (`settings`, `layout`, `instance`, `host`, `domains`, `run`, `lock`, …). This
//! module is the one place that knows them all: it runs the selected stages on every
//! hypervisor, in order, and in `full` takes each instance from provision straight on to
//! runtime (`provision_then_runtime`).

pub mod check;
pub mod cleanup;
pub mod image_cache;
pub mod ping;
pub mod preflight;
pub mod provision;
pub mod runtime;
pub mod status;

use kvmprov_hypervisor::uri::is_local;
use kvmprov_hypervisor::{HvError, Hypervisor};

use crate::lock::lock_all;
use crate::parallel::{parallel, pipeline};
use crate::plan::{error_chain, Outcome, StageReport};
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
    /// runtime (and not only planned) runs as one pipeline per instance (`provision_then_runtime`).
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

/// What the runtime half gives for one instance: its outcomes, or why it could not look.
type Ran = Result<Vec<Outcome>, HvError>;

// Provision and runtime in one run (`full`, applying): one pipeline per instance. An instance
// is started, waited for and snapshotted as soon as its own disk, seed and domain exist, so
// early guests boot while later disks are made, and starts do not queue behind the last disk.
//
// What is done once per host (observing, the pools, the operator key, the networks) comes
// first. At most `--jobs` instances are being provisioned at once; waiting for a guest is idle
// and holds no such slot (as in the runtime stage alone). An instance whose provision failed
// is not started: its runtime line says so, the others go on. The output still reads stage
// after stage: runtime's lines are held until provision's are all printed.
impl HostRun<'_> {
    /// The provision stage's result, then the runtime stage's (report, error, or both: the
    /// instances done before one could not be looked at are kept).
    fn provision_then_runtime(&self, handoff: &Handoff, label: bool) -> Vec<StageDone> {
        let (Some(hv), true) = (&self.hv, self.going()) else {
            return Vec::new();
        };
        let s = self.s;
        s.printer
            .stage_header(&self.header(Stage::Provision.as_str(), label), s.check);
        let host = match provision::prepare(s, hv, handoff) {
            Ok(host) => host,
            Err(e) => return vec![self.done(Stage::Provision, Err(error_chain(&e)), label)],
        };
        if host.stopped() {
            return vec![self.done(Stage::Provision, Ok(host.finish(Vec::new())), label)];
        }
        let runner = runtime::Runner::new(s, hv);
        let held = s.printer.held();
        let results = pipeline(
            host.instances(),
            (runtime::workers(s), s.jobs),
            |item| host.apply(item),
            || held.release(&self.header(Stage::Runtime.as_str(), label), s.check),
            |(inst, _), made| -> Ran {
                if made.failed() {
                    let o = runtime::not_started(inst);
                    held.outcome(&o);
                    return Ok(vec![o]);
                }
                let Ok(runner) = &runner else {
                    return Ok(Vec::new());
                };
                let seen = runtime::observe(hv, inst)?;
                Ok(runner.apply(inst, &seen, &|o| held.outcome(o)))
            },
        );
        let (made, ran): (Vec<Outcome>, Vec<Ran>) = results.into_iter().unzip();
        let mut out = vec![self.done(Stage::Provision, Ok(host.finish(made)), label)];
        out.extend(self.runtime_done(runner.err(), ran, label));
        out
    }

    /// The runtime half's report and, when it could not set out or look at an instance, the
    /// first such error after it.
    fn runtime_done(&self, setup: Option<HvError>, ran: Vec<Ran>, label: bool) -> Vec<StageDone> {
        let mut report = StageReport::new("runtime");
        let mut error = setup.map(|e| error_chain(&e));
        for r in ran {
            match r {
                Ok(outcomes) => report.outcomes.extend(outcomes),
                Err(e) => {
                    error.get_or_insert_with(|| error_chain(&e));
                }
            }
        }
        let mut out = Vec::new();
        if error.is_none() || !report.outcomes.is_empty() {
            out.push(self.done(Stage::Runtime, Ok(report), label));
        }
        if let Some(e) = error {
            out.push(self.done(Stage::Runtime, Err(e), label));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::output::OutputFormat;
    use crate::plan::{Op, Status};
    use crate::settings::{Options, Session, Stage};

    /// A test-driver node: the default network and `web-01`, defined as the config says and
    /// shut off (`runstate` 5).
    fn node(dir: &Path) -> String {
        let mac = kvmprov_hypervisor::xml::mac_for("web-01");
        let x = format!(
            "<node>\n<network><name>default</name><bridge name='virbr0'/><forward/>\
             <ip address='192.168.122.1' netmask='255.255.255.0'/></network>\n\
             <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\
             <name>web-01</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>\
             <os><type>hvm</type></os><metadata><kvmprov:instance xmlns:kvmprov='{ns}'>\
             <kvmprov:image name='debian-12' version='' sha512=''/>\
             <kvmprov:config digest='' instance-id='web-01-1'/></kvmprov:instance></metadata>\
             <devices><interface type='network'><source network='default'/>\
             <mac address='{mac}'/></interface></devices><test:runstate>5</test:runstate></domain>\n</node>\n",
            ns = kvmprov_hypervisor::xml::METADATA_NS
        );
        let p = dir.join("node.xml");
        std::fs::write(&p, x).unwrap();
        format!("test://{}", p.display())
    }

    /// web-02 cannot be provisioned (its image is not cached): it is not started, and its
    /// runtime line says why; web-01 goes on and is started. The run fails, as before.
    #[test]
    fn an_instance_whose_provision_failed_is_not_started_while_the_others_go_on() {
        let t = tempfile::tempdir().unwrap();
        let uri = node(t.path());
        let yaml = format!(
            "kvm_libvirt_uri: \"{uri}\"\nkvm_domain_type: qemu\n\
             kvm_image_cache_path: {0}/images\nkvm_instance_disk_pool_path: {0}/instances\n\
             kvm_cloud_image_catalog:\n  - image_name: debian-12\n    image_url: http://127.0.0.1:9/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2\n    image_checksum_manifest_url: http://127.0.0.1:9/images/cloud/bookworm/latest/SHA512SUMS\n\
             kvm_cloud_init_defaults:\n  password: \"pipeline-test\"\nkvm_instance_definitions:\n\
             \x20 - instance_name: web-01\n    image_name: debian-12\n    vcpus: 1\n    memory_mib: 512\n\
             \x20 - instance_name: web-02\n    image_name: debian-12\n    vcpus: 1\n    memory_mib: 512\n",
            t.path().display()
        );
        let path = t.path().join("vars.yml");
        let cfg = crate::config::parse(&path, &yaml, &[]).unwrap();
        let s = Session::new(
            cfg,
            Options {
                output: OutputFormat::Json,
                no_wait: true,
                ..Options::default()
            },
        );
        let reports = super::run_stages(&s, &[Stage::Provision, Stage::Runtime]).unwrap();
        let stages: Vec<&str> = reports.iter().map(|r| r.stage.as_str()).collect();
        assert_eq!(stages, ["provision", "runtime"]);
        let line = |stage: usize, target: &str| {
            reports[stage]
                .outcomes
                .iter()
                .find(|o| o.action.target == target)
                .unwrap_or_else(|| panic!("{target} in {:?}", reports[stage]))
        };
        assert_eq!(line(0, "web-01").status, Status::Done);
        assert!(line(0, "web-02").failed());
        let started = line(1, "web-01");
        assert_eq!(
            (started.action.op, &started.status),
            (Op::Start, &Status::Done)
        );
        let skipped = line(1, "web-02");
        assert_eq!(skipped.action.op, Op::Skip, "{skipped:?}");
        assert!(skipped.action.reason.contains("provision failed"));
        assert_eq!(reports[1].outcomes.len(), 2, "{:?}", reports[1]);
        assert!(reports.iter().any(crate::plan::StageReport::failed));
    }
}
