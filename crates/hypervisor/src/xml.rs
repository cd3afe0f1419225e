//! What the domain XML looks like: typed specs in, escaped XML out; and the reverse, the facts
//! kvmprov needs from an existing domain (drift detection, cleanup, status).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::HvError;

/// The XML namespace of kvmprov's `<metadata>` element.
pub const METADATA_NS: &str = "https://kvmprov.dev/xmlns/instance/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    Kvm,
    /// TCG emulation: slow, but works where KVM does not (nested hosts).
    Qemu,
}

impl DomainType {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        }
    }
}

/// What kvmprov records in each domain it defines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KvmprovMetadata {
    pub image_name: String,
    pub image_version: Option<String>,
    pub image_sha512: String,
    pub config_digest: String,
    pub instance_id: String,
}

/// One instance's domain.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    pub name: String,
    pub domain_type: DomainType,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_path: PathBuf,
    pub seed_path: PathBuf,
    pub network: String,
    pub mac: String,
    pub console_log: PathBuf,
    pub metadata: KvmprovMetadata,
}

/// Escape text for XML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn p(path: &Path) -> String {
    esc(&path.to_string_lossy())
}

/// The domain XML: q35, virtio disk and NIC, the seed CD on virtio-scsi (the Debian cloud
/// kernel has no AHCI driver, so a SATA CD would be invisible), serial console logged to a
/// file, virtio-rng, a guest-agent channel, and kvmprov's metadata.
pub fn domain_xml(s: &DomainSpec) -> String {
    let m = &s.metadata;
    // Under TCG there is no host CPU to pass through; qemu's default model is the safe choice.
    let cpu = match s.domain_type {
        DomainType::Kvm => "  <cpu mode='host-passthrough' check='none'/>\n",
        DomainType::Qemu => "",
    };
    let mut x = String::new();
    let _ = write!(
        x,
        "<domain type='{dt}'>
  <name>{name}</name>
  <metadata>
    <kvmprov:instance xmlns:kvmprov='{ns}'>
      <kvmprov:image name='{img}' version='{ver}' sha512='{sha}'/>
      <kvmprov:config digest='{digest}' instance-id='{iid}'/>
    </kvmprov:instance>
  </metadata>
  <memory unit='MiB'>{mem}</memory>
  <currentMemory unit='MiB'>{mem}</currentMemory>
  <vcpu placement='static'>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
{cpu}  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='scsi' index='0' model='virtio-scsi'/>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{seed}'/>
      <target dev='sda' bus='scsi'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <source network='{net}'/>
      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <log file='{log}' append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
    <memballoon model='virtio'/>
  </devices>
</domain>
",
        dt = s.domain_type.as_str(),
        name = esc(&s.name),
        ns = METADATA_NS,
        img = esc(&m.image_name),
        ver = esc(m.image_version.as_deref().unwrap_or("")),
        sha = esc(&m.image_sha512),
        digest = esc(&m.config_digest),
        iid = esc(&m.instance_id),
        mem = s.memory_mib,
        vcpus = s.vcpus,
        cpu = cpu,
        disk = p(&s.disk_path),
        seed = p(&s.seed_path),
        net = esc(&s.network),
        mac = esc(&s.mac),
        log = p(&s.console_log),
    );
    x
}

/// A `dir` storage pool.
pub fn pool_xml(name: &str, path: &Path) -> String {
    format!(
        "<pool type='dir'>\n  <name>{}</name>\n  <target>\n    <path>{}</path>\n  </target>\n</pool>\n",
        esc(name),
        p(path)
    )
}

/// A qcow2 overlay volume on a backing image. Mode 0600: qemu gets it through libvirt's
/// ownership handling, nobody else needs to read a guest's disk.
pub fn overlay_volume_xml(
    name: &str,
    capacity: u64,
    backing: &Path,
    backing_format: &str,
) -> String {
    format!(
        "<volume>
  <name>{}</name>
  <capacity unit='bytes'>{capacity}</capacity>
  <target>
    <format type='qcow2'/>
    <permissions><mode>0600</mode></permissions>
  </target>
  <backingStore>
    <path>{}</path>
    <format type='{}'/>
  </backingStore>
</volume>
",
        esc(name),
        p(backing),
        esc(backing_format)
    )
}

/// A plain volume of `capacity` bytes (for uploads), mode 0600.
pub fn raw_volume_xml(name: &str, capacity: u64, format: &str) -> String {
    format!(
        "<volume>
  <name>{}</name>
  <capacity unit='bytes'>{capacity}</capacity>
  <allocation unit='bytes'>0</allocation>
  <target>
    <format type='{}'/>
    <permissions><mode>0600</mode></permissions>
  </target>
</volume>
",
        esc(name),
        esc(format)
    )
}

/// Deterministic MAC `52:54:00:xx:xx:xx` from the instance name: FNV-1a 32-bit of the name,
/// low 24 bits. Stable across versions (changing it would make every domain drift).
pub fn mac_for(instance_name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in instance_name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        (h >> 16) & 0xff,
        (h >> 8) & 0xff,
        h & 0xff
    )
}

/// What kvmprov reads back from a domain's XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDomain {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub networks: Vec<String>,
    pub macs: Vec<String>,
    /// Source files of all disks (disk and cdrom).
    pub disk_paths: Vec<PathBuf>,
    pub domain_type: Option<String>,
    pub metadata: Option<KvmprovMetadata>,
}

fn memory_mib(node: roxmltree::Node) -> Option<u64> {
    let value: u64 = node.text()?.trim().parse().ok()?;
    let unit = node.attribute("unit").unwrap_or("KiB");
    let bytes = match unit {
        "b" | "bytes" => value,
        "KB" => value * 1000,
        "k" | "KiB" => value << 10,
        "MB" => value * 1_000_000,
        "M" | "MiB" => value << 20,
        "GB" => value * 1_000_000_000,
        "G" | "GiB" => value << 30,
        _ => return None,
    };
    Some(bytes >> 20)
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

/// Parse the facts of a domain XML.
pub fn parse_domain_xml(xml: &str) -> Result<ObservedDomain, HvError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| HvError::Xml(e.to_string()))?;
    let root = doc.root_element();

    let vcpus = child(root, "vcpu")
        .and_then(|n| n.text())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let memory_mib = child(root, "memory").and_then(memory_mib).unwrap_or(0);
    let mut networks = Vec::new();
    let mut macs = Vec::new();
    let mut disk_paths = Vec::new();
    if let Some(devices) = child(root, "devices") {
        for dev in devices.children().filter(|c| c.is_element()) {
            match dev.tag_name().name() {
                "interface" => {
                    if let Some(n) = child(dev, "source").and_then(|s| s.attribute("network")) {
                        networks.push(n.to_string());
                    }
                    if let Some(m) = child(dev, "mac").and_then(|s| s.attribute("address")) {
                        macs.push(m.to_ascii_lowercase());
                    }
                }
                "disk" => {
                    if let Some(f) = child(dev, "source")
                        .and_then(|s| s.attribute("file").or_else(|| s.attribute("dev")))
                    {
                        disk_paths.push(PathBuf::from(f));
                    }
                }
                _ => {}
            }
        }
    }
    let metadata = child(root, "metadata").and_then(|md| {
        let inst = md.children().find(|c| {
            c.is_element()
                && c.tag_name().name() == "instance"
                && c.tag_name().namespace() == Some(METADATA_NS)
        })?;
        let image = child(inst, "image")?;
        let config = child(inst, "config")?;
        Some(KvmprovMetadata {
            image_name: image.attribute("name")?.to_string(),
            image_version: image
                .attribute("version")
                .filter(|v| !v.is_empty())
                .map(String::from),
            image_sha512: image.attribute("sha512").unwrap_or("").to_string(),
            config_digest: config.attribute("digest").unwrap_or("").to_string(),
            instance_id: config.attribute("instance-id").unwrap_or("").to_string(),
        })
    });
    Ok(ObservedDomain {
        vcpus,
        memory_mib,
        networks,
        macs,
        disk_paths,
        domain_type: root.attribute("type").map(String::from),
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(name: &str, dt: DomainType) -> DomainSpec {
        DomainSpec {
            name: name.into(),
            domain_type: dt,
            vcpus: 2,
            memory_mib: 1536,
            disk_path: "/p/a.qcow2".into(),
            seed_path: "/p/a-seed.iso".into(),
            network: "default".into(),
            mac: mac_for(name),
            console_log: "/p/a-console.log".into(),
            metadata: KvmprovMetadata {
                image_name: "debian-12".into(),
                image_version: Some("20241004-1890".into()),
                image_sha512: "ab".repeat(64),
                config_digest: "0123".into(),
                instance_id: format!("{name}-1"),
            },
        }
    }

    #[test]
    fn round_trip() {
        let s = spec("app-01", DomainType::Qemu);
        let o = parse_domain_xml(&domain_xml(&s)).unwrap();
        assert_eq!(o.vcpus, 2);
        assert_eq!(o.memory_mib, 1536);
        assert_eq!(o.networks, vec!["default"]);
        assert_eq!(o.macs, vec![mac_for("app-01")]);
        assert_eq!(
            o.disk_paths,
            vec![PathBuf::from("/p/a.qcow2"), PathBuf::from("/p/a-seed.iso")]
        );
        assert_eq!(o.domain_type.as_deref(), Some("qemu"));
        assert_eq!(o.metadata, Some(s.metadata));
    }

    #[test]
    fn seed_cd_is_on_virtio_scsi_and_machine_is_q35() {
        let x = domain_xml(&spec("a", DomainType::Kvm));
        assert!(x.contains("model='virtio-scsi'"));
        assert!(x.contains("<target dev='sda' bus='scsi'/>"));
        assert!(!x.contains("sata"));
        assert!(x.contains("machine='q35'"));
        assert!(x.contains("host-passthrough"));
        assert!(!domain_xml(&spec("a", DomainType::Qemu)).contains("host-passthrough"));
    }

    #[test]
    fn hostile_values_are_escaped() {
        let mut s = spec("a", DomainType::Qemu);
        s.disk_path = "/p/x'><evil/>&.qcow2".into();
        s.metadata.image_name = "<\"&'>".into();
        let x = domain_xml(&s);
        let o = parse_domain_xml(&x).unwrap();
        assert_eq!(o.disk_paths[0], PathBuf::from("/p/x'><evil/>&.qcow2"));
        assert_eq!(o.metadata.unwrap().image_name, "<\"&'>");
    }

    #[test]
    fn mac_is_stable_and_local() {
        assert_eq!(mac_for("app-01"), mac_for("app-01"));
        assert_ne!(mac_for("app-01"), mac_for("app-02"));
        assert!(mac_for("x").starts_with("52:54:00:"));
        // Pinned: changing the derivation would make every existing domain drift.
        assert_eq!(mac_for(""), "52:54:00:1c:9d:c5");
    }

    #[test]
    fn foreign_domain_has_no_metadata() {
        let o = parse_domain_xml(
            "<domain type='kvm'><name>x</name><memory>1048576</memory><vcpu>1</vcpu></domain>",
        )
        .unwrap();
        assert_eq!(o.metadata, None);
        assert_eq!(o.memory_mib, 1024);
    }

    #[test]
    fn validates_with_virt_xml_validate() {
        let Ok(out) = std::process::Command::new("virt-xml-validate")
            .arg("--help")
            .output()
        else {
            eprintln!("skipped: virt-xml-validate is not installed");
            return;
        };
        let _ = out;
        let dir = tempfile::tempdir().unwrap();
        for dt in [DomainType::Kvm, DomainType::Qemu] {
            let f = dir.path().join("d.xml");
            std::fs::write(&f, domain_xml(&spec("app-01", dt))).unwrap();
            let o = std::process::Command::new("virt-xml-validate")
                .arg(&f)
                .arg("domain")
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let f = dir.path().join("p.xml");
        std::fs::write(&f, pool_xml("kvmprov-x", Path::new("/p"))).unwrap();
        let o = std::process::Command::new("virt-xml-validate")
            .arg(&f)
            .arg("storagepool")
            .output()
            .unwrap();
        assert!(o.status.success());
        let f = dir.path().join("v.xml");
        std::fs::write(
            &f,
            overlay_volume_xml("a.qcow2", 1 << 30, Path::new("/c/b.qcow2"), "qcow2"),
        )
        .unwrap();
        let o = std::process::Command::new("virt-xml-validate")
            .arg(&f)
            .arg("storagevol")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
