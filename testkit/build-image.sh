#!/usr/bin/env bash
# Build a small Debian cloud-like qcow2 (what cloud.debian.org's genericcloud image is, minus
# the size) with mmdebstrap, from the apt mirror this machine already uses. No internet needed
# beyond Debian's archive.
#
#   testkit/build-image.sh [SUITE] [OUTDIR]     SUITE: bookworm (default) or trixie
#
# Prints the path of the image as its last line. The image is cached: it is rebuilt only when
# this recipe changes (its hash is stored beside the image). Needs root.
# Pitfalls this script handles (each cost an hour, see DESIGN.md §4): mmdebstrap reads sources
# from stdin when it is not a tty; no udev means no partition nodes and no /dev/disk/by-uuid
# (grub-mkconfig then writes root=/dev/loop0p1); cloud-init 22.4 needs the en_US.UTF-8 locale;
# the initramfs must be rebuilt after /etc/fstab is written.
set -euo pipefail

SUITE=${1:-bookworm}
OUTDIR=${2:-${KVMPROV_TESTKIT_CACHE:-/var/cache/kvmprov-testkit}}
SIZE=${IMAGE_SIZE:-3G}

case "$SUITE" in
    bookworm | trixie) ;;
    *) echo "unsupported suite: $SUITE (bookworm or trixie)" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "build-image.sh needs root" >&2; exit 2; }

PACKAGES=(
    linux-image-cloud-amd64 grub-pc systemd-sysv udev dbus cloud-init cloud-initramfs-growroot
    netplan.io systemd-resolved openssh-server sudo qemu-guest-agent locales iproute2
    e2fsprogs initramfs-tools ca-certificates
)

mkdir -p "$OUTDIR"
OUT="$OUTDIR/$SUITE.qcow2"
RECIPE=$( (cat "$0"; echo "${PACKAGES[*]} $SIZE") | sha256sum | cut -c1-16)
if [ -f "$OUT" ] && [ "$(cat "$OUT.recipe" 2>/dev/null)" = "$RECIPE" ]; then
    echo "image cached: $OUT (recipe $RECIPE)" >&2
    echo "$OUT"
    exit 0
fi

say() { printf '[build-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
start=$(date +%s)

# The mirror apt already uses (deb822 or one-line sources).
MIRROR=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$MIRROR" ] || { echo "cannot find the Debian mirror in /etc/apt/sources.list(.d)" >&2; exit 1; }
SECURITY="${MIRROR%/debian}/debian-security"

WORK=$(mktemp -d /var/tmp/kvmprov-image.XXXXXX)
LOOP=""
MNT="$WORK/mnt"
cleanup() {
    set +e
    for m in dev/pts dev proc sys run; do mountpoint -q "$MNT/$m" && umount -l "$MNT/$m"; done
    mountpoint -q "$MNT" && umount "$MNT"
    if [ -n "$LOOP" ]; then
        partx -d "$LOOP" 2>/dev/null
        losetup -d "$LOOP"
    fi
    [ -n "${BYUUID:-}" ] && rm -f "$BYUUID"
    rm -rf "$WORK"
}
trap cleanup EXIT

say "mmdebstrap $SUITE from $MIRROR (${#PACKAGES[@]} packages + minbase)"
include=$(IFS=,; echo "${PACKAGES[*]}")
mmdebstrap --variant=minbase --include="$include" \
    --essential-hook='echo "grub-pc grub-pc/install_devices_empty boolean true" | chroot "$1" debconf-set-selections' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    "$SUITE" "$WORK/rootfs.tar" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main" \
    </dev/null >&2

say "partitioning a $SIZE raw disk"
truncate -s "$SIZE" "$WORK/disk.raw"
echo 'label: dos
start=2048, type=83, bootable' | sfdisk -q "$WORK/disk.raw" >&2
LOOP=$(losetup -f --show "$WORK/disk.raw")
partx -a "$LOOP" 2>/dev/null || true
PART="${LOOP}p1"
if [ ! -b "$PART" ]; then
    # No udev: make the partition node from what the kernel knows.
    dev=$(cat "/sys/block/$(basename "$LOOP")/$(basename "$PART")/dev")
    mknod "$PART" b "${dev%%:*}" "${dev##*:}"
fi
mkfs.ext4 -q -L rootfs "$PART"
UUID=$(blkid -s UUID -o value "$PART")
mkdir -p "$MNT"
mount "$PART" "$MNT"
tar -C "$MNT" -xpf "$WORK/rootfs.tar"

say "configuring (fstab, grub, cloud-init, locale, network)"
echo "UUID=$UUID / ext4 errors=remount-ro 0 1" >"$MNT/etc/fstab"
echo "debian" >"$MNT/etc/hostname"
: >"$MNT/etc/machine-id"
rm -f "$MNT"/etc/ssh/ssh_host_*
# Only the NoCloud seed (and nothing): faster boots, and a wrong seed is an error, not a fallback.
cat >"$MNT/etc/cloud/cloud.cfg.d/90_kvmprov_testkit.cfg" <<'EOF'
datasource_list: [ NoCloud, None ]
EOF
echo "en_US.UTF-8 UTF-8" >"$MNT/etc/locale.gen"
echo "LANG=en_US.UTF-8" >"$MNT/etc/default/locale"
cat >"$MNT/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 net.ifnames=1"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
for m in dev dev/pts proc sys run; do
    mkdir -p "$MNT/$m"
    mount --bind "/$m" "$MNT/$m"
done
# grub-mkconfig writes root=UUID=… only if this link exists (udev would make it).
mkdir -p /dev/disk/by-uuid
BYUUID="/dev/disk/by-uuid/$UUID"
ln -sf "$PART" "$BYUUID"
chroot "$MNT" locale-gen >&2
chroot "$MNT" systemctl enable systemd-networkd systemd-resolved ssh qemu-guest-agent >/dev/null 2>&1 || true
chroot "$MNT" grub-install --target=i386-pc --modules="part_msdos ext2" "$LOOP" >&2
chroot "$MNT" update-grub >&2 2>&1
grep -q "root=UUID=$UUID" "$MNT/boot/grub/grub.cfg" || { echo "grub.cfg lacks root=UUID=$UUID" >&2; exit 1; }
chroot "$MNT" update-initramfs -u -k all >&2 2>&1
ln -sf /run/systemd/resolve/stub-resolv.conf "$MNT/etc/resolv.conf"
chroot "$MNT" apt-get clean
for m in run sys proc dev/pts dev; do umount -l "$MNT/$m"; done
sync
umount "$MNT"
partx -d "$LOOP" 2>/dev/null || true
losetup -d "$LOOP"
LOOP=""

say "converting to compressed qcow2"
qemu-img convert -c -O qcow2 "$WORK/disk.raw" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$RECIPE" >"$OUT.recipe"
say "done in $(($(date +%s) - start))s: $OUT ($(du -h "$OUT" | cut -f1))"
echo "$OUT"
