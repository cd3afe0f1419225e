#!/usr/bin/env bash
# Install what kvmprov, its tests and the demo need on Debian 12 (idempotent, non-interactive).
# Also does what udev would: /dev/kvm root:kvm 0660 (else libvirt re-probes QEMU endlessly).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PKGS=(
    qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
    dnsmasq-base iptables acl mmdebstrap fdisk openssh-client xxd
    genisoimage libxml2-utils cloud-init python3-yaml virtinst cloud-image-utils
)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" </dev/null
else
    echo "host packages: all present"
fi
if [ -e /dev/kvm ] && [ "$(id -u)" -eq 0 ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
