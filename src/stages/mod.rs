//! The stages: preflight → image-cache → provision → runtime, and cleanup.
//!
//! Each stage observes the hypervisor, plans with a pure function, and applies the plan (or,
//! with `--check`, only prints it). This module holds what they share: the session, the lock
//! and the order in which `full` runs them.

pub mod check;
pub mod cleanup;
pub mod drift;
pub mod image_cache;
pub mod ping;
pub mod preflight;
pub mod provision;
pub mod runtime;
pub mod status;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use kvmprov_hypervisor::Hypervisor;
use kvmprov_image::CachedImage;

use crate::config::{Config, StageChoice};
use crate::output::{OutputFormat, Printer};
use crate::plan::{error_chain, StageReport};

/// Most instances worked on at once by default: beyond this the host, not kvmprov, is the limit.
const DEFAULT_MAX_JOBS: usize = 8;
/// How long a run waits for another one on the same hypervisor and pool before giving up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One invocation: the resolved config and how to run.
pub struct Session {
    pub cfg: Config,
    pub check: bool,
    pub output: OutputFormat,
    pub jobs: usize,
    pub printer: Printer,
    /// Runtime only starts domains (`--no-wait`).
    pub no_wait: bool,
}

impl Session {
    pub fn new(cfg: Config, check: bool, output: OutputFormat, jobs: Option<usize>) -> Self {
        let jobs = jobs
            .unwrap_or_else(|| cfg.instances.len().clamp(1, DEFAULT_MAX_JOBS))
            .max(1);
        Session {
            cfg,
            check,
            output,
            jobs,
            printer: Printer::new(output),
            no_wait: false,
        }
    }

    /// This session narrowed to one hypervisor and its instances.
    pub fn for_host(&self, uri: &str) -> Session {
        Session {
            cfg: self.cfg.for_host(uri),
            check: self.check,
            output: self.output,
            jobs: self.jobs,
            printer: self.printer,
            no_wait: self.no_wait,
        }
    }

    /// One session per hypervisor the config names (one, unless instances name their own).
    pub fn per_host(&self) -> Vec<Session> {
        self.cfg.hosts().iter().map(|h| self.for_host(h)).collect()
    }

    pub fn connect(&self) -> Result<Hypervisor, kvmprov_hypervisor::HvError> {
        Hypervisor::connect(&self.cfg.libvirt_uri)
    }

    /// kvmprov's own files for this instance pool: operator key, pinned host keys.
    pub fn state_dir(&self) -> PathBuf {
        crate::state::state_dir(&self.cfg.instance_pool_path)
    }
}

/// A run that could not go on: the reports so far and why it stopped.
#[derive(Debug)]
pub struct StageError {
    pub reports: Vec<StageReport>,
    pub error: String,
}

impl StageError {
    pub fn new(reports: Vec<StageReport>, e: &dyn std::error::Error) -> Self {
        StageError {
            reports,
            error: error_chain(e),
        }
    }

    /// The reports of a run over several hosts, failed if any host stopped with an error.
    pub fn collect(
        reports: Vec<StageReport>,
        errors: Vec<String>,
    ) -> Result<Vec<StageReport>, Self> {
        if errors.is_empty() {
            Ok(reports)
        } else {
            Err(StageError {
                reports,
                error: errors.join("; "),
            })
        }
    }
}

/// A host's error, named by its URI when a run spans several.
pub fn host_error(multi: bool, uri: &str, error: String) -> String {
    if multi {
        format!("{uri}: {error}")
    } else {
        error
    }
}

/// `full` runs every stage in order; any other choice runs only that stage (the seed's rule).
pub fn selected(stage: StageChoice) -> Vec<StageChoice> {
    match stage {
        StageChoice::Full => vec![
            StageChoice::Preflight,
            StageChoice::ImageCache,
            StageChoice::Provision,
            StageChoice::Runtime,
        ],
        one => vec![one],
    }
}

/// What a stage hands on to the next within one run.
#[derive(Default)]
pub struct Handoff {
    /// image_name → the cached version this run resolved (image-cache stage).
    pub images: BTreeMap<String, CachedImage>,
    /// image names a `--check` run would download (so provision can plan around them).
    pub pending: Vec<String>,
}

/// Run stages in order, stopping at the first stage that fails. Images are fetched once into
/// the local cache; then each hypervisor runs its stages under its own lock, all of them in
/// parallel, so one host that is down fails only its own instances.
pub fn run_stages(s: &Session, stages: &[StageChoice]) -> Result<Vec<StageReport>, StageError> {
    run_stages_with(s, stages, false)
}

/// `run_stages`; `all_images` fetches the whole catalog, not only the images instances use.
///
/// Order: every host's preflight (in parallel), so nothing is downloaded for a host that cannot
/// take it; then the images, once, into the local cache; then each host's remaining stages
/// (in parallel). A host that cannot be reached or fails a stage stops there; the others go on.
pub fn run_stages_with(
    s: &Session,
    stages: &[StageChoice],
    all_images: bool,
) -> Result<Vec<StageReport>, StageError> {
    let hosts = s.per_host();
    let locks = if s.check {
        Vec::new()
    } else {
        lock_all(&hosts).map_err(|e| StageError::new(Vec::new(), &e))?
    };
    let _cache = image_cache::hold_cache(s, stages).map_err(|e| StageError::new(Vec::new(), &e))?;
    let multi = hosts.len() > 1;
    let n = hosts.len();
    // `image-cache` alone needs no local hypervisor: it only fills the local cache.
    let conns = parallel(&hosts, n, |h| {
        let upload_only = stages.iter().all(|st| *st == StageChoice::ImageCache);
        if upload_only && preflight::is_local(&h.cfg.libvirt_uri) {
            None
        } else {
            Some(h.connect())
        }
    });
    let mut runs: Vec<HostRun> = hosts
        .iter()
        .zip(conns)
        .map(|(h, c)| HostRun {
            s: h,
            error: c
                .as_ref()
                .and_then(|c| c.as_ref().err())
                .map(|e| error_chain(e)),
            hv: c.and_then(Result::ok),
            reports: Vec::new(),
        })
        .collect();
    let mut handoff = Handoff::default();

    if stages.contains(&StageChoice::Preflight) {
        let done = parallel(&runs, n, |r| {
            r.stage(StageChoice::Preflight, &handoff, multi)
        });
        for (r, d) in runs.iter_mut().zip(done) {
            r.absorb(d);
        }
    }
    let mut fetched = None;
    if stages.contains(&StageChoice::ImageCache) && runs.iter().any(HostRun::going) {
        s.printer.stage_header("image-cache", s.check);
        let report = image_cache::run(s, all_images, &mut handoff).map_err(|e| StageError {
            reports: Vec::new(),
            error: format!("image-cache stage: {}", error_chain(&e)),
        })?;
        fetched = Some(report);
    }
    let images_ok = !fetched.as_ref().is_some_and(StageReport::failed);
    if images_ok {
        let rest: Vec<StageChoice> = stages
            .iter()
            .copied()
            .filter(|st| *st != StageChoice::Preflight)
            .collect();
        let done = parallel(&runs, n, |r| {
            let mut out = Vec::new();
            for st in &rest {
                let d = r.stage(*st, &handoff, multi);
                let stop = match &d {
                    Ok(Some(report)) => report.failed(),
                    Ok(None) => false,
                    Err(_) => true,
                };
                out.push(d);
                if stop {
                    break;
                }
            }
            out
        });
        for (r, ds) in runs.iter_mut().zip(done) {
            for d in ds {
                r.absorb(d);
            }
        }
    }
    drop(locks);

    // Reports: a single host reads in stage order; several read image-cache, then per host.
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    let fetched_at = if multi {
        0
    } else {
        usize::from(stages.contains(&StageChoice::Preflight))
    };
    for r in runs {
        reports.extend(r.reports);
        if let Some(e) = r.error {
            errors.push(host_error(multi, &r.s.cfg.libvirt_uri, e));
        }
    }
    if let Some(f) = fetched {
        reports.insert(fetched_at.min(reports.len()), f);
    }
    StageError::collect(reports, errors)
}

/// One hypervisor's part of a run: its connection, reports so far and why it stopped.
struct HostRun<'a> {
    s: &'a Session,
    hv: Option<Hypervisor>,
    reports: Vec<StageReport>,
    /// Could not connect, or a stage could not run: the host is done.
    error: Option<String>,
}

/// A stage's result on one host: a report, nothing to do (`None`), or why it could not run.
type StageDone = Result<Option<StageReport>, String>;

impl HostRun<'_> {
    /// Still worked on: no error, no failed stage.
    fn going(&self) -> bool {
        self.error.is_none() && !self.reports.iter().any(StageReport::failed)
    }

    fn stage(&self, stage: StageChoice, handoff: &Handoff, label: bool) -> StageDone {
        let (Some(hv), true) = (&self.hv, self.going()) else {
            return Ok(None);
        };
        let s = self.s;
        let local = preflight::is_local(&s.cfg.libvirt_uri);
        let name = match stage {
            // A local hypervisor reads the local cache: nothing to upload.
            StageChoice::ImageCache if local => return Ok(None),
            StageChoice::ImageCache => "image-upload",
            st => st.as_str(),
        };
        let host = label.then(|| s.cfg.libvirt_uri.clone());
        match &host {
            Some(h) => s.printer.stage_header(&format!("{name} @ {h}"), s.check),
            None => s.printer.stage_header(name, s.check),
        }
        // Each stage's own error type, flattened to its cause chain.
        let result: Result<StageReport, String> = match stage {
            StageChoice::Preflight => preflight::run(s, hv).map_err(|e| error_chain(&e)),
            StageChoice::ImageCache => Ok(image_cache::distribute(s, hv, &handoff.images)),
            StageChoice::Provision => provision::run(s, hv, handoff).map_err(|e| error_chain(&e)),
            StageChoice::Runtime => runtime::run(s, hv).map_err(|e| error_chain(&e)),
            StageChoice::Full => unreachable!("selected() expands full"),
        };
        result
            .map(|mut r| {
                r.host = host;
                Some(r)
            })
            .map_err(|e| format!("{} stage: {e}", stage.as_str()))
    }

    fn absorb(&mut self, done: StageDone) {
        match done {
            Ok(Some(r)) => self.reports.push(r),
            Ok(None) => {}
            Err(e) => self.error = Some(e),
        }
    }
}

/// Every host's lock before any work, in a fixed order: two runs over overlapping hosts never
/// deadlock, and a run never starts half its hosts. Ordered and taken once per canonical URI,
/// the lock's key: `hv1` and `admin@hv1` in one config are one lock, not a wait on ourselves.
pub fn lock_all(hosts: &[Session]) -> Result<Vec<RunLock>, LockError> {
    let mut order: Vec<(String, &Session)> = hosts
        .iter()
        .map(|h| (crate::state::canonical_uri(&h.cfg.libvirt_uri), h))
        .collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    order.dedup_by(|a, b| a.0 == b.0);
    order
        .into_iter()
        .map(|(_, h)| RunLock::acquire(h))
        .collect()
}

/// One run at a time per hypervisor and instance pool (see [`crate::state::run_lock_path`]).
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot prepare the lock directory of the instance pool {pool}")]
    Dir {
        pool: PathBuf,
        #[source]
        source: crate::state::StateError,
    },
    #[error("cannot open the lock file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another kvmprov run ({holder}) is working on {uri} with pool {pool}; wait for it to finish (lock file {path})")]
    Busy {
        holder: String,
        uri: String,
        pool: String,
        path: PathBuf,
    },
}

impl RunLock {
    pub fn acquire(s: &Session) -> Result<RunLock, LockError> {
        Self::acquire_within(s, LOCK_WAIT)
    }

    fn acquire_within(s: &Session, wait: std::time::Duration) -> Result<RunLock, LockError> {
        let pool = &s.cfg.instance_pool_path;
        let path =
            crate::state::run_lock_path(pool, &s.cfg.libvirt_uri).map_err(|e| LockError::Dir {
                pool: pool.clone(),
                source: e,
            })?;
        // O_NOFOLLOW: a symlink in its place is refused, never written through.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        // Another run may be finishing (or a killed one still exiting): wait a little for it.
        let deadline = std::time::Instant::now() + wait;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = read_holder(&mut file);
                    if std::time::Instant::now() >= deadline {
                        return Err(LockError::Busy {
                            holder,
                            uri: s.cfg.libvirt_uri.clone(),
                            pool: pool.display().to_string(),
                            path,
                        });
                    }
                    if !told {
                        crate::output::note(&format!(
                            "waiting up to {}s for another kvmprov run ({holder}) on this hypervisor and pool",
                            wait.as_secs()
                        ));
                        told = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(LockError::Open { path, source })
                }
            }
        }
        // Who holds it, for the message the next run prints.
        let _ = file.set_len(0);
        let _ = writeln!(file, "pid {}", std::process::id());
        Ok(RunLock { _file: file, path })
    }
}

/// What the lock's holder wrote into it (`pid N`), read through our own handle.
fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_string(&mut text));
    match text.trim() {
        "" => "pid unknown".to_string(),
        t => t.to_string(),
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        tracing::debug!("releasing {}", self.path.display());
    }
}

/// Run `f` over `items` with at most `jobs` at once, keeping the input order in the result.
pub fn parallel<T: Sync, R: Send>(items: &[T], jobs: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let jobs = jobs.max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(items.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .filter_map(|m| m.into_inner().ok().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn session(pool: &Path, uri: &str) -> Session {
        let text = format!(
            "kvm_libvirt_uri: \"{uri}\"\nkvm_image_cache_path: /nonexistent/cache\nkvm_instance_disk_pool_path: {}\n",
            pool.display()
        );
        let cfg = crate::config::parse(Path::new("vars.yml"), &text, &[]).unwrap();
        Session::new(cfg, false, OutputFormat::Human, None)
    }

    /// The lock was `$TMPDIR/kvmprov-<hash>.lock`, opened following symlinks: any local user
    /// could plant a symlink there, and root's run then truncated the file it pointed to.
    #[test]
    fn regression_run_lock_followed_a_planted_symlink() {
        let t = tempfile::tempdir().unwrap();
        let pool = t.path().join("pool");
        let s = session(&pool, "qemu:///system");
        let path = RunLock::acquire(&s).unwrap().path.clone();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let again = RunLock::acquire(&s);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(again.is_err(), "a planted symlink was taken as the lock");
        // It lives beside kvmprov's state in the pool, not in a world-writable directory.
        let state = crate::state::state_dir(&pool.canonicalize().unwrap());
        assert_eq!(path.parent(), Some(state.as_path()), "{}", path.display());
    }

    /// `/srv/pool` and `/srv/pool/`, `hv1` and `HV1:22` got different lock files: two runs on
    /// the same hypervisor and pool did not exclude each other.
    #[test]
    fn regression_run_lock_differed_for_one_hypervisor_and_pool_spelled_two_ways() {
        let t = tempfile::tempdir().unwrap();
        let pool = t.path().join("pool");
        std::fs::create_dir(&pool).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&pool, &link).unwrap();
        let plain = session(&pool, "qemu+ssh://hv1/system");
        let first = RunLock::acquire(&plain).unwrap().path.clone();
        for (p, uri) in [
            (
                PathBuf::from(format!("{}/", pool.display())),
                "qemu+ssh://hv1/system",
            ),
            (pool.clone(), "QEMU+SSH://admin@HV1:22/system/"),
            (link, "qemu+ssh://hv1/system"),
        ] {
            let other = RunLock::acquire(&session(&p, uri)).unwrap().path.clone();
            assert_eq!(other, first, "{} {uri}", p.display());
        }
        // Another hypervisor on the same pool path has its own lock.
        let hv2 = RunLock::acquire(&session(&pool, "qemu+ssh://hv2/system")).unwrap();
        assert_ne!(hv2.path, first);
    }

    #[test]
    fn one_run_locks_a_hypervisor_spelled_two_ways_once() {
        let t = tempfile::tempdir().unwrap();
        let pool = t.path().join("pool");
        let hosts = [
            session(&pool, "qemu+ssh://hv1/system"),
            session(&pool, "qemu+ssh://admin@hv1/system"),
            session(&pool, "qemu+ssh://hv2/system"),
        ];
        let started = std::time::Instant::now();
        let locks = lock_all(&hosts).unwrap();
        assert_eq!(locks.len(), 2);
        assert!(started.elapsed() < LOCK_WAIT / 2, "waited on itself");
    }

    #[test]
    fn busy_lock_names_its_holder_and_file() {
        let t = tempfile::tempdir().unwrap();
        let s = session(&t.path().join("pool"), "qemu:///system");
        let held = RunLock::acquire(&s).unwrap();
        let e = RunLock::acquire_within(&s, std::time::Duration::ZERO)
            .err()
            .expect("the lock is held")
            .to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains(&held.path.display().to_string()), "{e}");
    }

    #[test]
    fn full_expands_to_four_stages_in_order() {
        assert_eq!(
            selected(StageChoice::Full),
            vec![
                StageChoice::Preflight,
                StageChoice::ImageCache,
                StageChoice::Provision,
                StageChoice::Runtime
            ]
        );
        assert_eq!(selected(StageChoice::Runtime), vec![StageChoice::Runtime]);
    }

    #[test]
    fn parallel_keeps_order_and_bounds_jobs() {
        let items: Vec<u32> = (0..20).collect();
        let running = std::sync::atomic::AtomicUsize::new(0);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        let out = parallel(&items, 3, |x| {
            let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            x * 2
        });
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 3);
    }
}
