#!/usr/bin/env bash
# A libvirtd of our own inside a private network namespace, so the guests' NAT network and
# every packet to them stay inside it.
#
#   testkit/netns-libvirtd.sh up NAME      create namespace NAME, start virtlogd + libvirtd in it
#   testkit/netns-libvirtd.sh up NAME --private DIR
#                                          the same in a private mount namespace with its own
#                                          /run/libvirt, /var/lib/libvirt, /var/cache/libvirt,
#                                          /etc/libvirt and /var/log/libvirt (kept in DIR/log):
#                                          several such daemons run side by side (e2e lanes)
#   testkit/netns-libvirtd.sh holder NAME  the PID whose mount+net namespaces a private daemon's
#                                          clients enter (`nsenter -t PID -m -n`)
#   testkit/netns-libvirtd.sh down NAME    destroy what `up` started (domains, daemons, namespace)
#   testkit/netns-libvirtd.sh restart NAME stop the libvirtd `up` started and start a new one
#                                          (guests keep running; fault tests)
#   testkit/netns-libvirtd.sh alive NAME   exit 0 while the libvirtd `up` started still runs
#                                          (prints its PID either way)
#   testkit/netns-libvirtd.sh exec NAME CMD...
#
# libvirtd's socket is a file in /run, shared by every namespace: only one system libvirtd can
# run at a time. `up` reuses one already running in NAME, and refuses (exit 3) when one runs
# elsewhere: it never stops a daemon it did not start. `up --private` has a socket of its own (the
# holder recipe of testkit/remote-hypervisors.sh): its clients run inside the holder's mount and
# network namespaces (`exec`), where qemu:///system is that daemon.
# State: /run/kvmprov-testkit/NAME.state.
set -euo pipefail

STATE_DIR=/run/kvmprov-testkit
say() { printf '[netns-libvirtd] %s\n' "$*" >&2; }

running_libvirtd() {
    # PIDs of libvirtd processes (exact command name), without pkill/pgrep -f.
    local p
    for p in /proc/[0-9]*; do
        [ "$(cat "$p/comm" 2>/dev/null)" = libvirtd ] && echo "${p#/proc/}"
    done
    return 0
}

# Is PID a running libvirtd (not a zombie nobody reaped: there is no init to do it here)?
live_libvirtd() {
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = libvirtd ] &&
        [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# The recorded holder of NAME's private daemon (empty for a daemon on the shared /run socket).
holder_of() { sed -n 's/^HOLDER_PID=//p' "$STATE_DIR/$1.state" 2>/dev/null || true; }

# ns_run NAME CMD...: run CMD where NAME's clients run (its network namespace, and the holder's
# mount namespace for a private daemon, where qemu:///system is that daemon).
ns_run() {
    local ns=$1 holder
    shift
    holder=$(holder_of "$ns")
    if [ -n "$holder" ]; then nsenter -t "$holder" -m -n "$@"; else ip netns exec "$ns" "$@"; fi
}

# The PID file of DAEMON (virtlogd or libvirtd) of NAME, as a path from here: a private daemon's
# is in its own /run/libvirt, seen through the holder's root.
pidfile() {
    local holder
    holder=$(holder_of "$1")
    if [ -n "$holder" ]; then echo "/proc/$holder/root/run/libvirt/$2.pid"; else echo "/run/$2.pid"; fi
}

# start_daemon NAME DAEMON: start virtlogd or libvirtd for NAME and print its PID.
start_daemon() {
    local ns=$1 d=$2 file
    file=$(pidfile "$ns" "$d")
    rm -f "$file"
    if [ -n "$(holder_of "$ns")" ]; then
        ns_run "$ns" "$d" -d -p "/run/libvirt/$d.pid"
    else
        ip netns exec "$ns" "$d" -d
    fi
    for _ in $(seq 1 50); do [ -s "$file" ] && break; sleep 0.1; done
    cat "$file"
}

wait_socket() {
    local ns=$1
    for _ in $(seq 1 100); do
        if ns_run "$ns" virsh -c qemu:///system version >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    say "libvirtd did not answer within 20s"
    return 1
}

# What udev would do: let the kvm group (libvirt's qemu) use /dev/kvm. Without it libvirt
# re-probes QEMU on nearly every call (minutes per virt-install).
kvm_access() {
    if [ -e /dev/kvm ]; then
        chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
        # The device is shared with the machine's host, which can change its group under a
        # running test; an ACL for libvirt's qemu user survives that.
        setfacl -m u:libvirt-qemu:rw /dev/kvm 2>/dev/null || true
    fi
}

up() {
    local ns=$1 state="$STATE_DIR/$1.state" pid other
    mkdir -p "$STATE_DIR"
    for pid in $(running_libvirtd); do
        # A private daemon (an e2e lane's) sees a /run/libvirt of its own: not in the way.
        [ "$(stat -L -c %d:%i "/proc/$pid/root/run/libvirt" 2>/dev/null)" = "$(stat -c %d:%i /run/libvirt 2>/dev/null)" ] ||
            continue
        other=$(ip netns identify "$pid" 2>/dev/null || true)
        if [ "$other" = "$ns" ]; then
            say "reusing libvirtd $pid already running in $ns"
            wait_socket "$ns"
            ensure_network "$ns"
            return 0
        fi
        say "a libvirtd (pid $pid) is already running in namespace '${other:-<host>}'; only one can run (shared /run socket). Stop it or use that namespace."
        return 3
    done
    ip netns list | grep -qw "$ns" || ip netns add "$ns"
    : >"$state"
    echo "NS_CREATED=1" >>"$state"
    ip netns exec "$ns" ip link set lo up
    kvm_access
    mkdir -p /run/libvirt /var/log/libvirt
    echo "VIRTLOGD_PID=$(start_daemon "$ns" virtlogd)" >>"$state"
    echo "LIBVIRTD_PID=$(start_daemon "$ns" libvirtd)" >>"$state"
    wait_socket "$ns"
    ensure_network "$ns"
    say "libvirtd $(sed -n 's/^LIBVIRTD_PID=//p' "$state") up in namespace $ns"
}

# up_private NAME DIR: the holder (a private mount namespace inside network namespace NAME,
# alive until killed) with libvirt's directories of its own, then virtlogd and libvirtd in it.
up_private() {
    local ns=$1 dir=$2 state="$STATE_DIR/$1.state" holder
    mkdir -p "$STATE_DIR"
    [ ! -e "$state" ] || { say "$ns is already recorded in $state"; return 3; }
    ip netns add "$ns"
    echo "NS_CREATED=1" >"$state"
    ip netns exec "$ns" ip link set lo up
    kvm_access
    mkdir -p "$dir/log" "$dir/cache" /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
    cp -a /etc/libvirt "$dir/etc"
    # Domains and pools other daemons defined are not this one's.
    rm -rf "$dir"/etc/qemu/*.xml "$dir"/etc/storage "$dir"/etc/qemu/autostart
    # QEMU's capabilities as the machine's daemon cached them (same binaries): no probe per daemon.
    cp -a /var/cache/libvirt/. "$dir/cache/" 2>/dev/null || true
    # Its output goes nowhere: a holder keeping a pipe open would keep the reader waiting.
    # shellcheck disable=SC2016 # expanded by that sh
    ip netns exec "$ns" unshare --mount --propagation private sh -c '
        set -e
        mount -t tmpfs -o mode=0755 tmpfs /run/libvirt
        mount -t tmpfs -o mode=0755 tmpfs /var/lib/libvirt
        mount --bind "$1/cache" /var/cache/libvirt
        mount --bind "$1/etc" /etc/libvirt
        mount --bind "$1/log" /var/log/libvirt
        echo ready >"$1/holder.ready"
        exec sleep infinity
    ' sh "$dir" </dev/null >/dev/null 2>&1 &
    holder=$!
    echo "HOLDER_PID=$holder" >>"$state"
    for _ in $(seq 1 50); do [ -s "$dir/holder.ready" ] && break; sleep 0.1; done
    [ -s "$dir/holder.ready" ] || { say "$ns: the namespace holder did not start"; return 1; }
    echo "VIRTLOGD_PID=$(start_daemon "$ns" virtlogd)" >>"$state"
    echo "LIBVIRTD_PID=$(start_daemon "$ns" libvirtd)" >>"$state"
    wait_socket "$ns"
    ensure_network "$ns"
    say "libvirtd $(sed -n 's/^LIBVIRTD_PID=//p' "$state") up in namespace $ns (private, holder $holder)"
}

restart() {
    local ns=$1 state="$STATE_DIR/$1.state" new
    [ -f "$state" ] || { say "nothing recorded for $ns"; return 1; }
    # shellcheck disable=SC1090
    source "$state"
    [ -n "${LIBVIRTD_PID:-}" ] || { say "no libvirtd of ours recorded for $ns"; return 1; }
    # Only while that PID is still a live libvirtd: a daemon that died may have left its number
    # to another process.
    if live_libvirtd "$LIBVIRTD_PID"; then
        kill "$LIBVIRTD_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do live_libvirtd "$LIBVIRTD_PID" || break; sleep 0.1; done
    fi
    new=$(start_daemon "$ns" libvirtd)
    sed -i "s/^LIBVIRTD_PID=.*/LIBVIRTD_PID=$new/" "$state"
    wait_socket "$ns"
    say "libvirtd restarted in $ns: $LIBVIRTD_PID -> $new"
}

ensure_network() {
    local ns=$1 nets
    nets=$(ns_run "$ns" virsh -q -c qemu:///system net-list --all --name)
    if ! grep -qx default <<<"$nets"; then
        ns_run "$ns" virsh -q -c qemu:///system net-define /usr/share/libvirt/networks/default.xml >/dev/null
    fi
    nets=$(ns_run "$ns" virsh -q -c qemu:///system net-list --name)
    if ! grep -qx default <<<"$nets"; then
        ns_run "$ns" virsh -q -c qemu:///system net-start default >/dev/null
    fi
}

# PIDs of processes in network namespace NAME (by namespace, never by name).
pids_in_netns() {
    local want p
    want=$(readlink "/proc/$1/ns/net" 2>/dev/null) || return 0
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = "$1" ] && continue
        [ "$(readlink "/proc/$p/ns/net" 2>/dev/null)" = "$want" ] && echo "$p"
    done
    return 0
}

down() {
    local ns=$1 state="$STATE_DIR/$1.state" d pid
    set +e
    if [ ! -f "$state" ]; then
        say "nothing recorded for $ns"
        return 0
    fi
    # shellcheck disable=SC1090
    source "$state"
    if [ -n "${LIBVIRTD_PID:-}" ] && kill -0 "$LIBVIRTD_PID" 2>/dev/null; then
        # Guests first: qemu outlives libvirtd otherwise.
        for d in $(ns_run "$ns" virsh -q -c qemu:///system list --name 2>/dev/null); do
            ns_run "$ns" virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
        done
        ns_run "$ns" virsh -q -c qemu:///system net-destroy default >/dev/null 2>&1
        kill "$LIBVIRTD_PID"
        for _ in $(seq 1 50); do kill -0 "$LIBVIRTD_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    if [ -n "${HOLDER_PID:-}" ]; then
        # Everything in a private daemon's network namespace is its own (virtlogd, dnsmasq,
        # guests, a test's servers): stopped, then the holder.
        for pid in $(pids_in_netns "$HOLDER_PID"); do kill "$pid" 2>/dev/null; done
        sleep 0.5
        for pid in $(pids_in_netns "$HOLDER_PID"); do kill -9 "$pid" 2>/dev/null; done
        kill "$HOLDER_PID" 2>/dev/null
    else
        # qemu processes libvirtd started in this namespace, if any survived.
        for pid in /proc/[0-9]*; do
            pid=${pid#/proc/}
            case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
                qemu-system-*)
                    [ "$(ip netns identify "$pid" 2>/dev/null)" = "$ns" ] && kill "$pid" ;;
                dnsmasq)
                    [ "$(ip netns identify "$pid" 2>/dev/null)" = "$ns" ] && kill "$pid" ;;
            esac
        done
        if [ -n "${VIRTLOGD_PID:-}" ] && kill -0 "$VIRTLOGD_PID" 2>/dev/null; then
            kill "$VIRTLOGD_PID"
        fi
    fi
    [ -n "${NS_CREATED:-}" ] && ip netns delete "$ns" 2>/dev/null
    rm -f "$state"
    say "namespace $ns and its daemons removed"
    return 0
}

case "${1:-}" in
    up)
        if [ "${3:-}" = --private ]; then up_private "${2:?namespace name}" "${4:?directory}"; else up "${2:?namespace name}"; fi
        ;;
    holder) holder_of "${2:?namespace name}" ;;
    down) down "${2:?namespace name}" ;;
    restart) restart "${2:?namespace name}" ;;
    alive)
        pid=$(sed -n 's/^LIBVIRTD_PID=//p' "$STATE_DIR/${2:?namespace name}.state" 2>/dev/null || true)
        echo "${pid:-none}"
        [ -n "$pid" ] && live_libvirtd "$pid"
        ;;
    exec)
        ns=${2:?namespace name}
        shift 2
        ns_run "$ns" "$@"
        ;;
    *) echo "usage: $0 up|down|restart|alive|holder|exec NAME [CMD...]" >&2; exit 2 ;;
esac
