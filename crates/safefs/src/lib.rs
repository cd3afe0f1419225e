//! The one owner of "a path kvmprov writes, reads or deletes as root" (DESIGN.md §4, OpenSSH's
//! StrictModes as the model):
//!
//! - a directory is opened with `O_NOFOLLOW|O_DIRECTORY`, then checked through its handle
//!   (`fstat`: a directory, its owner, its mode), so what is checked is what is used;
//! - every file inside is opened relative to that handle, one name, `O_NOFOLLOW` (a planted
//!   symlink is an error, never followed) and `O_NONBLOCK` (a planted FIFO cannot hang a read),
//!   then checked with `fstat` before a byte is read or written;
//! - temporaries get unpredictable names and `O_EXCL`; a rename only moves a file this process
//!   created; a delete removes a name (a link as the link), never what a link points to;
//! - [`check_tree`] says who besides root and the running user can write a directory or any
//!   directory above it.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// The kind of an [`Entry`] (rustix's), so callers need no rustix of their own.
pub use rustix::fs::FileType;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is a symbolic link, and kvmprov follows no link it did not make there: \
         remove it (kvmprov creates what it needs itself)"
    )]
    Symlink { path: PathBuf },
    #[error("{path} is {found}, not {want}: remove or rename it")]
    WrongType {
        path: PathBuf,
        found: &'static str,
        want: &'static str,
    },
    #[error(
        "{path} is owned by uid {owner} (mode {mode:04o}), not by uid {me} that kvmprov runs as \
         or root, so another user could have planted or changed it: remove it, or `chown {me} {path}` \
         if you trust it"
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        mode: u32,
        me: u32,
    },
    #[error(
        "{path} (owner uid {owner}, mode {mode:04o}) can be written by {who}, who could then plant \
         files kvmprov runs as root on: {fix}"
    )]
    OthersCanWrite {
        path: PathBuf,
        owner: u32,
        mode: u32,
        who: String,
        fix: String,
    },
    #[error("{name:?} is not a plain file name inside {dir}")]
    BadName { dir: PathBuf, name: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> FsError + 'a {
    move |e| FsError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// The effective user kvmprov runs as (root in production).
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

/// What [`Dir::stat`] saw of a name, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: FileType,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub size: u64,
}

impl Entry {
    fn of(st: &rfs::Stat) -> Entry {
        Entry {
            kind: FileType::from_raw_mode(st.st_mode),
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            size: st.st_size as u64,
        }
    }
}

/// The rule for a directory kvmprov writes into or above one. `last` is the directory itself
/// (not an ancestor): a sticky world-writable ancestor (`/tmp`) is fine, because nobody else can
/// rename or delete what root put there; the directory itself must not be writable by others at
/// all, or they could plant the names kvmprov is about to use.
fn check_dir_entry(path: &Path, e: &Entry, last: bool) -> Result<(), FsError> {
    let me = euid();
    if e.uid != 0 && e.uid != me {
        return Err(FsError::Owner {
            path: path.to_path_buf(),
            owner: e.uid,
            mode: e.mode,
            me,
        });
    }
    let world = e.mode & 0o002 != 0;
    let sticky = e.mode & 0o1000 != 0;
    let group = group_writers(path, e, me)?;
    let p = path.display();
    let (who, fix) = if world && (last || !sticky) {
        (
            "every user".to_string(),
            if last {
                format!("`chmod o-w {p}`")
            } else {
                format!("`chmod o-w {p}` (or `chmod +t {p}`, as /tmp has)")
            },
        )
    } else if let Some(who) = group {
        let fix = if who.contains("ACL") {
            format!("`setfacl -m m::r-x {p}` (or remove the entry)")
        } else {
            format!("`chmod g-w {p}`")
        };
        (who, fix)
    } else {
        return Ok(());
    };
    Err(FsError::OthersCanWrite {
        path: path.to_path_buf(),
        owner: e.uid,
        mode: e.mode,
        who,
        fix,
    })
}

/// Who, through the group bits, can write a directory besides root and the running user: its
/// group (unless root's or ours), or, where a POSIX ACL is set (the group bits are then the ACL's
/// mask), any named user or group the ACL lets write.
fn group_writers(path: &Path, e: &Entry, me: u32) -> Result<Option<String>, FsError> {
    if e.mode & 0o020 == 0 {
        return Ok(None);
    }
    let mine = |gid: u32| gid == 0 || gid == rustix::process::getegid().as_raw();
    let mut buf = [0u8; 4096];
    let acl = match rfs::lgetxattr(path, "system.posix_acl_access", &mut buf[..]) {
        Ok(n) => &buf[..n],
        Err(Errno::NODATA | Errno::OPNOTSUPP) => {
            return Ok((!mine(e.gid)).then(|| format!("group {}", e.gid)))
        }
        Err(err) => return Err(io("read the ACL of", path)(err)),
    };
    // Linux's xattr form: a 4-byte version, then 8-byte entries (u16 tag, u16 perm, u32 id).
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const GROUP: u16 = 0x08;
    for entry in acl.get(4..).unwrap_or_default().chunks_exact(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let write = u16::from_le_bytes([entry[2], entry[3]]) & 0o2 != 0;
        let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let who = match tag {
            USER if write && id != 0 && id != me => format!("user {id} (through an ACL entry)"),
            GROUP if write && !mine(id) => format!("group {id} (through an ACL entry)"),
            GROUP_OBJ if write && !mine(e.gid) => format!("group {}", e.gid),
            _ => continue,
        };
        return Ok(Some(who));
    }
    Ok(None)
}

/// Who besides root and the running user can write `path` (a directory kvmprov writes into as
/// root) or any directory above it: an error naming the first such directory and the fix. The
/// part of `path` that does not exist yet is not checked (kvmprov creates it, owned by itself).
/// Both the path as written and where its symlinks lead are checked: a link in a safe directory
/// pointing into another user's tree is as unsafe as that tree.
pub fn check_tree(path: &Path) -> Result<(), FsError> {
    let path = lexical_absolute(path);
    check_chain(&path)?;
    // The deepest part that exists, with its links resolved.
    let mut existing = path.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            if real != existing {
                check_chain(&real)?;
            }
            return Ok(());
        }
        match existing.parent() {
            Some(p) => existing = p,
            None => return Ok(()),
        }
    }
}

/// Check each existing prefix of `path` (not following the last component of any prefix).
fn check_chain(path: &Path) -> Result<(), FsError> {
    let mut prefix = PathBuf::new();
    let comps: Vec<Component> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        prefix.push(c);
        let st = match rfs::lstat(&prefix) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(io("inspect", &prefix)(e)),
        };
        let e = Entry::of(&st);
        match e.kind {
            FileType::Directory => check_dir_entry(&prefix, &e, i + 1 == comps.len())?,
            // A link's own mode means nothing, but its owner can point it elsewhere at any
            // time (in a sticky directory too): only root's or ours. Where it leads is
            // checked by check_tree.
            FileType::Symlink => {
                let me = euid();
                if e.uid != 0 && e.uid != me {
                    return Err(FsError::Owner {
                        path: prefix,
                        owner: e.uid,
                        mode: e.mode,
                        me,
                    });
                }
            }
            found => {
                return Err(FsError::WrongType {
                    path: prefix,
                    found: type_name(found),
                    want: "a directory",
                })
            }
        }
    }
    Ok(())
}

/// The rule for kvmprov's private directory, [`Dir::private`]'s and [`Dir::inspect_private`]'s:
/// a real directory (not a link to one), owned by the running user. Its mode is kvmprov's to
/// correct, not a reason to refuse.
fn check_private_entry(path: &Path, e: &Entry) -> Result<(), FsError> {
    let me = euid();
    match e.kind {
        FileType::Symlink => Err(FsError::Symlink {
            path: path.to_path_buf(),
        }),
        FileType::Directory if e.uid != me => Err(FsError::Owner {
            path: path.to_path_buf(),
            owner: e.uid,
            mode: e.mode,
            me,
        }),
        FileType::Directory => Ok(()),
        found => Err(FsError::WrongType {
            path: path.to_path_buf(),
            found: type_name(found),
            want: "a directory",
        }),
    }
}

/// `path` made absolute (against the working directory) with `.` and `..` resolved by name.
pub fn lexical_absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Open `path` read-only for reading a file whose name came from somewhere kvmprov does not
/// control (a disk's backing file named in a qcow2 header, a console log): its last component
/// is not followed (`O_NOFOLLOW`), a FIFO or device cannot block the open (`O_NONBLOCK`), and
/// anything but a regular file is refused after `fstat`. Resolve the links above it first
/// (`canonicalize`) if they are to count.
pub fn open_regular(path: &Path) -> Result<File, FsError> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rfs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => {
            return Err(FsError::Symlink {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io("open", path)(e)),
    };
    let e = Entry::of(&rfs::fstat(&fd).map_err(io("inspect", path))?);
    if e.kind != FileType::RegularFile {
        return Err(FsError::WrongType {
            path: path.to_path_buf(),
            found: type_name(e.kind),
            want: "a regular file",
        });
    }
    // A regular file's reads never block; ordinary semantics for the caller.
    rfs::fcntl_setfl(&fd, OFlags::RDONLY).map_err(io("open", path))?;
    Ok(File::from(fd))
}

/// A directory opened without following a link at its last component, checked through the handle.
/// Everything kvmprov does inside goes through it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    fn open_raw(path: &Path) -> Result<(OwnedFd, Entry), FsError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rfs::open(path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                return Err(match rfs::lstat(path).map(|st| Entry::of(&st).kind) {
                    Ok(FileType::Symlink) => FsError::Symlink {
                        path: path.to_path_buf(),
                    },
                    Ok(found) => FsError::WrongType {
                        path: path.to_path_buf(),
                        found: type_name(found),
                        want: "a directory",
                    },
                    Err(_) => io("open", path)(e),
                })
            }
            Err(e) => return Err(io("open", path)(e)),
        };
        let st = rfs::fstat(&fd).map_err(io("inspect", path))?;
        Ok((fd, Entry::of(&st)))
    }

    /// kvmprov's private directory (`<pool>/.kvmprov`): created 0700 if missing (its parent must
    /// exist), accepted only if it is a real directory owned by the running user; a mode other
    /// than 0700 on kvmprov's own directory is corrected through the handle.
    pub fn private(path: &Path) -> Result<Dir, FsError> {
        match rfs::mkdir(path, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io("create", path)(e)),
        }
        let (fd, e) = Self::open_raw(path)?;
        check_private_entry(path, &e)?;
        if e.mode != 0o700 {
            rfs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(io("chmod", path))?;
        }
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// What [`Dir::private`] would refuse about `path`, found without creating or changing
    /// anything (preflight, `--check`); a missing directory is fine (it would be created).
    pub fn inspect_private(path: &Path) -> Result<(), FsError> {
        match rfs::lstat(path) {
            Ok(st) => check_private_entry(path, &Entry::of(&st)),
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io("inspect", path)(e)),
        }
    }

    /// A directory kvmprov writes into (the image cache, an instance pool): a real directory,
    /// owned by root or the running user, not writable by anybody else.
    ///
    /// Links in `path` are resolved first (a cache or pool configured as a link to a bigger disk
    /// is common); whether they may be trusted is [`check_tree`]'s decision, which the callers
    /// make first. The resolved directory itself is opened without following a link.
    pub fn trusted(path: &Path) -> Result<Dir, FsError> {
        let real = std::fs::canonicalize(path).map_err(|source| FsError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })?;
        let (fd, e) = Self::open_raw(&real)?;
        check_dir_entry(&real, &e, true)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Remove the file `path` (the name: a link as the link) through a checked handle on its
    /// directory. `false` when it did not exist.
    pub fn remove_at(path: &Path) -> Result<bool, FsError> {
        let bad = || FsError::BadName {
            dir: path.parent().unwrap_or(Path::new("/")).to_path_buf(),
            name: path.to_string_lossy().into_owned(),
        };
        let parent = path.parent().ok_or_else(bad)?;
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        Dir::trusted(parent)?.remove_file(name)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn name<'a>(&self, name: &'a str) -> Result<&'a str, FsError> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(FsError::BadName {
                dir: self.path.clone(),
                name: name.to_string(),
            });
        }
        Ok(name)
    }

    /// What `name` is, without following it; `None` when it does not exist.
    pub fn stat(&self, name: &str) -> Result<Option<Entry>, FsError> {
        let name = self.name(name)?;
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Entry::of(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io("inspect", &self.join(name))(e)),
        }
    }

    /// Open an existing regular file without following a link or blocking on a FIFO; `None` when
    /// it does not exist. With `own`, it must also belong to the running user and not be writable
    /// by group or others (a key, a resumable download).
    pub fn open_file(&self, name: &str, write: bool, own: bool) -> Result<Option<File>, FsError> {
        let name = self.name(name)?;
        let path = self.join(name);
        let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
        let flags = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd = match rfs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(FsError::Symlink { path }),
            Err(e) => return Err(io("open", &path)(e)),
        };
        let e = Entry::of(&rfs::fstat(&fd).map_err(io("inspect", &path))?);
        if e.kind != FileType::RegularFile {
            return Err(FsError::WrongType {
                path,
                found: type_name(e.kind),
                want: "a regular file",
            });
        }
        if own {
            let me = euid();
            if e.uid != me {
                return Err(FsError::Owner {
                    path,
                    owner: e.uid,
                    mode: e.mode,
                    me,
                });
            }
            if e.mode & 0o022 != 0 {
                return Err(FsError::OthersCanWrite {
                    fix: format!("`chmod go-w {}`", path.display()),
                    path,
                    owner: e.uid,
                    mode: e.mode,
                    who: "group or other users".to_string(),
                });
            }
        }
        // Reads of a regular file never block; clear O_NONBLOCK anyway so later users of the
        // handle see ordinary semantics.
        rfs::fcntl_setfl(&fd, access).map_err(io("open", &path))?;
        Ok(Some(File::from(fd)))
    }

    /// The contents of one of kvmprov's own files (see [`Dir::open_file`] with `own`).
    pub fn read_own(&self, name: &str) -> Result<Option<Vec<u8>>, FsError> {
        use std::io::Read;
        let Some(mut f) = self.open_file(name, false, true)? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(|source| FsError::Io {
            op: "read",
            path: self.join(name),
            source,
        })?;
        Ok(Some(buf))
    }

    /// A new file with an unpredictable name (`<prefix><16 hex>`) created with `O_EXCL`: nobody
    /// can have planted it. Returns the name and the file, open for writing.
    pub fn create_temp(&self, prefix: &str, mode: u32) -> Result<(String, File), FsError> {
        self.name(prefix)?;
        loop {
            let mut r = [0u8; 8];
            rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty())
                .map_err(io("get random bytes for a file in", &self.path))?;
            let name = format!("{prefix}{:016x}", u64::from_ne_bytes(r));
            match self.create_new(&name, mode) {
                Err(FsError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    continue
                }
                r => return r.map(|f| (name, f)),
            }
        }
    }

    /// Create `name`, which must not exist (`O_EXCL`, never through a link).
    pub fn create_new(&self, name: &str, mode: u32) -> Result<File, FsError> {
        let name = self.name(name)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(&self.fd, name, flags, Mode::from_raw_mode(mode))
            .map_err(io("create", &self.join(name)))?;
        // The umask may have taken bits away; the mode asked for is the mode wanted.
        rfs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(io("chmod", &self.join(name)))?;
        Ok(File::from(fd))
    }

    /// Rename within this directory (`from` should be a name this process created).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), FsError> {
        let (from, to) = (self.name(from)?, self.name(to)?);
        rfs::renameat(&self.fd, from, &self.fd, to).map_err(io("rename into", &self.join(to)))
    }

    /// Remove the name `name` (a symbolic link as the link, never its target). `false` when it did
    /// not exist. Directories are not removed.
    pub fn remove_file(&self, name: &str) -> Result<bool, FsError> {
        let name = self.name(name)?;
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(io("delete", &self.join(name))(e)),
        }
    }

    /// Write `name` atomically with `mode`: an unpredictable temporary (`O_EXCL`), fsync, rename.
    pub fn write_atomic(&self, name: &str, contents: &[u8], mode: u32) -> Result<(), FsError> {
        let name = self.name(name)?;
        let (tmp, mut f) = self.create_temp(&format!(".{name}.tmp-"), mode)?;
        let done = f
            .write_all(contents)
            .and_then(|()| f.sync_all())
            .map_err(|source| FsError::Io {
                op: "write",
                path: self.join(&tmp),
                source,
            })
            .and_then(|()| self.rename(&tmp, name));
        if done.is_err() {
            let _ = self.remove_file(&tmp);
        }
        done
    }

    /// A lock file (for `flock`): created 0600 if missing, else it must be a regular file owned
    /// by the running user, so nobody else can hold it open (flock works on any descriptor).
    pub fn lock_file(&self, name: &str) -> Result<File, FsError> {
        let name = self.name(name)?;
        // A few rounds: another run may replace the same old file at the same time.
        for _ in 0..4 {
            match self.create_new(name, 0o600) {
                Ok(f) => return Ok(f),
                Err(FsError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let Some(f) = self.open_file(name, true, true)? else {
                continue;
            };
            let mode = rfs::fstat(&f)
                .map_err(io("inspect", &self.join(name)))?
                .st_mode;
            if mode & 0o077 == 0 {
                return Ok(f);
            }
            // Older kvmprov created lock files 0644: another user may hold a descriptor of it
            // open (and flock it), which a chmod would not take away. A new file it is.
            self.remove_file(name)?;
        }
        Err(FsError::Io {
            op: "create",
            path: self.join(name),
            source: std::io::Error::other("it was replaced again and again while being created"),
        })
    }
}

#[cfg(test)]
mod tests;
