//! The stages on every hypervisor a config names: each host connected, locked and worked on
//! in parallel, so one host that is down fails only its own instances; the images fetched
//! once, between every host's preflight and the rest; the reports collected in stage order.
//! What a host's provision and runtime do together is [`super::pipeline`]'s.

use kvmprov_hypervisor::uri::is_local;
use kvmprov_hypervisor::Hypervisor;

use super::error::StageError;
use super::handoff::Handoff;
use super::runtime::lifecycle;
use super::{image_cache, pipeline, preflight, provision, recreate, runtime};
use crate::exit::ExitStatus;
use crate::lock::{lock_all, RunLock};
use crate::parallel::parallel;
use crate::report::StageReport;
use crate::settings::{Session, Stage, StageSettings};

/// What a run of stages ends with: the reports of what ran, and the error that stopped it (a
/// host or the whole run), if one did.
pub struct RunReport {
    pub reports: Vec<StageReport>,
    pub error: Option<StageError>,
}

impl RunReport {
    fn stopped(error: impl Into<StageError>) -> Self {
        RunReport {
            reports: Vec::new(),
            error: Some(error.into()),
        }
    }

    /// A stage failed, or a host or the run stopped.
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.reports.iter().any(StageReport::failed)
    }
}

/// Run the selected stages in order, stopping each host at its first stage that fails.
///
/// Order: every host's preflight (in parallel), so nothing is downloaded for a host that cannot
/// take it; then the images, once, into the local cache; then each host's remaining stages
/// (in parallel), each host under its own lock. A host that cannot be reached or fails a stage
/// stops there; the others go on.
pub fn run(s: &Session, settings: &StageSettings) -> RunReport {
    let stages = &settings.stages[..];
    let hosts = s.per_host();
    let locks = if s.check {
        Vec::new()
    } else {
        match lock_all(&hosts) {
            Ok(locks) => locks,
            Err(e) => return RunReport::stopped(e),
        }
    };
    let _cache = match image_cache::hold_cache(s, stages) {
        Ok(cache) => cache,
        Err(e) => return RunReport::stopped(e),
    };
    let mut handoff = Handoff {
        no_wait: settings.no_wait,
        several_hosts: hosts.len() > 1,
        ..Handoff::default()
    };
    let mut runs = connect(&hosts, stages);

    if stages.contains(&Stage::Preflight) {
        on_each_host(&mut runs, |r| vec![r.stage(Stage::Preflight, &handoff)]);
    }
    let fetched =
        (stages.contains(&Stage::ImageCache) && runs.iter().any(HostRun::going)).then(|| {
            s.printer.stage_header("image-cache", s.check);
            image_cache::fetch(s, settings.all_images, &mut handoff)
        });
    if !fetched.as_ref().is_some_and(StageReport::failed) {
        let rest: Vec<Stage> = stages
            .iter()
            .copied()
            .filter(|st| *st != Stage::Preflight)
            .collect();
        on_each_host(&mut runs, |r| r.stages(&rest, &handoff));
    }
    drop(locks);
    collect(runs, fetched, &handoff, stages.contains(&Stage::Preflight))
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
        .map(|(h, c)| {
            let (hv, error) = match c {
                None => (None, None),
                Some(Ok(hv)) => (Some(hv), None),
                Some(Err(source)) => (
                    None,
                    Some(StageError::Connect {
                        uri: h.cfg.libvirt_uri.clone(),
                        source,
                    }),
                ),
            };
            HostRun {
                s: h,
                hv,
                error,
                reports: Vec::new(),
            }
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

/// The run's reports: a single host reads in stage order; several read image-cache, then per
/// host. Failed if any host stopped with an error.
fn collect(
    runs: Vec<HostRun>,
    fetched: Option<StageReport>,
    handoff: &Handoff,
    had_preflight: bool,
) -> RunReport {
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    let fetched_at = if handoff.several_hosts {
        0
    } else {
        usize::from(had_preflight)
    };
    for r in runs {
        reports.extend(r.reports);
        if let Some(e) = r.error {
            errors.push(e.on_host(handoff.several_hosts, &r.s.cfg.libvirt_uri));
        }
    }
    if let Some(f) = fetched {
        reports.insert(fetched_at.min(reports.len()), f);
    }
    RunReport {
        reports,
        error: StageError::of_hosts(errors),
    }
}

/// One hypervisor's part of a run: its connection, reports so far and why it stopped.
struct HostRun<'a> {
    s: &'a Session,
    hv: Option<Hypervisor>,
    reports: Vec<StageReport>,
    /// Could not connect, or a stage could not run: the host is done.
    error: Option<StageError>,
}

/// A stage's result on one host: a report, nothing to do (`None`), or why it could not run.
type StageDone = Result<Option<StageReport>, StageError>;

impl HostRun<'_> {
    /// Still worked on: no error, no failed stage.
    fn going(&self) -> bool {
        self.error.is_none() && !self.reports.iter().any(StageReport::failed)
    }

    /// `stages` in order, up to the first that fails or cannot run. Provision followed by
    /// runtime (and not only planned) runs as one pipeline per instance ([`pipeline`]).
    fn stages(&self, stages: &[Stage], handoff: &Handoff) -> Vec<StageDone> {
        let mut out = Vec::new();
        let mut rest = stages;
        while let Some(st) = rest.first() {
            // Applying drift restarts guests one at a time: runtime runs as a whole stage.
            let pipelined = !self.s.check
                && !self.s.cfg.drift_apply_confirmed
                && rest.starts_with(&[Stage::Provision, Stage::Runtime]);
            let (done, taken) = match (&self.hv, self.going()) {
                (Some(hv), true) if pipelined => (
                    pipeline::provision_then_runtime(self.s, hv, handoff)
                        .into_iter()
                        .map(|r| self.done(r, handoff))
                        .collect(),
                    2,
                ),
                _ => (vec![self.stage(*st, handoff)], 1),
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

    /// One stage on this host, under its header. Every stage has the same entry point,
    /// `run(session, hypervisor, handoff)` (runtime also takes drift's recreate parts, from
    /// the two stages that own them), and its own error, named here after the stage.
    fn stage(&self, stage: Stage, handoff: &Handoff) -> StageDone {
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
        s.printer
            .stage_header(&handoff.header(name, &s.cfg.libvirt_uri), s.check);
        let result = match stage {
            Stage::Preflight => preflight::run(s, hv).map_err(StageError::Preflight),
            Stage::ImageCache => image_cache::run(s, hv, handoff).map_err(|never| match never {}),
            Stage::Provision => provision::run(s, hv, handoff).map_err(StageError::Provision),
            Stage::Runtime => {
                let remake = recreate::Remaker::new(s, hv, handoff);
                runtime::run(s, hv, handoff, &remake).map_err(StageError::Runtime)
            }
        };
        self.done(result, handoff)
    }

    /// A stage's result, its report labelled with the host when the run spans several.
    fn done(&self, result: Result<StageReport, StageError>, handoff: &Handoff) -> StageDone {
        result.map(|mut r| {
            r.host = handoff.host(&self.s.cfg.libvirt_uri);
            Some(r)
        })
    }

    fn absorb(&mut self, done: StageDone) {
        match done {
            Ok(Some(r)) => self.reports.push(r),
            Ok(None) => {}
            Err(e) => self.error = Some(e),
        }
    }
}

/// Work that is not a run of the stages (cleanup, a day-two verb) on every hypervisor the
/// session names, `at_once` hosts at a time: each host locked unless `planned_only` says its run
/// only plans, connected, worked on; a host that fails is named and the others go on.
pub fn each_hypervisor(
    s: &Session,
    at_once: usize,
    planned_only: impl Fn(&Session) -> bool + Sync,
    work: impl Fn(&Session, &Hypervisor, &Handoff) -> Result<StageReport, StageError> + Sync,
) -> RunReport {
    let hosts = s.per_host();
    let handoff = Handoff {
        several_hosts: hosts.len() > 1,
        ..Handoff::default()
    };
    let done = parallel(&hosts, at_once, |h| {
        let _lock = if planned_only(h) {
            None
        } else {
            Some(RunLock::acquire(h)?)
        };
        let hv = h.connect().map_err(|source| StageError::Connect {
            uri: h.cfg.libvirt_uri.clone(),
            source,
        })?;
        work(h, &hv, &handoff)
    });
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for (h, result) in hosts.iter().zip(done) {
        match result {
            Ok(r) => reports.push(r),
            Err(e) => errors.push(e.on_host(handoff.several_hosts, &h.cfg.libvirt_uri)),
        }
    }
    RunReport {
        reports,
        error: StageError::of_hosts(errors),
    }
}

/// A day-two verb's command (`start`, `stop`, `restart`, named `name` in its output): the
/// named instances (all declared ones when none; an undeclared name changes nothing, exit 2),
/// the verb on every hypervisor in parallel, the report printed.
pub fn verb_command(
    s: &Session,
    name: &str,
    names: &[String],
    settings: &lifecycle::Settings,
) -> ExitStatus {
    let cfg = match s.cfg.select(names) {
        Ok(cfg) => cfg,
        Err(e) => {
            s.printer.failure(Some(name), &e.to_string());
            return ExitStatus::Usage;
        }
    };
    let s = s.with_config(cfg);
    let run = each_hypervisor(
        &s,
        s.per_host().len(),
        |h| h.check,
        |h, hv, handoff| {
            lifecycle::run(h, hv, handoff, settings).map_err(|source| StageError::Lifecycle {
                verb: settings.verb.as_str(),
                source,
            })
        },
    );
    s.printer
        .stages(name, s.check, &run.reports, run.error.as_ref());
    ExitStatus::failed_if(run.failed())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::output::OutputFormat;
    use crate::report::{Op, Status};
    use crate::settings::{Options, Session, Stage, StageSettings};

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
                ..Options::default()
            },
        );
        let settings = StageSettings {
            stages: vec![Stage::Provision, Stage::Runtime],
            no_wait: true,
            all_images: false,
        };
        let run = super::run(&s, &settings);
        assert!(run.error.is_none(), "{:?}", run.error);
        let reports = run.reports;
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
        assert!(reports.iter().any(crate::report::StageReport::failed));
    }
}
