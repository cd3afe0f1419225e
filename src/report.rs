//! The report model every stage and command shares: an [`Action`] (what a planner decided, and
//! why), its [`Outcome`] once applied or only planned, a stage's [`StageReport`], and
//! [`error_chain`], the one way an error becomes the sentence a report or a message carries.
//!
//! Planners are pure: (config, what was observed) → `Vec<Action>`; `--check` shows the actions,
//! applying records an outcome per action. How reports look on screen and in `--output json` is
//! `crate::output`'s business.

use std::time::Instant;

use serde::Serialize;

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Already as wanted: nothing to do.
    Ok,
    /// A check that only reads.
    Check,
    /// A repair of the host (ACLs, starting a network).
    Fix,
    Download,
    /// A cached image sent to a remote hypervisor.
    Upload,
    Verify,
    Create,
    Define,
    Start,
    /// A running guest asked to reboot (`restart`).
    Reboot,
    Wait,
    Snapshot,
    /// A domain brought back to one of its snapshots.
    Revert,
    Stop,
    Undefine,
    Delete,
    /// Wanted by the user but refused for safety.
    Refuse,
    /// The domain differs from the config; reported, not changed here.
    Drift,
    /// Drift applied to a defined domain (in place, or with a restart).
    Apply,
    /// Not in scope (missing domain at cleanup, …).
    Skip,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Ok => "ok",
            Op::Check => "check",
            Op::Fix => "fix",
            Op::Download => "download",
            Op::Upload => "upload",
            Op::Verify => "verify",
            Op::Create => "create",
            Op::Define => "define",
            Op::Start => "start",
            Op::Reboot => "reboot",
            Op::Wait => "wait",
            Op::Snapshot => "snapshot",
            Op::Revert => "revert",
            Op::Stop => "stop",
            Op::Undefine => "undefine",
            Op::Delete => "delete",
            Op::Refuse => "refuse",
            Op::Drift => "drift",
            Op::Apply => "apply",
            Op::Skip => "skip",
        }
    }

    /// Does applying this action change anything?
    pub fn mutates(self) -> bool {
        !matches!(
            self,
            Op::Ok | Op::Check | Op::Refuse | Op::Drift | Op::Skip | Op::Wait | Op::Verify
        )
    }
}

/// One planned step: `op` on `target` because of `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    pub target: String,
    pub op: Op,
    pub reason: String,
    /// A drifted domain's plan: per field, old → new and how it is applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<crate::drift::plan::Step>,
}

impl Action {
    pub fn new(target: impl Into<String>, op: Op, reason: impl Into<String>) -> Self {
        Action {
            target: target.into(),
            op,
            reason: reason.into(),
            drift: Vec::new(),
        }
    }

    /// The same action carrying a drift plan (shown in `--output json`).
    pub fn with_drift(mut self, steps: Vec<crate::drift::plan::Step>) -> Self {
        self.drift = steps;
        self
    }
}

/// The result of applying (or only planning) one action.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "detail")]
pub enum Status {
    /// `--check`: nothing was done.
    Planned,
    /// Done (or, for a non-mutating action, found as expected).
    Done,
    /// Failed, with the error chain as one sentence.
    Failed(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub action: Action,
    #[serde(flatten)]
    pub status: Status,
    pub seconds: f64,
}

impl Outcome {
    /// Only planned (`--check`): nothing was done.
    pub fn planned(action: Action) -> Self {
        Self::of(action, Status::Planned)
    }

    /// Nothing to do, or a check that passed.
    pub fn done(action: Action) -> Self {
        Self::of(action, Status::Done)
    }

    /// Failed, or could not be tried, because of `why`.
    pub fn failure(action: Action, why: impl Into<String>) -> Self {
        Self::of(action, Status::Failed(why.into()))
    }

    /// An outcome that took no time.
    fn of(action: Action, status: Status) -> Self {
        Outcome {
            action,
            status,
            seconds: 0.0,
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self.status, Status::Failed(_))
    }
}

/// All outcomes of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: String,
    /// The hypervisor it ran on, when a run spans several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub outcomes: Vec<Outcome>,
}

impl StageReport {
    pub fn new(stage: &str) -> Self {
        StageReport {
            stage: stage.to_string(),
            host: None,
            outcomes: Vec::new(),
        }
    }

    pub fn failed(&self) -> bool {
        self.outcomes.iter().any(Outcome::failed)
    }

    /// Every action as planned, nothing done (`--check`).
    pub fn planned(stage: &str, actions: Vec<Action>) -> Self {
        StageReport {
            stage: stage.to_string(),
            host: None,
            outcomes: actions.into_iter().map(Outcome::planned).collect(),
        }
    }
}

/// Run `f` for an action and record how it went and how long it took.
pub fn run<E: std::error::Error>(action: Action, f: impl FnOnce() -> Result<(), E>) -> Outcome {
    let start = Instant::now();
    let status = match f() {
        Ok(()) => Status::Done,
        Err(e) => Status::Failed(error_chain(&e)),
    };
    Outcome {
        action,
        status,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// An error and its causes as one line: "a: b: c" (skipping causes already in the message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scripts read `"op": "ok"`; the variant's name and its printed word are one.
    #[test]
    fn ok_is_printed_and_serialised_as_ok() {
        assert_eq!(serde_json::to_value(Op::Ok).unwrap(), "ok");
        assert_eq!(Op::Ok.as_str(), "ok");
    }

    #[test]
    fn json_shape() {
        let r = StageReport::planned("cleanup", vec![Action::new("a", Op::Undefine, "declared")]);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["outcomes"][0]["op"], "undefine");
        assert_eq!(j["outcomes"][0]["status"], "planned");
        assert_eq!(j["outcomes"][0]["target"], "a");
    }
}
