//! Issue 23 items 1 and 2, as a user meets them: the kvmprov binary run against libvirt's test
//! driver on a pool whose `.kvmprov` somebody planted, or below a directory another user can
//! write. Nothing may be written through them, and the refusal says where and how to fix it.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

mod util;
use util::{kvmprov, text};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// A config on the test driver with its cache in `dir/images` and the given pool.
fn config(dir: &Path, pool: &Path) -> PathBuf {
    let y = format!(
        "kvm_libvirt_uri: \"test:///default\"\nkvm_domain_type: qemu\nkvm_image_cache_path: {}/images\nkvm_instance_disk_pool_path: {}\n\
         kvm_cloud_image_catalog:\n  - image_name: debian-12\n    image_url: http://127.0.0.1:9/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2\n    image_checksum_manifest_url: http://127.0.0.1:9/images/cloud/bookworm/latest/SHA512SUMS\n\
         kvm_instance_definitions:\n  - instance_name: app-01\n    image_name: debian-12\n",
        dir.display(),
        pool.display()
    );
    let p = dir.join("vars.yml");
    std::fs::write(&p, y).unwrap();
    p
}

/// `ln -s /some/victim <pool>/.kvmprov`, then root ran `kvmprov preflight`: the victim became
/// `drwx------` and held `run-….lock`, and a key pair found there would have become the
/// operator key. Every command that takes the run lock or reads state refuses it now.
#[test]
fn regression_planted_kvmprov_symlink_in_the_pool_was_written_through() {
    let t = tempfile::tempdir().unwrap();
    let pool = t.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    let victim = t.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(victim.join("keep"), "x").unwrap();
    symlink(&victim, pool.join(".kvmprov")).unwrap();
    let cfg = config(t.path(), &pool);
    let cfg = cfg.to_str().unwrap();

    for args in [
        vec!["-c", cfg, "preflight"],
        vec!["-c", cfg, "provision", "--stage", "provision"],
        vec!["-c", cfg, "-e", "kvm_cleanup_confirmed=true", "cleanup"],
    ] {
        let o = kvmprov(&args);
        let out = text(&o);
        assert_ne!(o.status.code(), Some(0), "{args:?}: {out}");
        assert!(
            out.contains(&format!(
                "{}/.kvmprov is a symbolic link",
                pool.canonicalize().unwrap().display()
            )) || out.contains(&format!("{}/.kvmprov is a symbolic link", pool.display())),
            "{args:?}: {out}"
        );
        assert_eq!(mode(&victim), 0o755, "{args:?}: the victim's mode changed");
        assert_eq!(names(&victim), ["keep"], "{args:?}: written through");
    }
    // `--check` says it too, as a failed preflight check, and changes nothing.
    let o = kvmprov(&["-c", cfg, "--output", "json", "--check", "preflight"]);
    let out = text(&o);
    assert!(out.contains("is a symbolic link"), "{out}");
    assert_eq!(names(&victim), ["keep"]);
}

/// A pool below a directory every user can write (0777, no sticky bit) was created and
/// written into as root: anybody could have swapped the pool for a link first.
#[test]
fn regression_pool_under_a_world_writable_directory_was_used() {
    let t = tempfile::tempdir().unwrap();
    let open = t.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pool = open.join("pool");
    let cfg = config(t.path(), &pool);
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["-c", cfg, "preflight"],
        vec!["-c", cfg, "--check", "preflight"],
        vec!["-c", cfg, "provision", "--stage", "provision"],
    ] {
        let o = kvmprov(&args);
        let out = text(&o);
        assert_ne!(o.status.code(), Some(0), "{args:?}: {out}");
        assert!(
            out.contains(&format!(
                "{} (owner uid {}, mode 0777) can be written by every user",
                open.display(),
                rustix::process::geteuid().as_raw()
            )),
            "{args:?}: {out}"
        );
        assert!(
            out.contains(&format!("chmod o-w {}", open.display())),
            "{out}"
        );
        assert!(!pool.exists(), "{args:?}: the pool was created");
    }
}

/// The image cache below a directory others can write: `image-cache` (no preflight) filled it.
#[test]
fn regression_image_cache_under_a_world_writable_directory_was_used() {
    let t = tempfile::tempdir().unwrap();
    let open = t.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = config(t.path(), &t.path().join("pool"));
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("{}/images", t.path().display()),
        &format!("{}/images", open.display()),
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let o = kvmprov(&["-c", cfg.to_str().unwrap(), "image-cache"]);
    let out = text(&o);
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains(&format!("{} (owner uid", open.display())) && out.contains("every user"),
        "{out}"
    );
    assert!(!open.join("images").exists(), "the cache was created");
}
