#!/usr/bin/env bash
# `make bench`, part 1: provisioning COUNT instances (disks, seeds, domains defined and started; no
# waiting for the guests to boot), measured in one run three ways and printed side by side:
#   (a) kvmprov provision --no-wait (stage full: preflight, image-cache, provision, start)
#   (b) the replaced project's chain: qemu-img create -b, cloud-localds, virt-install --import
#   (c) the lower bound: the same libvirt calls in one process, all in parallel (examples/bound.rs)
# plus one instance with kvmprov and the bound (best of 3 each) and a re-run with everything present. Rows go to
# $BENCH_RESULTS (tests/bench/run.sh prints the table). No figures are written
# when libvirt re-probed QEMU during the run (they would measure the probes).
# Runs in its own network namespace with its own libvirtd (tests/e2e/lib.sh). Needs root.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/../e2e/lib.sh"
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"
COUNT=${COUNT:-10}
BENCH_RESULTS=${BENCH_RESULTS:?set by tests/bench/run.sh}

[ "$(id -u)" -eq 0 ] || { echo "the benchmark needs root" >&2; exit 2; }
cargo build --release --locked --example bound >&2
BOUND="$E2E_ROOT/target/release/examples/bound"

E2E_DOMAINS=""
for i in $(seq 1 "$COUNT"); do
    n=$(printf %02d "$i")
    E2E_DOMAINS="$E2E_DOMAINS bench-a-$n bench-b-$n bench-c-$n"
done
for r in 1 2 3; do E2E_DOMAINS="$E2E_DOMAINS bench-one$r-01 bench-onec$r-01"; done
trap e2e_teardown EXIT
e2e_setup
virsh_ns() { in_ns virsh -q -c qemu:///system "$@"; }
now() { date +%s%N; }
secs() { python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1e9:.3f}')" "$1" "$2"; }

# cfg FILE PREFIX COUNT
cfg() {
    e2e_config_head "$E2E_DIR/images" "$E2E_DIR/$2" bench-password >"$1"
    for i in $(seq 1 "$3"); do
        echo "  - {instance_name: $2-$(printf %02d "$i"), image_name: debian-$E2E_N, vcpus: 1, memory_mib: 256, disk_size_gib: 4}" >>"$1"
    done
}
stop_all() { # prefix
    local d
    for d in $(virsh_ns list --name); do
        case "$d" in "$1"-*) virsh_ns destroy "$d" >/dev/null 2>&1 || true ;; esac
    done
    sleep 2
}

probe_mark_set

cfg "$E2E_DIR/a.yml" bench-a "$COUNT"
kp -c "$E2E_DIR/a.yml" image-cache >/dev/null
cached=$(ls "$E2E_DIR"/images/*.qcow2 | head -n 1)

log "(a) kvmprov: $COUNT instances"
t0=$(now)
kp -c "$E2E_DIR/a.yml" --output json provision --no-wait >"$E2E_DIR/a.json"
t1=$(now)
a=$(secs "$t0" "$t1")
t0=$(now)
kp -c "$E2E_DIR/a.yml" --output json provision --no-wait >/dev/null
t1=$(now)
rerun=$(secs "$t0" "$t1")
stop_all bench-a

# One instance, best of 3, each beside the bound for one (the same libvirt calls), each on a
# quiet machine (the guests just destroyed are still being torn down): with one guest,
# libvirt's start of the domain is nearly all of it, and it varies by tens of ms.
one=""
one_bound=""
for r in 1 2 3; do
    cfg "$E2E_DIR/one$r.yml" "bench-one$r" 1
    quiet
    t0=$(now)
    kp -c "$E2E_DIR/one$r.yml" --output json provision --no-wait >/dev/null
    t1=$(now)
    one=$(fmin "$(secs "$t0" "$t1")" "$one")
    stop_all "bench-one$r"
    mkdir -p "$E2E_DIR/onec$r"
    chmod 0755 "$E2E_DIR/onec$r"
    quiet
    s=$(in_ns "$BOUND" qemu:///system "kvmprov-bench-onec$r" "$E2E_DIR/onec$r" "$cached" default 1 "bench-onec$r")
    one_bound=$(fmin "$s" "$one_bound")
    stop_all "bench-onec$r"
done

log "(b) the replaced Ansible project's chain: qemu-img create -b, cloud-localds, virt-install --import"
mkdir -p "$E2E_DIR/b"
chmod 0755 "$E2E_DIR/b"
t0=$(now)
for i in $(seq 1 "$COUNT"); do
    n=bench-b-$(printf %02d "$i")
    qemu-img create -q -f qcow2 -F qcow2 -b "$cached" "$E2E_DIR/b/$n.qcow2" 4G
    printf '#cloud-config\nhostname: %s\n' "$n" >"$E2E_DIR/b/$n.ud"
    printf 'instance-id: %s-1\nlocal-hostname: %s\n' "$n" "$n" >"$E2E_DIR/b/$n.md"
    cloud-localds "$E2E_DIR/b/$n-seed.iso" "$E2E_DIR/b/$n.ud" "$E2E_DIR/b/$n.md"
    in_ns virt-install --connect qemu:///system --import --name "$n" --memory 256 --vcpus 1 \
        --disk "path=$E2E_DIR/b/$n.qcow2,format=qcow2,bus=virtio" \
        --disk "path=$E2E_DIR/b/$n-seed.iso,device=cdrom,bus=scsi" \
        --controller scsi,model=virtio-scsi --network network=default --osinfo debian11 \
        --virt-type qemu --graphics none --noautoconsole --quiet >/dev/null
done
t1=$(now)
b=$(secs "$t0" "$t1")
stop_all bench-b

log "(c) lower bound: the same libvirt calls, all in parallel, nothing else"
mkdir -p "$E2E_DIR/c"
chmod 0755 "$E2E_DIR/c"
c=$(in_ns "$BOUND" qemu:///system kvmprov-bench-c "$E2E_DIR/c" "$cached" default "$COUNT" bench-c)
stop_all bench-c

refuse_if_reprobed
for kv in "a $a" "b $b" "c $c" "one $one" "one-bound $one_bound" "rerun $rerun"; do
    printf 'prov\t%s\t%s\n' ${kv} >>"$BENCH_RESULTS"
done
