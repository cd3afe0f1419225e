#!/usr/bin/env bash
# Install what kvmprov and the demo need on Debian 12, or also what the tests and benchmarks need
# (idempotent, non-interactive: works with CI=true and no stdin). Needs root.
#
#   testkit/install-deps.sh image  what testkit/build-image.sh needs, without Recommends
#   testkit/install-deps.sh demo   the demo's packages only, without Recommends (`make demo`)
#   testkit/install-deps.sh [all]  the demo's packages and the test tools (`make deps`, `make test`)
#
# - apt-get update runs only when something is missing or must be downgraded.
# - A qemu-utils from bookworm-backports conflicts with bookworm's qemu-system-x86 ("held broken
#   packages"): it is replaced by bookworm's in the same transaction (DESIGN.md §4).
# - Does what udev would: /dev/kvm root:kvm 0660 (else libvirt re-probes QEMU endlessly).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
say() { printf '[install-deps] %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "install-deps.sh needs root (apt-get, /dev/kvm)" >&2; exit 2; }

PROFILE=${1:-all}
# Build kvmprov, build the image, run libvirtd and one guest, log in. Without Recommends: a fresh
# machine set up 324 packages for `make demo` when it took every Recommends and the test tools.
DEMO_PKGS=(
    qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
    dnsmasq-base iptables acl mmdebstrap fdisk dosfstools mtools openssh-client xxd iproute2
)
# The end-to-end tests (jq reads kvmprov's --output json), the chain the benchmark compares against,
# the Ansible and packaging checks.
TEST_PKGS=(
    ovmf openssh-server genisoimage libxml2-utils cloud-init python3-yaml virtinst cloud-image-utils
    netcat-openbsd curl time python3-venv dpkg-dev jq python3-libvirt python3-jinja2
)
# testkit/build-image.sh: `make demo` installs these first and builds the image while the rest
# installs and kvmprov compiles.
IMAGE_PKGS=(mmdebstrap fdisk dosfstools mtools qemu-utils xxd)
case "$PROFILE" in
    image) PKGS=("${IMAGE_PKGS[@]}") APT_OPTS=(--no-install-recommends) ;;
    demo) PKGS=("${DEMO_PKGS[@]}") APT_OPTS=(--no-install-recommends) ;;
    all) PKGS=("${DEMO_PKGS[@]}" "${TEST_PKGS[@]}") APT_OPTS=() ;;
    *) echo "usage: $0 [image|demo|all]" >&2; exit 2 ;;
esac
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

args=()
for p in "${PKGS[@]}"; do installed "$p" || args+=("$p"); done
codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)
qver=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
if [ "$codename" = bookworm ] && [[ "$qver" == *bpo* ]]; then
    say "qemu-utils $qver is from backports: replacing it with bookworm's"
    rest=()
    for a in "${args[@]}"; do [ "$a" = qemu-utils ] || rest+=("$a"); done
    args=("${rest[@]}" qemu-utils/bookworm)
    installed qemu-block-extra && args+=(qemu-block-extra/bookworm)
fi
if [ ${#args[@]} -gt 0 ]; then
    say "apt-get install ${args[*]}"
    # Lists fetched in the last 10 minutes (the demo's first call) are fresh enough.
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_InRelease' -newermt '-10 minutes' 2>/dev/null | head -n 1)" ]; then
        apt-get update -qq </dev/null
    fi
    apt-get install -y -qq --allow-downgrades "${APT_OPTS[@]}" "${args[@]}" </dev/null
else
    say "all ${#PKGS[@]} packages present"
fi

if [ -e /dev/kvm ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
    # Survives the host changing the device's group under a running test.
    setfacl -m u:libvirt-qemu:rw /dev/kvm 2>/dev/null || true
fi
