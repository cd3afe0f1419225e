//! Checks of single values (names, paths, URLs, addresses): pure, each returning the message an
//! error shows; `resolve` says where.

use std::net::Ipv4Addr;
use std::path::{Component, Path};

use ipnet::Ipv4Net;

use super::resolved::StaticIpv4;

/// Valid libvirt domain name and host name label: what we accept as an instance name.
pub fn valid_instance_name(name: &str) -> Result<(), String> {
    let len = name.len();
    if !(1..=63).contains(&len) {
        return Err(format!("must be 1 to 63 characters long, not {len}"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(
            "may contain only ASCII letters, digits and `-` (it becomes the host name)".into(),
        );
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not start or end with `-`".into());
    }
    Ok(())
}

/// A snapshot's name, in the file (`snapshot_name`) or on the command line (`kvmprov snapshot`):
/// the rule of [`valid_simple_name`].
pub fn valid_snapshot_name(name: &str) -> Result<(), String> {
    valid_simple_name(name)
}

/// Names of snapshots, images and networks: safe in paths and XML.
pub(super) fn valid_simple_name(name: &str) -> Result<(), String> {
    let len = name.len();
    if !(1..=64).contains(&len) {
        return Err(format!("must be 1 to 64 characters long, not {len}"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || name.starts_with('.')
    {
        return Err("may contain only ASCII letters, digits, `-`, `_` and `.` (not first)".into());
    }
    Ok(())
}

pub(super) fn check_path(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("`{}` must be an absolute path", p.display()));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "`{}` must not contain `.` or `..` components",
            p.display()
        ));
    }
    if p == Path::new("/") {
        return Err("must not be the root directory".into());
    }
    Ok(())
}

pub(super) fn check_url(url: &str) -> Result<(), String> {
    let ok = ["http://", "https://", "file:///"]
        .iter()
        .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
    if !ok {
        return Err(format!(
            "`{}` must be an http://, https:// or file:/// URL",
            kvmprov_image::redact_url(url)
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{}` contains white space",
            kvmprov_image::redact_url(url)
        ));
    }
    Ok(())
}

pub(super) fn parse_mac(mac: &str) -> Result<String, String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(format!(
            "`{mac}` is not a MAC address like 52:54:00:12:34:56"
        ));
    }
    let first = u8::from_str_radix(parts[0], 16).map_err(|e| e.to_string())?;
    if first & 1 == 1 {
        return Err(format!("`{mac}` is a multicast address"));
    }
    Ok(mac.to_ascii_lowercase())
}

/// A static address with its gateway and DNS servers. An error names the field it is about.
pub(super) fn parse_static(
    address: &str,
    gateway: Option<&str>,
    dns: &[String],
) -> Result<StaticIpv4, (&'static str, String)> {
    let net = host_address(address).map_err(|m| ("ipv4_address", m))?;
    let gateway = match gateway {
        Some(g) => explicit_gateway(&net, g).map_err(|m| ("ipv4_gateway", m))?,
        None => default_gateway(&net).map_err(|m| ("ipv4_address", m))?,
    };
    let mut servers = Vec::new();
    for d in dns {
        servers.push(
            d.parse::<Ipv4Addr>()
                .map_err(|_| ("dns_servers", format!("`{d}` is not an IPv4 address")))?,
        );
    }
    if servers.is_empty() {
        servers.push(gateway);
    }
    Ok(StaticIpv4 {
        address: net,
        gateway,
        dns: servers,
    })
}

/// `192.168.122.50/24`: a unicast host address inside a subnet a host can live in.
pub(super) fn host_address(address: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = address.parse().map_err(|_| {
        format!("`{address}` is not an IPv4 address with prefix, like 192.168.122.50/24")
    })?;
    if !(8..=30).contains(&net.prefix_len()) {
        return Err(format!(
            "prefix /{} is not usable for a host (use /8 to /30)",
            net.prefix_len()
        ));
    }
    let host = net.addr();
    if host == net.network() || host == net.broadcast() {
        return Err(format!(
            "`{host}` is the network or broadcast address of {}",
            net.trunc()
        ));
    }
    if host.is_loopback() || host.is_multicast() || host.is_unspecified() || host.is_broadcast() {
        return Err(format!("`{host}` is not a unicast host address"));
    }
    Ok(net)
}

fn explicit_gateway(net: &Ipv4Net, gateway: &str) -> Result<Ipv4Addr, String> {
    let g: Ipv4Addr = gateway
        .parse()
        .map_err(|_| format!("`{gateway}` is not an IPv4 address"))?;
    if !net.contains(&g) || g == net.addr() {
        return Err(format!(
            "gateway `{g}` must be another address inside {}",
            net.trunc()
        ));
    }
    Ok(g)
}

/// libvirt's NAT networks put the host at the first address of the subnet.
fn default_gateway(net: &Ipv4Net) -> Result<Ipv4Addr, String> {
    let first = Ipv4Addr::from(u32::from(net.network()) + 1);
    if first == net.addr() {
        return Err(format!(
            "`{first}` is the subnet's first address, which is the default gateway; set ipv4_gateway"
        ));
    }
    Ok(first)
}

/// `localhost` → `qemu:///system`; `[user@]host` → `qemu+ssh://[user@]host/system`.
pub fn libvirt_uri_for(host: &str) -> Result<String, String> {
    if host == "localhost" || host == "127.0.0.1" || host == "::1" {
        return Ok("qemu:///system".to_string());
    }
    let (user, name) = match host.split_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, host),
    };
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !s.starts_with('-')
    };
    if !label_ok(name) || user.is_some_and(|u| !label_ok(u)) {
        return Err(format!(
            "`{host}` is not `localhost` or `[user@]host` (letters, digits, `-`, `.`, `_`)"
        ));
    }
    Ok(format!("qemu+ssh://{host}/system"))
}

/// An explicit `kvm_libvirt_uri`: anything libvirt could parse as a URI.
pub(super) fn check_libvirt_uri(uri: &str) -> Result<(), String> {
    if !uri.contains(":/") {
        return Err(format!(
            "`{uri}` is not a libvirt URI such as qemu:///system"
        ));
    }
    Ok(())
}

/// Cleanup deletes in the instance pool: it must never reach the cache, nor the reverse.
pub(super) fn check_separate(cache: &Path, pool: &Path) -> Result<(), String> {
    if cache == pool || cache.starts_with(pool) || pool.starts_with(cache) {
        return Err(format!(
            "the instance pool `{}` and the image cache `{}` must be separate directories, neither inside the other (cleanup deletes in one and must never reach the other)",
            pool.display(),
            cache.display()
        ));
    }
    Ok(())
}

pub(super) fn check_sha512(sum: &str) -> Result<(), String> {
    if sum.len() != 128 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("image_sha512 must be 128 hexadecimal digits".into());
    }
    Ok(())
}

/// The cloud-init login user: a lowercase login name, not root.
pub(super) fn check_login_user(user: &str) -> Result<(), String> {
    let ok = !user.is_empty()
        && user.len() <= 32
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
        && user.as_bytes()[0].is_ascii_lowercase()
        && user != "root";
    if !ok {
        return Err(format!(
            "user `{user}` must be a lowercase login name (not root), like debian"
        ));
    }
    Ok(())
}

pub(super) fn check_public_key(key: &str) -> Result<(), String> {
    if !key.starts_with("ssh-") && !key.starts_with("ecdsa-") && !key.starts_with("sk-") {
        return Err("not an OpenSSH public key line (ssh-ed25519 AAAA…, ssh-rsa …)".into());
    }
    Ok(())
}
