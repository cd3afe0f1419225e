//! The domain XML kvmprov defines (and its snapshots), and the facts it reads back from any
//! domain's XML: drift detection, cleanup's "whose file is this", firmware.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use roxmltree::Node;
use serde::Serialize;

use super::interfaces::{interfaces_xml, InterfaceSpec};
use super::{child, children, esc, p, parse};
use crate::HvError;

/// The XML namespace of kvmprov's `<metadata>` element. Never change it: domains defined by
/// earlier versions would lose their metadata (and look foreign to cleanup).
pub const METADATA_NS: &str = "https://kvmprov.dev/xmlns/instance/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmprovMetadata {
    pub image_name: String,
    pub image_version: Option<String>,
    pub image_sha512: String,
    pub config_digest: String,
    pub instance_id: String,
    /// The config fields the domain was made from, as (name, value): non-secret values, or a
    /// digest for secrets. `None`: defined by an older kvmprov that did not record them.
    pub fields: Option<Vec<(String, String)>>,
}

/// The firmware a domain boots with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    /// OVMF chosen by libvirt from the firmware descriptors (`<os firmware='efi'>`); the
    /// NVRAM (variable store) is a per-domain file kvmprov names, in the instance pool.
    Uefi {
        secure_boot: bool,
        nvram: PathBuf,
    },
    /// UEFI that libvirt (10.10 or newer) can snapshot: the NVRAM is qcow2. Firmware
    /// autoselection cannot choose one (Debian's descriptors are raw only) and libvirt does not
    /// convert the raw template itself, so the firmware is named: the `loader` (raw, read-only)
    /// and a qcow2 copy of its variable store `template` (made with `qemu-img convert`), which
    /// libvirt copies to `nvram` at the first start. Checked by hand on Debian 13 (libvirt
    /// 11.3): a running Secure Boot guest was snapshotted, reverted and the snapshot deleted.
    UefiQcow2 {
        secure_boot: bool,
        loader: PathBuf,
        template: PathBuf,
        nvram: PathBuf,
    },
}

/// One instance's domain.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    pub name: String,
    pub domain_type: DomainType,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The qcow2 overlay (vda).
    pub disk_path: PathBuf,
    /// Data disks (`vdb`, `vdc`, …), each with its serial.
    pub data_disks: Vec<super::DataDiskSpec>,
    /// The cloud-init NoCloud ISO (a read-only CD).
    pub seed_path: PathBuf,
    /// The NICs, in device order (the primary one first unless the config says otherwise).
    pub interfaces: Vec<InterfaceSpec>,
    /// Where libvirt writes the serial console (truncated at each start).
    pub console_log: PathBuf,
    pub firmware: Firmware,
    pub metadata: KvmprovMetadata,
}

/// The `<os>` element: q35, boot from the disk, and for UEFI the firmware features libvirt
/// matches against the installed descriptors (`/usr/share/qemu/firmware/*.json`).
///
/// With autoselection (`firmware='efi'`) the wish is said through `<firmware><feature/>` only:
/// libvirt 9.0 refuses any `<loader secure=…>` beside it ("loader attribute 'secure' cannot be
/// specified when firmware autoselection is enabled" for `no`), and the features alone pick
/// the right build on every version tried (plain: `OVMF_CODE_4M.fd`; Secure Boot with
/// Microsoft's keys: `OVMF_CODE_4M.ms.fd`).
fn os_xml(f: &Firmware) -> String {
    match f {
        Firmware::UefiQcow2 {
            secure_boot,
            loader,
            template,
            nvram,
        } => format!(
            "  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' secure='{}' type='pflash' format='raw'>{}</loader>
    <nvram template='{}' templateFormat='qcow2' format='qcow2'>{}</nvram>
    <boot dev='hd'/>
  </os>
",
            if *secure_boot { "yes" } else { "no" },
            p(loader),
            p(template),
            p(nvram)
        ),
        Firmware::Bios => "  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>
  </os>
"
        .to_string(),
        Firmware::Uefi { secure_boot, nvram } => {
            let yes_no = if *secure_boot { "yes" } else { "no" };
            format!(
                "  <os firmware='efi'>
    <type arch='x86_64' machine='q35'>hvm</type>
    <firmware>
      <feature enabled='{yes_no}' name='secure-boot'/>
      <feature enabled='{yes_no}' name='enrolled-keys'/>
    </firmware>
    <nvram>{}</nvram>
    <boot dev='hd'/>
  </os>
",
                p(nvram)
            )
        }
    }
}

/// PCIe root ports for hot-plug: on q35 every PCIe device sits on a root port of its own, and
/// libvirt adds only as many as the defined devices take (our own uncounted ports it fills
/// first), so a data disk or NIC hot-plugged by drift had no free slot. The root ports are
/// declared here: one per device the domain defines on them (root disk, virtio-scsi, virtio-serial,
/// rng, balloon, USB, each data disk and NIC) plus [`HOTPLUG_PORTS`] free ones.
pub const HOTPLUG_PORTS: usize = 4;

fn root_ports(s: &DomainSpec) -> String {
    let used = 6 + s.data_disks.len() + s.interfaces.len();
    let mut x = String::from("    <controller type='pci' index='0' model='pcie-root'/>\n");
    for _ in 0..used + HOTPLUG_PORTS {
        x.push_str("    <controller type='pci' model='pcie-root-port'/>\n");
    }
    x
}

/// The domain XML: q35, virtio disk and NIC, the seed CD on virtio-scsi (the Debian cloud
/// kernel has no AHCI driver, so a SATA CD would be invisible), serial console logged to a
/// file, a VGA device, virtio-rng, a guest-agent channel, and kvmprov's metadata.
///
/// The VGA device is there for Debian 13's image: its GRUB (`GRUB_TERMINAL_OUTPUT="gfxterm
/// serial"`) prints "Booting `Debian GNU/Linux'" on the serial console and then spins at full
/// CPU forever on a machine without a display adapter (no kernel line, under BIOS and UEFI).
pub fn domain_xml(s: &DomainSpec) -> String {
    // KVM: host-model gives the guest the host's features while staying a named, migratable
    // model. TCG has no host CPU to expose; qemu's default model is the safe choice there.
    let cpu = match s.domain_type {
        DomainType::Kvm => "  <cpu mode='host-model' check='partial'/>\n",
        DomainType::Qemu => "",
    };
    let mut x = String::new();
    let _ = write!(
        x,
        "<domain type='{dt}'>
  <name>{name}</name>
  <metadata>
{instance}  </metadata>
  <memory unit='MiB'>{mem}</memory>
  <currentMemory unit='MiB'>{mem}</currentMemory>
  <vcpu placement='static'>{vcpus}</vcpu>
{os}  <features>
    <acpi/>
    <apic/>
{smm}  </features>
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
{data_disks}    <controller type='scsi' index='0' model='virtio-scsi'/>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{seed}'/>
      <target dev='sda' bus='scsi'/>
      <readonly/>
    </disk>
{interfaces}    <serial type='pty'>
      <log file='{log}' append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <video>
      <model type='vga' vram='16384' heads='1' primary='yes'/>
    </video>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
    <memballoon model='virtio'/>
{spare_ports}  </devices>
</domain>
",
        dt = s.domain_type.as_str(),
        name = esc(&s.name),
        instance = metadata_xml(&s.metadata),
        mem = s.memory_mib,
        vcpus = s.vcpus,
        cpu = cpu,
        spare_ports = root_ports(s),
        os = os_xml(&s.firmware),
        // Secure Boot's variable store is protected by SMM: OVMF's secure build needs it.
        smm = match s.firmware {
            Firmware::Uefi {
                secure_boot: true, ..
            }
            | Firmware::UefiQcow2 {
                secure_boot: true, ..
            } => "    <smm state='on'/>\n",
            _ => "",
        },
        disk = p(&s.disk_path),
        data_disks = super::data_disks_xml(&s.data_disks),
        seed = p(&s.seed_path),
        interfaces = interfaces_xml(&s.interfaces),
        log = p(&s.console_log),
    );
    x
}

/// kvmprov's `<kvmprov:instance>` element (inside the domain's `<metadata>`): what the domain
/// was made from.
pub fn metadata_xml(m: &KvmprovMetadata) -> String {
    instance_xml(m, "kvmprov:", &format!(" xmlns:kvmprov='{METADATA_NS}'"))
}

/// The same element as libvirt's metadata call takes it (key `kvmprov`, namespace
/// [`METADATA_NS`]): without prefix or namespace declaration, which libvirt adds itself (it
/// refuses an element that declares them: "failed to create a new XML namespace"). Read back,
/// it is the same element: names are matched without their namespace below the root.
pub fn metadata_update_xml(m: &KvmprovMetadata) -> String {
    instance_xml(m, "", "")
}

fn instance_xml(m: &KvmprovMetadata, prefix: &str, declaration: &str) -> String {
    let mut x = format!(
        "    <{prefix}instance{declaration}>
      <{prefix}image name='{img}' version='{ver}' sha512='{sha}'/>
      <{prefix}config digest='{digest}' instance-id='{iid}'/>
",
        img = esc(&m.image_name),
        ver = esc(m.image_version.as_deref().unwrap_or("")),
        sha = esc(&m.image_sha512),
        digest = esc(&m.config_digest),
        iid = esc(&m.instance_id),
    );
    if let Some(fields) = m.fields.as_deref() {
        let _ = writeln!(x, "      <{prefix}fields>");
        for (name, value) in fields {
            let _ = writeln!(
                x,
                "        <{prefix}field name='{}' value='{}'/>",
                esc(name),
                esc(value)
            );
        }
        let _ = writeln!(x, "      </{prefix}fields>");
    }
    let _ = writeln!(x, "    </{prefix}instance>");
    x
}

/// A snapshot with a name and a description; libvirt picks the disks and the memory state.
pub fn snapshot_xml(name: &str, description: &str) -> String {
    format!(
        "<domainsnapshot>\n  <name>{}</name>\n  <description>{}</description>\n</domainsnapshot>\n",
        esc(name),
        esc(description)
    )
}

/// Deterministic MAC `52:54:00:xx:xx:xx` (QEMU's locally administered prefix) from the
/// instance name: the low 24 bits of the 32-bit FNV-1a hash of the name's UTF-8 bytes.
/// Stable across versions: changing it would make every existing domain drift.
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

/// The deterministic MAC of an instance's NIC that is not its primary one: like
/// [`mac_for`] (which the primary NIC keeps, so domains made before NICs were a list do
/// not drift), from the name and the NIC's position. `/` cannot occur in an instance name, so
/// no other instance's primary MAC is derived from the same text.
pub fn mac_for_nic(instance_name: &str, index: usize) -> String {
    mac_for(&format!("{instance_name}/{index}"))
}

/// What kvmprov reads back from a domain's XML.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedDomain {
    /// The vCPUs the guest has (`<vcpu current=…>`, else all of them).
    pub vcpus: u32,
    /// The most vCPUs it can have without a restart (`<vcpu>`'s text).
    pub max_vcpus: u32,
    /// The memory the guest has (`<currentMemory>`, else `<memory>`).
    pub memory_mib: u64,
    /// The most memory it can have without a restart (`<memory>`: the balloon's ceiling).
    pub max_memory_mib: u64,
    /// Every disk's (and CD's) target device (`vda`, `sda`, …), in device order.
    pub disk_targets: Vec<String>,
    /// The disks that have a `<serial>` (kvmprov's data disks): (serial, target, source file).
    pub serial_disks: Vec<(String, String, PathBuf)>,
    /// The libvirt networks of `<interface type='network'>`s.
    pub networks: Vec<String>,
    /// The host bridges of `<interface type='bridge'>`s (a network interface's live XML names
    /// its network's bridge too: not counted here).
    pub bridges: Vec<String>,
    /// Lower case, in device order.
    pub macs: Vec<String>,
    /// Source files (or block devices) of all disks, disk and cdrom, in device order.
    pub disk_paths: Vec<PathBuf>,
    /// The `<serial>`s of the disks that have one, in device order (kvmprov's data disks).
    pub disk_serials: Vec<String>,
    /// `kvm`, `qemu`, or whatever else the driver uses (`test`).
    pub domain_type: Option<String>,
    /// `None` for domains kvmprov did not define.
    pub metadata: Option<KvmprovMetadata>,
    /// `bios`, `uefi` or `uefi+secure-boot`.
    pub firmware: String,
    /// The UEFI variable store file, when the domain has one.
    pub nvram: Option<PathBuf>,
    /// Running (libvirt gives a running domain an `id`).
    pub running: bool,
    /// Marked to start with the hypervisor: not in the XML, filled in by whoever observes.
    pub autostart: bool,
}

/// The firmware of a domain, as `bios`, `uefi` or `uefi+secure-boot`, and its NVRAM file.
/// libvirt writes firmware autoselection back either as `<os firmware='efi'>` or, once
/// resolved, as a pflash `<loader>`; both mean UEFI.
fn os_firmware(root: Node) -> (String, Option<PathBuf>) {
    let Some(os) = child(root, "os") else {
        return ("bios".into(), None);
    };
    let loader = child(os, "loader");
    let efi = os.attribute("firmware") == Some("efi")
        || loader.is_some_and(|l| l.attribute("type") == Some("pflash"));
    if !efi {
        return ("bios".into(), None);
    }
    let secure = loader.is_some_and(|l| l.attribute("secure") == Some("yes"))
        || child(os, "firmware").is_some_and(|f| {
            children(f, "feature").any(|x| {
                x.attribute("name") == Some("secure-boot") && x.attribute("enabled") == Some("yes")
            })
        });
    let nvram = child(os, "nvram")
        .and_then(|n| n.text())
        .map(|t| PathBuf::from(t.trim()));
    let kind = if secure { "uefi+secure-boot" } else { "uefi" };
    (kind.into(), nvram)
}

/// `<memory unit=...>` in MiB (libvirt's default unit is KiB); `None` if unparsable.
fn memory_mib(node: Node) -> Option<u64> {
    let value: u64 = node.text()?.trim().parse().ok()?;
    let unit = node.attribute("unit").unwrap_or("KiB");
    let bytes = match unit {
        "b" | "bytes" => Some(value),
        "KB" => value.checked_mul(1000),
        "k" | "KiB" => value.checked_mul(1 << 10),
        "MB" => value.checked_mul(1_000_000),
        "M" | "MiB" => value.checked_mul(1 << 20),
        "GB" => value.checked_mul(1_000_000_000),
        "G" | "GiB" => value.checked_mul(1 << 30),
        "TB" => value.checked_mul(1_000_000_000_000),
        "T" | "TiB" => value.checked_mul(1 << 40),
        _ => None,
    }?;
    Some(bytes >> 20)
}

/// Parse the facts of a domain XML (ours or anyone's).
pub fn parse_domain_xml(xml: &str) -> Result<ObservedDomain, HvError> {
    let doc = parse("domain XML", xml)?;
    let root = doc.root_element();

    let vcpu = child(root, "vcpu");
    let max_vcpus = vcpu
        .and_then(|n| n.text())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let vcpus = vcpu
        .and_then(|n| n.attribute("current"))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(max_vcpus);
    let max_memory_mib = child(root, "memory").and_then(memory_mib).unwrap_or(0);
    let memory_mib = child(root, "currentMemory")
        .and_then(memory_mib)
        .unwrap_or(max_memory_mib);
    let mut disk_targets = Vec::new();
    let mut serial_disks = Vec::new();
    let mut networks = Vec::new();
    let mut bridges = Vec::new();
    let mut macs = Vec::new();
    let mut disk_paths = Vec::new();
    let mut disk_serials = Vec::new();
    if let Some(devices) = child(root, "devices") {
        for dev in devices.children().filter(|c| c.is_element()) {
            match dev.tag_name().name() {
                "interface" => {
                    let source = child(dev, "source");
                    if let Some(n) = source.and_then(|s| s.attribute("network")) {
                        networks.push(n.to_string());
                    } else if dev.attribute("type") == Some("bridge") {
                        if let Some(b) = source.and_then(|s| s.attribute("bridge")) {
                            bridges.push(b.to_string());
                        }
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
                    let target = child(dev, "target")
                        .and_then(|t| t.attribute("dev"))
                        .unwrap_or("")
                        .to_string();
                    if let Some(serial) = child(dev, "serial").and_then(|s| s.text()) {
                        disk_serials.push(serial.trim().to_string());
                        serial_disks.push((
                            serial.trim().to_string(),
                            target.clone(),
                            source_of(dev).unwrap_or_default(),
                        ));
                    }
                    disk_targets.push(target);
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
            fields: child(inst, "fields").map(|f| {
                children(f, "field")
                    .filter_map(|n| {
                        Some((
                            n.attribute("name")?.to_string(),
                            n.attribute("value")?.to_string(),
                        ))
                    })
                    .collect()
            }),
        })
    });
    let (firmware, nvram) = os_firmware(root);
    Ok(ObservedDomain {
        firmware,
        nvram,
        vcpus,
        max_vcpus,
        memory_mib,
        max_memory_mib,
        disk_targets,
        serial_disks,
        networks,
        bridges,
        macs,
        disk_paths,
        disk_serials,
        domain_type: root.attribute("type").map(String::from),
        metadata,
        running: root.attribute("id").is_some_and(|id| id != "-1"),
        autostart: false,
    })
}

/// A host file a domain's XML names, with what libvirt says about it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UsedFile {
    /// A disk's (or CD's) source. `qcow2`: libvirt declares it as qcow2 (`<driver type>`; only
    /// then can it have a backing chain). `chain`: libvirt's `<backingStore>` files under it,
    /// in order, when the XML has the element (an empty `<backingStore/>` says "none"); `None`
    /// when libvirt did not say.
    Disk {
        path: PathBuf,
        qcow2: bool,
        chain: Option<Vec<PathBuf>>,
    },
    /// A serial/console log file or a UEFI NVRAM store: only a name, never read.
    Plain(PathBuf),
}

impl UsedFile {
    /// The file the XML names (a disk's own source, not its backing chain).
    pub fn path(&self) -> &Path {
        match self {
            UsedFile::Disk { path, .. } | UsedFile::Plain(path) => path,
        }
    }
}

fn source_of(n: Node) -> Option<PathBuf> {
    child(n, "source")
        .and_then(|s| s.attribute("file").or_else(|| s.attribute("dev")))
        .map(PathBuf::from)
}

/// The one reader of which host files a domain uses: disk and CD sources (with libvirt's view
/// of their backing chains), serial/console log files, the UEFI NVRAM store; each once, in
/// order (libvirt repeats the serial log under `<console>`). Cleanup must never delete one of
/// these for another domain, and `image-cache prune` must keep every backing file in it.
pub fn used_files(xml: &str) -> Result<Vec<UsedFile>, HvError> {
    let doc = parse("domain XML", xml)?;
    let root = doc.root_element();
    let mut out = Vec::new();
    if let Some(devices) = child(root, "devices") {
        for dev in devices.children().filter(|c| c.is_element()) {
            match dev.tag_name().name() {
                "disk" => {
                    let Some(path) = source_of(dev) else { continue };
                    let qcow2 =
                        child(dev, "driver").and_then(|d| d.attribute("type")) == Some("qcow2");
                    let chain = child(dev, "backingStore").map(|mut b| {
                        let mut files = Vec::new();
                        // Nested: each <backingStore> holds the next; an empty one ends it.
                        // The document is already in memory: its depth bounds the walk.
                        while let Some(p) = source_of(b) {
                            files.push(p);
                            match child(b, "backingStore") {
                                Some(next) => b = next,
                                None => break,
                            }
                        }
                        files
                    });
                    out.push(UsedFile::Disk { path, qcow2, chain });
                }
                "serial" | "console" => {
                    if let Some(f) = child(dev, "log").and_then(|l| l.attribute("file")) {
                        out.push(UsedFile::Plain(PathBuf::from(f)));
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(nvram) = child(root, "os")
        .and_then(|os| child(os, "nvram"))
        .and_then(|n| n.text())
    {
        out.push(UsedFile::Plain(PathBuf::from(nvram.trim())));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| seen.insert(f.clone()));
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use roxmltree::Document;

    pub(crate) fn spec(name: &str, dt: DomainType) -> DomainSpec {
        DomainSpec {
            name: name.into(),
            domain_type: dt,
            vcpus: 2,
            memory_mib: 1536,
            disk_path: "/p/a.qcow2".into(),
            data_disks: vec![],
            seed_path: "/p/a-seed.iso".into(),
            interfaces: vec![InterfaceSpec::virtio_on("default", &mac_for(name))],
            console_log: "/p/a-console.log".into(),
            firmware: Firmware::Bios,
            metadata: KvmprovMetadata {
                image_name: "debian-12".into(),
                image_version: Some("20241004-1890".into()),
                image_sha512: "ab".repeat(64),
                config_digest: "0123".into(),
                instance_id: format!("{name}-1"),
                fields: Some(vec![
                    ("disk_size_gib".into(), "20".into()),
                    ("packages".into(), "[\"nginx\",\"a'b<c>&\"]".into()),
                    ("runcmd".into(), "[\"echo 1\\necho 2\"]".into()),
                ]),
            },
        }
    }

    /// The element `name` under `devices` whose child `target` has attribute `dev`.
    fn device<'a, 'i>(doc: &'a Document<'i>, name: &'a str, dev: &str) -> Node<'a, 'i> {
        let devices = child(doc.root_element(), "devices").unwrap();
        children(devices, name)
            .find(|d| child(*d, "target").and_then(|t| t.attribute("dev")) == Some(dev))
            .unwrap_or_else(|| panic!("no {name} with target {dev}"))
    }

    /// A network interface's live XML names its network's bridge too; only a bridge
    /// interface counts as one on a host bridge.
    #[test]
    fn bridges_are_read_from_bridge_interfaces_only() {
        let o = parse_domain_xml(
            "<domain type='qemu'><name>a</name><devices>
               <interface type='network'><source network='default' bridge='virbr0'/><mac address='52:54:00:00:00:01'/></interface>
               <interface type='bridge'><source bridge='br0'/><mac address='52:54:00:00:00:02'/></interface>
             </devices></domain>",
        )
        .unwrap();
        assert_eq!(o.networks, vec!["default"]);
        assert_eq!(o.bridges, vec!["br0"]);
        assert_eq!(o.macs.len(), 2);
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
    fn regression_debian_13_hung_in_grub_without_a_video_device() {
        // Debian 13's GRUB (gfxterm) spins forever in a domain without a display adapter.
        for firmware in [
            Firmware::Bios,
            Firmware::Uefi {
                secure_boot: true,
                nvram: "/p/a_VARS.fd".into(),
            },
        ] {
            let mut s = spec("a", DomainType::Qemu);
            s.firmware = firmware;
            let x = domain_xml(&s);
            let doc = Document::parse(&x).unwrap();
            let devices = child(doc.root_element(), "devices").unwrap();
            let video = child(devices, "video").expect("a video device");
            assert_eq!(
                child(video, "model").unwrap().attribute("type"),
                Some("vga")
            );
        }
    }

    #[test]
    fn bios_domains_have_no_loader_and_uefi_ones_name_their_nvram() {
        let bios = parse_domain_xml(&domain_xml(&spec("a", DomainType::Qemu))).unwrap();
        assert_eq!((bios.firmware.as_str(), bios.nvram), ("bios", None));

        let mut s = spec("a", DomainType::Qemu);
        s.firmware = Firmware::Uefi {
            secure_boot: false,
            nvram: "/p/a_VARS.fd".into(),
        };
        let x = domain_xml(&s);
        assert!(!x.contains("<smm"), "{x}");
        let o = parse_domain_xml(&x).unwrap();
        assert_eq!(o.firmware, "uefi");
        assert_eq!(o.nvram, Some(PathBuf::from("/p/a_VARS.fd")));
        assert!(used_files(&x)
            .unwrap()
            .contains(&UsedFile::Plain(PathBuf::from("/p/a_VARS.fd"))));

        s.firmware = Firmware::Uefi {
            secure_boot: true,
            nvram: "/p/a_VARS.fd".into(),
        };
        let x = domain_xml(&s);
        // OVMF's Secure Boot build protects its variable store with SMM.
        assert!(x.contains("<smm state='on'/>"), "{x}");
        assert_eq!(parse_domain_xml(&x).unwrap().firmware, "uefi+secure-boot");
    }

    #[test]
    fn snapshot_capable_uefi_names_its_firmware_and_a_qcow2_nvram() {
        for (secure_boot, code, vars) in [
            (true, "OVMF_CODE_4M.ms.fd", "OVMF_VARS_4M.ms.qcow2"),
            (false, "OVMF_CODE_4M.fd", "OVMF_VARS_4M.qcow2"),
        ] {
            let mut s = spec("a", DomainType::Qemu);
            s.firmware = Firmware::UefiQcow2 {
                secure_boot,
                loader: PathBuf::from("/usr/share/OVMF").join(code),
                template: PathBuf::from("/p/.kvmprov").join(vars),
                nvram: "/p/a_VARS.fd".into(),
            };
            let x = domain_xml(&s);
            let doc = Document::parse(&x).unwrap();
            let os = child(doc.root_element(), "os").unwrap();
            // No autoselection: it would look for a raw NVRAM in Debian's descriptors.
            assert_eq!(os.attribute("firmware"), None, "{x}");
            let loader = child(os, "loader").unwrap();
            let yes_no = if secure_boot { "yes" } else { "no" };
            let attrs = |n: Node, names: &[&str]| -> Vec<String> {
                names
                    .iter()
                    .map(|a| n.attribute(*a).unwrap_or("-").to_string())
                    .collect()
            };
            assert_eq!(
                attrs(loader, &["readonly", "secure", "type", "format"]),
                ["yes", yes_no, "pflash", "raw"]
            );
            assert_eq!(
                loader.text(),
                Some(format!("/usr/share/OVMF/{code}").as_str())
            );
            let nvram = child(os, "nvram").unwrap();
            assert_eq!(
                attrs(nvram, &["template", "templateFormat", "format"]),
                [format!("/p/.kvmprov/{vars}").as_str(), "qcow2", "qcow2"]
            );
            assert_eq!(x.contains("<smm state='on'/>"), secure_boot, "{x}");
            // Read back like any UEFI domain: drift and cleanup see the same firmware and NVRAM.
            let o = parse_domain_xml(&x).unwrap();
            let label = if secure_boot {
                "uefi+secure-boot"
            } else {
                "uefi"
            };
            assert_eq!(o.firmware, label);
            assert_eq!(o.nvram, Some(PathBuf::from("/p/a_VARS.fd")));
            assert_eq!(
                crate::xml::nvram_format(&x).unwrap().as_deref(),
                Some("qcow2")
            );
        }
    }

    #[test]
    fn regression_uefi_without_secure_boot_wrote_loader_secure_no() {
        // libvirt 9.0 refused `<loader secure='no'/>` beside `<os firmware='efi'>` at define:
        // with autoselection only `<firmware><feature/>` may say what is wanted.
        for secure_boot in [false, true] {
            let mut s = spec("a", DomainType::Qemu);
            s.firmware = Firmware::Uefi {
                secure_boot,
                nvram: "/p/a_VARS.fd".into(),
            };
            let x = domain_xml(&s);
            let doc = Document::parse(&x).unwrap();
            let os = child(doc.root_element(), "os").unwrap();
            assert_eq!(os.attribute("firmware"), Some("efi"), "{x}");
            assert!(child(os, "loader").is_none(), "no <loader> at all: {x}");
            let want = if secure_boot { "yes" } else { "no" };
            let features: Vec<_> = children(child(os, "firmware").unwrap(), "feature")
                .map(|f| {
                    (
                        f.attribute("name").unwrap(),
                        f.attribute("enabled").unwrap(),
                    )
                })
                .collect();
            assert_eq!(
                features,
                vec![("secure-boot", want), ("enrolled-keys", want)],
                "{x}"
            );
        }
    }

    #[test]
    fn libvirt_9_written_back_plain_uefi_is_read_as_uefi_not_secure_boot() {
        // What libvirt 9.0 wrote back for kvmprov's plain UEFI domain: before the start
        // (autoselection pending) and while it runs (the descriptor resolved).
        let inactive = "<domain type='qemu'><name>a</name><os firmware='efi'>\
            <type arch='x86_64' machine='pc-q35-7.2'>hvm</type><firmware>\
            <feature enabled='no' name='enrolled-keys'/><feature enabled='no' name='secure-boot'/>\
            </firmware><nvram>/p/a_VARS.fd</nvram><boot dev='hd'/></os></domain>";
        let live = "<domain type='qemu'><name>a</name><os>\
            <type arch='x86_64' machine='pc-q35-7.2'>hvm</type><firmware>\
            <feature enabled='no' name='enrolled-keys'/><feature enabled='no' name='secure-boot'/>\
            </firmware><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\
            <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/p/a_VARS.fd</nvram>\
            <boot dev='hd'/></os></domain>";
        for x in [inactive, live] {
            let o = parse_domain_xml(x).unwrap();
            assert_eq!(o.firmware, "uefi", "{x}");
            assert_eq!(o.nvram, Some(PathBuf::from("/p/a_VARS.fd")));
        }
        // The Secure Boot domain as libvirt 9.0 wrote it back before the start.
        let sb = inactive.replace("enabled='no'", "enabled='yes'");
        assert_eq!(parse_domain_xml(&sb).unwrap().firmware, "uefi+secure-boot");
    }

    #[test]
    fn libvirt_resolved_firmware_is_read_as_uefi() {
        // What libvirt writes back once it picked a descriptor.
        let x = "<domain type='qemu'><name>a</name><os>\
            <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>\
            <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>\
            <nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/p/a_VARS.fd</nvram>\
            </os></domain>";
        let o = parse_domain_xml(x).unwrap();
        assert_eq!(o.firmware, "uefi+secure-boot");
        assert_eq!(o.nvram, Some(PathBuf::from("/p/a_VARS.fd")));
    }

    /// libvirt filled every root port with the domain's own devices: a data disk hot-plugged
    /// by drift failed for want of a free PCI slot (seen on libvirt 9.0). The count was checked
    /// against libvirt 9.0: 11 root ports for one NIC, 7 taken, 3 hot-plugs succeeded.
    #[test]
    fn regression_drift_hot_plug_found_no_free_pci_slot() {
        let x = domain_xml(&spec("a", DomainType::Qemu));
        let doc = Document::parse(&x).unwrap();
        let devices = child(doc.root_element(), "devices").unwrap();
        let pci: Vec<_> = children(devices, "controller")
            .filter(|c| c.attribute("type") == Some("pci"))
            .collect();
        assert_eq!(pci[0].attribute("model"), Some("pcie-root"));
        assert_eq!(pci[0].attribute("index"), Some("0"));
        let ports = pci
            .iter()
            .filter(|c| c.attribute("model") == Some("pcie-root-port"))
            .count();
        let s = spec("a", DomainType::Qemu);
        assert_eq!(
            ports,
            6 + s.data_disks.len() + s.interfaces.len() + HOTPLUG_PORTS
        );
    }

    #[test]
    fn seed_cd_is_read_only_on_virtio_scsi_and_machine_is_q35() {
        let x = domain_xml(&spec("a", DomainType::Kvm));
        let doc = Document::parse(&x).unwrap();
        let cd = device(&doc, "disk", "sda");
        assert_eq!(cd.attribute("device"), Some("cdrom"));
        assert_eq!(child(cd, "target").unwrap().attribute("bus"), Some("scsi"));
        assert!(child(cd, "readonly").is_some());
        let devices = child(doc.root_element(), "devices").unwrap();
        let scsi: Vec<_> = children(devices, "controller")
            .filter(|c| c.attribute("type") == Some("scsi"))
            .collect();
        assert_eq!(scsi.len(), 1);
        assert_eq!(scsi[0].attribute("model"), Some("virtio-scsi"));
        // No AHCI in the Debian cloud kernel: nothing may sit on SATA.
        assert!(!x.contains("sata"));
        let os_type = child(child(doc.root_element(), "os").unwrap(), "type").unwrap();
        assert_eq!(os_type.attribute("machine"), Some("q35"));
        assert_eq!(os_type.attribute("arch"), Some("x86_64"));
        let vda = device(&doc, "disk", "vda");
        assert_eq!(
            child(vda, "target").unwrap().attribute("bus"),
            Some("virtio")
        );
        assert_eq!(
            child(vda, "driver").unwrap().attribute("type"),
            Some("qcow2")
        );
    }

    #[test]
    fn devices_console_agent_rng_nic() {
        let x = domain_xml(&spec("a", DomainType::Qemu));
        let doc = Document::parse(&x).unwrap();
        let devices = child(doc.root_element(), "devices").unwrap();
        let serial = child(devices, "serial").unwrap();
        let log = child(serial, "log").unwrap();
        assert_eq!(log.attribute("file"), Some("/p/a-console.log"));
        assert_eq!(log.attribute("append"), Some("off"));
        assert!(child(devices, "console").is_some());
        let agent = child(child(devices, "channel").unwrap(), "target").unwrap();
        assert_eq!(agent.attribute("name"), Some("org.qemu.guest_agent.0"));
        assert_eq!(
            child(devices, "rng").unwrap().attribute("model"),
            Some("virtio")
        );
        let nic = child(devices, "interface").unwrap();
        assert_eq!(
            child(nic, "model").unwrap().attribute("type"),
            Some("virtio")
        );
        assert!(child(devices, "graphics").is_none());
        assert_eq!(
            child(doc.root_element(), "on_crash").unwrap().text(),
            Some("destroy")
        );
    }

    #[test]
    fn kvm_gets_host_model_cpu_and_qemu_none() {
        let kvm = domain_xml(&spec("a", DomainType::Kvm));
        let doc = Document::parse(&kvm).unwrap();
        assert_eq!(doc.root_element().attribute("type"), Some("kvm"));
        let cpu = child(doc.root_element(), "cpu").unwrap();
        assert_eq!(cpu.attribute("mode"), Some("host-model"));

        let tcg = domain_xml(&spec("a", DomainType::Qemu));
        let doc = Document::parse(&tcg).unwrap();
        assert_eq!(doc.root_element().attribute("type"), Some("qemu"));
        assert!(child(doc.root_element(), "cpu").is_none());
    }

    #[test]
    fn nic_macs_are_stable_and_differ_from_the_primary_one() {
        assert_eq!(mac_for_nic("db-01", 1), mac_for_nic("db-01", 1));
        assert_ne!(mac_for_nic("db-01", 1), mac_for_nic("db-01", 2));
        assert_ne!(mac_for_nic("db-01", 1), mac_for("db-01"));
        assert!(mac_for_nic("db-01", 1).starts_with("52:54:00:"));
    }

    #[test]
    fn hostile_values_are_escaped() {
        let mut s = spec("a'\"<b>&c", DomainType::Qemu);
        s.disk_path = "/p/x'><evil/>&.qcow2".into();
        s.seed_path = "/p/new\nline\ttab\r.iso".into();
        s.interfaces[0].source = crate::xml::InterfaceSource::Network("n\"et'".into());
        s.console_log = "/p/]]><!--".into();
        s.metadata.image_name = "<\"&'>".into();
        s.metadata.instance_id = "</kvmprov:instance>".into();
        let x = domain_xml(&s);
        let doc = Document::parse(&x).unwrap();
        assert_eq!(
            child(doc.root_element(), "name").unwrap().text(),
            Some("a'\"<b>&c")
        );
        let o = parse_domain_xml(&x).unwrap();
        assert_eq!(
            o.disk_paths,
            vec![
                PathBuf::from("/p/x'><evil/>&.qcow2"),
                PathBuf::from("/p/new\nline\ttab\r.iso")
            ]
        );
        assert_eq!(o.networks, vec!["n\"et'"]);
        let md = o.metadata.unwrap();
        assert_eq!(md.image_name, "<\"&'>");
        assert_eq!(md.instance_id, "</kvmprov:instance>");
        assert_eq!(
            used_files(&x).unwrap()[2].path(),
            Path::new("/p/]]><!--"),
            "console log"
        );
        // One device each: nothing injected.
        let devices = child(doc.root_element(), "devices").unwrap();
        assert_eq!(children(devices, "disk").count(), 2);
        assert_eq!(
            doc.descendants().filter(|n| n.has_tag_name("evil")).count(),
            0
        );
    }

    #[test]
    fn snapshot_builder_escapes() {
        let x = snapshot_xml("base<1>", "made by \"kvmprov\" & co");
        let doc = Document::parse(&x).unwrap();
        assert_eq!(
            child(doc.root_element(), "name").unwrap().text(),
            Some("base<1>")
        );
        assert_eq!(
            child(doc.root_element(), "description").unwrap().text(),
            Some("made by \"kvmprov\" & co")
        );
    }

    #[test]
    fn mac_is_stable_and_local() {
        assert_eq!(mac_for("app-01"), mac_for("app-01"));
        assert_ne!(mac_for("app-01"), mac_for("app-02"));
        assert!(mac_for("x").starts_with("52:54:00:"));
        // Pinned: changing the derivation would make every existing domain drift.
        assert_eq!(mac_for(""), "52:54:00:1c:9d:c5");
        assert_eq!(mac_for("app-01"), "52:54:00:db:d2:78");
    }

    #[test]
    fn recorded_fields_round_trip_and_older_domains_have_none() {
        let mut s = spec("a", DomainType::Qemu);
        s.metadata.fields = Some(vec![
            ("ipv4_address".into(), "".into()),
            (
                "runcmd".into(),
                "[\"a\\tb\\nc\",\"</kvmprov:fields>\"]".into(),
            ),
            ("weird\nname'\"".into(), "\t \r".into()),
        ]);
        let o = parse_domain_xml(&domain_xml(&s)).unwrap();
        assert_eq!(o.metadata.unwrap().fields, s.metadata.fields);
        // An empty record is a record, not an older kvmprov.
        s.metadata.fields = Some(vec![]);
        let o = parse_domain_xml(&domain_xml(&s)).unwrap();
        assert_eq!(o.metadata.unwrap().fields, Some(vec![]));
        // Defined by a kvmprov that recorded no fields.
        s.metadata.fields = None;
        let x = domain_xml(&s);
        assert!(!x.contains("kvmprov:fields"), "{x}");
        assert_eq!(parse_domain_xml(&x).unwrap().metadata.unwrap().fields, None);
    }

    #[test]
    fn foreign_domain_has_no_metadata() {
        let o = parse_domain_xml(
            "<domain type='kvm'><name>x</name><memory>1048576</memory><vcpu>1</vcpu></domain>",
        )
        .unwrap();
        assert_eq!(o.metadata, None);
        assert_eq!(o.memory_mib, 1024);
        // Same element names in another namespace are not ours.
        let o = parse_domain_xml(
            "<domain type='kvm'><metadata><x:instance xmlns:x='https://example.com/1'>\
             <x:image name='debian-12'/><x:config digest='d'/></x:instance></metadata></domain>",
        )
        .unwrap();
        assert_eq!(o.metadata, None);
    }

    /// What drift's plan reads: current and maximum vCPUs and memory, running, data disks.
    #[test]
    fn current_and_maximum_vcpus_and_memory_and_the_data_disks_are_read() {
        let x = "<domain type='qemu' id='7'><name>a</name>\
            <memory unit='KiB'>2097152</memory><currentMemory unit='KiB'>1048576</currentMemory>\
            <vcpu placement='static' current='2'>4</vcpu><devices>\
            <disk type='file' device='disk'><source file='/p/a.qcow2'/><target dev='vda' bus='virtio'/></disk>\
            <disk type='file' device='disk'><source file='/p/a_data.qcow2'/><target dev='vdb' bus='virtio'/><serial>data</serial></disk>\
            </devices></domain>";
        let d = parse_domain_xml(x).unwrap();
        assert_eq!((d.vcpus, d.max_vcpus), (2, 4));
        assert_eq!((d.memory_mib, d.max_memory_mib), (1024, 2048));
        assert!(d.running);
        assert_eq!(d.disk_targets, ["vda", "vdb"]);
        assert_eq!(
            d.serial_disks,
            [(
                "data".to_string(),
                "vdb".to_string(),
                PathBuf::from("/p/a_data.qcow2")
            )]
        );
        // A defined domain that is off: no id (or -1); one vCPU count means all of them.
        let off = parse_domain_xml(
            "<domain type='qemu' id='-1'><memory>1024</memory><vcpu>1</vcpu></domain>",
        )
        .unwrap();
        assert!(!off.running);
        assert_eq!(
            (off.vcpus, off.max_vcpus, off.memory_mib, off.max_memory_mib),
            (1, 1, 1, 1)
        );
    }

    /// libvirt refused kvmprov's own element in its metadata call ("failed to create a new XML
    /// namespace": it declares the namespace itself); what it writes back from the bare
    /// element must read as the same record.
    #[test]
    fn regression_metadata_update_declared_its_own_namespace() {
        let m = KvmprovMetadata {
            image_name: "debian-12".into(),
            image_version: None,
            image_sha512: "ab".into(),
            config_digest: "0123".into(),
            instance_id: "a-1".into(),
            fields: Some(vec![("vcpus".into(), "2".into())]),
        };
        let bare = metadata_update_xml(&m);
        assert!(
            !bare.contains("xmlns") && !bare.contains("kvmprov:"),
            "{bare}"
        );
        // As libvirt stores it: the namespace on the root element only.
        let stored = bare.replacen(
            "<instance>",
            &format!("<kvmprov:instance xmlns:kvmprov='{METADATA_NS}'>"),
            1,
        );
        let stored = stored.replace("</instance>", "</kvmprov:instance>");
        let x = format!("<domain type='qemu'><metadata>{stored}</metadata></domain>");
        assert_eq!(parse_domain_xml(&x).unwrap().metadata, Some(m));
    }

    #[test]
    fn memory_units_and_overflow() {
        let mem = |m: &str| {
            parse_domain_xml(&format!("<domain>{m}</domain>"))
                .unwrap()
                .memory_mib
        };
        assert_eq!(mem("<memory unit='GiB'>2</memory>"), 2048);
        assert_eq!(mem("<memory unit='bytes'>1073741824</memory>"), 1024);
        assert_eq!(mem("<memory unit='KiB'>2097152</memory>"), 2048);
        assert_eq!(mem("<memory unit='TiB'>99999999999</memory>"), 0);
        assert_eq!(mem("<memory unit='parsecs'>1</memory>"), 0);
    }

    #[test]
    fn malformed_xml_is_an_error_naming_what() {
        let e = parse_domain_xml("<domain><name>x</domain>").unwrap_err();
        assert!(e.to_string().starts_with("domain XML:"), "{e}");
    }

    #[test]
    fn files_of_a_domain() {
        let x = "<domain><os><nvram>/var/lib/libvirt/qemu/nvram/x_VARS.fd</nvram></os><devices>\
                 <disk type='block'><source dev='/dev/vg/x'/></disk>\
                 <disk type='file'><source file='/p/x.qcow2'/></disk>\
                 <disk type='network'><source protocol='rbd' name='pool/x'/></disk>\
                 <serial type='pty'><log file='/p/x.log'/></serial>\
                 <channel type='unix'><target type='virtio'/></channel>\
                 <console type='pty'><log file='/p/x.log'/></console></devices></domain>";
        let disk = |p: &str| UsedFile::Disk {
            path: PathBuf::from(p),
            qcow2: false,
            chain: None,
        };
        assert_eq!(
            used_files(x).unwrap(),
            vec![
                disk("/dev/vg/x"),
                disk("/p/x.qcow2"),
                UsedFile::Plain(PathBuf::from("/p/x.log")),
                UsedFile::Plain(PathBuf::from("/var/lib/libvirt/qemu/nvram/x_VARS.fd")),
            ]
        );
    }
}
