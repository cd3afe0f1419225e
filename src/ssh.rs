//! SSH, to guests and to remote hypervisors: the OpenSSH client's arguments (the one builder
//! of the pinned-host-key options, [`SshTarget::pinned_options`], for kvmprov's own ssh and for
//! Ansible's), running a command on a guest ([`ssh_run`]) or on a hypervisor
//! ([`hypervisor_run`]), and whether a guest's SSH port answers ([`tcp_open`]).
//!
//! We run the system `ssh` rather than an SSH library: it is what operators debug with, and
//! `BatchMode=yes` + `StrictHostKeyChecking=yes` against a known_hosts file built from the host
//! key kvmprov generated means no trust-on-first-use and no password prompts.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kvmprov_hypervisor::SshDest;

use crate::process::{run_bounded, CommandOutput};

#[derive(Debug, thiserror::Error)]
pub enum SshError {
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
    pub fn pinned_options(&self) -> Result<Vec<String>, SshError> {
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
    pub fn args(&self, connect_timeout: u64) -> Result<Vec<String>, SshError> {
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
    pub fn proxy_option(&self) -> Option<Result<String, SshError>> {
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
pub fn ssh_config_path(what: &'static str, path: &Path) -> Result<String, SshError> {
    let text = path.to_str().ok_or_else(|| SshError::SshPath {
        what,
        path: path.to_path_buf(),
        why: "it is not valid UTF-8",
    })?;
    let refuse = |why| SshError::SshPath {
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
fn hop_args(j: &SshDest) -> Result<Vec<String>, SshError> {
    let mut a = j.args();
    if let Some(k) = &j.keyfile {
        let text = k.replace('%', "%%");
        if k.contains("${") {
            return Err(SshError::SshPath {
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
) -> Result<CommandOutput, SshError> {
    let mut cmd = Command::new("ssh");
    cmd.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
        .args(hop_args(dest)?)
        .arg("--")
        .arg(&dest.host)
        .arg(shell_words(argv));
    run_bounded(cmd, timeout).map_err(|e| match e {
        None => SshError::HostTimeout {
            host: dest.display(),
            seconds: timeout.as_secs(),
        },
        Some(e) => SshError::Spawn(e),
    })
}

/// Run `command` on the guest, killing ssh after `timeout`.
pub fn ssh_run(t: &SshTarget, command: &str, timeout: Duration) -> Result<CommandOutput, SshError> {
    let mut cmd = Command::new("ssh");
    cmd.args(t.args(10)?).arg("--").arg(command);
    run_bounded(cmd, timeout).map_err(|e| match e {
        None => SshError::Timeout {
            user: t.user.clone(),
            addr: t.addr,
            seconds: timeout.as_secs(),
        },
        Some(e) => SshError::Spawn(e),
    })
}

/// Is TCP port `port` open on `addr`? One attempt, bounded.
pub fn tcp_open(addr: IpAddr, port: u16, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&SocketAddr::new(addr, port), timeout).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

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
}
