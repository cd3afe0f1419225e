//! The printer rendering into buffers: what each writer receives, byte for byte.

use super::*;
use crate::report::{Action, Op, Outcome, StageReport};

/// A fatal error as a stage hands it to the printer (typed until printed).
#[derive(Debug)]
struct Msg(&'static str);

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Msg {}

fn took(mut o: Outcome, seconds: f64) -> Outcome {
    o.seconds = seconds;
    o
}

/// A provision stage with one change, one action found as it should be, and one failure.
fn provision_report() -> StageReport {
    let mut r = StageReport::new("provision");
    r.outcomes = vec![
        took(
            Outcome::done(Action::new("app-01", Op::Create, "overlay disk: missing")),
            1.25,
        ),
        Outcome::done(Action::new("app-02", Op::Ok, "exists")),
        Outcome::failure(
            Action::new("app-03", Op::Define, "domain: missing"),
            "define domain: permission denied",
        ),
    ];
    r
}

#[test]
fn action_lines_and_the_summary_table_go_to_out() {
    let (printer, printed) = capture(OutputFormat::Human);
    let report = provision_report();
    printer.stage_header("provision", false);
    for o in &report.outcomes {
        printer.outcome(o);
    }
    printer.stages("provision", false, &[report], None::<&Msg>);
    assert_eq!(
        printed.out(),
        "provision\n\
         \x20 ✓ create    app-01             overlay disk: missing (1.2s)\n\
         \x20 ✓ ok        app-02             exists\n\
         \x20 ✗ define    app-03             domain: missing\n\
         \x20     error: define domain: permission denied\n\
         \n\
         stage        actions  changed     ok   failed\n\
         provision          3        1      2        1\n\
         1 action(s) failed\n"
    );
    assert_eq!(printed.err(), "");
}

#[test]
fn a_plan_has_its_header_its_advice_and_the_check_mode_footer() {
    let (printer, printed) = capture(OutputFormat::Human);
    let report = StageReport::planned(
        "cleanup",
        vec![Action::new("app-01", Op::Undefine, "declared")],
    );
    printer.stage_header("cleanup", true);
    printer.outcome(&report.outcomes[0]);
    printer.advice("nothing changed: confirm with -e kvm_cleanup_confirmed=true");
    printer.stages("cleanup", true, &[report], None::<&Msg>);
    assert_eq!(
        printed.out(),
        "cleanup (check mode: plan only)\n\
         \x20 - undefine  app-01             declared\n\
         \x20 nothing changed: confirm with -e kvm_cleanup_confirmed=true\n\
         \n\
         stage        actions  changed     ok   failed\n\
         cleanup            1        0      0        0\n\
         check mode: nothing was changed\n"
    );
    assert_eq!(printed.err(), "");
}

/// The error that stopped a run: the table on "out", then the error on "err".
#[test]
fn the_error_that_stopped_a_human_run_goes_to_err() {
    let (printer, printed) = capture(OutputFormat::Human);
    printer.stages(
        "provision",
        false,
        &[],
        Some(&Msg("cannot connect: no such host")),
    );
    assert_eq!(
        printed.out(),
        "\nstage        actions  changed     ok   failed\n"
    );
    assert_eq!(printed.err(), "error: cannot connect: no such host\n");
}

#[test]
fn json_mode_prints_one_envelope_with_the_error_and_no_lines() {
    let (printer, printed) = capture(OutputFormat::Json);
    let report = provision_report();
    printer.stage_header("provision", false);
    for o in &report.outcomes {
        printer.outcome(o);
    }
    printer.advice("not in JSON");
    printer.stages(
        "provision",
        false,
        &[report],
        Some(&Msg("stopped: disk full")),
    );
    assert_eq!(
        printed.out(),
        r#"{
  "command": "provision",
  "ok": false,
  "error": "stopped: disk full",
  "check": false,
  "stages": [
    {
      "stage": "provision",
      "outcomes": [
        {
          "target": "app-01",
          "op": "create",
          "reason": "overlay disk: missing",
          "status": "done",
          "seconds": 1.25
        },
        {
          "target": "app-02",
          "op": "ok",
          "reason": "exists",
          "status": "done",
          "seconds": 0.0
        },
        {
          "target": "app-03",
          "op": "define",
          "reason": "domain: missing",
          "status": "failed",
          "detail": "define domain: permission denied",
          "seconds": 0.0
        }
      ]
    }
  ]
}
"#
    );
    assert_eq!(printed.err(), "error: stopped: disk full\n");
}

#[test]
fn a_command_that_could_not_start_gets_an_envelope_without_payload() {
    let (printer, printed) = capture(OutputFormat::Json);
    printer.failure(Some("check"), "vars.yml:3:1: unknown key `kvm_foo`");
    assert_eq!(
        printed.out(),
        "{\n  \"command\": \"check\",\n  \"ok\": false,\n  \"error\": \"vars.yml:3:1: unknown key `kvm_foo`\"\n}\n"
    );
    assert_eq!(
        printed.err(),
        "error: vars.yml:3:1: unknown key `kvm_foo`\n"
    );
    // Commands that print another format get no envelope.
    let (printer, printed) = capture(OutputFormat::Json);
    printer.failure(None, "bad");
    assert_eq!(
        (printed.out(), printed.err()),
        (String::new(), "error: bad\n".into())
    );
}

/// A guest's cloud-init message or an image host's label in a reason, a target, a failure's
/// detail or the error: JSON's escaping kept U+202E (which shows the rest of a line reversed),
/// U+2066, zero-width characters and escape sequences in the values a script reads; every
/// string is now sanitized as the document is written.
#[test]
fn regression_json_reason_kept_bidi_controls_from_a_guest() {
    let (printer, printed) = capture(OutputFormat::Json);
    let mut r = StageReport::new("runtime");
    r.outcomes = vec![Outcome::failure(
        Action::new(
            "app-01\u{2066}\u{200b}",
            Op::Wait,
            "cloud-init: \u{202e}txt.exe\x1b[2J done",
        ),
        "ssh: \u{200f}refused\r",
    )];
    printer.stages("runtime", false, &[r], Some(&Msg("guest said \u{2067}no")));
    let doc: serde_json::Value = serde_json::from_str(&printed.out()).unwrap();
    let outcome = &doc["stages"][0]["outcomes"][0];
    assert_eq!(outcome["reason"], "cloud-init: \\u{202e}txt.exe done");
    assert_eq!(outcome["target"], "app-01\\u{2066}\\u{200b}");
    assert_eq!(outcome["detail"], "ssh: \\u{200f}refused");
    assert_eq!(doc["error"], "guest said \\u{2067}no");
}

/// Strings are collected whole before they are sanitized: serde_json hands them over in pieces
/// around what it escapes (quotes, backslashes, newlines), and those must come back as they were.
#[test]
fn json_strings_keep_quotes_backslashes_newlines_and_tabs() {
    let (printer, printed) = capture(OutputFormat::Json);
    let text = "a \"quoted\" C:\\path\nline two\tcolumn ✓";
    printer.failure(Some("check"), text);
    let doc: serde_json::Value = serde_json::from_str(&printed.out()).unwrap();
    assert_eq!(doc["error"], text);
}

#[test]
fn warnings_notes_and_errors_go_to_err_in_both_modes() {
    for format in [OutputFormat::Human, OutputFormat::Json] {
        let (printer, printed) = capture(format);
        printer.warning("cached image failed verification; moved aside");
        printer.note("waiting up to 30s for another kvmprov run");
        printer.error("console said \x1b]0;title\x07hello\u{202e}");
        assert_eq!(printed.out(), "", "{format:?}");
        assert_eq!(
            printed.err(),
            "warning: cached image failed verification; moved aside\n\
             waiting up to 30s for another kvmprov run\n\
             error: console said hello\\u{202e}\n",
            "{format:?}"
        );
    }
}

#[test]
fn a_document_ends_with_exactly_one_newline() {
    let (printer, printed) = capture(OutputFormat::Json);
    printer.document("{}").unwrap();
    printer.document("all:\n  hosts: {}\n").unwrap();
    assert_eq!(printed.out(), "{}\nall:\n  hosts: {}\n");
}

/// The runtime stage's lines, printed by workers while the provision stage's are still coming,
/// appear after the provision stage's and its header, in the order they were given.
#[test]
fn held_lines_wait_for_their_release_across_threads() {
    let (printer, printed) = capture(OutputFormat::Human);
    let held = printer.held();
    let line = |target: &str| Outcome::done(Action::new(target, Op::Start, "defined"));
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                held.outcome(&line("early-1"));
                held.outcome(&line("early-2"));
            })
            .join()
            .unwrap();
        printer.stage_header("provision", false);
        printer.outcome(&Outcome::done(Action::new("app-01", Op::Create, "missing")));
        held.release("runtime", false);
        scope.spawn(|| held.outcome(&line("late"))).join().unwrap();
    });
    assert_eq!(
        printed.out(),
        "provision\n\
         \x20 ✓ create    app-01             missing\n\
         runtime\n\
         \x20 ✓ start     early-1            defined\n\
         \x20 ✓ start     early-2            defined\n\
         \x20 ✓ start     late               defined\n"
    );
}

/// Workers that print at once never mix their lines: each line is one write under the lock.
#[test]
fn lines_from_parallel_workers_stay_whole() {
    let (printer, printed) = capture(OutputFormat::Human);
    std::thread::scope(|scope| {
        for w in 0..4 {
            let printer = printer.clone();
            scope.spawn(move || {
                for i in 0..50 {
                    let target = format!("w{w}-{i}");
                    printer.outcome(&Outcome::done(Action::new(target, Op::Ok, "exists")));
                }
            });
        }
    });
    let out = printed.out();
    assert_eq!(out.lines().count(), 200);
    for l in out.lines() {
        let target = l.split_whitespace().nth(2).unwrap_or_default();
        assert_eq!(l, format!("  ✓ ok        {target:<18} exists"));
    }
}

/// A run goes on when its output is gone (`| head -1`); a document's reader is told.
#[test]
fn a_closed_writer_stops_no_run_but_fails_a_document() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let printer = Printer::with_writers(OutputFormat::Human, Closed, Closed);
    printer.stage_header("provision", false);
    printer.outcome(&Outcome::done(Action::new("app-01", Op::Ok, "exists")));
    printer.error("lost");
    let e = printer.document("inventory").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
}
