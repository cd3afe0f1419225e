//! cloud-init's verdict on a guest, read from `cloud-init status --long` (run over SSH by
//! runtime): done, degraded, failed, or not finished yet.

use crate::process::CommandOutput;

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

    fn out(code: i32, stdout: &str) -> CommandOutput {
        CommandOutput {
            code: Some(code),
            stdout: stdout.to_string(),
            stderr: String::new(),
        }
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
