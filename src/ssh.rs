//! Talking to a booted guest: TCP reachability and the OpenSSH client with a pinned host key.
//!
//! We run the system `ssh` rather than an SSH library: it is what operators debug with, and
//! `BatchMode=yes` + `StrictHostKeyChecking=yes` against a known_hosts file built from the host
//! key kvmprov generated means no trust-on-first-use and no password prompts.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmprov_hypervisor::SshDest;

use crate::output::sanitize;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot run ssh: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("ssh to the hypervisor {host} timed out after {seconds}s")]
    HostTimeout { host: String, seconds: u64 },
    #[error(
        "{what} {path} cannot be handed to ssh: {why}; move kvmprov's instance pool (or the \
         file) to a path without it"
    )]
    SshPath {
        what: &'static str,
        path: PathBuf,
        why: &'static str,
    },
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
    /// The remote hypervisor the guest sits behind (its NAT network is reachable only there).
    pub jump: Option<SshDest>,
}

impl SshTarget {
    /// The options that make ssh log in only with the operator key and trust only the pinned
    /// host key (and hop through a remote hypervisor): the ONE place they are built, for
    /// kvmprov's own ssh and for Ansible's (`inventory`). Each is one `-o` value in ssh_config
    /// syntax: paths double-quoted (ssh splits an unquoted value at whitespace) with `%` as `%%`
    /// (ssh expands `%` tokens in these paths); a path ssh would still read differently is
    /// refused.
    pub fn pinned_options(&self) -> Result<Vec<String>, GuestError> {
        let mut o = vec![
            format!(
                "IdentityFile={}",
                ssh_config_path("the operator key", &self.identity)?
            ),
            "IdentitiesOnly=yes".to_string(),
            "StrictHostKeyChecking=yes".to_string(),
            format!(
                "UserKnownHostsFile={}",
                ssh_config_path("the pinned known_hosts file", &self.known_hosts)?
            ),
            "GlobalKnownHostsFile=/dev/null".to_string(),
        ];
        if let Some(proxy) = self.proxy_option().transpose()? {
            o.push(proxy);
        }
        Ok(o)
    }

    /// The ssh arguments (no secrets: the key is a file path, the host key is pinned).
    pub fn args(&self, connect_timeout: u64) -> Result<Vec<String>, GuestError> {
        let mut a = vec!["-F".to_string(), "/dev/null".to_string()];
        let options = self.pinned_options()?.into_iter().chain([
            "BatchMode=yes".to_string(),
            format!("ConnectTimeout={connect_timeout}"),
            "ServerAliveInterval=5".to_string(),
            "LogLevel=ERROR".to_string(),
        ]);
        for o in options {
            a.push("-o".into());
            a.push(o);
        }
        a.push(format!("{}@{}", self.user, self.addr));
        Ok(a)
    }

    /// `ProxyCommand=ssh … -W %h:%p hypervisor` when the guest sits behind a remote hypervisor.
    /// Not `-J`: that would hand `-F /dev/null` to the hop too. The hop to the hypervisor uses
    /// the operator's own ssh setup (~/.ssh/config, agent, known_hosts), the same one libvirt's
    /// qemu+ssh transport uses; only the guest hop is pinned. ssh expands `%` tokens in the whole
    /// command before the shell runs it: every `%` but our `%h:%p` is doubled.
    pub fn proxy_option(&self) -> Option<Result<String, GuestError>> {
        let j = self.jump.as_ref()?;
        Some(hop_args(j).map(|args| {
            let words: Vec<String> = ["ssh", "-o", "BatchMode=yes"]
                .into_iter()
                .map(String::from)
                .chain(args)
                .chain([
                    "-W".to_string(),
                    "%h:%p".into(),
                    "--".into(),
                    j.host.clone(),
                ])
                .map(|w| match w.as_str() {
                    "%h:%p" => w,
                    _ => w.replace('%', "%%"),
                })
                .collect();
            format!("ProxyCommand={}", shell_words(&words))
        }))
    }
}

/// `path` as one ssh_config value ssh reads back as exactly this path: double-quoted (`"` and
/// `\` escaped), `%` written `%%`. ssh also expands `${VAR}` (no escape exists), a leading `~`,
/// and cannot take control characters in a config line: such a path is refused.
pub fn ssh_config_path(what: &'static str, path: &Path) -> Result<String, GuestError> {
    let text = path.to_str().ok_or_else(|| GuestError::SshPath {
        what,
        path: path.to_path_buf(),
        why: "it is not valid UTF-8",
    })?;
    let refuse = |why| GuestError::SshPath {
        what,
        path: path.to_path_buf(),
        why,
    };
    if text.contains("${") {
        return Err(refuse(
            "ssh would expand `${…}` in it as an environment variable",
        ));
    }
    if text.starts_with('~') {
        return Err(refuse(
            "ssh would expand its leading `~` to a home directory",
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(refuse("it holds a control character"));
    }
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    Ok(format!("\"{escaped}\""))
}

/// The options that reach a hypervisor the way libvirt does (`SshDest::args`), the key file's
/// `%` doubled: ssh expands `%` tokens (and `${…}`) in `-i` too.
fn hop_args(j: &SshDest) -> Result<Vec<String>, GuestError> {
    let mut a = j.args();
    if let Some(k) = &j.keyfile {
        let text = k.replace('%', "%%");
        if k.contains("${") {
            return Err(GuestError::SshPath {
                what: "the hypervisor's key file (keyfile= in the URI)",
                path: PathBuf::from(k),
                why: "ssh would expand `${…}` in it as an environment variable",
            });
        }
        for w in a.iter_mut().filter(|w| *w == k) {
            *w = text.clone();
        }
    }
    Ok(a)
}

/// Quote for the shell ssh runs a ProxyCommand with (and for Ansible, which splits
/// `ansible_ssh_common_args` the same way): POSIX shell words (`shlex`).
pub fn shell_words(words: &[String]) -> String {
    // `try_join` fails only on a NUL byte, which no argument can hold.
    shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| {
        words
            .iter()
            .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// Run `argv` (words, quoted for the remote shell) on a remote hypervisor over SSH with the
/// operator's ssh setup, for what libvirt's API cannot do (ACLs, reading a console log).
pub fn hypervisor_run(
    dest: &SshDest,
    argv: &[String],
    timeout: Duration,
) -> Result<CommandOutput, GuestError> {
    let mut cmd = Command::new("ssh");
    cmd.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
        .args(hop_args(dest)?)
        .arg("--")
        .arg(&dest.host)
        .arg(shell_words(argv));
    run_bounded(cmd, timeout).map_err(|e| match e {
        None => GuestError::HostTimeout {
            host: dest.display(),
            seconds: timeout.as_secs(),
        },
        Some(e) => GuestError::Spawn(e),
    })
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
    let mut cmd = Command::new("ssh");
    cmd.args(t.args(10)?).arg("--").arg(command);
    run_bounded(cmd, timeout).map_err(|e| match e {
        None => GuestError::Timeout {
            user: t.user.clone(),
            addr: t.addr,
            seconds: timeout.as_secs(),
        },
        Some(e) => GuestError::Spawn(e),
    })
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
fn run_bounded(
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
    let err_t = std::thread::spawn(move || read_all(err.as_mut()));
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
    Ok(CommandOutput {
        code: status.code(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// The most of a remote command's stdout or stderr kept: a guest can print without end, and
/// what kvmprov parses or shows (cloud-init's status, ssh's messages, a console tail) is far
/// smaller.
const MAX_OUTPUT: u64 = 1024 * 1024;

/// What a remote command printed (a guest or a hypervisor: neither is kvmprov), at most
/// [`MAX_OUTPUT`] bytes of it, sanitized ([`sanitize`]). The rest is read and dropped, so the
/// command never blocks on a full pipe.
fn read_all<R: std::io::Read>(r: Option<&mut R>) -> String {
    let mut buf = Vec::new();
    let mut cut = false;
    if let Some(r) = r {
        use std::io::Read;
        let _ = r.by_ref().take(MAX_OUTPUT).read_to_end(&mut buf);
        cut = std::io::copy(r, &mut std::io::sink()).is_ok_and(|n| n > 0);
    }
    let mut text = sanitize(&String::from_utf8_lossy(&buf), true);
    if cut {
        text.push_str(&format!("\n(output cut at {} KiB)", MAX_OUTPUT / 1024));
    }
    text
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

/// How much of the end of a console log `console_tail` reads: a guest that floods its serial
/// console can leave gigabytes, and only the last lines explain a failure.
const CONSOLE_TAIL_BYTES: u64 = 64 * 1024;

/// The last `n` lines of a console log (for "why did it not come up" messages), read from at
/// most its last [`CONSOLE_TAIL_BYTES`].
/// The guest wrote it: escape sequences and control characters are taken out ([`sanitize`]).
pub fn console_tail(path: &Path, n: usize) -> String {
    match read_end(path, CONSOLE_TAIL_BYTES) {
        Ok(bytes) => {
            let text = sanitize(&String::from_utf8_lossy(&bytes), true);
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

/// The last `max` bytes of a file, starting at a line when it had to cut (a partial first line
/// would read as a log line of its own).
fn read_end(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    // Not through a link (a console log linked to kvmprov's private key would print the key),
    // nor a FIFO (it would block).
    let mut f = kvmprov_safefs::open_regular(path).map_err(|e| match e {
        kvmprov_safefs::FsError::Io { source, .. } => source,
        other => std::io::Error::other(other),
    })?;
    let start = f.metadata()?.len().saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    if start > 0 {
        if let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            bytes.drain(..=nl);
        }
    }
    Ok(bytes)
}

/// The last `n` lines of a console log on a remote hypervisor, read over SSH.
pub fn remote_console_tail(dest: &SshDest, path: &Path, n: usize) -> String {
    match hypervisor_run(dest, &remote_tail_argv(path, n), Duration::from_secs(20)) {
        // Sanitized as every remote command's output is (`read_all`).
        Ok(o) if o.code == Some(0) => o.stdout.trim_end().to_string(),
        Ok(o) => format!(
            "(cannot read it on {}: {})",
            dest.display(),
            o.stderr.trim()
        ),
        Err(e) => format!("(cannot read it on {}: {e})", dest.display()),
    }
}

/// The command `remote_console_tail` runs: `tail` of a regular file only, never through a link
/// (as [`console_tail`] locally): a log linked to a private key on the hypervisor must not be
/// printed.
fn remote_tail_argv(path: &Path, n: usize) -> Vec<String> {
    vec![
        "sh".to_string(),
        "-c".into(),
        r#"if [ -L "$1" ] || [ ! -f "$1" ]; then echo "$1 is not a regular file (a link or missing)" >&2; exit 1; fi; exec tail -n "$2" -- "$1""#.into(),
        "sh".into(),
        path.display().to_string(),
        n.to_string(),
    ]
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

    fn target(identity: &str, known_hosts: &str, jump: Option<&str>) -> SshTarget {
        SshTarget {
            user: "debian".into(),
            addr: "192.168.122.5".parse().unwrap(),
            identity: identity.into(),
            known_hosts: known_hosts.into(),
            jump: jump.and_then(kvmprov_hypervisor::ssh_destination),
        }
    }

    #[test]
    fn ssh_args_pin_the_host_key() {
        let a = target("/p/id", "/p/kh", None).args(5).unwrap().join(" ");
        assert!(a.contains("StrictHostKeyChecking=yes"));
        assert!(a.contains("BatchMode=yes"));
        assert!(a.contains("UserKnownHostsFile=\"/p/kh\""), "{a}");
        assert!(a.contains("IdentityFile=\"/p/id\""), "{a}");
        assert!(a.ends_with("debian@192.168.122.5"));
        assert!(!a.contains("ProxyCommand"));
    }

    #[test]
    fn guests_behind_a_remote_hypervisor_go_through_it() {
        let t = target(
            "/p/id",
            "/p/kh",
            Some("qemu+ssh://root@hv1:2222/system?keyfile=/k/my key"),
        );
        let a = t.args(5).unwrap();
        let proxy = a.iter().find(|x| x.starts_with("ProxyCommand=")).unwrap();
        assert_eq!(
            proxy,
            "ProxyCommand=ssh -o 'BatchMode=yes' -p 2222 -l root -i '/k/my key' -W '%h:%p' -- hv1"
        );
        // The guest hop stays pinned.
        assert!(a.contains(&"StrictHostKeyChecking=yes".to_string()));
    }

    /// What the real `ssh -G` makes of kvmprov's arguments for `target`: its
    /// `userknownhostsfile` line (`None` when ssh is not installed here or refuses them).
    fn ssh_reads_known_hosts(t: &SshTarget) -> Option<String> {
        let out = Command::new("ssh")
            .arg("-G")
            .args(t.args(5).unwrap())
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("userknownhostsfile "))
            .map(str::to_string)
    }

    /// Issue 23 item 13: `-o UserKnownHostsFile=<path>` went to ssh unquoted: a pool path with a
    /// space was split into two files (ssh read `/…/vm` and a relative `pool/.kvmprov/…`) and a
    /// `%` was expanded as a token; the pinned file was never read. Checked with the real ssh.
    #[test]
    fn regression_pool_path_with_space_or_percent_broke_host_key_pinning() {
        let kh = "/srv/vm pool %h 100%/.kvmprov/app-01.x.known_hosts";
        let t = target("/srv/vm pool %h 100%/.kvmprov/id_ed25519", kh, None);
        if Command::new("ssh").arg("-V").output().is_err() {
            eprintln!("skipped: no ssh client here");
            return;
        }
        assert_eq!(ssh_reads_known_hosts(&t).as_deref(), Some(kh));
        // The hop's key file is passed on through a ProxyCommand, which ssh %-expands too.
        let t = target(
            "/p/id",
            kh,
            Some("qemu+ssh://root@hv1/system?keyfile=/k/a%25b"),
        );
        assert_eq!(ssh_reads_known_hosts(&t).as_deref(), Some(kh));
        let proxy = t.proxy_option().unwrap().unwrap();
        // (`%25` is as the URI spells it: kvmprov's URI parser leaves it encoded.)
        assert!(proxy.contains("-i '/k/a%%%%25b' "), "{proxy}");
        // What ssh cannot be told literally is refused with the reason, not passed on.
        let e = target("/p/id", "/srv/${HOME}/kh", None)
            .args(5)
            .unwrap_err();
        assert!(e.to_string().contains("/srv/${HOME}/kh"), "{e}");
        assert!(e.to_string().contains("environment variable"), "{e}");
    }

    /// The whole console log was read into memory to show its last lines: a guest that spams its
    /// serial console for days leaves a log of gigabytes. A 1 TiB (sparse) log failed to load at
    /// all ("out of memory"), or ate the machine's memory trying.
    #[test]
    fn regression_console_tail_read_the_whole_log_into_memory() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("huge.log");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(1 << 40).unwrap();
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = f;
            f.seek(SeekFrom::End(0)).unwrap();
            f.write_all(b"\nlogin: a\ncloud-init done\n").unwrap();
        }
        assert_eq!(console_tail(&p, 2), "login: a\ncloud-init done");
    }

    #[test]
    fn console_tail_of_a_long_log_drops_the_cut_first_line() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c.log");
        let mut text = "x".repeat(100 * 1024);
        text.push_str("\nlast\n");
        std::fs::write(&p, text).unwrap();
        let tail = console_tail(&p, 5);
        assert!(tail == "last", "{} bytes, not `last`", tail.len());
    }

    #[test]
    fn console_tail_takes_last_lines() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c.log");
        std::fs::write(&p, "a\nb\n\nc\nd\n").unwrap();
        assert_eq!(console_tail(&p, 2), "c\nd");
        assert!(console_tail(&t.path().join("none"), 2).contains("no console log"));
    }

    /// A guest set the terminal's title and cleared the screen through the console lines of a
    /// timeout message; a console log linked to kvmprov's private key printed the key.
    #[test]
    fn regression_console_tail_printed_escape_sequences_and_followed_links() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("app-01-console.log");
        std::fs::write(
            &p,
            "boot\r\n\x1b]0;owned\x07\x1b[2J\x1b[31mlogin:\x1b[0m \x7f\r\n",
        )
        .unwrap();
        assert_eq!(console_tail(&p, 2), "boot\nlogin: \\x7f");
        let key = t.path().join("id_ed25519");
        std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----").unwrap();
        let link = t.path().join("app-02-console.log");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        let shown = console_tail(&link, 5);
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("symbolic link"), "{shown}");
    }

    /// Output read from a guest over SSH was kept whole (a guest printing without end filled
    /// memory) and unsanitized (cloud-init's messages reached the terminal with their escape
    /// sequences).
    #[test]
    fn regression_ssh_output_was_unbounded_and_unsanitized() {
        let mut flood = std::io::repeat(b'y').take(3 * MAX_OUTPUT);
        let out = read_all(Some(&mut flood));
        assert!(out.len() < MAX_OUTPUT as usize + 100, "{} bytes", out.len());
        assert!(
            out.ends_with("(output cut at 1024 KiB)"),
            "{}",
            &out[out.len() - 40..]
        );
        let mut guest: &[u8] = b"status: error\r\nerrors:\n\t- \x1b]2;owned\x07\x1b[2Jbad\n";
        let out = read_all(Some(&mut guest));
        assert_eq!(out, "status: error\nerrors:\n\t- bad\n");
    }

    #[test]
    fn remote_console_tail_reads_no_link() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("a b-console.log");
        std::fs::write(&log, "1\n2\n3\n").unwrap();
        let link = t.path().join("c-console.log");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        let run = |p: &Path| {
            Command::new("sh")
                .arg("-c")
                .arg(shell_words(&remote_tail_argv(p, 2)))
                .output()
                .unwrap()
        };
        let ok = run(&log);
        assert_eq!(String::from_utf8_lossy(&ok.stdout), "2\n3\n");
        let refused = run(&link);
        assert!(!refused.status.success() && refused.stdout.is_empty());
    }
}
