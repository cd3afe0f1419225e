#!/usr/bin/env bash
# A libvirtd of our own inside a private network namespace, so the guests' NAT network and
# every packet to them stay inside it.
#
#   testkit/netns-libvirtd.sh up NAME      create namespace NAME, start virtlogd + libvirtd in it
#   testkit/netns-libvirtd.sh down NAME    destroy what `up` started (domains, daemons, namespace)
#   testkit/netns-libvirtd.sh restart NAME stop the libvirtd `up` started and start a new one
#                                          (guests keep running; fault tests)
#   testkit/netns-libvirtd.sh alive NAME   exit 0 while the libvirtd `up` started still runs
#                                          (prints its PID either way)
#   testkit/netns-libvirtd.sh exec NAME CMD...
#
# libvirtd's socket is a file in /run, shared by every namespace: only one system libvirtd can
# run at a time. `up` reuses one already running in NAME, and refuses (exit 3) when one runs
# elsewhere: it never stops a daemon it did not start. State: /run/kvmprov-testkit/NAME.state.
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

wait_socket() {
    local ns=$1 i
    for i in $(seq 1 100); do
        if ip netns exec "$ns" virsh -c qemu:///system version >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    say "libvirtd did not answer within 20s"
    return 1
}

up() {
    local ns=$1 state="$STATE_DIR/$1.state" pid other
    mkdir -p "$STATE_DIR"
    for pid in $(running_libvirtd); do
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
    # What udev would do: let the kvm group (libvirt's qemu) use /dev/kvm. Without it libvirt
    # re-probes QEMU on nearly every call (minutes per virt-install).
    if [ -e /dev/kvm ]; then
        chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
        # The device is shared with the machine's host, which can change its group under a
        # running test; an ACL for libvirt's qemu user survives that.
        setfacl -m u:libvirt-qemu:rw /dev/kvm 2>/dev/null || true
    fi
    mkdir -p /run/libvirt /var/log/libvirt
    rm -f /run/virtlogd.pid /run/libvirtd.pid
    ip netns exec "$ns" virtlogd -d
    for _ in $(seq 1 50); do [ -s /run/virtlogd.pid ] && break; sleep 0.1; done
    echo "VIRTLOGD_PID=$(cat /run/virtlogd.pid)" >>"$state"
    ip netns exec "$ns" libvirtd -d
    for _ in $(seq 1 50); do [ -s /run/libvirtd.pid ] && break; sleep 0.1; done
    echo "LIBVIRTD_PID=$(cat /run/libvirtd.pid)" >>"$state"
    wait_socket "$ns"
    ensure_network "$ns"
    say "libvirtd $(cat /run/libvirtd.pid) up in namespace $ns"
}

restart() {
    local ns=$1 state="$STATE_DIR/$1.state"
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
    rm -f /run/libvirtd.pid
    ip netns exec "$ns" libvirtd -d
    for _ in $(seq 1 50); do [ -s /run/libvirtd.pid ] && break; sleep 0.1; done
    sed -i "s/^LIBVIRTD_PID=.*/LIBVIRTD_PID=$(cat /run/libvirtd.pid)/" "$state"
    wait_socket "$ns"
    say "libvirtd restarted in $ns: $LIBVIRTD_PID -> $(cat /run/libvirtd.pid)"
}

ensure_network() {
    local ns=$1 nets
    nets=$(ip netns exec "$ns" virsh -q -c qemu:///system net-list --all --name)
    if ! grep -qx default <<<"$nets"; then
        ip netns exec "$ns" virsh -q -c qemu:///system net-define /usr/share/libvirt/networks/default.xml >/dev/null
    fi
    nets=$(ip netns exec "$ns" virsh -q -c qemu:///system net-list --name)
    if ! grep -qx default <<<"$nets"; then
        ip netns exec "$ns" virsh -q -c qemu:///system net-start default >/dev/null
    fi
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
        for d in $(ip netns exec "$ns" virsh -q -c qemu:///system list --name 2>/dev/null); do
            ip netns exec "$ns" virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
        done
        ip netns exec "$ns" virsh -q -c qemu:///system net-destroy default >/dev/null 2>&1
        kill "$LIBVIRTD_PID"
        for _ in $(seq 1 50); do kill -0 "$LIBVIRTD_PID" 2>/dev/null || break; sleep 0.1; done
    fi
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
    [ -n "${NS_CREATED:-}" ] && ip netns delete "$ns" 2>/dev/null
    rm -f "$state"
    say "namespace $ns and its daemons removed"
    return 0
}

case "${1:-}" in
    up) up "${2:?namespace name}" ;;
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
        exec ip netns exec "$ns" "$@"
        ;;
    *) echo "usage: $0 up|down|restart|alive|exec NAME [CMD...]" >&2; exit 2 ;;
esac
