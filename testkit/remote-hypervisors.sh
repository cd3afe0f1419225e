#!/usr/bin/env bash
# Remote "hypervisors" on one machine, for tests of qemu+ssh (sourced, not run).
#
# Each hypervisor is a network namespace plus a private mount namespace holding its own
# /run/libvirt, /etc/libvirt, /var/lib/libvirt and /var/cache/libvirt (so several libvirtds
# run side by side without sharing a socket or state), its own storage (a tmpfs over
# $RH_POOLS) and an sshd listening on its veth address. An operator namespace reaches each
# hypervisor over a veth pair with a 10.231.N.0/30 link; kvmprov runs there, so no packet to a
# private address leaves namespaces the test created.
#
#   rh_setup DIR N          create the operator namespace and N hypervisors under DIR
#   rh_add_host I shared    add hypervisor I whose storage is the operator's own $RH_POOLS
#                           (the operator machine reached over qemu+ssh, or an NFS cache)
#   rh_add_host I debian13  add hypervisor I running Debian 13's libvirt, QEMU and sshd
#                           (testkit/debian13-hypervisor.sh; one per shell), storage its own
#   rh_exec I CMD...        run CMD inside hypervisor I (its mount and network namespaces)
#   rh_op CMD...            run CMD in the operator namespace with the test's ssh setup
#   rh_stop_sshd I / rh_start_sshd I
#   rh_teardown             stop everything rh_setup started (by PID), remove the namespaces
#
# The operator's ssh setup (what ~/.ssh/config would hold) is an ssh_config under DIR, used
# through a wrapper `ssh` first on PATH: libvirt's ssh transport and kvmprov's ProxyCommand
# both run `ssh` from PATH. Host keys of the hypervisors are pinned in its known_hosts.

RH_N=0
RH_HOLDERS=()

rh_log() { printf '[remote %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

rh_addr() { echo "10.231.$1.2"; }

rh_setup() {
    RH_DIR=$1
    local n=$2 i
    RH_OP="kvmprov-rop-$$"
    RH_POOLS="$RH_DIR/pools"
    mkdir -p "$RH_DIR/bin" "$RH_POOLS" /run/sshd /run/libvirt /var/lib/libvirt /var/cache/libvirt
    ssh-keygen -q -t ed25519 -N '' -C kvmprov-remote-test -f "$RH_DIR/operator_key"
    : >"$RH_DIR/known_hosts"
    cat >"$RH_DIR/ssh_config" <<EOF
Host 10.231.*
    User root
    IdentityFile $RH_DIR/operator_key
    IdentitiesOnly yes
    UserKnownHostsFile $RH_DIR/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 10
EOF
    printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$RH_DIR/ssh_config" >"$RH_DIR/bin/ssh"
    chmod 0755 "$RH_DIR/bin/ssh"

    ip netns add "$RH_OP"
    RH_OP_UP=1
    ip -n "$RH_OP" link set lo up
    for i in $(seq 1 "$n"); do
        rh_add_host "$i"
        RH_N=$i
    done
}

rh_add_host() {
    local i=$1 shared=${2:-} ns="kvmprov-rhv$1-$$" d="$RH_DIR/hv$1" addr
    addr=$(rh_addr "$i")
    mkdir -p "$d"
    ip netns add "$ns"
    eval "RH_NS_$i=$ns"
    ip -n "$ns" link set lo up
    # The pair is created inside the namespaces: the root namespace never holds these links.
    ip -n "$RH_OP" link add "rh$i" type veth peer name "op" netns "$ns"
    ip -n "$RH_OP" addr add "10.231.$i.1/30" dev "rh$i"
    ip -n "$RH_OP" link set "rh$i" up
    ip -n "$ns" addr add "$addr/30" dev op
    ip -n "$ns" link set op up

    ssh-keygen -q -t ed25519 -N '' -f "$d/ssh_host_ed25519_key"
    echo "$addr $(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" >>"$RH_DIR/known_hosts"
    cat >"$d/sshd_config" <<EOF
ListenAddress $addr
HostKey $d/ssh_host_ed25519_key
PidFile $d/sshd.pid
AuthorizedKeysFile $RH_DIR/operator_key.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
EOF
    if [ "$shared" = debian13 ]; then
        rh_add_debian13 "$i" "$ns" "$d"
        return
    fi
    cp -a /etc/libvirt "$d/etc-libvirt"
    # Domains and pools other daemons defined are not this host's.
    rm -rf "$d"/etc-libvirt/qemu/*.xml "$d"/etc-libvirt/storage "$d"/etc-libvirt/qemu/autostart
    # The holder: a private mount namespace inside the network namespace, alive until killed.
    ip netns exec "$ns" unshare --mount --propagation private sh -c '
        set -e
        mount -t tmpfs -o mode=0755 tmpfs /run/libvirt
        mount -t tmpfs -o mode=0755 tmpfs /var/lib/libvirt
        mount -t tmpfs -o mode=0755 tmpfs /var/cache/libvirt
        mount --bind "$1" /etc/libvirt
        [ "$4" = shared ] || mount -t tmpfs -o mode=0755,size=3g tmpfs "$2"
        echo ready >"$3"
        exec sleep infinity
    ' sh "$d/etc-libvirt" "$RH_POOLS" "$d/holder.ready" "$shared" &
    local holder=$!
    RH_HOLDERS+=("$holder")
    eval "RH_HOLDER_$i=$holder"
    for _ in $(seq 1 50); do [ -s "$d/holder.ready" ] && break; sleep 0.1; done
    [ -s "$d/holder.ready" ] || { rh_log "hypervisor $i: namespace holder did not start"; return 1; }

    rh_exec "$i" virtlogd -d -p /run/libvirt/virtlogd.pid
    rh_exec "$i" libvirtd -d -p /run/libvirt/libvirtd.pid
    local ok=""
    for _ in $(seq 1 100); do
        if rh_exec "$i" virsh -c qemu:///system version >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    [ -n "$ok" ] || { rh_log "hypervisor $i: libvirtd did not answer"; return 1; }
    local nets
    nets=$(rh_exec "$i" virsh -q -c qemu:///system net-list --all --name)
    grep -qx default <<<"$nets" ||
        rh_exec "$i" virsh -q -c qemu:///system net-define /usr/share/libvirt/networks/default.xml >/dev/null
    nets=$(rh_exec "$i" virsh -q -c qemu:///system net-list --name)
    grep -qx default <<<"$nets" || rh_exec "$i" virsh -q -c qemu:///system net-start default >/dev/null
    rh_start_sshd "$i"
    rh_log "hypervisor $i: libvirtd and sshd up at $addr (namespace $ns)"
}

# Hypervisor I as a Debian 13 root in namespace NS: $RH_DIR is bind-mounted into it at the same
# path (its sshd reads the config and keys there), its storage a tmpfs over $RH_POOLS there.
rh_add_debian13() {
    local i=$1 ns=$2 d=$3
    # shellcheck source=testkit/debian13-hypervisor.sh
    source "$(dirname "${BASH_SOURCE[0]}")/debian13-hypervisor.sh"
    d13_start "$d/debian13" "$ns" "$RH_DIR" || return 1
    RH_HOLDERS+=("$D13_HOLDER")
    eval "RH_HOLDER_$i=$D13_HOLDER RH_D13=$i"
    rh_exec "$i" mount -t tmpfs -o mode=0755,size=3g tmpfs "$RH_POOLS"
    rh_start_sshd "$i"
    rh_log "hypervisor $i: Debian 13 (libvirt $(rh_exec "$i" libvirtd --version | awk '{print $NF}')) and its sshd up at $(rh_addr "$i") (namespace $ns)"
}

rh_holder() { eval "echo \${RH_HOLDER_$1:-}"; }

rh_exec() {
    local i=$1
    shift
    nsenter -t "$(rh_holder "$i")" -m -n "$@"
}

rh_op() { PATH="$RH_DIR/bin:$PATH" ip netns exec "$RH_OP" "$@"; }

rh_start_sshd() {
    local d="$RH_DIR/hv$1"
    rm -f "$d/sshd.pid"
    rh_exec "$1" /usr/sbin/sshd -f "$d/sshd_config"
    for _ in $(seq 1 50); do [ -s "$d/sshd.pid" ] && break; sleep 0.1; done
}

rh_stop_sshd() {
    local pid
    pid=$(cat "$RH_DIR/hv$1/sshd.pid" 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
}

# Processes in hypervisor I's mount namespace, except its holder (by namespace, never by name).
rh_pids_in() {
    local holder mntns p
    holder=$(rh_holder "$1")
    [ -n "$holder" ] || return 0
    mntns=$(readlink "/proc/$holder/ns/mnt" 2>/dev/null) || return 0
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = "$holder" ] && continue
        [ "$(readlink "/proc/$p/ns/mnt" 2>/dev/null)" = "$mntns" ] && echo "$p"
    done
    return 0
}

rh_teardown() {
    set +e
    local i d p ns
    for i in $(seq 1 "$RH_N"); do
        [ -n "$(rh_holder "$i")" ] || continue
        if [ "$i" = "${RH_D13:-}" ]; then
            rh_stop_sshd "$i"
            d13_stop
            ns=$(eval "echo \${RH_NS_$i:-}")
            [ -n "$ns" ] && ip netns delete "$ns" 2>/dev/null
            continue
        fi
        for d in $(rh_exec "$i" virsh -q -c qemu:///system list --name 2>/dev/null); do
            rh_exec "$i" virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
        done
        rh_stop_sshd "$i"
        # libvirtd, virtlogd, dnsmasq and any straggler started in this hypervisor.
        for p in $(rh_pids_in "$i"); do kill "$p" 2>/dev/null; done
        sleep 0.5
        for p in $(rh_pids_in "$i"); do kill -9 "$p" 2>/dev/null; done
        kill "$(rh_holder "$i")" 2>/dev/null
        wait "$(rh_holder "$i")" 2>/dev/null
        ns=$(eval "echo \${RH_NS_$i:-}")
        [ -n "$ns" ] && ip netns delete "$ns" 2>/dev/null
    done
    [ -n "${RH_OP_UP:-}" ] && ip netns delete "$RH_OP" 2>/dev/null
    return 0
}
