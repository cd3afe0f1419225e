//! The day-two verbs on declared instances, `start`, `stop` and `restart`: part of the runtime
//! stage, whose business is a guest running and ready (they end with its wait: address, SSH
//! with the pinned host key, cloud-init done).
//!
//! Per hypervisor: observe each instance's domain, plan ([`plan`], pure), then print the plan
//! (`--check`) or apply it, the instances in parallel; the hypervisors in parallel too, each
//! under its run lock when something changes. `stop` asks for a shutdown (ACPI) and waits up to
//! its timeout, then fails, or powers the guest off with `--force`. `restart` reads the guest's
//! boot id ([`boot`]), asks for a reboot, waits until the old boot is gone (or resets with
//! `--force`), then for a login that reports another boot id before it waits as runtime does.

mod boot;
pub mod graceful;
mod plan;

use std::time::{Duration, Instant};

use kvmprov_hypervisor::{DomainState, HvError, Hypervisor, NetworkInfo};

pub use plan::{plan_instance, Settings, Verb};

use super::wait::{self, wait_ready};
use super::RuntimeError;
use crate::config::Instance;
use crate::login::{Login, LoginError};
use crate::parallel::parallel;
use crate::report::{error_chain, Action, Op, Outcome, StageReport, Status};
use crate::settings::Session;
use crate::stages::handoff::Handoff;
use boot::BootId;

/// How often a shutdown or a reboot is looked at while waiting.
const POLL_STATE: Duration = Duration::from_millis(500);
const POLL_BOOT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error("{name} on {uri} did not power off within {seconds} s of the shutdown request (does it ignore ACPI?); it is still running: `kvmprov stop --force {name}` powers it off, --timeout gives it longer")]
    StillRunning {
        name: String,
        uri: String,
        seconds: u64,
    },
    #[error("{name} on {uri} still answers from its old boot {seconds} s after the reboot request (does it ignore ACPI?): `kvmprov restart --force {name}` resets it, --timeout gives it longer")]
    NoReboot {
        name: String,
        uri: String,
        seconds: u64,
    },
    #[error("{name} on {uri}: no login from a new boot within {seconds} s of the reboot (last boot id seen: {last})")]
    NoNewBoot {
        name: String,
        uri: String,
        seconds: u64,
        last: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The verb on one hypervisor's instances (those of `s`, already narrowed to the names given).
pub fn run(
    s: &Session,
    hv: &Hypervisor,
    handoff: &Handoff,
    settings: &Settings,
) -> Result<StageReport, HvError> {
    let uri = &s.cfg.libvirt_uri;
    s.printer
        .stage_header(&handoff.header(settings.verb.as_str(), uri), s.check);
    let mut report = StageReport::new(settings.verb.as_str());
    report.host = handoff.host(uri);
    let mut observed = Vec::new();
    for inst in &s.cfg.instances {
        observed.push((inst, hv.domain(&inst.name)?.map(|d| d.state)));
    }
    if s.check {
        for (inst, state) in &observed {
            for action in plan_instance(&inst.name, *state, settings) {
                let o = Outcome::planned(action);
                s.printer.outcome(&o);
                report.outcomes.push(o);
            }
        }
        return Ok(report);
    }
    let waits = settings.verb != Verb::Stop;
    let worker = Worker {
        s,
        hv,
        settings,
        networks: if waits { hv.networks()? } else { Vec::new() },
    };
    let results = parallel(&observed, super::workers(s), |(inst, state)| {
        worker.apply(inst, *state, &|o| s.printer.outcome(o))
    });
    report.outcomes.extend(results.into_iter().flatten());
    Ok(report)
}

/// What the instances of one hypervisor share while the verb is applied.
struct Worker<'a> {
    s: &'a Session,
    hv: &'a Hypervisor,
    settings: &'a Settings,
    /// Read once, for every address lookup.
    networks: Vec<NetworkInfo>,
}

impl Worker<'_> {
    /// One instance's plan in order, each outcome handed to `emit` when known; after a failed
    /// step the rest are skipped.
    fn apply(
        &self,
        inst: &Instance,
        state: Option<DomainState>,
        emit: &dyn Fn(&Outcome),
    ) -> Vec<Outcome> {
        // `restart`: the boot the guest was in before the reboot, once read.
        let mut before: Option<BootId> = None;
        let mut outcomes: Vec<Outcome> = Vec::new();
        for action in plan_instance(&inst.name, state, self.settings) {
            let outcome = if outcomes.iter().any(Outcome::failed) {
                Outcome::failure(action, "skipped: an earlier step failed")
            } else {
                self.step(inst, action, &mut before)
            };
            emit(&outcome);
            outcomes.push(outcome);
        }
        outcomes
    }

    /// One action; a step that learns something says it in the line's reason.
    fn step(&self, inst: &Instance, mut action: Action, before: &mut Option<BootId>) -> Outcome {
        let started = Instant::now();
        let result: Result<Option<String>, LifecycleError> = match action.op {
            Op::Start => self.hv.start(&inst.name).map(|()| None).map_err(Into::into),
            Op::Stop => self.stop(inst).map(Some),
            Op::Reboot => self.reboot(inst, before).map(Some),
            Op::Wait => self.wait(inst, before.as_ref()).map(Some),
            Op::Check => Err(LifecycleError::Invalid(action.reason.clone())),
            _ => Ok(None),
        };
        let status = match result {
            Ok(reason) => {
                if let Some(r) = reason {
                    action.reason = r;
                }
                Status::Done
            }
            Err(e) => Status::Failed(error_chain(&e)),
        };
        Outcome {
            action,
            status,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    fn timeout_secs(&self) -> u64 {
        self.settings.timeout.as_secs()
    }

    /// Ask for a shutdown, wait for the domain to be off; then fail, or power it off (`--force`).
    fn stop(&self, inst: &Instance) -> Result<String, LifecycleError> {
        let (hv, name) = (self.hv, inst.name.as_str());
        let t0 = Instant::now();
        if let Some(d) = hv.domain(name)? {
            // Planned only with --force: a paused guest cannot answer a shutdown request.
            if d.state == DomainState::Paused {
                hv.destroy(name)?;
                return Ok("domain was Paused: powered off (--force)".into());
            }
        }
        if graceful::shut_down_within(hv, name, self.settings.timeout)? {
            return Ok(format!(
                "shut down: powered off {:.0} s after the request",
                t0.elapsed().as_secs_f64()
            ));
        }
        if self.settings.force {
            hv.destroy(name)?;
            return Ok(format!(
                "still running {} s after the shutdown request: powered off (--force)",
                self.timeout_secs()
            ));
        }
        Err(LifecycleError::StillRunning {
            name: name.to_string(),
            uri: self.s.cfg.libvirt_uri.clone(),
            seconds: self.timeout_secs(),
        })
    }

    /// The guest's boot id now, if it lets us log in.
    fn boot_id(&self, inst: &Instance, login: &Login) -> Option<BootId> {
        boot::read(
            self.hv,
            &self.networks,
            inst,
            &self.s.cfg.instance_pool_path,
            login,
        )
    }

    /// Read the boot id, ask for a reboot, wait until the old boot no longer answers (or reset
    /// with `--force`).
    fn reboot(
        &self,
        inst: &Instance,
        before: &mut Option<BootId>,
    ) -> Result<String, LifecycleError> {
        let (hv, name) = (self.hv, inst.name.as_str());
        let login = Login::new(self.s, inst)?;
        *before = self.boot_id(inst, &login);
        let t0 = Instant::now();
        hv.reboot(name)?;
        let Some(old) = before.clone() else {
            return Ok("reboot requested; the guest did not answer over SSH before it, so its first login counts as the new boot".into());
        };
        let deadline = t0 + self.settings.timeout;
        loop {
            match self.boot_id(inst, &login) {
                Some(id) if id == old => {}
                Some(_) => {
                    return Ok(format!(
                        "rebooted: a new boot answered {:.0} s after the request",
                        t0.elapsed().as_secs_f64()
                    ))
                }
                None => {
                    return Ok(format!(
                        "rebooting: the old boot stopped answering {:.0} s after the request",
                        t0.elapsed().as_secs_f64()
                    ))
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL_BOOT);
        }
        if self.settings.force {
            hv.reset(name)?;
            return Ok(format!(
                "still in its old boot {} s after the reboot request: reset (--force)",
                self.timeout_secs()
            ));
        }
        Err(LifecycleError::NoReboot {
            name: name.to_string(),
            uri: self.s.cfg.libvirt_uri.clone(),
            seconds: self.timeout_secs(),
        })
    }

    /// Ready again: after a reboot, first a login from another boot; then the runtime wait.
    fn wait(&self, inst: &Instance, before: Option<&BootId>) -> Result<String, LifecycleError> {
        let t0 = Instant::now();
        let mut new_boot = String::new();
        if let Some(old) = before {
            let login = Login::new(self.s, inst)?;
            let limit = self.s.cfg.runtime_timeout_seconds;
            let deadline = t0 + Duration::from_secs(limit);
            loop {
                match self.boot_id(inst, &login) {
                    Some(id) if id != *old => {
                        new_boot =
                            format!("new boot {id} after {:.0} s, ", t0.elapsed().as_secs_f64());
                        break;
                    }
                    _ if Instant::now() >= deadline => {
                        return Err(LifecycleError::NoNewBoot {
                            name: inst.name.clone(),
                            uri: self.s.cfg.libvirt_uri.clone(),
                            seconds: limit,
                            last: old.to_string(),
                        })
                    }
                    _ => std::thread::sleep(POLL_BOOT),
                }
            }
        }
        let ready = wait_ready(self.s, self.hv, &self.networks, inst)?;
        Ok(format!("{new_boot}{ready}"))
    }
}
