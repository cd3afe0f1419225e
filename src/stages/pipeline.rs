//! Provision and runtime in one run (`full`, applying): one pipeline per instance. An instance
//! is started, waited for and snapshotted as soon as its own disk, seed and domain exist, so
//! early guests boot while later disks are made, and starts do not queue behind the last disk.
//!
//! What is done once per host (observing, the pools, the operator key, the networks) comes
//! first. At most `--jobs` instances are being provisioned at once; waiting for a guest is idle
//! and holds no such slot (as in the runtime stage alone). An instance whose provision failed
//! is not started: its runtime line says so, the others go on. The output still reads stage
//! after stage: runtime's lines are held until provision's are all printed.

use kvmprov_hypervisor::HvError;

use super::{provision, runtime, HostRun, StageDone};
use crate::parallel::pipeline;
use crate::plan::{error_chain, Outcome, StageReport};
use crate::run::Handoff;
use crate::settings::Stage;

/// What the runtime half gives for one instance: its outcomes, or why it could not look.
type Ran = Result<Vec<Outcome>, HvError>;

impl HostRun<'_> {
    /// The provision stage's result, then the runtime stage's (report, error, or both: the
    /// instances done before one could not be looked at are kept).
    pub(super) fn provision_then_runtime(&self, handoff: &Handoff, label: bool) -> Vec<StageDone> {
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
        let reports = super::super::run_stages(&s, &[Stage::Provision, Stage::Runtime]).unwrap();
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
