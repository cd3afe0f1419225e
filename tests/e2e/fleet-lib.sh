# shellcheck shell=bash
# A fleet on this machine, for tests/e2e/fleet.sh and tests/bench/fleet.sh (sourced, after
# tests/e2e/lib.sh and testkit/remote-hypervisors.sh): several hypervisors, each its own libvirtd
# reached over qemu+ssh from an operator namespace (what fleets do: a libvirtd per machine, ssh
# the transport), and an image that does not need to boot: a tiny empty qcow2, served on a mirror
# with its SHA512SUMS like cloud.debian.org, so kvmprov trusts it only through the manifest.
# Its guests start (SeaBIOS finds nothing to boot and idles) and are measured with --no-wait.
#
#   fleet_setup DIR HOSTS            hypervisors 1..HOSTS, the mirror, E2E_BASE
#   fleet_config FILE COUNT PREFIX   COUNT instances PREFIX-01.., round-robin over the hosts
#   fleet_host_of NAME               the hypervisor (1..) PREFIX-NN is declared on
#   fleet_defined I                  how many domains hypervisor I has defined (its config files)
#   fleet_kill_libvirtd I / fleet_start_libvirtd I
#   fleet_domains I / fleet_volumes I    hypervisor I's domains / instance pool volumes, sorted
#   fleet_teardown                   the mirror and every hypervisor

FLEET_MEMORY_MIB=${FLEET_MEMORY_MIB:-128}

fleet_setup() {
    local dir=$1 hosts=$2
    rh_setup "$dir" "$hosts"
    FLEET_HOSTS=$hosts
    qemu-img create -q -f qcow2 "$dir/tiny.qcow2" 1G
    bash "$TESTKIT/make-mirror.sh" "$dir/tiny.qcow2" "$dir/mirror" "$E2E_SUITE" "$E2E_VERSION"
    ip netns exec "$RH_OP" python3 "$TESTKIT/mirror.py" --root "$dir/mirror" --port 0 \
        --port-file "$dir/mirror.port" --log "$dir/mirror.log" >"$dir/mirror.out" 2>&1 &
    FLEET_MIRROR_PID=$!
    for _ in $(seq 1 50); do [ -s "$dir/mirror.port" ] && break; sleep 0.1; done
    # shellcheck disable=SC2034 # read by e2e_config_head
    E2E_BASE="http://127.0.0.1:$(cat "$dir/mirror.port")/images/cloud"
}

fleet_teardown() {
    set +e
    [ -n "${FLEET_MIRROR_PID:-}" ] && kill "$FLEET_MIRROR_PID" 2>/dev/null && wait "$FLEET_MIRROR_PID" 2>/dev/null
    FLEET_MIRROR_PID=""
    rh_teardown
    return 0
}

fleet_host_of() {
    local n=${1##*-}
    echo $(((10#$n - 1) % FLEET_HOSTS + 1))
}

fleet_config() {
    local file=$1 count=$2 prefix=$3 i name
    {
        echo "kvm_hypervisor_host: root@$(rh_addr 1)"
        e2e_config_head "$RH_POOLS/images" "$RH_POOLS/instances"
        for i in $(seq 1 "$count"); do
            name=$prefix-$(printf %02d "$i")
            echo "  - {instance_name: $name, image_name: debian-$E2E_N, vcpus: 1, memory_mib: $FLEET_MEMORY_MIB, disk_size_gib: 1, hypervisor_host: root@$(rh_addr "$(fleet_host_of "$name")")}"
        done
    } >"$file"
}

# Read from the host's own files, not through libvirt: polling must not load the daemon.
fleet_defined() { find "$RH_DIR/hv$1/etc-libvirt/qemu" -maxdepth 1 -name '*.xml' | wc -l; }

fleet_libvirtd_pid() { rh_exec "$1" cat /run/libvirt/libvirtd.pid; }

fleet_kill_libvirtd() {
    local pid
    pid=$(fleet_libvirtd_pid "$1")
    kill -9 "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
}

fleet_start_libvirtd() {
    rh_exec "$1" rm -f /run/libvirt/libvirtd.pid
    rh_exec "$1" libvirtd -d -p /run/libvirt/libvirtd.pid
    for _ in $(seq 1 100); do
        rh_exec "$1" virsh -c qemu:///system version >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

fleet_virsh() {
    local i=$1
    shift
    rh_exec "$i" virsh -q -c qemu:///system "$@"
}

fleet_domains() { fleet_virsh "$1" list --all --name | sed '/^$/d' | sort; }

fleet_volumes() {
    local pool
    pool=$(fleet_virsh "$1" pool-list --name | grep instances || true)
    [ -n "$pool" ] || return 0
    fleet_virsh "$1" pool-refresh "$pool" >/dev/null
    fleet_virsh "$1" vol-list --pool "$pool" | awk '{print $1}' | sed '/^$/d' | sort
}

# fleet_destroy_all: stop every guest on every hypervisor now (they cost memory and CPU).
# Only the destroys are waited for: a bare `wait` would wait for the hypervisors' namespace
# holders too, which never end.
fleet_destroy_all() {
    local i d pids=()
    for i in $(seq 1 "$FLEET_HOSTS"); do
        for d in $(fleet_virsh "$i" list --name 2>/dev/null); do
            fleet_virsh "$i" destroy "$d" >/dev/null 2>&1 &
            pids+=("$!")
        done
    done
    [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}" || true
}

# fleet_converged CFG_NAMES_FILE: every hypervisor holds exactly the domains declared on it, each
# running, once; its instance pool exactly their disks and seeds (console logs allowed), nothing
# else. Prints what differs; false when anything does.
fleet_converged() {
    local names=$1 i want got vols bad=0 n
    for i in $(seq 1 "$FLEET_HOSTS"); do
        want=$(while read -r n; do if [ "$(fleet_host_of "$n")" = "$i" ]; then echo "$n"; fi; done <"$names" | sort)
        got=$(fleet_domains "$i")
        if [ "$want" != "$got" ]; then
            echo "hypervisor $i: domains differ: $(diff <(echo "$want") <(echo "$got") | grep '^[<>]' | tr '\n' ' ')"
            bad=1
        fi
        n=$(fleet_virsh "$i" list --name --state-running | sed '/^$/d' | wc -l)
        [ "$n" -eq "$(echo "$want" | sed '/^$/d' | wc -l)" ] || { echo "hypervisor $i: $n running"; bad=1; }
        vols=$(fleet_volumes "$i")
        want=$(while read -r n; do if [ "$(fleet_host_of "$n")" = "$i" ]; then printf '%s.qcow2\n%s-seed.iso\n' "$n" "$n"; fi; done <"$names" | sort)
        got=$(grep -v -- '-console\.log$' <<<"$vols" || true)
        if [ "$want" != "$got" ]; then
            echo "hypervisor $i: volumes differ: $(diff <(echo "$want") <(echo "$got") | grep '^[<>]' | tr '\n' ' ')"
            bad=1
        fi
    done
    return "$bad"
}
