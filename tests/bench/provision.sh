#!/usr/bin/env bash
# `make bench`: provisioning COUNT instances (disks, seeds, domains defined and started; no
# waiting for the guests to boot), measured in one run three ways and printed side by side:
#   (a) kvmprov provision --no-wait (stage full: preflight, image-cache, provision, start)
#   (b) the replaced project's chain: qemu-img create -b, cloud-localds, virt-install --import
#   (c) the lower bound: the same libvirt calls in one process, all in parallel (examples/bound.rs)
# plus one instance with kvmprov and a re-run with everything present. No figures are printed
# when libvirt re-probed QEMU during the run (they would measure the probes).
# Runs in its own network namespace with its own libvirtd (tests/e2e/lib.sh). Needs root.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/../e2e/lib.sh"
COUNT=${COUNT:-10}

[ "$(id -u)" -eq 0 ] || { echo "the benchmark needs root" >&2; exit 2; }
cargo build --release --locked --example bound >&2
BOUND="$E2E_ROOT/target/release/examples/bound"

E2E_DOMAINS=""
for i in $(seq 1 "$COUNT"); do
    n=$(printf %02d "$i")
    E2E_DOMAINS="$E2E_DOMAINS bench-a-$n bench-b-$n bench-c-$n bench-one-01"
done
trap e2e_teardown EXIT
e2e_setup
virsh_ns() { in_ns virsh -q -c qemu:///system "$@"; }
now() { date +%s%N; }
secs() { python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1e9:.2f}')" "$1" "$2"; }

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

# libvirt re-probes QEMU (seconds to minutes per call) when its qemu user loses /dev/kvm, e.g.
# when the machine's host changes the device's group; every figure taken then is meaningless.
# Each probe rewrites libvirt's capabilities cache, so a file there newer than this mark
# means a probe happened during the run.
CAPS_DIR=/var/cache/libvirt/qemu/capabilities
probe_mark="$E2E_DIR/probe-mark"
# A probe that is due anyway (a cold or outdated cache) happens here, before the mark.
in_ns virsh -q -c qemu:///system domcapabilities --virttype qemu >/dev/null
touch "$probe_mark"
reprobed() { find "$CAPS_DIR" -name '*.xml' -newer "$probe_mark" 2>/dev/null | head -n 1; }

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

cfg "$E2E_DIR/one.yml" bench-one 1
t0=$(now)
kp -c "$E2E_DIR/one.yml" --output json provision --no-wait >/dev/null
t1=$(now)
one=$(secs "$t0" "$t1")
stop_all bench-one

log "(b) the seed's chain: qemu-img create -b, cloud-localds, virt-install --import"
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

if [ -n "$(reprobed)" ]; then
    echo "bench: no figures: libvirt re-probed QEMU during the run ($(reprobed) was rewritten at $(date -r "$(reprobed)" +%T)); is /dev/kvm usable by libvirt-qemu? ($(getfacl -p /dev/kvm 2>/dev/null | grep -c libvirt-qemu) ACL entries)" >&2
    exit 1
fi
python3 - "$COUNT" "$a" "$b" "$c" "$one" "$rerun" <<'PY'
import sys
n, a, b, c, one, rerun = sys.argv[1], *map(float, sys.argv[2:])
print()
print(f"provisioning {n} instances (disks, seeds, domains defined and started; TCG)")
print(f"  (a) kvmprov provision --no-wait      {a:7.2f} s   {a / c:5.2f} x the bound")
print(f"  (b) qemu-img + cloud-localds + virt-install {b:7.2f} s   kvmprov is {b / a:5.1f} x faster")
print(f"  (c) lower bound (bare libvirt calls) {c:7.2f} s")
print(f"  one instance with kvmprov            {one:7.2f} s")
print(f"  re-run, everything present          {rerun:7.2f} s")
PY
