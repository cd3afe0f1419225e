#!/usr/bin/env bash
# Build the Debian package kvmprov_<version>_<arch>.deb from a release binary, with dpkg-deb:
# the binary, its man pages and shell completions (printed by the binary itself from its CLI
# definition), the README, the commented example variables file and its JSON Schema.
# Depends come from dpkg-shlibdeps (what the binary links, libvirt0 included) plus the ssh
# client kvmprov runs; Recommends are what a hypervisor on the same machine needs.
#   packaging/build-deb.sh [BINARY] [OUTDIR]   default: target/release/kvmprov target/debian
# Environment: DEBFULLNAME / DEBEMAIL name the maintainer; SOURCE_DATE_EPOCH the changelog date.
set -euo pipefail
umask 022

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/kvmprov}
out=${2:-$root/target/debian}
[ -x "$bin" ] || { echo "no binary at $bin: run make build first" >&2; exit 2; }
for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install dpkg-dev binutils" >&2; exit 2; }
done

version=$("$bin" --version | awk '{ print $2 }')
arch=$(dpkg --print-architecture)
maintainer="${DEBFULLNAME:-kvmprov maintainers} <${DEBEMAIL:-kvmprov@example.org}>"
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg="$work/kvmprov_${version}_$arch"
doc="$pkg/usr/share/doc/kvmprov"
mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/share/man/man1" "$doc/examples" \
    "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/zsh/vendor-completions" \
    "$pkg/usr/share/fish/vendor_completions.d" "$pkg/usr/share/lintian/overrides"

install -m 0755 "$bin" "$pkg/usr/bin/kvmprov"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/bin/kvmprov"
mkdir -p "$work/man" && "$bin" man --out-dir "$work/man"
for page in "$work"/man/*.1; do
    gzip -9n <"$page" >"$pkg/usr/share/man/man1/$(basename "$page").gz"
done
"$bin" completions bash >"$pkg/usr/share/bash-completion/completions/kvmprov"
"$bin" completions zsh >"$pkg/usr/share/zsh/vendor-completions/_kvmprov"
"$bin" completions fish >"$pkg/usr/share/fish/vendor_completions.d/kvmprov.fish"
install -m 0644 "$root/README.md" "$doc/README.md"
install -m 0644 "$root/vars/kvm-provisioning.yml" "$root/vars/kvm-provisioning.schema.json" "$doc/examples/"
install -m 0644 "$root/packaging/copyright" "$doc/copyright"
install -m 0644 "$root/packaging/lintian-overrides" "$pkg/usr/share/lintian/overrides/kvmprov"
{
    echo "kvmprov ($version) unstable; urgency=medium"
    echo
    echo "  * Built from the kvmprov source tree ($(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown))."
    echo
    echo " -- $maintainer  $(date -R -u -d "@$epoch")"
} | gzip -9n >"$doc/changelog.gz"

# dpkg-shlibdeps wants to run in a source tree: give it the smallest one.
mkdir -p "$work/src/debian"
printf 'Source: kvmprov\n\nPackage: kvmprov\nArchitecture: any\n' >"$work/src/debian/control"
shlibs=$(cd "$work/src" && dpkg-shlibdeps -O "$pkg/usr/bin/kvmprov" | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "dpkg-shlibdeps found no shared libraries" >&2; exit 1; }

cat >"$pkg/DEBIAN/control" <<CONTROL
Package: kvmprov
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
Depends: $shlibs, openssh-client
Recommends: libvirt-daemon-system, qemu-system-x86, qemu-utils, acl, dnsmasq-base, ovmf
Suggests: ansible-core
Section: admin
Priority: optional
Description: provision Debian cloud-image VMs on KVM/libvirt from one YAML file
 kvmprov caches verified Debian cloud images, creates per-instance qcow2
 overlays and cloud-init seeds, defines and starts libvirt domains, waits
 until each guest answers over SSH with a pinned host key, takes optional
 snapshots and cleans up strictly within the declared instances. It works
 on the local hypervisor and on remote ones over qemu+ssh, prints an
 Ansible inventory of the guests, and a JSON Schema of its variables file.
CONTROL
(cd "$pkg" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/kvmprov_${version}_$arch.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
