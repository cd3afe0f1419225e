//! cloud-init's verdict on a guest, read over SSH by runtime from `/run/cloud-init/result.json`
//! (else from `cloud-init status --long`): done, degraded, failed, or not finished yet.

use crate::process::CommandOutput;

/// The guest-side wait for cloud-init, run over SSH: [`LOGGED_IN`] at once, then until its
/// last stage has written `/run/cloud-init/result.json` (a tmpfs: this boot's), that file. A
/// shell loop rather than `cloud-init status --wait`, whose Python start costs the booting guest
/// seconds of CPU under TCG. When no result appears within a minute (cloud-init disabled, a
/// stage that died), `cloud-init status --long` gives its own verdict, read by
/// [`parse_cloud_init_status`]. It is also the login check: one session, not two (each SSH
/// session costs a booting TCG guest ~1.5 s of CPU: sshd, PAM, logind).
pub const WAIT_COMMAND: &str = "echo kvmprov-logged-in; r=/run/cloud-init/result.json; i=0; \
while [ ! -s $r ] && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done; \
if [ -s $r ]; then cat $r; else cloud-init status --long; fi";

/// [`WAIT_COMMAND`]'s first line: the session logged in and the command runs.
pub const LOGGED_IN: &str = "kvmprov-logged-in";

/// Did [`WAIT_COMMAND`] run (it printed its [`LOGGED_IN`] line)? ssh's own failures (refused,
/// the host key, authentication) print nothing on stdout.
pub fn logged_in(out: &CommandOutput) -> bool {
    after_login(&out.stdout).is_some()
}

/// What [`WAIT_COMMAND`] printed after its [`LOGGED_IN`] line, when that line came. The user's
/// shell may print something of its own before it.
fn after_login(stdout: &str) -> Option<&str> {
    let mut end = 0;
    for line in stdout.split_inclusive('\n') {
        end += line.len();
        if line.trim_end() == LOGGED_IN {
            return Some(&stdout[end..]);
        }
    }
    None
}

/// cloud-init's verdict from [`WAIT_COMMAND`]'s output after its [`LOGGED_IN`] line:
/// `result.json` (`{"v1": {"errors": […], "recoverable_errors": {…}}}`, the latter from
/// cloud-init 23.4 on), else `cloud-init status --long`'s.
pub fn parse_wait_output(out: &CommandOutput) -> CloudInitStatus {
    let out = &CommandOutput {
        stdout: after_login(&out.stdout).unwrap_or(&out.stdout).to_string(),
        ..out.clone()
    };
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&out.stdout) else {
        return parse_cloud_init_status(out);
    };
    let Some(v1) = doc.get("v1") else {
        return parse_cloud_init_status(out);
    };
    let errors = v1.get("errors").map(messages).unwrap_or_default();
    if !errors.is_empty() {
        return CloudInitStatus::Error(format!("errors: {}", errors.join(" | ")));
    }
    // {"WARNING": ["…"], "DEPRECATED": ["…"]}: any message at all makes it degraded, as
    // `cloud-init status` says.
    let recoverable: Vec<String> = v1
        .get("recoverable_errors")
        .and_then(|r| r.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(level, msgs)| {
                    let text = messages(msgs);
                    (!text.is_empty()).then(|| format!("{level}: {}", text.join(" | ")))
                })
                .collect()
        })
        .unwrap_or_default();
    if recoverable.is_empty() {
        CloudInitStatus::Done
    } else {
        CloudInitStatus::Degraded(format!("recoverable_errors: {}", recoverable.join("; ")))
    }
}

/// A JSON list of cloud-init's messages as text (a string as it is, anything else as JSON);
/// nothing when it is no list.
fn messages(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// cloud-init's final state, from `cloud-init status --long` output and exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudInitStatus {
    Done,
    /// Finished with recoverable errors (cloud-init ≥ 23.4 exits 2).
    Degraded(String),
    Error(String),
    /// Anything else (running, disabled, not run): with the status line.
    Other(String),
}

pub fn parse_cloud_init_status(out: &CommandOutput) -> CloudInitStatus {
    let field = |name: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let status = field("status:").unwrap_or_default();
    let detail = || {
        let mut lines: Vec<&str> = out
            .stdout
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("errors:"))
            .take(6)
            .collect();
        if lines.is_empty() {
            lines = out.stdout.lines().take(6).collect();
        }
        let mut d = lines.join(" | ");
        if !out.stderr.trim().is_empty() {
            d.push_str(" | ");
            d.push_str(out.stderr.trim());
        }
        d
    };
    match (status.as_str(), out.code) {
        ("done", Some(0)) => CloudInitStatus::Done,
        ("done", Some(2)) | ("degraded done", _) => CloudInitStatus::Degraded(detail()),
        ("error", _) | (_, Some(1)) => CloudInitStatus::Error(detail()),
        _ => CloudInitStatus::Other(format!("status `{status}`: {}", detail())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a session running [`WAIT_COMMAND`] returns: its login line, then `stdout`.
    fn out(code: i32, stdout: &str) -> CommandOutput {
        CommandOutput {
            code: Some(code),
            stdout: format!("{LOGGED_IN}\n{stdout}"),
            stderr: String::new(),
            first_stdout: None,
        }
    }

    #[test]
    fn wait_output_result_json() {
        // cloud-init 22.4 (Debian 12): no recoverable_errors.
        let ok = r#"{"v1": {"datasource": "DataSourceNoCloud [seed=/dev/sr0][dsmode=net]", "errors": []}}"#;
        assert_eq!(parse_wait_output(&out(0, ok)), CloudInitStatus::Done);
        // 25.1 (Debian 13): empty recoverable_errors is done, any message degraded.
        let clean = r#"{"v1": {"datasource": "x", "errors": [], "recoverable_errors": {}}}"#;
        assert_eq!(parse_wait_output(&out(0, clean)), CloudInitStatus::Done);
        let warned = r#"{"v1": {"errors": [], "recoverable_errors": {"WARNING": ["Failed to set locale"]}}}"#;
        match parse_wait_output(&out(0, warned)) {
            CloudInitStatus::Degraded(d) => {
                assert!(d.contains("WARNING: Failed to set locale"), "{d}")
            }
            s => panic!("{s:?}"),
        }
        let failed =
            r#"{"v1": {"errors": ["('scripts_user', RuntimeError('runparts: 1 failures'))"]}}"#;
        match parse_wait_output(&out(0, failed)) {
            CloudInitStatus::Error(d) => assert!(d.contains("runparts: 1 failures"), "{d}"),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn wait_output_falls_back_to_cloud_init_status() {
        // No result within the loop's minute: `cloud-init status --long` answered.
        assert!(matches!(
            parse_wait_output(&out(0, "status: disabled\n")),
            CloudInitStatus::Other(_)
        ));
        assert!(matches!(
            parse_wait_output(&out(1, "status: error\nerrors:\n\t- boom\n")),
            CloudInitStatus::Error(_)
        ));
        assert_eq!(
            parse_wait_output(&out(0, "status: done\n")),
            CloudInitStatus::Done
        );
    }

    #[test]
    fn the_wait_is_the_login_check() {
        assert!(WAIT_COMMAND.starts_with(&format!("echo {LOGGED_IN};")));
        assert!(logged_in(&out(0, "status: done\n")));
        // ssh's own failures: exit 255, nothing on stdout; a command that never ran.
        let refused = CommandOutput {
            code: Some(255),
            stdout: String::new(),
            stderr: "Permission denied (publickey).".into(),
            first_stdout: None,
        };
        assert!(!logged_in(&refused));
        // The line alone (cloud-init's status unreadable) is still a login, and not done.
        assert!(logged_in(&out(0, "")));
        // A shell that prints something of its own first: still a login, read after the line.
        let chatty = CommandOutput {
            stdout: format!("welcome\n{LOGGED_IN}\nstatus: done\n"),
            ..out(0, "")
        };
        assert!(logged_in(&chatty));
        assert_eq!(parse_wait_output(&chatty), CloudInitStatus::Done);
        // The word inside another line is no login.
        let inside = CommandOutput {
            stdout: format!("not {LOGGED_IN}\n"),
            ..out(0, "")
        };
        assert!(!logged_in(&inside));
        assert!(matches!(
            parse_wait_output(&out(0, "")),
            CloudInitStatus::Other(_)
        ));
    }

    #[test]
    fn cloud_init_statuses() {
        assert_eq!(
            parse_cloud_init_status(&out(0, "\nstatus: done\ntime: x\n")),
            CloudInitStatus::Done
        );
        match parse_cloud_init_status(&out(1, "status: error\nerrors:\n\t- bad thing\n")) {
            CloudInitStatus::Error(d) => assert!(d.contains("bad thing")),
            s => panic!("{s:?}"),
        }
        assert!(matches!(
            parse_cloud_init_status(&out(2, "status: done\n")),
            CloudInitStatus::Degraded(_)
        ));
        assert!(matches!(
            parse_cloud_init_status(&out(0, "status: running\n")),
            CloudInitStatus::Other(_)
        ));
    }
}
