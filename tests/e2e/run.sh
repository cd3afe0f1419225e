#!/usr/bin/env bash
# End-to-end tests: a real libvirtd in a private network namespace, a locally built Debian
# image on a local mirror (127.0.0.1 inside the namespace), kvmprov driving it. Scenarios, each a
# file here that stands alone: it runs in a subshell with its own scratch directory, config and
# instances, and what it made is removed after it (lib.sh: e2e_scenario, e2e_release), so any
# one runs by itself and the order does not matter.
#   provision  preflight cases, 20 instances in parallel, generated files
#   cleanup    decoys that every cleanup mode must leave alone
#   faults     SIGKILL at many points, two runs at once, SIGTERM, SIGINT mid-download, libvirtd
#              restarted mid-run
#   boot       real TCG guests (both releases, BIOS/UEFI/Secure Boot, NAT/static/bridged), SSH
#   ansible    ansible-core from PyPI against `kvmprov inventory`, on two guests it boots
#   userdata   the operator's user_data, fqdn and password_file on one booted guest
#   disks      two data disks on one booted guest, kept across cleanup-force and a re-provision
#   nics       two NICs (NAT by DHCP; static IPv4 and IPv6 on an isolated network) on one guest
#   drift      drift applied on two guests: a data disk and a NIC hot-plugged; vCPUs, memory and
#              root disk growth with a restart, one guest at a time; BIOS → UEFI by re-creating
#              one guest (kvm_drift_recreate_confirmed), its data disk kept
#   trixie-host  a Debian 13 hypervisor (libvirt 11, its own namespaces) reached through its
#              socket as this machine: a BIOS and a UEFI guest, status, cleanup
#   fleet      three hypervisors over qemu+ssh, 24 instances (--no-wait), one libvirtd killed
#              mid-run: its instances fail one line each, the others finish, the re-run converges
#   lifecycle  stop, start, restart (SSH-ready after each), a guest that ignores ACPI, the serial
#              console under a pseudo-terminal, undeclared names
#   snapshots  snapshot create, a file changed, revert (--check, --yes), delete, list; UEFI
#              refused on libvirt 9.0 naming the version
#
#   remote     the two-hypervisor test over qemu+ssh (tests/e2e/remote.sh, a program of its own
#              with its own namespaces and daemons: the lane only gives it its time)
#
# Lanes: the scenarios run in E2E_LANES lanes side by side (default 2), each a whole environment
# (network namespace, a private libvirtd + virtlogd in its own mount namespace, mirror, results).
# The scenarios are bound by their TCG guests' CPU, so the lanes share the CPU, not the wall
# time: each scenario goes, most CPU first, to the lane with the least CPU so far (the table
# E2E_EXPECTED below). A scenario marked `alone` runs first, by itself (lane L0): boot starts
# four guests at once, and with more beside them a Debian guest on 2 cores can wait longer than
# systemd's 90 s for its /boot/efi device and stop in emergency mode (seen in a two-lane run).
# Log lines carry the lane; one summary adds them up. E2E_LANES=1: one after another on the
# machine's libvirtd.
#   tests/e2e/run.sh [SCENARIO...]      default: every scenario of E2E_EXPECTED
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

# Scenario, its wall time in seconds when it runs alone, and the cores the machine was busy
# with meanwhile (2 cores, TCG; measured in a one-lane CI run on 2026-12-07, remote estimated from
# its wall time); `alone`: it runs by itself. Wall time x cores, the scenario's CPU seconds,
# places it in a lane. A new scenario is one line here (and a line in the list above).
E2E_EXPECTED="
boot 661 1.45 alone
lifecycle 354 0.86
drift 381 1.41
faults 218 1.18
disks 229 0.97
ansible 274 1.73
trixie-host 168 1.65
nics 149 1.03
userdata 148 1.03
snapshots 116 0.94
fleet 54 0.67
provision 49 0.51
cleanup 14 0.72
remote 450 1.2
"
read -ra ALL <<<"$(awk 'NF {printf "%s ", $1}' <<<"$E2E_EXPECTED")"
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=("${ALL[@]}")
for s in "${scenarios[@]}"; do
    [[ " ${ALL[*]} " == *" $s "* ]] || { echo "unknown scenario '$s'; one of: ${ALL[*]}" >&2; exit 2; }
done
# Two lanes unless asked: the one-lane run kept the machine at ~1.2 of its 2 cores (most
# scenarios boot one TCG guest at a time, ~1 core).
E2E_LANES=${E2E_LANES:-2}
[[ "$E2E_LANES" =~ ^[1-9][0-9]*$ ]] || { echo "E2E_LANES must be a number from 1 on, not '$E2E_LANES'" >&2; exit 2; }
lanes=$E2E_LANES
[ "$lanes" -le ${#scenarios[@]} ] || lanes=${#scenarios[@]}

[ "$(id -u)" -eq 0 ] || { echo "e2e tests need root (network namespaces, libvirtd)" >&2; exit 2; }
[ -x "$KVMPROV" ] || { echo "build first: cargo build --release" >&2; exit 2; }

# e2e_plan LANES SCENARIO...: "LANE SCENARIO CPU_SECONDS" lines, each lane's in the order it
# runs them. With several lanes the `alone` ones go to lane 0, which runs before the others.
# Most CPU first, each to the lane with the least CPU so far (the lower one on a tie):
# reproducible.
e2e_plan() {
    local n=$1 k best name cpu alone
    shift
    local -a load
    for k in $(seq 1 "$n"); do load[k]=0; done
    while read -r name cpu alone; do
        [[ " $* " == *" $name "* ]] || continue
        if [ "$alone" = alone ] && [ "$n" -gt 1 ]; then
            echo "0 $name $cpu"
            continue
        fi
        best=1
        for k in $(seq 2 "$n"); do [ "${load[k]}" -lt "${load[best]}" ] && best=$k; done
        load[best]=$((load[best] + cpu))
        echo "$best $name $cpu"
    done < <(awk 'NF {printf "%s %d %s\n", $1, $2 * $3 + 0.5, $4}' <<<"$E2E_EXPECTED" | sort -s -k2,2nr)
}

# cpu_now: "LANE MACHINE" CPU seconds so far (the lane's meter), "0 0" before its first sample.
cpu_now() { cat "$E2E_DIR/cpu" 2>/dev/null || echo "0 0"; }
# cpu_text WALL BEFORE AFTER: the CPU used between two cpu_now readings, over WALL seconds.
cpu_text() {
    awk -v w="$1" -v a="$2" -v b="$3" 'BEGIN {
        split(a, x, " "); split(b, y, " "); l = y[1] - x[1]; m = y[2] - x[2]; if (w < 1) w = 1
        printf "%d s by the lane (%.2f cores), %d s by the machine (%.2f cores)", l, l / w, m, m / w }'
}

# run_lane K SCENARIO...: the lane's environment and its scenarios, one after another (in a
# subshell of its own: run.sh starts each lane with `( run_lane ... ) &`).
run_lane() {
    local k=$1 s t0 mark c0 c1 wall
    shift
    E2E_DIR="$RUN_DIR/L$k"
    E2E_NS="kvmprov-e2e-$$-L$k"
    # One lane: the machine's libvirtd in the namespace, as before lanes; several: private ones.
    [ "$lanes" -gt 1 ] && E2E_PRIVATE=1
    mkdir -p "$E2E_DIR"
    if [ "$lanes" -gt 1 ]; then
        E2E_LANE="L$k"
        # Every line the lane prints carries its tag, so two lanes' lines can be told apart.
        exec > >(sed -u "/^\[e2e $E2E_LANE /!s/^/[e2e $E2E_LANE] /") 2>&1
        LANE_TAGGER=$!
    fi
    trap lane_end EXIT
    e2e_setup
    python3 "$TESTKIT/cpu-meter.py" "$E2E_NS" "$E2E_DIR/cpu" </dev/null >/dev/null 2>&1 &
    LANE_METER=$!
    for _ in $(seq 1 30); do [ -s "$E2E_DIR/cpu" ] && break; sleep 0.1; done
    for s in "$@"; do
        log "=== scenario $s"
        t0=$(date +%s)
        c0=$(cpu_now)
        mark=$(($(wc -l <"$E2E_RESULTS/results") + 1))
        if [ "$s" = remote ]; then
            run_program "$s"
            # Its status is 1 when one of its checks failed: that line is in the results.
            if [ "$E2E_SCENARIO_RC" -ne 0 ] && ! grep -q $'^FAIL\t' <(tail -n +"$mark" "$E2E_RESULTS/results"); then
                fail "$s ran to its end (it stopped with status $E2E_SCENARIO_RC; the lines above say where)"
            fi
        else
            e2e_scenario "$s"
            [ "$E2E_SCENARIO_RC" -eq 0 ] ||
                fail "scenario $s ran to its end (it stopped with status $E2E_SCENARIO_RC; the lines above say where)"
            e2e_release "$s"
        fi
        c1=$(cpu_now)
        wall=$(($(date +%s) - t0))
        echo "$s $wall $c0 $c1" >>"$E2E_DIR/times"
        log "=== scenario $s: $(e2e_counts "$mark") in $wall s, CPU $(cpu_text "$wall" "$c0" "$c1")"
    done
}

# run_program NAME: tests/e2e/NAME.sh as a program of its own (its own namespaces and daemons, not
# the lane's); it adds its results and evidence to the lane's (E2E_RESULTS_TO). Status in
# E2E_SCENARIO_RC, its PID in E2E_SCENARIO_PID while it runs (the lane's teardown stops it).
run_program() {
    E2E_RESULTS_TO=$E2E_RESULTS bash "$E2E_ROOT/tests/e2e/$1.sh" </dev/null &
    E2E_SCENARIO_PID=$!
    E2E_SCENARIO_RC=0
    wait "$E2E_SCENARIO_PID" || E2E_SCENARIO_RC=$?
    E2E_SCENARIO_PID=""
}

lane_end() {
    e2e_teardown
    [ -n "${LANE_METER:-}" ] && kill "$LANE_METER" 2>/dev/null
    if [ -n "${LANE_TAGGER:-}" ]; then
        # The tagger ends once nothing writes to it: let it print the lane's last lines.
        exec >/dev/null 2>&1
        wait "$LANE_TAGGER" 2>/dev/null
    fi
    return 0
}

# A lane still running (run.sh stopped by a signal) is stopped: its EXIT trap takes its
# environment down. What it could not take down (it was killed) goes here, by the lane's state.
RUN_DIR=""
LANE_PIDS=()
run_teardown() {
    set +e
    local p k
    for p in "${LANE_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${LANE_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for k in $(seq 0 "$lanes"); do
        [ -f "/run/kvmprov-testkit/kvmprov-e2e-$$-L$k.state" ] &&
            bash "$TESTKIT/netns-libvirtd.sh" down "kvmprov-e2e-$$-L$k"
    done
    [ -n "$RUN_DIR" ] && rm -rf "$RUN_DIR"
    return 0
}
trap run_teardown EXIT

RUN_DIR=$(mktemp -d /tmp/kvmprov-e2e.XXXXXX)
chmod 0755 "$RUN_DIR"
e2e_images
plan=$(e2e_plan "$lanes" "${scenarios[@]}")
# run_lanes K...: lanes K... side by side (those with a scenario), their results added to the
# run's once they end.
run_lanes() {
    local k mine rc i=0 started=()
    for k in "$@"; do
        mine=$(awk -v k="$k" '$1 == k {printf "%s ", $2}' <<<"$plan")
        [ -n "$mine" ] || continue
        started+=("$k")
        log "lane L$k: $mine(expected $(awk -v k="$k" '$1 == k {t += $3} END {print t + 0}' <<<"$plan") CPU s)"
        # shellcheck disable=SC2086 # scenario names: plain words
        (run_lane "$k" $mine) &
        LANE_PIDS+=("$!")
    done
    for k in "${started[@]}"; do
        rc=0
        wait "${LANE_PIDS[i]}" || rc=$?
        i=$((i + 1))
        for f in results evidence consoles times; do cat "$RUN_DIR/L$k/$f" >>"$RUN_DIR/$f" 2>/dev/null || true; done
        [ "$rc" -eq 0 ] ||
            fail "lane L$k set up its environment and ran $(awk -v k="$k" '$1 == k {printf "%s ", $2}' <<<"$plan")to its end (it stopped with status $rc)"
    done
    LANE_PIDS=()
}
e2e_results_init "$RUN_DIR"
start=$(date +%s)
# The `alone` scenarios first, by themselves; then the lanes.
[ -z "$(awk '$1 == 0' <<<"$plan")" ] || run_lanes 0
# shellcheck disable=SC2046 # lane numbers
run_lanes $(seq 1 "$lanes")
log "all lanes done in $(($(date +%s) - start)) s; the scenarios one after another took $(awk '{t += $2} END {print t + 0}' "$RUN_DIR/times" 2>/dev/null || echo 0) s:"
awk '{printf "    %-10s %5d s  lane CPU %5.0f s  machine CPU %5.0f s\n", $1, $2, $5 - $3, $6 - $4}' "$RUN_DIR/times" 2>/dev/null || true
e2e_summary
