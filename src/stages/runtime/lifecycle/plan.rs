//! What `start`, `stop` and `restart` do to one instance, from its domain's observed state
//! (pure): the actions, with the reasons `--check` prints.

use std::time::Duration;

use kvmprov_hypervisor::DomainState;

use crate::report::{Action, Op};

/// The day-two verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
        }
    }
}

/// How a verb runs, from its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub verb: Verb,
    /// `stop`: power off a guest that did not shut down in time; `restart`: reset one that
    /// did not reboot in time.
    pub force: bool,
    /// How long a guest gets to power off (`stop`) or to leave its boot (`restart`).
    pub timeout: Duration,
}

/// The wait that ends `start` and `restart`: the guest is ready again.
pub const READY: &str = "address, SSH with pinned host key, cloud-init done";

/// The actions for one instance whose domain is in `state` (`None`: not defined).
pub fn plan_instance(name: &str, state: Option<DomainState>, s: &Settings) -> Vec<Action> {
    let Some(state) = state else {
        return vec![Action::new(
            name,
            Op::Check,
            "domain not defined: run `kvmprov provision` first",
        )];
    };
    let secs = s.timeout.as_secs();
    let start_and_wait = |why: String| {
        vec![
            Action::new(name, Op::Start, why),
            Action::new(name, Op::Wait, READY),
        ]
    };
    match (s.verb, state) {
        (Verb::Start, DomainState::Running) => {
            vec![Action::new(name, Op::Ok, "already running")]
        }
        (Verb::Start, DomainState::Paused) => start_and_wait("domain is Paused: resume".into()),
        (Verb::Start, other) => start_and_wait(format!("domain is {other:?}")),

        (Verb::Stop, DomainState::ShutOff) => {
            vec![Action::new(name, Op::Ok, "already shut off")]
        }
        // A paused guest runs no code: it cannot answer a shutdown request.
        (Verb::Stop, DomainState::Paused) if s.force => vec![Action::new(
            name,
            Op::Stop,
            "domain is Paused: power off (--force)",
        )],
        (Verb::Stop, DomainState::Paused) => vec![Action::new(
            name,
            Op::Check,
            "domain is Paused and cannot shut down: resume it (`kvmprov start`) or power it off (--force)",
        )],
        (Verb::Stop, _) => vec![Action::new(
            name,
            Op::Stop,
            if s.force {
                format!("shut down (ACPI), wait up to {secs} s, then power off (--force)")
            } else {
                format!("shut down (ACPI), wait up to {secs} s for it to power off")
            },
        )],

        (Verb::Restart, DomainState::ShutOff | DomainState::Crashed) => {
            start_and_wait(format!("domain is {state:?}: started (nothing to reboot)"))
        }
        (Verb::Restart, DomainState::Paused) => vec![Action::new(
            name,
            Op::Check,
            "domain is Paused and cannot reboot: resume it first (`kvmprov start`)",
        )],
        (Verb::Restart, _) => vec![
            Action::new(
                name,
                Op::Reboot,
                if s.force {
                    format!("reboot (ACPI), wait up to {secs} s for the guest to leave its boot, then reset (--force)")
                } else {
                    format!("reboot (ACPI), wait up to {secs} s for the guest to leave its boot")
                },
            ),
            Action::new(name, Op::Wait, format!("a new boot: {READY}")),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(verb: Verb, force: bool) -> Settings {
        Settings {
            verb,
            force,
            timeout: Duration::from_secs(120),
        }
    }

    fn ops(verb: Verb, state: Option<DomainState>, force: bool) -> Vec<Op> {
        plan_instance("a", state, &settings(verb, force))
            .into_iter()
            .map(|a| a.op)
            .collect()
    }

    #[test]
    fn start_starts_and_waits_unless_running() {
        assert_eq!(
            ops(Verb::Start, Some(DomainState::ShutOff), false),
            [Op::Start, Op::Wait]
        );
        assert_eq!(
            ops(Verb::Start, Some(DomainState::Crashed), false),
            [Op::Start, Op::Wait]
        );
        assert_eq!(
            ops(Verb::Start, Some(DomainState::Running), false),
            [Op::Ok]
        );
        let paused = plan_instance(
            "a",
            Some(DomainState::Paused),
            &settings(Verb::Start, false),
        );
        assert!(paused[0].reason.ends_with("resume"), "{paused:?}");
    }

    /// `--check` on an instance already as wanted says so and plans nothing that changes it.
    #[test]
    fn already_as_wanted_is_nothing_to_do() {
        for (verb, state) in [
            (Verb::Start, DomainState::Running),
            (Verb::Stop, DomainState::ShutOff),
        ] {
            let a = plan_instance("a", Some(state), &settings(verb, true));
            assert_eq!(a.len(), 1);
            assert!(!a[0].op.mutates(), "{a:?}");
        }
    }

    #[test]
    fn stop_says_its_timeout_and_what_force_does() {
        let a = plan_instance(
            "a",
            Some(DomainState::Running),
            &settings(Verb::Stop, false),
        );
        assert_eq!(a[0].op, Op::Stop);
        assert_eq!(
            a[0].reason,
            "shut down (ACPI), wait up to 120 s for it to power off"
        );
        let f = plan_instance("a", Some(DomainState::Running), &settings(Verb::Stop, true));
        assert!(f[0].reason.ends_with("then power off (--force)"), "{f:?}");
    }

    #[test]
    fn a_paused_guest_is_stopped_only_by_force() {
        assert_eq!(
            ops(Verb::Stop, Some(DomainState::Paused), false),
            [Op::Check]
        );
        assert_eq!(ops(Verb::Stop, Some(DomainState::Paused), true), [Op::Stop]);
    }

    #[test]
    fn restart_reboots_a_running_guest_and_starts_a_stopped_one() {
        assert_eq!(
            ops(Verb::Restart, Some(DomainState::Running), false),
            [Op::Reboot, Op::Wait]
        );
        assert_eq!(
            ops(Verb::Restart, Some(DomainState::ShutOff), false),
            [Op::Start, Op::Wait]
        );
        let a = plan_instance(
            "a",
            Some(DomainState::Running),
            &settings(Verb::Restart, false),
        );
        assert!(a[1].reason.starts_with("a new boot"), "{a:?}");
    }

    #[test]
    fn an_undefined_domain_is_a_failing_check_for_every_verb() {
        for verb in [Verb::Start, Verb::Stop, Verb::Restart] {
            let a = plan_instance("a", None, &settings(verb, true));
            assert_eq!(a.len(), 1);
            assert_eq!(a[0].op, Op::Check);
            assert!(a[0].reason.contains("kvmprov provision"));
        }
    }
}
