//! Creating one instance: the overlay disk (if missing) and a new cloud-init seed with a pinned
//! host key, side by side, then the domain, so a domain never exists without its disk and seed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kvmprov_hypervisor::xml::{self, DataDiskSpec, DomainSpec, DomainType, KvmprovMetadata};
use kvmprov_hypervisor::{Firmware, Hypervisor};
use kvmprov_image::CachedImage;
use kvmprov_seed::{DataFilesystem, HostKeys, SeedSpec};

use super::nics;
use super::plan::config_digest;
use super::ProvisionError;
use crate::config::{Config, FirmwareChoice, Instance};
use crate::drift;
use crate::firmware::firmware_of;
use crate::layout::{console_name, data_disk_name, disk_name, seed_name};
use crate::state;

/// Everything the instances share during apply.
pub(super) struct Shared<'a> {
    pub cfg: &'a Config,
    pub hv: &'a Hypervisor,
    pub domain_type: DomainType,
    /// The name of the instance pool.
    pub instance_pool: String,
    /// The instance pool's volumes when the stage began.
    pub listed_volumes: BTreeSet<String>,
    /// kvmprov's checked state directory (`None` when only planning: nothing is created then).
    pub state: Option<state::StateDir>,
    pub operator_public: String,
    /// This hypervisor's snapshot-capable UEFI firmware, per Secure Boot choice (see
    /// `crate::nvram`); empty when it has none or only planning.
    pub qcow2_nvram: Vec<Qcow2Nvram>,
}

/// A UEFI loader and the qcow2 template of its variable store, on the hypervisor.
pub(super) struct Qcow2Nvram {
    pub secure_boot: bool,
    pub loader: PathBuf,
    pub template: PathBuf,
}

/// Create one instance: overlay (if `make_disk`) and seed → domain.
pub(super) fn create(
    sh: &Shared,
    inst: &Instance,
    image: Option<&CachedImage>,
    make_disk: bool,
) -> Result<(), ProvisionError> {
    let disk_image = match (make_disk, image) {
        (false, _) => None,
        (true, Some(image)) => Some(check_disk_size(inst, image)?),
        (true, None) => {
            return Err(ProvisionError::Invalid(format!(
                "image `{}` is not cached",
                inst.image_name
            )))
        }
    };
    // A new seed every time a domain is created: new instance-id, new pinned host key.
    let instance_id = format!(
        "{}-{}",
        inst.name,
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    // libvirt makes the overlay (it runs qemu-img: ~15 ms) while this thread hashes the
    // password, makes the host key and uploads the seed; the domain comes after both.
    std::thread::scope(|scope| {
        let disk = disk_image.map(|image| scope.spawn(move || make_overlay(sh, inst, image)));
        let seed = seed_spec(sh, inst, &instance_id).and_then(|seed| upload_seed(sh, inst, &seed));
        if let Some(disk) = disk {
            disk.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        }
        seed
    })?;
    sh.hv
        .define(&xml::domain_xml(&domain_spec(sh, inst, image, instance_id)))?;
    Ok(())
}

/// The image, if `disk_size_gib` can hold it (the overlay cannot be smaller than its base).
pub(super) fn check_disk_size<'i>(
    inst: &Instance,
    image: &'i CachedImage,
) -> Result<&'i CachedImage, ProvisionError> {
    let capacity = inst.disk_size_gib << 30;
    match image_virtual_size(&image.path) {
        Some(vsize) if vsize > capacity => Err(ProvisionError::Invalid(format!(
            "disk_size_gib {} is smaller than the image's virtual size ({:.1} GiB)",
            inst.disk_size_gib,
            vsize as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(image),
    }
}

/// The qcow2 overlay on the cached image, grown to `disk_size_gib`.
fn make_overlay(sh: &Shared, inst: &Instance, image: &CachedImage) -> Result<(), ProvisionError> {
    sh.hv.create_overlay(
        &sh.instance_pool,
        &disk_name(&inst.name),
        &image.path,
        "qcow2",
        inst.disk_size_gib << 30,
    )?;
    Ok(())
}

/// The cloud-init documents: user, hashed password, keys (the operator's too), new host keys,
/// the network.
fn seed_spec(sh: &Shared, inst: &Instance, instance_id: &str) -> Result<SeedSpec, ProvisionError> {
    let ci = &sh.cfg.cloud_init;
    let password_hash = sh
        .cfg
        .password
        .as_ref()
        .map(|p| p.crypt_hash())
        .transpose()?;
    let mut authorized = ci.ssh_authorized_keys.clone();
    if !sh.operator_public.is_empty() {
        authorized.push(sh.operator_public.clone());
    }
    Ok(SeedSpec {
        instance_id: instance_id.to_string(),
        hostname: inst.name.clone(),
        user: ci.user.clone(),
        password_hash,
        ssh_authorized_keys: authorized,
        ssh_password_authentication: ci.ssh_password_authentication,
        host_keys: HostKeys::generate()?,
        network: nics::seed_networks(inst),
        packages: inst.packages.clone(),
        runcmd: inst.runcmd.clone(),
        fqdn: inst.fqdn.clone(),
        user_data: inst.user_data.clone(),
        data_filesystems: inst
            .disks
            .iter()
            .filter_map(|d| {
                Some(DataFilesystem {
                    device: d.by_id(),
                    label: d.name.clone(),
                    filesystem: d.filesystem?.as_str().to_string(),
                    mount: d.mount.as_ref().map(|m| m.display().to_string()),
                    options: d.fstab_options(),
                })
            })
            .collect(),
    })
}

/// Pin the seed's host key, then upload the seed ISO into the instance pool.
fn upload_seed(sh: &Shared, inst: &Instance, spec: &SeedSpec) -> Result<(), ProvisionError> {
    let iso = kvmprov_seed::build_iso(spec)?;
    // Pin the host key before the domain can exist: runtime trusts only this key.
    let st = sh.state.as_ref().ok_or_else(|| {
        ProvisionError::Invalid(format!(
            "{} cannot be created: kvmprov's state directory was not opened (a planning run creates nothing)",
            inst.name
        ))
    })?;
    st.pin_host_key(
        &inst.libvirt_uri,
        &inst.name,
        &spec.host_keys.ed25519_public_openssh,
    )?;
    let seed_vol = seed_name(&inst.name);
    // A seed left by an interrupted run belongs to no domain: replace it. Only this instance
    // makes its seed, so one the stage's listing did not have is not there: no lookup then.
    if sh.listed_volumes.contains(&seed_vol) && sh.hv.volume_exists(&sh.instance_pool, &seed_vol)? {
        sh.hv.delete_volume(&sh.instance_pool, &seed_vol)?;
    }
    sh.hv
        .upload_volume(&sh.instance_pool, &seed_vol, &iso, "raw")?;
    Ok(())
}

/// The domain, with kvmprov's metadata: the image it was made from and the config fields.
fn domain_spec(
    sh: &Shared,
    inst: &Instance,
    image: Option<&CachedImage>,
    instance_id: String,
) -> DomainSpec {
    let pool_path = &sh.cfg.instance_pool_path;
    let (image_version, image_sha512) = image
        .map(|c| (c.version.clone(), c.sha512.clone()))
        .unwrap_or((None, String::new()));
    DomainSpec {
        name: inst.name.clone(),
        domain_type: sh.domain_type,
        vcpus: inst.vcpus,
        memory_mib: inst.memory_mib,
        disk_path: pool_path.join(disk_name(&inst.name)),
        data_disks: inst
            .disks
            .iter()
            .map(|d| DataDiskSpec {
                path: pool_path.join(data_disk_name(&inst.name, &d.name)),
                serial: d.name.clone(),
            })
            .collect(),
        seed_path: pool_path.join(seed_name(&inst.name)),
        interfaces: nics::interfaces(inst),
        console_log: pool_path.join(console_name(&inst.name)),
        firmware: match sh.qcow2_nvram.iter().find(|q| {
            inst.firmware == FirmwareChoice::Uefi
                && inst.snapshot_name.is_some()
                && q.secure_boot == inst.secure_boot
        }) {
            Some(q) => Firmware::UefiQcow2 {
                secure_boot: q.secure_boot,
                loader: q.loader.clone(),
                template: q.template.clone(),
                nvram: pool_path.join(crate::layout::nvram_name(&inst.name)),
            },
            None => firmware_of(inst, pool_path),
        },
        metadata: KvmprovMetadata {
            image_name: inst.image_name.clone(),
            image_version,
            image_sha512,
            config_digest: config_digest(inst),
            fields: Some(
                drift::instance_fields(sh.cfg, inst, sh.domain_type, &instance_id)
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), value))
                    .collect(),
            ),
            instance_id,
        },
    }
}

/// Read the virtual size from a qcow2 header (bytes 24..32, big-endian).
pub fn qcow2_virtual_size(header: &[u8]) -> Option<u64> {
    if header.len() < 32 || &header[..4] != b"QFI\xfb" {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&header[24..32]);
    Some(u64::from_be_bytes(b))
}

fn image_virtual_size(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut header = [0u8; 32];
    f.read_exact(&mut header).ok()?;
    qcow2_virtual_size(&header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_header_size() {
        let mut h = vec![0u8; 32];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[24..32].copy_from_slice(&(3u64 << 30).to_be_bytes());
        assert_eq!(qcow2_virtual_size(&h), Some(3 << 30));
        assert_eq!(qcow2_virtual_size(b"nope"), None);
    }
}
