# shellcheck shell=bash
# Scenario fleet (sourced by run.sh's e2e_scenario): a fleet of three hypervisors in one run, and
# one of them lost in the middle. Three libvirtds in namespaces reached over qemu+ssh
# (tests/e2e/fleet-lib.sh), 3 × FLEET_COUNT/3 small instances of an image that does not need to
# boot, provisioned with --no-wait. While the run works, hypervisor 2's libvirtd is killed
# (SIGKILL, by its PID): each of its instances fails with one line naming the instance and the
# hypervisor, the other two finish, the exit status is 1, the run ends within the keepalive
# bound; with libvirtd back, the re-run converges (each declared domain exists once, on its
# host, running; the pools hold exactly their disks and seeds), a further re-run changes
# nothing, and cleanup removes it all. Guests are destroyed as soon as they are not needed.
# shellcheck source=tests/e2e/fleet-lib.sh
source "$E2E_ROOT/tests/e2e/fleet-lib.sh"
# shellcheck source=testkit/remote-hypervisors.sh
source "$TESTKIT/remote-hypervisors.sh"

FLEET_COUNT=${FLEET_COUNT:-24}
trap fleet_teardown EXIT
trap 'exit 143' TERM
D=$E2E_SCRATCH
fleet_setup "$D" 3
P=fl$$
CFG="$D/fleet.yml"
fleet_config "$CFG" "$FLEET_COUNT" "$P"
for i in $(seq 1 "$FLEET_COUNT"); do echo "$P-$(printf %02d "$i")"; done >"$D/names"
kpf() { rh_op "$KVMPROV" -c "$CFG" "$@"; }
uri() { echo "qemu+ssh://root@$(rh_addr "$1")/system"; }
# The failure lines of a human report, each joined with the error line printed under it.
failures() {
    awk '/✗/ { if (p) print p; p = $0; next }
         p && /error:/ { print p " " $0; p = ""; next }
         { if (p) print p; p = "" }
         END { if (p) print p }' <<<"$1"
}

capture rc out kpf image-cache
check "fleet: the image is downloaded once and uploaded to three hypervisors (exit $rc)" \
    test "$rc" -eq 0 -a "$(grep -c '✓ upload' <<<"$out")" -eq 3

# --- hypervisor 2's libvirtd killed while the run works on it -----------------------------------
PATH="$RH_DIR/bin:$PATH" ip netns exec "$RH_OP" "$KVMPROV" -c "$CFG" provision --no-wait >"$D/lost.log" 2>&1 &
run=$!
evidence "$D/lost.log"
per_host=$((FLEET_COUNT / 3))
# Once a quarter of its domains are defined: some started, some half made, some not begun.
for _ in $(seq 1 600); do
    [ "$(fleet_defined 2)" -ge $((per_host / 4 > 0 ? per_host / 4 : 1)) ] && break
    kill -0 "$run" 2>/dev/null || break
    sleep 0.05
done
defined=$(fleet_defined 2)
fleet_kill_libvirtd 2
killed=$(date +%s)
log "killed hypervisor 2's libvirtd with $defined of its $per_host domains defined"
for _ in $(seq 1 120); do kill -0 "$run" 2>/dev/null || break; sleep 0.5; done
took=$(($(date +%s) - killed))
kill -0 "$run" 2>/dev/null && kill "$run"
capture rc - wait "$run"
out=$(failures "$(cat "$D/lost.log")")
log "the run ended ${took}s after the kill (exit $rc)"
check "fleet: with a hypervisor lost mid-run the run exits 1 (exit $rc), ${took}s after the kill (<= 40 s)" \
    test "$rc" -eq 1 -a "$took" -le 40
lines_ok=1
while read -r n; do
    [ "$(fleet_host_of "$n")" = 2 ] || continue
    mine=$(grep -E "✗ +[a-z]+ +$n " <<<"$out" || true)
    if [ "$(grep -c . <<<"$mine")" -ne 1 ] || ! grep -qF "$(uri 2)" <<<"$mine"; then
        log "instance $n: expected one ✗ line naming $(uri 2), got: ${mine:-nothing}"
        lines_ok=0
    fi
done <"$D/names"
check "fleet: regression_lost_host_instances_without_a_line: every instance of the lost hypervisor fails with one line naming it and the hypervisor" \
    test "$lines_ok" -eq 1
others_ok=1
for h in 1 3; do
    want=$(while read -r n; do if [ "$(fleet_host_of "$n")" = "$h" ]; then echo "$n"; fi; done <"$D/names")
    got=$(fleet_virsh "$h" list --name --state-running | sed '/^$/d' | sort)
    [ "$want" = "$got" ] || { log "hypervisor $h runs: $got"; others_ok=0; }
done
check "fleet: the other two hypervisors finished: all their instances run" test "$others_ok" -eq 1
check "fleet: no failure line for an instance of the other hypervisors" \
    test -z "$(grep -vF "$(uri 2)" <<<"$out" || true)"

# --- back: the re-run converges ------------------------------------------------------------------
fleet_start_libvirtd 2
capture --stdout rc doc kpf --output json provision --no-wait 2>"$D/rerun.err"
printf '%s\n' "$doc" >"$D/rerun.json"
evidence "$D/rerun.err"
check "fleet: with hypervisor 2 back the re-run exits 0 (exit $rc)" test "$rc" -eq 0
# The qemu user's access (an SSH connection per host): checked where instances were still to
# make (hypervisor 2), not where every instance ran (1 and 3).
access_lines() { # json host-number -> the preflight access lines of that host
    jq -r --arg h "$(uri "$2")" '.stages[] | select(.stage == "preflight" and .host == $h)
        | .outcomes[] | select(.reason | test("qemu user")) | .reason' <<<"$1"
}
check "fleet: the re-run checked hypervisor 2's pool access over SSH ($(access_lines "$doc" 2 | paste -sd'|'))" \
    test "$(access_lines "$doc" 2 | grep -c 'can traverse it')" -eq 2
check "fleet: regression_a_re_run_checked_remote_access_over_ssh: not on hypervisors 1 and 3, where every instance ran" \
    test "$( (access_lines "$doc" 1; access_lines "$doc" 3) | grep -c 'not checked: every instance here runs')" -eq 4
capture rc diffs fleet_converged "$D/names"
printf '%s\n' "$diffs" >"$D/converged.log"
evidence "$D/converged.log"
check "fleet: converged: each declared domain once on its hypervisor, running; pools hold exactly their disks and seeds" \
    test "$rc" -eq 0
t0=$(date +%s%N)
capture --stdout rc doc kpf --output json provision --no-wait 2>/dev/null
t1=$(date +%s%N)
check "fleet: a further re-run changes nothing (exit $rc, $(((t1 - t0) / 1000000)) ms)" \
    test "$rc" -eq 0 -a -z "$(changes "$doc")"

fleet_destroy_all
capture rc out kpf -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup
left=""
for i in 1 2 3; do left="$left$(fleet_domains "$i")$(fleet_volumes "$i" | grep -v -- '-console\.log$' || true)"; done
check "fleet: cleanup on three hypervisors leaves no domain and no disk or seed (exit $rc)" \
    test "$rc" -eq 0 -a -z "$left"
