use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;
use crate::config::parse;

const HEAD: &str = "\
kvm_image_cache_path: /srv/images
kvm_instance_disk_pool_path: /srv/instances
kvm_cloud_init_defaults:
";

const HASH: &str = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/";

fn p(dir: &Path, text: &str) -> Result<Option<LoginPassword>, ConfigError> {
    parse(&dir.join("vars.yml"), &format!("{HEAD}{text}"), &[]).map(|c| c.password)
}

#[test]
fn password_hash_is_used_as_it_is_and_anything_else_is_refused_without_its_value() {
    let dir = Path::new("");
    let got = p(dir, &format!("  password_hash: '{HASH}'\n")).unwrap();
    assert_eq!(got, Some(LoginPassword::Hash(Secret::new(HASH))));
    assert_eq!(got.unwrap().crypt_hash().unwrap(), HASH);
    let rounds = "$6$rounds=10000$abc$".to_string() + &"a".repeat(86);
    assert!(p(dir, &format!("  password_hash: '{rounds}'\n")).is_ok());
    for bad in [
        "hunter2-plain",
        "$1$abc$def",
        "$6$salt$short",
        "$6$rounds=5$s$x",
    ] {
        let e = p(dir, &format!("  password_hash: '{bad}'\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("vars.yml:4:") && e.contains("password_hash is not a SHA-512 crypt hash"),
            "{e}"
        );
        assert!(!e.contains(bad), "the value leaked: {e}");
    }
}

#[test]
fn at_most_one_password_source() {
    let e = p(
        Path::new(""),
        &format!("  password: x\n  password_hash: '{HASH}'\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("vars.yml:5:")
            && e.contains("password and password_hash cannot be used together"),
        "{e}"
    );
    assert!(!e.contains(HASH));
}

#[test]
fn password_file_first_line_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pw");
    std::fs::write(&f, "s3cret-from-file\r\nsecond line\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let got = p(dir.path(), "  password_file: pw\n").unwrap();
    let Some(LoginPassword::File { plain, .. }) = &got else {
        panic!("a file source: {got:?}")
    };
    assert_eq!(plain.expose(), "s3cret-from-file");
    assert!(!format!("{got:?}").contains("s3cret"));
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = p(dir.path(), "  password_file: pw\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vars.yml:4:") && e.contains(&f.display().to_string()),
        "{e}"
    );
    assert!(e.contains("mode 0640") && e.contains("owner uid"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    if kvmprov_safefs::euid() == 0 {
        std::os::unix::fs::chown(&f, Some(4242), None).unwrap();
        let e = p(dir.path(), "  password_file: pw\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("owned by uid 4242") && e.contains("mode 0600"),
            "{e}"
        );
        std::os::unix::fs::chown(&f, Some(0), None).unwrap();
    }
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&f, &link).unwrap();
    let e = p(dir.path(), "  password_file: link\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("symbolic link"), "{e}");
    let e = p(dir.path(), "  password_file: missing\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("vars.yml:4:") && e.contains("missing"), "{e}");
}
