//! Observe → plan → apply: the shape every stage shares.
//!
//! A stage looks at the hypervisor, then a pure planner turns (config, observation) into a
//! [`Plan`]: actions, each with the reason it is (or is not) needed. `--check` prints the plan;
//! apply runs it and records an [`Outcome`] per action. The same rendering serves both, and
//! the final summary table and `--output json` are built from the outcomes.

use std::io::Write;
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
    Wait,
    Snapshot,
    Stop,
    Undefine,
    Delete,
    /// Wanted by the user but refused for safety.
    Refuse,
    /// The domain differs from the config; reported, never changed.
    Drift,
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
            Op::Wait => "wait",
            Op::Snapshot => "snapshot",
            Op::Stop => "stop",
            Op::Undefine => "undefine",
            Op::Delete => "delete",
            Op::Refuse => "refuse",
            Op::Drift => "drift",
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
}

impl Action {
    pub fn new(target: impl Into<String>, op: Op, reason: impl Into<String>) -> Self {
        Action {
            target: target.into(),
            op,
            reason: reason.into(),
        }
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

/// How results are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Human,
    Json,
}

/// One line per action, as a plan or as a result: `  create    app-02   overlay disk: missing`.
pub fn render_line(o: &Outcome) -> String {
    let mark = match &o.status {
        Status::Planned => "-",
        Status::Done => "✓",
        Status::Failed(_) => "✗",
    };
    let mut line = format!(
        "  {mark} {:<9} {:<18} {}",
        o.action.op.as_str(),
        o.action.target,
        o.action.reason
    );
    match &o.status {
        Status::Failed(err) => {
            line.push_str("\n      error: ");
            line.push_str(err);
        }
        Status::Done if o.seconds >= 0.05 => line.push_str(&format!(" ({:.1}s)", o.seconds)),
        _ => {}
    }
    line
}

/// The summary table: per stage (per host and stage when a run spans several hypervisors),
/// how many actions of each kind and how they went.
pub fn render_summary(reports: &[StageReport], check_mode: bool) -> String {
    let mut out = String::new();
    let host_width = reports
        .iter()
        .filter_map(|r| r.host.as_ref().map(|h| h.len().max(4) + 1))
        .max();
    let host_col = |h: &str| match host_width {
        Some(w) => format!("{h:<w$}"),
        None => String::new(),
    };
    out.push_str(&format!(
        "\n{}{:<12} {:>7} {:>8} {:>6} {:>8}\n",
        host_col("host"),
        "stage",
        "actions",
        "changed",
        "ok",
        "failed"
    ));
    for r in reports {
        let changed = r
            .outcomes
            .iter()
            .filter(|o| o.action.op.mutates() && o.status == Status::Done)
            .count();
        let failed = r.outcomes.iter().filter(|o| o.failed()).count();
        let ok = r
            .outcomes
            .iter()
            .filter(|o| o.status == Status::Done)
            .count();
        out.push_str(&format!(
            "{}{:<12} {:>7} {:>8} {:>6} {:>8}\n",
            host_col(r.host.as_deref().unwrap_or("local")),
            r.stage,
            r.outcomes.len(),
            changed,
            ok,
            failed
        ));
    }
    let failed: usize = reports
        .iter()
        .map(|r| r.outcomes.iter().filter(|o| o.failed()).count())
        .sum();
    if check_mode {
        out.push_str("check mode: nothing was changed\n");
    } else if failed > 0 {
        out.push_str(&format!("{failed} action(s) failed\n"));
    }
    out
}

/// Prints outcomes as they come (human mode) and collects them for the summary.
pub struct Printer {
    pub format: OutputFormat,
}

impl Printer {
    pub fn stage_header(&self, stage: &str, check: bool) {
        if self.format == OutputFormat::Human {
            let mode = if check {
                " (check mode: plan only)"
            } else {
                ""
            };
            println!("{stage}{mode}");
        }
    }

    pub fn outcome(&self, o: &Outcome) {
        if self.format == OutputFormat::Human {
            println!("{}", render_line(o));
            let _ = std::io::stdout().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn run_records_failure_chain() {
        let o = run(Action::new("app-01", Op::Create, "missing"), || {
            Err(Outer(std::io::Error::other("inner cause")))
        });
        assert_eq!(o.status, Status::Failed("outer: inner cause".into()));
        assert!(render_line(&o).contains("error: outer: inner cause"));
    }

    #[test]
    fn summary_has_a_host_column_when_hosts_are_named() {
        let mut a = StageReport::new("provision");
        a.host = Some("qemu+ssh://hv2/system".into());
        let text = render_summary(&[StageReport::new("image-cache"), a], false);
        assert!(text.contains("\nhost"), "{text}");
        assert!(text.contains("\nlocal"), "{text}");
        assert!(text.contains("\nqemu+ssh://hv2/system provision"), "{text}");
        assert!(!render_summary(&[StageReport::new("x")], false).contains("host"));
    }

    #[test]
    fn summary_counts_changes_and_failures() {
        let mut r = StageReport::new("provision");
        r.outcomes
            .push(run(Action::new("a", Op::Create, "missing"), || {
                Ok::<(), std::io::Error>(())
            }));
        r.outcomes.push(run(Action::new("b", Op::Ok, "exists"), || {
            Ok::<(), std::io::Error>(())
        }));
        r.outcomes
            .push(run(Action::new("c", Op::Define, "missing"), || {
                Err(std::io::Error::other("boom"))
            }));
        let s = render_summary(&[r], false);
        assert!(
            s.contains("provision          3        1      2        1"),
            "{s}"
        );
        assert!(s.contains("1 action(s) failed"));
    }

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
