#!/usr/bin/env bash
# Check a built kvmprov .deb the way Debian would: lintian (bookworm's, in its own root) must
# report no error; then the package is installed with apt into a fresh bookworm root, where
# `kvmprov --version`, `man kvmprov` and `kvmprov check` on the shipped example must work.
# Needs root, mmdebstrap and Debian's archive (DEBIAN_MIRROR, default deb.debian.org).
#   packaging/check-deb.sh [DEB]      default: the newest target/debian/kvmprov_*.deb
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
deb=${1:-$(ls -t "$root"/target/debian/kvmprov_*.deb 2>/dev/null | head -n 1)}
[ -f "$deb" ] || { echo "no .deb: run make deb first" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "needs root (mmdebstrap, chroot)" >&2; exit 2; }
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
name=$(basename "$deb")

work=$(mktemp -d /tmp/kvmprov-debcheck.XXXXXX)
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "lintian (bookworm) on $name"
mmdebstrap -q --variant=apt --include=lintian bookworm "$work/lintian" "deb $mirror bookworm main" </dev/null
cp "$deb" "$work/lintian/tmp/"
chroot "$work/lintian" lintian --fail-on error --display-info "/tmp/$name"
# Once more only to show the overridden tags (packaging/lintian-overrides says why).
chroot "$work/lintian" lintian --fail-on none --show-overrides "/tmp/$name" | grep '^O: ' || true

step "apt-get install into a fresh bookworm root"
mmdebstrap -q --variant=apt --include=man-db bookworm "$work/root" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main" </dev/null
# apt in the chroot resolves names with the chroot's resolv.conf: give it the host's.
cp /etc/resolv.conf "$work/root/etc/resolv.conf"
cp "$deb" "$work/root/tmp/"
chroot "$work/root" apt-get update -q
# The recommended hypervisor packages must resolve; installing them (qemu, libvirtd) would only
# slow the check down, so they are simulated.
chroot "$work/root" apt-get install -s -q "/tmp/$name" | grep -E '^Inst (kvmprov|libvirt0|openssh-client|libvirt-daemon-system|qemu-system-x86|qemu-utils|acl|dnsmasq-base|ovmf) '
chroot "$work/root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "/tmp/$name"
chroot "$work/root" dpkg-query -W -f='Depends: ${Depends}\nRecommends: ${Recommends}\n' kvmprov

step "kvmprov --version"
chroot "$work/root" kvmprov --version
step "man kvmprov"
chroot "$work/root" env MANPAGER=cat MANWIDTH=80 man kvmprov | head -n 20
chroot "$work/root" env MANPAGER=cat MANWIDTH=80 man kvmprov-inventory | head -n 8
step "kvmprov check on the shipped example"
chroot "$work/root" kvmprov -c /usr/share/doc/kvmprov/examples/kvm-provisioning.yml check
step "completions and the schema beside the example"
chroot "$work/root" ls -l /usr/share/bash-completion/completions/kvmprov \
    /usr/share/zsh/vendor-completions/_kvmprov /usr/share/fish/vendor_completions.d/kvmprov.fish \
    /usr/share/doc/kvmprov/examples/kvm-provisioning.schema.json
echo
echo "$name: lintian clean of errors, installs and runs in a fresh bookworm root"
