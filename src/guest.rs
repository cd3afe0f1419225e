//! Talking to a booted guest: TCP reachability and the OpenSSH client with a pinned host key.
//!
//! We run the system `ssh` rather than an SSH library: it is what operators debug with, and
//! `BatchMode=yes` + `StrictHostKeyChecking=yes` against a known_hosts file built from the host
//! key kvmprov generated means no trust-on-first-use and no password prompts.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot run ssh: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("ssh to {user}@{addr} timed out after {seconds}s")]
    Timeout {
        user: String,
        addr: IpAddr,
        seconds: u64,
    },
}

/// How to reach one guest over SSH.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub user: String,
    pub addr: IpAddr,
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    /// `ProxyJump` host for guests behind a remote hypervisor.
    pub jump: Option<String>,
}

impl SshTarget {
    /// The ssh arguments (no secrets: the key is a file path, the host key is pinned).
    pub fn args(&self, connect_timeout: u64) -> Vec<String> {
        let mut a = vec![
            "-F".to_string(),
            "/dev/null".to_string(),
            "-i".into(),
            self.identity.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            format!("ConnectTimeout={connect_timeout}"),
            "-o".into(),
            "ServerAliveInterval=5".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ];
        if let Some(j) = &self.jump {
            a.push("-J".into());
            a.push(j.clone());
        }
        a.push(format!("{}@{}", self.user, self.addr));
        a
    }
}

/// The result of one remote command.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `command` on the guest, killing ssh after `timeout`.
pub fn ssh_run(
    t: &SshTarget,
    command: &str,
    timeout: Duration,
) -> Result<CommandOutput, GuestError> {
    let mut child = Command::new("ssh")
        .args(t.args(10))
        .arg("--")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GuestError::Spawn)?;
    // Read both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = std::thread::spawn(move || read_all(out.as_mut()));
    let err_t = std::thread::spawn(move || read_all(err.as_mut()));
    let start = Instant::now();
    let status = loop {
        match child.try_wait().map_err(GuestError::Spawn)? {
            Some(st) => break st,
            None if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(GuestError::Timeout {
                    user: t.user.clone(),
                    addr: t.addr,
                    seconds: timeout.as_secs(),
                });
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    Ok(CommandOutput {
        code: status.code(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

fn read_all<R: std::io::Read>(r: Option<&mut R>) -> String {
    let mut buf = Vec::new();
    if let Some(r) = r {
        let _ = r.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Is TCP port `port` open on `addr`? One attempt, bounded.
pub fn tcp_open(addr: IpAddr, port: u16, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&SocketAddr::new(addr, port), timeout).is_ok()
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

/// The last `n` lines of a console log (for "why did it not come up" messages).
pub fn console_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
                .collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(no console log at {}: {e})", path.display()),
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

    #[test]
    fn ssh_args_pin_the_host_key() {
        let t = SshTarget {
            user: "debian".into(),
            addr: "192.168.122.5".parse().unwrap(),
            identity: "/p/id".into(),
            known_hosts: "/p/kh".into(),
            jump: None,
        };
        let a = t.args(5).join(" ");
        assert!(a.contains("StrictHostKeyChecking=yes"));
        assert!(a.contains("BatchMode=yes"));
        assert!(a.contains("UserKnownHostsFile=/p/kh"));
        assert!(a.ends_with("debian@192.168.122.5"));
    }

    #[test]
    fn console_tail_takes_last_lines() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c.log");
        std::fs::write(&p, "a\nb\n\nc\nd\n").unwrap();
        assert_eq!(console_tail(&p, 2), "c\nd");
        assert!(console_tail(&t.path().join("none"), 2).contains("no console log"));
    }
}
