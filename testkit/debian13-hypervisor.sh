#!/usr/bin/env bash
# A Debian 13 hypervisor on this (Debian 12) machine, for tests (sourced, not run): trixie's
# libvirt, QEMU, OVMF and dnsmasq from Debian's archive, in a root made once with mmdebstrap and
# cached like the test images, run in a network namespace and a mount namespace of its own whose
# root is that trixie root (DESIGN.md §4).
#
#   d13_build                  build (or reuse) the cached root; prints its path
#   d13_start DIR NS [PATH...] start the hypervisor: state under DIR (made if missing), network
#                              namespace NS (made when missing, then deleted by d13_stop),
#                              each PATH (a directory) bind-mounted into the root at the same
#                              path: "this machine" for those files (pools, caches)
#   d13_exec CMD...            run CMD inside it (its root, mount and network namespaces)
#   d13_virsh ARGS...          virsh -q ARGS... through its socket, from this machine (files
#                              named in ARGS are this machine's)
#   d13_stop                   stop what d13_start started (guests, daemons by PID, namespaces)
# After d13_start: D13_URI is qemu+unix:///system?socket=DIR/run/libvirt/libvirt-sock, how a
# client in the host's mount namespace reaches it ("this machine": crates/hypervisor/src/uri.rs
# is_local), D13_HOLDER the PID whose namespaces it lives in (for nsenter), D13_NS its network
# namespace. One Debian 13 hypervisor per shell (the D13_* variables).
#
# Why not a plain chroot: libvirt enters each guest's mount namespace with setns(), which resets
# the daemon's root to its namespace's root, the host's for a chroot, and the guest fails ("Failed
# disable mount propagation", "Could not open /dev/urandom"). pivot_root makes the trixie root
# the namespace's own. The root itself stays untouched: an overlay with a per-run upper directory
# under DIR is what the daemons see, so several runs (and several helpers) share one cache. Its
# /run is DIR/run, a host directory: the socket is a file there, never in the host's
# /run/libvirt, which belongs to the machine's own libvirtd.

D13_CACHE=${KVMPROV_TESTKIT_CACHE:-/var/cache/kvmprov-testkit}
# What the root holds: the daemons, the tools kvmprov runs on a hypervisor over ssh (setfacl,
# qemu-img), sshd for qemu+ssh, nftables and iptables for libvirt's NAT network.
D13_PACKAGES=(
    libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils ovmf dnsmasq-base
    iptables nftables acl openssh-server netcat-openbsd iproute2 procps
)

d13_log() { printf '[debian13-hv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The recipe: mmdebstrap from the archive apt uses (as testkit/build-image.sh finds it), no
# Recommends. Its text and the package list key the cache.
_d13_mmdebstrap() {
    local out=$1 mirror security include
    mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
    [ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || { d13_log "cannot find the Debian mirror in /etc/apt/sources.list(.d)"; return 1; }
    security="${mirror%/debian}/debian-security"
    include=$(IFS=,; echo "${D13_PACKAGES[*]}")
    # Sources as arguments and stdin closed: mmdebstrap reads sources from a stdin that is no tty.
    # shellcheck disable=SC2016 # the hook's $1 is mmdebstrap's
    mmdebstrap --variant=apt --include="$include" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='chroot "$1" dpkg-query -W -f "\${Package}\t\${Version}\n" >"$1/etc/kvmprov-packages"' \
        trixie "$out" \
        "deb $mirror trixie main" "deb $mirror trixie-updates main" "deb $security trixie-security main" \
        </dev/null >&2
}

d13_build() {
    local key root tmp start
    key=$( (echo "${D13_PACKAGES[*]}"; declare -f _d13_mmdebstrap) | sha256sum | cut -c1-16)
    root="$D13_CACHE/debian13-hypervisor-$key"
    mkdir -p "$D13_CACHE"
    # One builder at a time; the others wait and reuse its root.
    (
        flock 9
        if [ -f "$root/etc/kvmprov-packages" ]; then
            d13_log "root cached: $root"
            exit 0
        fi
        start=$(date +%s)
        tmp="$root.part-$$"
        rm -rf "$tmp"
        d13_log "building the Debian 13 hypervisor root with mmdebstrap (trixie, ${#D13_PACKAGES[@]} packages and their dependencies)"
        _d13_mmdebstrap "$tmp" || { rm -rf "$tmp"; exit 1; }
        mv "$tmp" "$root"
        d13_log "root built in $(($(date +%s) - start)) s: $root ($(du -sh "$root" | cut -f1))"
    ) 9>"$D13_CACHE/debian13-hypervisor.lock" || return 1
    echo "$root"
}

# The root's id of a user or group (its own /etc files: they differ from the host's).
_d13_id() { awk -F: -v n="$2" '$1 == n {print $3}' "$D13_LOWER/etc/$1"; }

d13_start() {
    local dir=$1 ns=$2 start lower p
    shift 2
    start=$(date +%s)
    lower=$(d13_build) || return 1
    D13_LOWER=$lower
    D13_DIR=$(mkdir -p "$dir" && cd "$dir" && pwd)
    D13_NS=$ns
    D13_NS_MADE=""
    if ! ip netns list | grep -qw "$ns"; then
        ip netns add "$ns"
        D13_NS_MADE=1
    fi
    ip -n "$ns" link set lo up
    mkdir -p "$D13_DIR/upper" "$D13_DIR/work" "$D13_DIR/root" "$D13_DIR/run" "$lower.libvirt-cache"
    rm -f "$D13_DIR/run/kvmprov-ready"
    for p in "$@"; do
        [ -d "$p" ] || { d13_log "not a directory to share: $p"; return 1; }
    done
    # What udev would do, for the root's own ids: its kvm group and qemu user differ from the
    # host's, and without access libvirt re-probes QEMU on nearly every call. An ACL, not the
    # group: the host's libvirt keeps what it has.
    if [ -e /dev/kvm ]; then
        setfacl -m "g:$(_d13_id group kvm):rw,u:$(_d13_id passwd libvirt-qemu):rw" /dev/kvm
    fi
    # The holder: a private mount namespace inside NS whose root is the overlay, alive until
    # killed; the daemons are started in it with nsenter.
    # shellcheck disable=SC2016 # expanded by that sh
    ip netns exec "$ns" unshare --mount --propagation private sh -c '
        set -e
        lower=$1 d=$2 host=$3
        shift 3
        r=$d/root
        mount -t overlay overlay -o "lowerdir=$lower,upperdir=$d/upper,workdir=$d/work" "$r"
        mount --rbind /dev "$r/dev"
        mount -t proc proc "$r/proc"
        # ip netns exec mounted a sysfs of this network namespace on /sys: libvirt reads its
        # bridges there.
        mount --rbind /sys "$r/sys"
        mount --bind "$d/run" "$r/run"
        mkdir -p "$r/run/lock" "$r/run/sshd" "$r/run/libvirt"
        mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
        # QEMU capabilities libvirt probed before (~15 s a start on a busy machine): kept
        # beside the root, keyed as it is. libvirt rewrites them atomically and checks them
        # against the binaries, so runs may share them.
        mount --bind "$lower.libvirt-cache" "$r/var/cache/libvirt"
        for p in "$@"; do
            mkdir -p "$r$p"
            mount --bind "$p" "$r$p"
        done
        printf "127.0.0.1 localhost\n127.0.1.1 %s\n" "$host" >"$r/etc/hosts"
        cd "$r"
        mkdir -p .oldroot
        pivot_root . .oldroot
        umount -l /.oldroot
        rmdir /.oldroot
        echo ready >/run/kvmprov-ready
        exec sleep infinity
    ' sh "$lower" "$D13_DIR" "$(hostname)" "$@" &
    D13_HOLDER=$!
    for _ in $(seq 1 100); do
        [ -s "$D13_DIR/run/kvmprov-ready" ] && break
        kill -0 "$D13_HOLDER" 2>/dev/null || break
        sleep 0.1
    done
    [ -s "$D13_DIR/run/kvmprov-ready" ] || { d13_log "the namespace holder did not start"; return 1; }

    d13_exec /usr/sbin/virtlogd -d -p /run/virtlogd.pid
    d13_exec /usr/sbin/libvirtd -d -p /run/libvirtd.pid
    local ok=""
    for _ in $(seq 1 150); do
        if d13_virsh version >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    [ -n "$ok" ] || { d13_log "libvirtd did not answer"; return 1; }
    local nets
    nets=$(d13_virsh net-list --all --name)
    grep -qx default <<<"$nets" ||
        d13_virsh net-define /usr/share/libvirt/networks/default.xml >/dev/null
    nets=$(d13_virsh net-list --name)
    grep -qx default <<<"$nets" || d13_virsh net-start default >/dev/null
    D13_URI="qemu+unix:///system?socket=$D13_DIR/run/libvirt/libvirt-sock"
    d13_log "libvirt $(d13_exec libvirtd --version | awk '{print $NF}') up in $(($(date +%s) - start)) s (namespace $ns, $D13_URI)"
}

d13_exec() { nsenter -t "$D13_HOLDER" -m -n "$@"; }

d13_virsh() { virsh -q -c "qemu+unix:///system?socket=$D13_DIR/run/libvirt/libvirt-sock" "$@"; }

# PIDs of what runs in the hypervisor, its holder excepted: what is in its mount namespace, and
# the QEMUs libvirt started (each in a mount namespace of its own) in its network namespace.
# By namespace, never by name alone.
_d13_pids() {
    local p comm
    [ -n "${D13_HOLDER:-}" ] && [ -e "/proc/$D13_HOLDER/ns/mnt" ] || return 0
    # -ef compares the namespace files' inodes without a process per entry (a busy machine
    # has thousands).
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" = "$D13_HOLDER" ] && continue
        if [ "$p/ns/mnt" -ef "/proc/$D13_HOLDER/ns/mnt" ]; then
            echo "${p#/proc/}"
        elif read -r comm 2>/dev/null <"$p/comm" && [[ $comm == qemu-system-* ]] &&
            [ "$p/ns/net" -ef "/proc/$D13_HOLDER/ns/net" ]; then
            echo "${p#/proc/}"
        fi
    done
    return 0
}

d13_stop() {
    # A teardown: every step is tried (errexit off here only).
    local -
    set +e
    local d p
    if [ -n "${D13_HOLDER:-}" ] && kill -0 "$D13_HOLDER" 2>/dev/null; then
        # Guests first: QEMU outlives libvirtd otherwise.
        for d in $(d13_virsh list --name 2>/dev/null); do
            d13_virsh destroy "$d" >/dev/null 2>&1
        done
        for p in $(_d13_pids); do kill "$p" 2>/dev/null; done
        for _ in $(seq 1 20); do [ -z "$(_d13_pids)" ] && break; sleep 0.2; done
        for p in $(_d13_pids); do kill -9 "$p" 2>/dev/null; done
        # Its mounts go with the holder, the last process in its mount namespace.
        kill "$D13_HOLDER" 2>/dev/null
        wait "$D13_HOLDER" 2>/dev/null
    fi
    [ -n "${D13_NS_MADE:-}" ] && ip netns delete "$D13_NS" 2>/dev/null
    D13_HOLDER=""
    D13_NS_MADE=""
    return 0
}
