#!/usr/bin/env bash
# `make bench`, part fleet: FLEET_COUNTS (10 50 100) small instances on three hypervisors in one
# run, each hypervisor a libvirtd of its own in namespaces reached over qemu+ssh from an operator
# namespace (tests/e2e/fleet-lib.sh: how fleets reach their hosts; kvmprov and the bound both
# talk to each host through libvirt's ssh transport). The image does not need to boot (a tiny
# qcow2 trusted through its SHA512SUMS on a local mirror): guests are only started (--no-wait).
# For each count, on a quiet machine:
#   kvmprov provision --no-wait (stage full), under /usr/bin/time -v (peak RSS), with the
#   libvirt calls it made (its debug line per connection), then at the largest count a re-run
#   with everything present; then cleanup (guests destroyed at once: they cost memory);
#   the bound: examples/bound.rs with the three URIs, the same libvirt calls per instance,
#   every host at once, each with kvmprov's parallelism (--jobs: one per instance, at most 8).
# Rows go to $BENCH_RESULTS (tests/bench/table.py prints them against issue 27's targets). No
# figures are written when a hypervisor's libvirt re-probed QEMU during the run. Needs root.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/../e2e/lib.sh"
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=testkit/remote-hypervisors.sh
source "$TESTKIT/remote-hypervisors.sh"
# shellcheck source=tests/e2e/fleet-lib.sh
source "$E2E_ROOT/tests/e2e/fleet-lib.sh"
BENCH_RESULTS=${BENCH_RESULTS:?set by tests/bench/run.sh}
COUNTS=${FLEET_COUNTS:-10 50 100}
HOSTS=3

[ "$(id -u)" -eq 0 ] || { echo "the benchmark needs root" >&2; exit 2; }
[ -x "$KVMPROV" ] || { echo "build first: cargo build --release" >&2; exit 2; }
cargo build --release --locked --example bound >&2
BOUND="$E2E_ROOT/target/release/examples/bound"

D=$(mktemp -d /tmp/kvmprov-bench-fleet.XXXXXX)
chmod 0755 "$D"
finish() {
    fleet_teardown
    rm -rf "$D"
}
trap finish EXIT
trap 'exit 143' TERM INT
fleet_setup "$D" "$HOSTS"
now() { date +%s%N; }
secs() { python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1e9:.3f}')" "$1" "$2"; }
uris() {
    local i out=""
    for i in $(seq 1 "$HOSTS"); do out="$out${out:+,}qemu+ssh://root@$(rh_addr "$i")/system"; done
    echo "$out"
}
# The libvirt calls of a run, from kvmprov's debug line as each connection closes.
calls_of() { awk '/libvirt calls$/ {s += $(NF - 2)} END {print s + 0}' "$1"; }
per() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.1f}')" "$1" "$2"; }
rss_of() { awk -F': ' '/Maximum resident set size/ {printf "%.1f\n", $2 / 1024}' "$1"; }

# A capabilities probe due anyway happens here, before the mark (tests/bench/lib.sh says why).
for i in $(seq 1 "$HOSTS"); do fleet_virsh "$i" domcapabilities --virttype qemu >/dev/null; done
touch "$D/probe-mark"
reprobed_any() {
    local i
    for i in $(seq 1 "$HOSTS"); do
        rh_exec "$i" find "$CAPS_DIR" -name '*.xml' -newer "$D/probe-mark" 2>/dev/null | head -n 1
    done
}

fleet_config "$D/cfg-image.yml" "$HOSTS" fw
rh_op "$KVMPROV" -c "$D/cfg-image.yml" image-cache >/dev/null
file=$(basename "$(ls "$RH_POOLS"/images/*.qcow2)")

rows=()
for n in $COUNTS; do
    p=fk$n
    fleet_config "$D/$p.yml" "$n" "$p"
    kpf() { rh_op env KVMPROV_LOG=kvmprov_hypervisor=debug "$KVMPROV" -c "$D/$p.yml" "$@"; }
    quiet
    log "fleet: kvmprov, $n instances on $HOSTS hypervisors"
    t0=$(now)
    capture rc - kpf provision --no-wait >"$D/$p.out" 2>"$D/$p.err"
    t1=$(now)
    [ "$rc" -eq 0 ] || { tail -n 20 "$D/$p.out" "$D/$p.err" >&2; echo "bench: the fleet run failed" >&2; exit 1; }
    a=$(secs "$t0" "$t1")
    rows+=("fleet	a	$n	$a" "fleet	calls	$n	$(per "$(calls_of "$D/$p.err")" "$n")")
    log "fleet: $n instances in $a s, $(calls_of "$D/$p.err") libvirt calls"
    if [ "$n" = "${COUNTS##* }" ]; then
        # The guests just started spend their first seconds in SeaBIOS and iPXE (CPU under
        # TCG): the re-run is measured once they idle, as it is what kvmprov costs.
        quiet
        t0=$(now)
        capture rc - kpf --output json provision --no-wait >"$D/$p.rerun.json" 2>"$D/$p.rerun.err"
        t1=$(now)
        if [ "$rc" -ne 0 ] || [ -n "$(changes "$(cat "$D/$p.rerun.json")")" ]; then
            echo "bench: the re-run failed or changed something" >&2
            exit 1
        fi
        rows+=("fleet	rerun	$n	$(secs "$t0" "$t1")" "fleet	rerun-calls	$n	$(per "$(calls_of "$D/$p.rerun.err")" "$n")")
        # Peak RSS: the same run again from nothing, under /usr/bin/time (its figure, not its time).
        fleet_destroy_all
        kpf -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null 2>&1
        quiet
        capture rc - rh_op /usr/bin/time -v -o "$D/$p.time" "$KVMPROV" -c "$D/$p.yml" provision --no-wait >/dev/null 2>&1
        rows+=("fleet	rss	$n	$(rss_of "$D/$p.time")")
    fi
    fleet_destroy_all
    t0=$(now)
    kpf -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null 2>&1
    t1=$(now)
    rows+=("fleet	cleanup	$n	$(secs "$t0" "$t1")")

    quiet
    log "fleet: the bound, $n instances on $HOSTS hypervisors"
    jobs=$((n < 8 ? n : 8))
    c=$(rh_op env BOUND_MEMORY_MIB="$FLEET_MEMORY_MIB" "$BOUND" "$(uris)" "kvmprov-bound-$n" "$RH_POOLS/bound-$n" \
        "$RH_POOLS/images/$file" default "$n" "fb$n" "$jobs")
    rows+=("fleet	bound	$n	$c")
    fleet_destroy_all
    undefs=()
    for i in $(seq 1 "$HOSTS"); do
        for dname in $(fleet_domains "$i"); do
            fleet_virsh "$i" undefine "$dname" >/dev/null 2>&1 &
            undefs+=("$!")
        done
    done
    [ ${#undefs[@]} -eq 0 ] || wait "${undefs[@]}" || true
done

f=$(reprobed_any)
[ -z "$f" ] || { echo "bench: no figures: a hypervisor's libvirt re-probed QEMU during the run ($f)" >&2; exit 1; }
printf '%s\n' "${rows[@]}" >>"$BENCH_RESULTS"
printf 'fleet\thosts\t%s\n' "$HOSTS" >>"$BENCH_RESULTS"
