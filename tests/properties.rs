//! Property tests over hostile input: the variables parser and validator, `-e`, and the
//! manifest parsers never panic, and every rejection says where.

use std::path::Path;

use proptest::prelude::*;

const GOOD: &str = "kvm_image_cache_path: /srv/images\nkvm_instance_disk_pool_path: /srv/instances\n\
kvm_cloud_image_catalog:\n  - image_name: debian-12\n    image_url: http://127.0.0.1:1/a/bookworm/latest/d.qcow2\n    image_checksum_manifest_url: http://127.0.0.1:1/a/bookworm/latest/SHA512SUMS\n\
kvm_cloud_init_defaults:\n  password: p\nkvm_instance_definitions:\n  - instance_name: app-01\n    image_name: debian-12\n";

/// `vars.yml:LINE:COLUMN: …` or `-e ARG: …`.
fn located(msg: &str) -> bool {
    if msg.starts_with("-e ") {
        return true;
    }
    let mut parts = msg.splitn(4, ':');
    parts.next() == Some("vars.yml")
        && parts.next().is_some_and(|l| l.parse::<u32>().is_ok())
        && parts.next().is_some_and(|c| c.parse::<u32>().is_ok())
}

/// Cases per property: 2,000 in `make test`; `make fuzz` sets PROPTEST_CASES=100000.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics_and_errors_are_located(text in "\\PC{0,400}") {
        if let Err(e) = kvmprov::config::parse(Path::new("vars.yml"), &text, &[]) {
            let msg = e.to_string();
            prop_assert!(located(&msg), "{}", msg);
        }
    }

    #[test]
    fn mutated_good_file_never_panics(pos in 0usize..GOOD.len(), insert in "[ -~\\n\\t]{0,12}", cut in 0usize..8) {
        let mut text = GOOD.to_string();
        let at = (0..=pos).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let end = (at + cut).min(text.len());
        let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        text.replace_range(at..end, &insert);
        if let Err(e) = kvmprov::config::parse(Path::new("vars.yml"), &text, &[]) {
            let msg = e.to_string();
            prop_assert!(located(&msg), "{}", msg);
        }
    }

    #[test]
    fn hostile_instance_names_are_rejected_with_a_location(name in "[a-z0-9/. \\-_\u{430}\u{3000}]{0,80}") {
        let text = GOOD.replace("instance_name: app-01", &format!("instance_name: {:?}", name));
        match kvmprov::config::parse(Path::new("vars.yml"), &text, &[]) {
            Ok(c) => {
                let n = &c.instances[0].name;
                prop_assert!(kvmprov::config::valid_instance_name(n).is_ok());
                prop_assert!(!n.contains('/') && !n.contains("..") && !n.contains(' '));
            }
            Err(e) => prop_assert!(e.to_string().starts_with("vars.yml:"), "{}", e),
        }
    }

    #[test]
    fn extra_vars_never_panic(arg in "\\PC{0,80}") {
        if let Err(e) = kvmprov::config::parse(Path::new("vars.yml"), GOOD, std::slice::from_ref(&arg)) {
            let msg = e.to_string();
            prop_assert!(located(&msg), "{}", msg);
        }
    }

    #[test]
    fn sha512sums_parser_never_panics(text in "\\PC{0,300}", name in "[a-z.]{1,12}") {
        match kvmprov_image::parse_sha512sums(&text, &name) {
            Ok(hex) => prop_assert_eq!(hex.len(), 128),
            Err(kvmprov_image::ManifestError::Malformed { line, .. }) => prop_assert!(line >= 1),
            Err(_) => {}
        }
    }

    #[test]
    fn json_manifest_parser_never_panics(text in "\\PC{0,300}") {
        let _ = kvmprov_image::parse_json_manifest(&text);
    }
}

#[test]
fn billion_laughs_is_rejected_quickly() {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..10 {
        let prev = (b'a' + i - 1) as char;
        let cur = (b'a' + i) as char;
        text.push_str(&format!("{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let start = std::time::Instant::now();
    let e = kvmprov::config::parse(Path::new("vars.yml"), &text, &[])
        .unwrap_err()
        .to_string();
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    assert!(e.starts_with("vars.yml:1:") && e.contains("anchors"), "{e}");
}

#[test]
fn paths_with_dot_dot_are_rejected() {
    let text = GOOD.replace("/srv/instances", "/srv/x/../instances");
    let e = kvmprov::config::parse(Path::new("vars.yml"), &text, &[])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("vars.yml:2:") && e.contains(".."), "{e}");
}
