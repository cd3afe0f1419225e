//! The human renderings: pure functions from values to the text kvmprov prints.

use crate::config::{Attachment, Config, FieldOrigin, Origins};
use crate::report::{Outcome, StageReport, Status};

use super::json::{InstanceSnapshots, InstanceStatus, Probe};

/// Under an instance that names a profile: each field with a value, and where the value came
/// from. Fields left empty by a built-in default (no list, no option) are left out.
fn origins(o: &Origins) -> Vec<String> {
    let shown: Vec<&FieldOrigin> = o
        .fields
        .iter()
        .filter(|f| {
            let empty = match &f.value {
                serde_json::Value::Null | serde_json::Value::Bool(false) => true,
                serde_json::Value::Array(a) => a.is_empty(),
                serde_json::Value::Object(m) => m.is_empty(),
                _ => false,
            };
            !(empty && f.is_built_in_default())
        })
        .collect();
    // Values line up unless one is long (a list, user_data): that one pushes its origin on.
    let values: Vec<String> = shown.iter().map(|f| shown_value(f)).collect();
    let width = values
        .iter()
        .map(|v| v.chars().count())
        .max()
        .unwrap_or(0)
        .min(24);
    let mut lines = vec![format!(
        "      profile {}: each value and where it comes from",
        o.profile
    )];
    for (f, value) in shown.iter().zip(values) {
        lines.push(format!(
            "        {:<22} {value:<width$}  {}",
            f.field, f.from
        ));
    }
    lines
}

/// A value on one line: a string as it is, user_data by its keys, anything else as JSON.
fn shown_value(f: &FieldOrigin) -> String {
    let text = match &f.value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(m) if f.field == "user_data" => {
            let keys: Vec<&str> = m.keys().map(String::as_str).collect();
            format!("keys: {}", keys.join(", "))
        }
        v => v.to_string(),
    };
    super::sanitize(&text, false)
}

/// The line that opens a stage: `provision` or `cleanup (check mode: plan only)`.
pub fn stage_header(stage: &str, check: bool) -> String {
    let mode = if check {
        " (check mode: plan only)"
    } else {
        ""
    };
    format!("{stage}{mode}")
}

/// One line per action, as a plan or as a result: `  create    app-02   overlay disk: missing`.
pub fn render_line(o: &Outcome) -> String {
    let mark = match &o.status {
        Status::Planned => "-",
        Status::Done => "✓",
        Status::Failed(_) => "✗",
    };
    // Reasons and errors quote paths, guests and image hosts: a last sanitizing pass, for text
    // that was not sanitized where it entered (on clean text the sanitizer changes nothing).
    let mut line = format!(
        "  {mark} {:<9} {:<18} {}",
        o.action.op.as_str(),
        super::sanitize(&o.action.target, false),
        super::sanitize(&o.action.reason, true)
    );
    match &o.status {
        Status::Failed(err) => {
            line.push_str("\n      error: ");
            line.push_str(&super::sanitize(err, true));
        }
        Status::Done if o.seconds >= 0.05 => line.push_str(&format!(" ({:.1}s)", o.seconds)),
        _ => {}
    }
    line
}

/// The summary table: per stage (per host and stage when a run spans several hypervisors),
/// how many actions of each kind and how they went.
pub fn render_summary(reports: &[StageReport], check_mode: bool) -> String {
    let mut out = String::new();
    let host_width = reports
        .iter()
        .filter_map(|r| r.host.as_ref().map(|h| h.len().max(4) + 1))
        .max();
    let host_col = |h: &str| match host_width {
        Some(w) => format!("{h:<w$}"),
        None => String::new(),
    };
    out.push_str(&format!(
        "\n{}{:<12} {:>7} {:>8} {:>6} {:>8}\n",
        host_col("host"),
        "stage",
        "actions",
        "changed",
        "ok",
        "failed"
    ));
    for r in reports {
        let changed = r
            .outcomes
            .iter()
            .filter(|o| o.action.op.mutates() && o.status == Status::Done)
            .count();
        let failed = r.outcomes.iter().filter(|o| o.failed()).count();
        let ok = r
            .outcomes
            .iter()
            .filter(|o| o.status == Status::Done)
            .count();
        out.push_str(&format!(
            "{}{:<12} {:>7} {:>8} {:>6} {:>8}\n",
            host_col(r.host.as_deref().unwrap_or("local")),
            r.stage,
            r.outcomes.len(),
            changed,
            ok,
            failed
        ));
    }
    let failed: usize = reports
        .iter()
        .map(|r| r.outcomes.iter().filter(|o| o.failed()).count())
        .sum();
    if check_mode {
        out.push_str("check mode: nothing was changed\n");
    } else if failed > 0 {
        out.push_str(&format!("{failed} action(s) failed\n"));
    }
    out
}

/// `kvmprov check`: the variables file, summarised.
pub fn config(cfg: &Config) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!("{}: ok", cfg.source.display()));
    line(format!(
        "  hypervisor      {} ({})",
        cfg.hypervisor_host, cfg.libvirt_uri
    ));
    line(format!("  domain type     {:?}", cfg.domain_type));
    line(format!("  stage           {}", cfg.stage.as_str()));
    line(format!(
        "  image cache     {}",
        cfg.image_cache_path.display()
    ));
    line(format!(
        "  instance pool   {}",
        cfg.instance_pool_path.display()
    ));
    let used = cfg.used_images();
    line(format!(
        "  images          {} in catalog, {} used",
        cfg.catalog.len(),
        used.len()
    ));
    for c in &cfg.catalog {
        let mark = if used.iter().any(|u| u.image_name == c.image_name) {
            "used"
        } else {
            "unused"
        };
        let url = kvmprov_image::redact_url(&c.image_url);
        line(format!("    {:<14} {:<6} {url}", c.image_name, mark));
    }
    line(format!("  instances       {}", cfg.instances.len()));
    for i in &cfg.instances {
        let ip = i
            .ipv4
            .as_ref()
            .map(|s| s.address.to_string())
            .unwrap_or_else(|| "dhcp".to_string());
        let snap = i.snapshot_name.as_deref().unwrap_or("-");
        let on = if i.libvirt_uri == cfg.libvirt_uri {
            String::new()
        } else {
            format!(" on {}", i.libvirt_uri)
        };
        line(format!(
            "    {:<14} {:<10} {} vCPU {:>6} MiB {:>5} GiB  net {} ip {} snapshot {}{on}",
            i.name,
            i.image_name,
            i.vcpus,
            i.memory_mib,
            i.disk_size_gib,
            match &i.attach {
                Attachment::Network(n) => n.clone(),
                Attachment::Bridge(b) => format!("bridge {b}"),
            },
            ip,
            snap
        ));
        for d in &i.disks {
            line(format!("      data disk {} ({})", d.summary(), d.by_id()));
        }
        // Several NICs: the line above shows the primary one; every NIC gets its own line.
        if !i.other_nics.is_empty() {
            for (n, nic) in i.nics().iter().enumerate() {
                line(format!("      nic{n} {}", nic.describe()));
            }
        }
        if let Some(o) = cfg.origins.iter().find(|o| o.instance == i.name) {
            origins(o).into_iter().for_each(&mut line);
        }
    }
    line(format!(
        "  cleanup         confirmed={} remove_disks={}",
        cfg.cleanup_confirmed, cfg.cleanup_remove_disks
    ));
    out
}

/// `kvmprov ping`: one hypervisor that answered.
pub fn probe(p: &Probe) -> String {
    let mut out = format!("hypervisor {} reachable\n", p.uri);
    let Some(info) = &p.host else {
        return out;
    };
    let yes_no = |b: bool| if b { "available" } else { "not available" };
    out.push_str(&format!("  host name          {}\n", info.hostname));
    out.push_str(&format!("  libvirt version    {}\n", info.libvirt_version));
    out.push_str(&format!(
        "  hypervisor         {} {}\n",
        info.driver, info.hypervisor_version
    ));
    out.push_str(&format!("  domain type kvm    {}\n", yes_no(info.kvm)));
    out.push_str(&format!("  domain type qemu   {}\n", yes_no(info.qemu)));
    out.push_str(&format!(
        "  networks           {}\n",
        if p.networks.is_empty() { "none" } else { "" }
    ));
    for n in &p.networks {
        out.push_str(&format!(
            "    {:<20} {:<8} autostart={:<3} bridge={}\n",
            n.name,
            if n.active { "active" } else { "inactive" },
            if n.autostart { "yes" } else { "no" },
            n.bridge.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// `kvmprov snapshot list`: a row per snapshot (`*`: libvirt's current one), a row for an
/// instance with none or not defined.
pub fn snapshot_table(rows: &[InstanceSnapshots]) -> String {
    let mut out = format!(
        "{:<16} {:<20} {:<20} {:<8} current\n",
        "instance", "snapshot", "taken (UTC)", "state"
    );
    for r in rows {
        let name = super::sanitize(&r.name, false);
        if !r.defined || r.snapshots.is_empty() {
            let what = if r.defined { "(none)" } else { "(not defined)" };
            out.push_str(&format!("{name:<16} {what}\n"));
        }
        for s in &r.snapshots {
            out.push_str(&format!(
                "{name:<16} {:<20} {:<20} {:<8} {}\n",
                super::sanitize(&s.facts.name, false),
                s.facts.created.map(utc).unwrap_or_else(|| "-".into()),
                super::sanitize(&s.facts.state, false),
                if s.current { "*" } else { "" }
            ));
        }
    }
    out
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` in UTC (days to a civil date: Howard
/// Hinnant's `civil_from_days`).
fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `kvmprov status`: a row per instance (and its hypervisor when there are several).
pub fn status_table(rows: &[InstanceStatus], several_hosts: bool) -> String {
    let mut out = format!(
        "{:<16} {:<12} {:<5} {:<26} {:<16} {:<4} snapshots\n",
        "instance", "state", "type", "image", "ip", "ssh"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<16} {:<12} {:<5} {:<26} {:<16} {:<4} {}\n",
            r.name,
            r.state,
            r.domain_type,
            r.image,
            r.ip.as_deref().unwrap_or("-"),
            if r.ssh_ready { "yes" } else { "no" },
            if r.snapshots.is_empty() {
                "-".to_string()
            } else {
                r.snapshots.join(",")
            }
        ));
        if several_hosts {
            out.push_str(&format!("{:<16} on {}\n", "", r.host));
        }
        for d in &r.disks {
            let volume = match d.capacity_bytes {
                None => "missing".to_string(),
                Some(c) if c == d.size_gib << 30 => "present".to_string(),
                Some(c) => format!("present, {} bytes", c),
            };
            let fs = match (&d.filesystem, &d.mount) {
                (Some(fs), Some(m)) => format!("{fs} on {m}"),
                (Some(fs), None) => fs.clone(),
                _ => "raw".to_string(),
            };
            out.push_str(&format!(
                "{:<16} disk {} {} GiB {fs}: {} ({volume})\n",
                "", d.name, d.size_gib, d.volume
            ));
        }
        // An instance with several NICs: a line per NIC under its row.
        for (i, n) in r.nics.iter().enumerate() {
            let mut addrs: Vec<String> = n.ipv4.iter().map(|a| a.to_string()).collect();
            addrs.extend(n.ipv6.iter().map(|a| a.to_string()));
            out.push_str(&format!(
                "{:<16} nic{i} {} {} {}{}\n",
                "",
                n.on(),
                n.mac,
                if addrs.is_empty() {
                    "-".to_string()
                } else {
                    addrs.join(" ")
                },
                if n.primary { " (primary)" } else { "" }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{run, Action, Op};

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn status_lists_each_data_disk_under_its_instance() {
        use crate::output::json::{DiskStatus, InstanceStatus};
        let disk = |name: &str, capacity: Option<u64>, mount: Option<&str>| DiskStatus {
            name: name.into(),
            volume: format!("/p/db-01_{name}.qcow2"),
            by_id: format!("/dev/disk/by-id/virtio-{name}"),
            size_gib: 2,
            capacity_bytes: capacity,
            filesystem: mount.map(|_| "ext4".into()),
            mount: mount.map(String::from),
        };
        let row = InstanceStatus {
            name: "db-01".into(),
            host: "qemu:///system".into(),
            state: "running".into(),
            domain_type: "kvm".into(),
            image: "debian-12".into(),
            ip: None,
            ssh_ready: false,
            snapshots: vec![],
            disks: vec![
                disk("data", Some(2 << 30), Some("/srv/data")),
                disk("raw", None, None),
            ],
            nics: vec![],
        };
        let text = status_table(&[row], false);
        let lines: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            lines,
            vec![
                "                 disk data 2 GiB ext4 on /srv/data: /p/db-01_data.qcow2 (present)",
                "                 disk raw 2 GiB raw: /p/db-01_raw.qcow2 (missing)",
            ]
        );
    }

    #[test]
    fn run_records_failure_chain() {
        let o = run(Action::new("app-01", Op::Create, "missing"), || {
            Err(Outer(std::io::Error::other("inner cause")))
        });
        assert_eq!(o.status, Status::Failed("outer: inner cause".into()));
        assert!(render_line(&o).contains("error: outer: inner cause"));
    }

    #[test]
    fn summary_has_a_host_column_when_hosts_are_named() {
        let mut a = StageReport::new("provision");
        a.host = Some("qemu+ssh://hv2/system".into());
        let text = render_summary(&[StageReport::new("image-cache"), a], false);
        assert!(text.contains("\nhost"), "{text}");
        assert!(text.contains("\nlocal"), "{text}");
        assert!(text.contains("\nqemu+ssh://hv2/system provision"), "{text}");
        assert!(!render_summary(&[StageReport::new("x")], false).contains("host"));
    }

    #[test]
    fn summary_counts_changes_and_failures() {
        let mut r = StageReport::new("provision");
        r.outcomes
            .push(run(Action::new("a", Op::Create, "missing"), || {
                Ok::<(), std::io::Error>(())
            }));
        r.outcomes.push(run(Action::new("b", Op::Ok, "exists"), || {
            Ok::<(), std::io::Error>(())
        }));
        r.outcomes
            .push(run(Action::new("c", Op::Define, "missing"), || {
                Err(std::io::Error::other("boom"))
            }));
        let s = render_summary(&[r], false);
        assert!(
            s.contains("provision          3        1      2        1"),
            "{s}"
        );
        assert!(s.contains("1 action(s) failed"));
    }

    /// The table as a run over two hypervisors with a failure shows it (a snapshot: any change
    /// to the layout shows up in review).
    #[test]
    fn summary_table_of_two_hosts_with_a_failure() {
        let ok = || Ok::<(), std::io::Error>(());
        let mut fetched = StageReport::new("image-cache");
        fetched
            .outcomes
            .push(run(Action::new("debian-12", Op::Ok, "cached"), ok));
        let mut hv1 = StageReport::new("provision");
        hv1.host = Some("qemu+ssh://hv1/system".into());
        hv1.outcomes
            .push(run(Action::new("app-01", Op::Create, "missing"), ok));
        let mut hv2 = StageReport::new("provision");
        hv2.host = Some("qemu+ssh://admin@hv2.example/system".into());
        hv2.outcomes
            .push(run(Action::new("app-02", Op::Define, "missing"), || {
                Err(std::io::Error::other("boom"))
            }));
        let mut lines: Vec<String> = [&fetched, &hv1, &hv2]
            .iter()
            .flat_map(|r| r.outcomes.iter().map(render_line))
            .collect();
        lines.push(render_summary(&[fetched, hv1, hv2], false));
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn snapshot_times_are_utc_civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_765_100_000), "2025-12-07 09:33:20");
    }

    #[test]
    fn snapshot_table_has_a_row_per_snapshot_and_says_none_or_not_defined() {
        use crate::output::json::InstanceSnapshots;
        use kvmprov_hypervisor::{xml::SnapshotFacts, SnapshotInfo};
        let snap = |name: &str, current| SnapshotInfo {
            facts: SnapshotFacts {
                name: name.into(),
                description: None,
                state: "running".into(),
                created: Some(1_765_100_000),
            },
            current,
        };
        let row = |name: &str, defined, snapshots| InstanceSnapshots {
            name: name.into(),
            host: "qemu:///system".into(),
            defined,
            snapshots,
        };
        let t = snapshot_table(&[
            row(
                "app-01",
                true,
                vec![snap("base", false), snap("s1\x1b[2J", true)],
            ),
            row("app-02", true, vec![]),
            row("app-03", false, vec![]),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(
            lines[1]
                .starts_with("app-01           base                 2025-12-07 09:33:20  running"),
            "{t}"
        );
        // A name from another tool reaches the terminal sanitized.
        assert!(
            lines[2].contains("s1") && !lines[2].contains('\x1b') && lines[2].ends_with('*'),
            "{t}"
        );
        assert_eq!(lines[3], "app-02           (none)");
        assert_eq!(lines[4], "app-03           (not defined)");
    }
}
