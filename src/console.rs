//! A guest's serial console log (`<instance pool>/<instance>-console.log`, written by libvirt):
//! the one reader of its end, for the address the guest announces there (`address`), for the
//! last lines shown when a wait gives up (runtime) and for `kvmprov console --log [--follow]`. On this machine it is read through
//! [`kvmprov_safefs::open_regular`]; on a remote hypervisor over SSH by a command with the same
//! rules. Either way: never through a link (a log linked to a private key must not be printed),
//! never blocking on a FIFO, at most [`TAIL_BYTES`], sanitized (the guest wrote it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kvmprov_hypervisor::{uri, SshDest};

use crate::output::sanitize;
use crate::ssh::{hypervisor_run, SshError};

/// How much of the end of a console log is read, by every reader: cloud-init's network table
/// (the address announcement) is printed well within the last 256 KiB, so are the lines that
/// explain a failure, and a guest that floods its console (gigabytes over days) cannot make
/// kvmprov read more.
pub const TAIL_BYTES: u64 = 256 * 1024;

/// How long reading a remote log over SSH may take.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a console log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("no console log at {}: {source}", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read it on {host}: {source}")]
    Ssh {
        host: String,
        #[source]
        source: SshError,
    },
    #[error("cannot read it on {host}: {stderr}")]
    Remote { host: String, stderr: String },
    #[error("cannot follow {log}: --follow reads logs on this machine only; `kvmprov console NAME` attaches to the console of a guest on a remote hypervisor")]
    FollowRemote { log: String },
    #[error("cannot read it: the hypervisor {uri} is reached over neither a local socket nor ssh")]
    Unreachable { uri: String },
}

/// Where one instance's console log is, and so how it is read.
#[derive(Debug, Clone)]
pub enum ConsoleLog {
    /// On this machine (`uri::is_local`).
    Local(PathBuf),
    /// On a remote hypervisor kvmprov reaches over SSH.
    Remote { dest: SshDest, path: PathBuf },
    /// On a hypervisor reached over TCP or TLS: kvmprov has no way to read its files.
    Unreachable { uri: String, path: PathBuf },
}

impl ConsoleLog {
    /// The log at `path` on the hypervisor of `libvirt_uri`.
    pub fn on(libvirt_uri: &str, path: PathBuf) -> ConsoleLog {
        if uri::is_local(libvirt_uri) {
            return ConsoleLog::Local(path);
        }
        match uri::ssh_destination(libvirt_uri) {
            Some(dest) => ConsoleLog::Remote { dest, path },
            None => ConsoleLog::Unreachable {
                uri: libvirt_uri.to_string(),
                path,
            },
        }
    }

    /// Its path, and the hypervisor it is on when that is not this machine, for messages.
    pub fn describe(&self) -> String {
        match self {
            ConsoleLog::Local(path) | ConsoleLog::Unreachable { path, .. } => {
                path.display().to_string()
            }
            ConsoleLog::Remote { dest, path } => {
                format!("{} on {}", path.display(), dest.display())
            }
        }
    }

    /// The end of the log: at most its last [`TAIL_BYTES`], starting at a line when it had to
    /// cut (a partial first line would read as a log line of its own), sanitized.
    pub fn tail(&self) -> Result<String, ConsoleError> {
        match self {
            ConsoleLog::Local(path) => read_end(path, TAIL_BYTES)
                .map(|bytes| sanitize(&String::from_utf8_lossy(&bytes), true))
                .map_err(|source| ConsoleError::Local {
                    path: path.clone(),
                    source,
                }),
            ConsoleLog::Remote { dest, path } => {
                // Sanitized as every remote command's output is (`process`).
                match hypervisor_run(dest, &remote_tail_argv(path, TAIL_BYTES), REMOTE_TIMEOUT) {
                    Ok(o) if o.code == Some(0) => Ok(o.stdout),
                    Ok(o) => Err(ConsoleError::Remote {
                        host: dest.display(),
                        stderr: o.stderr.trim().to_string(),
                    }),
                    Err(source) => Err(ConsoleError::Ssh {
                        host: dest.display(),
                        source,
                    }),
                }
            }
            ConsoleLog::Unreachable { uri, .. } => {
                Err(ConsoleError::Unreachable { uri: uri.clone() })
            }
        }
    }

    /// The last `n` non-empty lines of the log, for "why did it not come up" messages; what
    /// kept it from being read, in parentheses, when it could not be.
    pub fn last_lines(&self, n: usize) -> String {
        match self.tail() {
            Ok(text) => last_lines(&text, n),
            Err(e) => format!("({e})"),
        }
    }
}

/// How often `--follow` looks at the log again.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// Most bytes `--follow` reads at a time, and most it holds back waiting for a line's end.
const FOLLOW_CHUNK: u64 = 64 * 1024;

impl ConsoleLog {
    /// `kvmprov console --log --follow`: the end of the log as [`ConsoleLog::tail`] gives it,
    /// then each complete line as the guest writes it, sanitized, until `emit` answers false.
    /// libvirt empties the log when the domain starts again: then it says so and reads from
    /// the top. Only for a log on this machine.
    pub fn follow(&self, mut emit: impl FnMut(&str) -> bool) -> Result<(), ConsoleError> {
        let ConsoleLog::Local(path) = self else {
            return Err(ConsoleError::FollowRemote {
                log: self.describe(),
            });
        };
        let local = |source| ConsoleError::Local {
            path: path.clone(),
            source,
        };
        let size = open_log(path)
            .and_then(|f| f.metadata())
            .map_err(local)?
            .len();
        let start = size.saturating_sub(TAIL_BYTES);
        let mut first = read_range(path, start, size).map_err(local)?;
        if start > 0 {
            if let Some(nl) = first.iter().position(|b| *b == b'\n') {
                first.drain(..=nl);
            }
        }
        let mut pos = size;
        let mut pending = first;
        loop {
            // Whole lines only: an escape sequence cut in two would pass the sanitizer as text.
            let cut = match pending.iter().rposition(|b| *b == b'\n') {
                Some(nl) => nl + 1,
                None if pending.len() as u64 >= FOLLOW_CHUNK => pending.len(),
                None => 0,
            };
            if cut > 0 {
                let text: Vec<u8> = pending.drain(..cut).collect();
                if !emit(&sanitize(&String::from_utf8_lossy(&text), true)) {
                    return Ok(());
                }
            }
            std::thread::sleep(FOLLOW_POLL);
            let size = match open_log(path).and_then(|f| f.metadata()) {
                Ok(m) => m.len(),
                // Between a domain's stop and its next start the log may be gone a moment.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(local(e)),
            };
            if size < pos {
                if !emit("--- the console log starts again (the domain was started again) ---\n") {
                    return Ok(());
                }
                pos = 0;
                pending.clear();
            }
            if size > pos {
                let end = size.min(pos + FOLLOW_CHUNK);
                let bytes = read_range(path, pos, end).map_err(local)?;
                pos += bytes.len() as u64;
                pending.extend_from_slice(&bytes);
            }
        }
    }
}

/// A local console log opened without following a link and without blocking on a FIFO.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    kvmprov_safefs::open_regular(path).map_err(|e| match e {
        kvmprov_safefs::FsError::Io { source, .. } => source,
        other => std::io::Error::other(other),
    })
}

/// Bytes `start..end` of a local log (fewer if it is shorter now).
fn read_range(path: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = open_log(path)?;
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(end.saturating_sub(start)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The last `n` non-empty lines of `text`, trailing blanks trimmed.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `max` bytes of a local file, starting at a line when it had to cut.
fn read_end(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    // Not through a link (a console log linked to kvmprov's private key would print the key),
    // nor a FIFO (it would block).
    let mut f = open_log(path)?;
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

/// What [`read_end`] does, as a command for a remote hypervisor's shell. The file must be
/// opened once, without following a link and without blocking, and the opened file checked:
/// a check of the path followed by a second open (`[ -L ] || tail`, or `stat` then `dd`) reads
/// whatever a link swapped in between points to, and POSIX `sh` and coreutils cannot open
/// with `O_NOFOLLOW` and then check the descriptor they read from (`dd iflag=nofollow` opens
/// without following, but reads a device as readily as a file). Perl can, and is on every
/// Debian hypervisor (`perl-base` is Essential: it cannot be left out of an install), where
/// Python is not: `sysopen` with `O_NOFOLLOW|O_NONBLOCK`, `-f` on the handle (`fstat`), seek
/// to the last `max` bytes, read, drop a cut first line.
fn remote_tail_argv(path: &Path, max: u64) -> Vec<String> {
    const SCRIPT: &str = r#"use Fcntl qw(O_RDONLY O_NOFOLLOW O_NONBLOCK SEEK_SET); my ($p, $max) = @ARGV; sysopen(my $f, $p, O_RDONLY | O_NOFOLLOW | O_NONBLOCK) or die "cannot open $p (a link is not followed): $!\n"; -f $f or die "$p is not a regular file\n"; my $size = -s _; my $start = $size > $max ? $size - $max : 0; sysseek($f, $start, SEEK_SET) or die "cannot seek in $p: $!\n"; my $d = ""; while (length($d) < $max) { my $n = sysread($f, $d, $max - length($d), length($d)); defined $n or die "cannot read $p: $!\n"; last if $n == 0; } $d =~ s/\A[^\n]*\n// if $start > 0; binmode STDOUT; print $d;"#;
    vec![
        "perl".to_string(),
        "-e".into(),
        SCRIPT.into(),
        "--".into(),
        path.display().to_string(),
        max.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::shell_words;
    use std::process::{Command, Stdio};

    fn local(p: &Path) -> ConsoleLog {
        ConsoleLog::Local(p.to_path_buf())
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
        assert_eq!(local(&p).last_lines(2), "login: a\ncloud-init done");
    }

    #[test]
    fn console_tail_of_a_long_log_drops_the_cut_first_line() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c.log");
        let mut text = "x".repeat(300 * 1024);
        text.push_str("\nlast\n");
        std::fs::write(&p, text).unwrap();
        let tail = local(&p).last_lines(5);
        assert!(tail == "last", "{} bytes, not `last`", tail.len());
    }

    #[test]
    fn read_end_reads_only_the_end() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("c.log");
        std::fs::write(&f, "a".repeat(1000) + "END").unwrap();
        assert_eq!(read_end(&f, 3).unwrap(), b"END");
        assert!(read_end(&t.path().join("none"), 3).is_err());
    }

    #[test]
    fn console_tail_takes_last_lines() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c.log");
        std::fs::write(&p, "a\nb\n\nc\nd\n").unwrap();
        assert_eq!(local(&p).last_lines(2), "c\nd");
        assert!(local(&t.path().join("none"))
            .last_lines(2)
            .contains("no console log"));
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
        assert_eq!(local(&p).last_lines(2), "boot\nlogin: \\x7f");
        let key = t.path().join("id_ed25519");
        std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----").unwrap();
        let link = t.path().join("app-02-console.log");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        let shown = local(&link).last_lines(5);
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("symbolic link"), "{shown}");
    }

    /// `console --log --follow`: what the guest writes reaches the terminal sanitized and in
    /// whole lines (an escape sequence written in two pieces is not let through as text), and
    /// a log emptied by the domain's next start is read again from its top.
    #[test]
    fn follow_prints_whole_sanitized_lines_and_starts_again_after_a_truncation() {
        use std::io::Write;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("app-01-console.log");
        std::fs::write(&p, "boot\r\n\x1b]0;owned\x07login: \n").unwrap();
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || {
                let pause = || std::thread::sleep(Duration::from_millis(700));
                let append = |b: &[u8]| {
                    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                    f.write_all(b).unwrap();
                };
                pause();
                append(b"\x1b[3");
                pause();
                append(b"1mred\x1b[0m\n");
                pause();
                std::fs::write(&p, "again\n").unwrap();
            })
        };
        let mut seen = String::new();
        local(&p)
            .follow(|text| {
                seen.push_str(text);
                !seen.contains("\nagain\n")
            })
            .unwrap();
        writer.join().unwrap();
        assert_eq!(
            seen,
            "boot\nlogin: \nred\n--- the console log starts again (the domain was started again) ---\nagain\n"
        );
    }

    #[test]
    fn follow_refuses_a_remote_log_and_a_link() {
        let remote = ConsoleLog::on("qemu+ssh://hv1/system", PathBuf::from("/p/a-console.log"));
        let e = remote.follow(|_| true).unwrap_err().to_string();
        assert!(
            e.contains("--follow reads logs on this machine only"),
            "{e}"
        );
        let t = tempfile::tempdir().unwrap();
        let key = t.path().join("id_ed25519");
        std::fs::write(&key, "SECRET").unwrap();
        let link = t.path().join("a-console.log");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        assert!(local(&link).follow(|_| true).is_err());
    }

    /// Run [`remote_tail_argv`] here as the remote shell would (ssh hands it to `sh -c`).
    fn run_remote(p: &Path, max: u64) -> std::process::Output {
        Command::new("sh")
            .arg("-c")
            .arg(shell_words(&remote_tail_argv(p, max)))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    #[test]
    fn remote_console_tail_reads_the_end_of_a_regular_file_only() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("a b-console.log");
        std::fs::write(&log, "1\n2\n3\n").unwrap();
        let ok = run_remote(&log, 4);
        // The last 4 bytes are `\n3\n` cut after `2`: the cut line is dropped, as here.
        assert_eq!(String::from_utf8_lossy(&ok.stdout), "3\n");
        assert_eq!(read_end(&log, 4).unwrap(), b"3\n");
        let all = run_remote(&log, TAIL_BYTES);
        assert_eq!(String::from_utf8_lossy(&all.stdout), "1\n2\n3\n");
        // A link is refused, not followed; a FIFO refused without blocking; a missing file said.
        let link = t.path().join("c-console.log");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        let fifo = t.path().join("d-console.log");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        for bad in [&link, &fifo, &t.path().join("none")] {
            let refused = run_remote(bad, TAIL_BYTES);
            assert!(
                !refused.status.success() && refused.stdout.is_empty(),
                "{}",
                bad.display()
            );
            let why = String::from_utf8_lossy(&refused.stderr);
            assert!(why.contains(&bad.display().to_string()), "{why}");
        }
        // A huge (sparse) log: only its end is read.
        let huge = t.path().join("huge.log");
        let f = std::fs::File::create(&huge).unwrap();
        f.set_len(1 << 40).unwrap();
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = f;
            f.seek(SeekFrom::End(0)).unwrap();
            f.write_all(b"\nlogin: a\n").unwrap();
        }
        let end = run_remote(&huge, TAIL_BYTES);
        assert_eq!(String::from_utf8_lossy(&end.stdout), "login: a\n");
    }

    /// The remote command checked the path (`[ -L "$1" ] || [ ! -f "$1" ]`), then `tail` opened
    /// it again: a link swapped in between was followed, and what it pointed to (a private key
    /// on the hypervisor) printed. Here a thread swaps a log and a link to a secret under one
    /// name as fast as it can while the command runs again and again: the check-then-open
    /// command printed the secret within a few hundred runs.
    #[test]
    fn regression_remote_console_tail_followed_a_link_swapped_in_after_its_check() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("id_ed25519");
        std::fs::write(&secret, "SECRET\n").unwrap();
        let log = t.path().join("app-01-console.log");
        std::fs::write(&log, "boot\n").unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let leaked = std::thread::scope(|sc| {
            sc.spawn(|| {
                let (file_tmp, link_tmp) = (t.path().join("f.tmp"), t.path().join("l.tmp"));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::write(&file_tmp, "boot\n");
                    let _ = std::fs::rename(&file_tmp, &log);
                    let _ = std::os::unix::fs::symlink(&secret, &link_tmp);
                    let _ = std::fs::rename(&link_tmp, &log);
                }
            });
            let leaked = (0..400).find_map(|_| {
                let out = run_remote(&log, TAIL_BYTES);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.contains("SECRET").then_some(text)
            });
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            leaked
        });
        assert_eq!(leaked, None);
    }
}
