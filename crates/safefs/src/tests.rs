use std::os::unix::fs::{symlink, PermissionsExt};

use rustix::fs::CWD;

use super::*;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chown(p: &Path, uid: u32) {
    rustix::fs::chown(p, Some(rustix::process::Uid::from_raw(uid)), None).unwrap();
}

fn is_root() -> bool {
    euid() == 0
}

#[test]
fn private_dir_is_created_0700_and_a_wrong_mode_of_our_own_is_corrected() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join(".kvmprov");
    Dir::private(&p).unwrap();
    assert_eq!(mode(&p), 0o700);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    Dir::private(&p).unwrap();
    assert_eq!(mode(&p), 0o700);
}

#[test]
fn private_dir_that_is_a_symlink_is_refused_and_its_target_untouched() {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = t.path().join(".kvmprov");
    symlink(&victim, &p).unwrap();
    let e = Dir::private(&p).unwrap_err();
    assert!(matches!(e, FsError::Symlink { .. }), "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(mode(&victim), 0o755);
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
}

#[test]
fn private_dir_owned_by_another_user_is_refused() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join(".kvmprov");
    std::fs::create_dir(&p).unwrap();
    chown(&p, 65534);
    let e = Dir::private(&p).unwrap_err();
    assert!(matches!(e, FsError::Owner { owner: 65534, .. }), "{e}");
}

/// Preflight's look ([`Dir::inspect_private`]) refuses what [`Dir::private`] refuses, one rule,
/// and creates nothing.
#[test]
fn inspecting_the_private_dir_refuses_what_opening_it_refuses() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("missing");
    Dir::inspect_private(&missing).unwrap();
    assert!(!missing.exists(), "inspect created it");
    let link = t.path().join("link");
    symlink(t.path(), &link).unwrap();
    let file = t.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let mut cases = vec![link, file];
    if is_root() {
        let theirs = t.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        chown(&theirs, 65534);
        cases.push(theirs);
    }
    for p in &cases {
        let seen = Dir::inspect_private(p).unwrap_err().to_string();
        let opened = Dir::private(p).unwrap_err().to_string();
        assert_eq!(seen, opened, "{}", p.display());
    }
    // Our own directory with another mode: fine (opening corrects it).
    let ours = t.path().join("ours");
    std::fs::create_dir(&ours).unwrap();
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o755)).unwrap();
    Dir::inspect_private(&ours).unwrap();
    assert_eq!(mode(&ours), 0o755);
}

#[test]
fn files_inside_are_never_opened_through_links_or_fifos() {
    let t = tempfile::tempdir().unwrap();
    let d = Dir::private(&t.path().join("d")).unwrap();
    std::fs::write(t.path().join("secret"), b"x").unwrap();
    symlink(t.path().join("secret"), d.join("id_ed25519")).unwrap();
    assert!(matches!(
        d.read_own("id_ed25519").unwrap_err(),
        FsError::Symlink { .. }
    ));
    rustix::fs::mknodat(
        CWD,
        d.join("fifo").as_path(),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // Would block forever without O_NONBLOCK.
    let e = d.open_file("fifo", false, false).unwrap_err();
    assert!(matches!(e, FsError::WrongType { .. }), "{e}");
    assert_eq!(d.read_own("missing").unwrap(), None);
}

#[test]
fn own_files_writable_by_others_or_owned_by_others_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = Dir::private(&t.path().join("d")).unwrap();
    d.write_atomic("k", b"key", 0o600).unwrap();
    assert_eq!(d.read_own("k").unwrap().unwrap(), b"key");
    std::fs::set_permissions(d.join("k"), std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(matches!(
        d.read_own("k").unwrap_err(),
        FsError::OthersCanWrite { .. }
    ));
    if is_root() {
        std::fs::set_permissions(d.join("k"), std::fs::Permissions::from_mode(0o600)).unwrap();
        chown(&d.join("k"), 65534);
        assert!(matches!(
            d.read_own("k").unwrap_err(),
            FsError::Owner { .. }
        ));
    }
}

#[test]
fn atomic_writes_replace_a_planted_link_instead_of_writing_through_it() {
    let t = tempfile::tempdir().unwrap();
    let d = Dir::private(&t.path().join("d")).unwrap();
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"victim").unwrap();
    symlink(&victim, d.join("known_hosts")).unwrap();
    d.write_atomic("known_hosts", b"pinned", 0o600).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
    assert_eq!(std::fs::read(d.join("known_hosts")).unwrap(), b"pinned");
    assert_eq!(mode(&d.join("known_hosts")), 0o600);
    let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "temporaries left");
}

#[test]
fn remove_file_removes_a_link_not_its_target() {
    let t = tempfile::tempdir().unwrap();
    let d = Dir::trusted(t.path()).unwrap();
    std::fs::write(t.path().join("target"), b"t").unwrap();
    symlink("target", t.path().join("link")).unwrap();
    assert!(d.remove_file("link").unwrap());
    assert!(t.path().join("target").exists());
    assert!(!d.remove_file("link").unwrap());
    assert!(matches!(
        d.remove_file("../x"),
        Err(FsError::BadName { .. })
    ));
}

#[test]
fn temporaries_have_unpredictable_names_and_are_never_reused() {
    let t = tempfile::tempdir().unwrap();
    let d = Dir::trusted(t.path()).unwrap();
    let (a, _) = d.create_temp("x.part-", 0o600).unwrap();
    let (b, _) = d.create_temp("x.part-", 0o600).unwrap();
    assert_ne!(a, b);
    assert!(matches!(d.create_new(&a, 0o600), Err(FsError::Io { .. })));
}

#[test]
fn lock_files_are_0600_and_others_cannot_own_them() {
    let t = tempfile::tempdir().unwrap();
    let d = Dir::trusted(t.path()).unwrap();
    d.lock_file(".lock").unwrap();
    assert_eq!(mode(&t.path().join(".lock")), 0o600);
    std::fs::set_permissions(
        t.path().join(".lock"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // A descriptor another user opened while it was 0644.
    let theirs = std::fs::File::open(t.path().join(".lock")).unwrap();
    d.lock_file(".lock").unwrap();
    assert_eq!(mode(&t.path().join(".lock")), 0o600);
    // Replaced, not chmod-ed: that descriptor now holds a file nobody locks any more.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(theirs.metadata().unwrap().nlink(), 0);
    if is_root() {
        chown(&t.path().join(".lock"), 65534);
        assert!(matches!(d.lock_file(".lock"), Err(FsError::Owner { .. })));
    }
}

#[test]
fn tree_under_a_world_writable_directory_without_sticky_bit_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let open = t.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = check_tree(&open.join("pool")).unwrap_err();
    assert!(matches!(e, FsError::OthersCanWrite { .. }), "{e}");
    assert!(e.to_string().contains("every user"), "{e}");
    // Sticky (as /tmp): an ancestor is fine, the directory itself is not.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    check_tree(&open.join("pool")).unwrap();
    assert!(check_tree(&open).is_err());
}

#[test]
fn tree_owned_by_another_user_is_refused_also_behind_a_link() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let theirs = t.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chown(&theirs, 65534);
    assert!(matches!(
        check_tree(&theirs.join("pool")),
        Err(FsError::Owner { owner: 65534, .. })
    ));
    symlink(&theirs, t.path().join("link")).unwrap();
    assert!(matches!(
        check_tree(&t.path().join("link/pool")),
        Err(FsError::Owner { .. })
    ));
}

/// A POSIX ACL shows only as the group bits (its mask) in the mode: a directory owned by
/// root:root whose ACL let user 65534 write passed the check.
#[test]
fn regression_acl_granting_another_user_write_passed_as_root_group() {
    if !is_root()
        || std::process::Command::new("setfacl")
            .arg("--version")
            .output()
            .is_err()
    {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("pool");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    // What kvmprov's own access fix adds (traverse for the qemu user) is fine.
    let acl = |spec: &str| {
        let ok = std::process::Command::new("setfacl")
            .args(["-m", spec])
            .arg(&d)
            .status()
            .unwrap()
            .success();
        assert!(ok, "setfacl -m {spec}");
    };
    acl("u:65534:x");
    check_tree(&d).unwrap();
    acl("u:65534:rwx");
    let e = check_tree(&d).unwrap_err();
    assert!(e.to_string().contains("user 65534"), "{e}");
}

#[test]
fn open_regular_refuses_links_fifos_and_directories_without_blocking() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("disk.qcow2");
    std::fs::write(&file, b"data").unwrap();
    let mut s = String::new();
    use std::io::Read;
    open_regular(&file).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "data");
    let link = t.path().join("link");
    symlink(&file, &link).unwrap();
    assert!(matches!(open_regular(&link), Err(FsError::Symlink { .. })));
    // A FIFO nobody writes to: a plain open would block forever.
    let fifo = t.path().join("fifo");
    rustix::fs::mknodat(CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    let e = open_regular(&fifo).unwrap_err();
    assert!(e.to_string().contains("a FIFO, not a regular file"), "{e}");
    assert!(matches!(
        open_regular(t.path()),
        Err(FsError::WrongType { .. })
    ));
    assert!(matches!(
        open_regular(&t.path().join("none")),
        Err(FsError::Io { .. })
    ));
}

/// A cache or pool configured as a link to a bigger disk (root's link, root's target) was
/// refused by every command after preflight accepted it: "… is a symbolic link".
#[test]
fn regression_pool_configured_as_a_link_was_refused_after_preflight_accepted_it() {
    let t = tempfile::tempdir().unwrap();
    let real = t.path().join("big");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("app-01.qcow2"), b"x").unwrap();
    let link = t.path().join("instances");
    symlink(&real, &link).unwrap();
    check_tree(&link).unwrap();
    let d = Dir::trusted(&link).unwrap();
    assert_eq!(d.path(), link);
    assert!(Dir::remove_at(&link.join("app-01.qcow2")).unwrap());
    assert!(!real.join("app-01.qcow2").exists());
}

/// A link in a sticky directory (`/tmp/kvm -> /root/safe`) owned by another user passed: its
/// owner can point it at their own directory after the check.
#[test]
fn regression_another_users_link_in_the_path_was_trusted() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let sticky = t.path().join("tmp");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let safe = t.path().join("safe");
    std::fs::create_dir(&safe).unwrap();
    let link = sticky.join("kvm");
    symlink(&safe, &link).unwrap();
    check_tree(&link.join("pool")).unwrap();
    rustix::fs::chownat(
        CWD,
        &link,
        Some(rustix::process::Uid::from_raw(65534)),
        None,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let e = check_tree(&link.join("pool")).unwrap_err();
    assert!(matches!(e, FsError::Owner { owner: 65534, .. }), "{e}");
}
