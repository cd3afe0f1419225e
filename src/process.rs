//! The child processes kvmprov runs and waits for (`ssh` to guests and hypervisors): each run
//! bounded in time and in how much of its output is kept, its output sanitized, and every one
//! still running listed so an interrupted run can stop them ([`stop_children`], on SIGINT and
//! SIGTERM).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::output::sanitize;

/// The result of one remote command.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// When the first byte of stdout arrived: over SSH, the moment the remote command ran,
    /// so after the login (runtime's wait logs in and waits for cloud-init in one session).
    pub first_stdout: Option<Instant>,
}

/// The ssh processes running now, so an interrupted run can stop them (`stop_children`).
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Send SIGTERM to every ssh kvmprov started that is still running (on Ctrl-C / SIGTERM).
pub fn stop_children() {
    if let Ok(pids) = CHILDREN.lock() {
        // A child is reaped a moment before it leaves the list: signal only a PID that is
        // still our child, never a number the system has handed to another process.
        for pid in pids
            .iter()
            .filter(|p| parent_of(**p) == Some(std::process::id()))
        {
            if let Some(pid) = i32::try_from(*pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
}

/// The parent PID of a process, from /proc (field 4 of `stat`, after the parenthesised name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Run a command with no stdin, capturing its output, killing it after `timeout`.
/// `Err(None)` is the timeout.
pub(crate) fn run_bounded(
    mut cmd: Command,
    timeout: Duration,
) -> Result<CommandOutput, Option<std::io::Error>> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Some)?;
    let pid = child.id();
    if let Ok(mut c) = CHILDREN.lock() {
        c.push(pid);
    }
    let result = wait_bounded(&mut child, timeout);
    if let Ok(mut c) = CHILDREN.lock() {
        c.retain(|p| *p != pid);
    }
    result
}

fn wait_bounded(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<CommandOutput, Option<std::io::Error>> {
    // Read both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = std::thread::spawn(move || read_all(out.as_mut()));
    let err_t = std::thread::spawn(move || read_all(err.as_mut()).0);
    let start = Instant::now();
    let status = loop {
        match child.try_wait().map_err(Some)? {
            Some(st) => break st,
            None if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(None);
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let (stdout, first_stdout) = out_t.join().unwrap_or_default();
    Ok(CommandOutput {
        code: status.code(),
        stdout,
        stderr: err_t.join().unwrap_or_default(),
        first_stdout,
    })
}

/// The most of a remote command's stdout or stderr kept: a guest can print without end, and
/// what kvmprov parses or shows (cloud-init's status, ssh's messages, a console tail) is far
/// smaller.
const MAX_OUTPUT: u64 = 1024 * 1024;

/// What a remote command printed (a guest or a hypervisor: neither is kvmprov), at most
/// [`MAX_OUTPUT`] bytes of it, sanitized ([`sanitize`]), and when its first byte came. The
/// rest is read and dropped, so the command never blocks on a full pipe.
fn read_all<R: std::io::Read>(r: Option<&mut R>) -> (String, Option<Instant>) {
    let mut buf = Vec::new();
    let mut first = None;
    let mut cut = false;
    if let Some(r) = r {
        use std::io::Read;
        let mut kept = r.by_ref().take(MAX_OUTPUT);
        let mut chunk = [0u8; 8192];
        loop {
            match kept.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    first.get_or_insert_with(Instant::now);
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        cut = std::io::copy(r, &mut std::io::sink()).is_ok_and(|n| n > 0);
    }
    let mut text = sanitize(&String::from_utf8_lossy(&buf), true);
    if cut {
        text.push_str(&format!("\n(output cut at {} KiB)", MAX_OUTPUT / 1024));
    }
    (text, first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn only_our_own_children_count_as_ours() {
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        assert_eq!(parent_of(child.id()), Some(std::process::id()));
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: the number is no longer our child's, whatever holds it now.
        assert_ne!(parent_of(child.id()), Some(std::process::id()));
        // PID 1 is nobody's child of ours.
        assert_ne!(parent_of(1), Some(std::process::id()));
    }

    /// Output read from a guest over SSH was kept whole (a guest printing without end filled
    /// memory) and unsanitized (cloud-init's messages reached the terminal with their escape
    /// sequences).
    #[test]
    fn regression_ssh_output_was_unbounded_and_unsanitized() {
        let mut flood = std::io::repeat(b'y').take(3 * MAX_OUTPUT);
        let (out, first) = read_all(Some(&mut flood));
        assert!(first.is_some());
        assert!(out.len() < MAX_OUTPUT as usize + 100, "{} bytes", out.len());
        assert!(
            out.ends_with("(output cut at 1024 KiB)"),
            "{}",
            &out[out.len() - 40..]
        );
        let mut guest: &[u8] = b"status: error\r\nerrors:\n\t- \x1b]2;owned\x07\x1b[2Jbad\n";
        let (out, _) = read_all(Some(&mut guest));
        assert_eq!(out, "status: error\nerrors:\n\t- bad\n");
    }
}
