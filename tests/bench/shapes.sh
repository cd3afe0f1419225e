#!/usr/bin/env bash
# `make bench`, part 4: what a real server's shape costs. One instance with two data disks and two
# NICs against a plain one (one disk, one NIC), each defined and started by `kvmprov provision
# --no-wait` (stage full: preflight, image-cache, provision, start; no waiting for the guest),
# ROUNDS times each, alternating, each on a quiet machine. Issue 25's target: the median of the
# full shape within 1.2x the plain one's. Both NICs sit on libvirt's default network (distinct
# MACs): an interface costs libvirt the same on any network. Rows (`shape plain|full MEDIAN MIN
# N`) go to $BENCH_RESULTS (tests/bench/run.sh prints the table). Own namespace and libvirtd
# (tests/e2e/lib.sh). Needs root. ~1 minute.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/../e2e/lib.sh"
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-5}
BENCH_RESULTS=${BENCH_RESULTS:?set by tests/bench/run.sh}

[ "$(id -u)" -eq 0 ] || { echo "the benchmark needs root" >&2; exit 2; }
E2E_DOMAINS=""
for r in $(seq 1 "$ROUNDS"); do E2E_DOMAINS="$E2E_DOMAINS bench-plain-$r bench-full-$r"; done
trap e2e_teardown EXIT
e2e_setup
virsh_ns() { in_ns virsh -q -c qemu:///system "$@"; }
now() { date +%s%N; }
secs() { python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1e9:.3f}')" "$1" "$2"; }

# cfg FILE NAME SHAPE: one instance, plain or full (two data disks, two NICs).
cfg() {
    e2e_config_head "$E2E_DIR/images" "$E2E_DIR/pool" bench-password >"$1"
    printf '  - instance_name: %s\n    image_name: debian-%s\n    vcpus: 1\n    memory_mib: 256\n    disk_size_gib: 4\n' \
        "$2" "$E2E_N" >>"$1"
    [ "$3" = full ] || return 0
    cat >>"$1" <<'EOF'
    disks:
      - {name: data, size_gib: 1, filesystem: ext4, mount: /srv/data}
      - {name: raw, size_gib: 1}
    nics:
      - network: default
      - {network: default, ipv4_address: 192.168.122.240/24}
EOF
}

probe_mark_set
cfg "$E2E_DIR/warm.yml" bench-warm plain
kp -c "$E2E_DIR/warm.yml" image-cache >/dev/null

declare -A times=([plain]="" [full]="")
for r in $(seq 1 "$ROUNDS"); do
    for shape in plain full; do
        name=bench-$shape-$r
        cfg "$E2E_DIR/$name.yml" "$name" "$shape"
        quiet
        t0=$(now)
        kp -c "$E2E_DIR/$name.yml" --output json provision --no-wait >"$E2E_DIR/$name.json"
        t1=$(now)
        times[$shape]="${times[$shape]} $(secs "$t0" "$t1")"
        # Not in the figure: the full shape's NICs and disks are in the domain it started.
        if [ "$shape" = full ]; then
            xml=$(virsh_ns dumpxml "$name")
            if [ "$(grep -c '<interface ' <<<"$xml")" -ne 2 ] || [ "$(grep -c '<serial>' <<<"$xml")" -ne 2 ]; then
                echo "bench: $name has not two NICs and two data disks" >&2
                exit 1
            fi
        fi
        virsh_ns destroy "$name" >/dev/null 2>&1 || true
    done
done
log "seconds, plain:${times[plain]}; full:${times[full]}"

refuse_if_reprobed
for shape in plain full; do
    # shellcheck disable=SC2086 # the list of figures, split on purpose
    python3 -c 'import statistics, sys; v = [float(x) for x in sys.argv[2:]]; print(f"shape\t{sys.argv[1]}\t{statistics.median(v):.3f}\t{min(v):.3f}\t{len(v)}")' \
        "$shape" ${times[$shape]} >>"$BENCH_RESULTS"
done
