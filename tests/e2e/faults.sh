# Scenario: faults. kvmprov killed with SIGKILL at many points across download, seed and
# volume creation and define, then re-run: every re-run converges to the same final state,
# no half-written file under a final name, no orphan, the cache holds only verified files.
# Two runs at once: one works, the other stops with a clear message, no duplicates.
# SIGTERM / SIGINT: prompt stop with exit 143 / 130, only temporary files left, the next run
# completes (resuming the download). libvirtd restarted mid-run: a clear, prompt failure; the
# next run completes.
# Run by tests/e2e/run.sh (e2e_scenario): everything under its scratch directory.

F="$E2E_SCRATCH"
FCFG="$F/vars.yml"
e2e_config_head "$F/images" "$F/instances" faults-secret >"$FCFG"
FNAMES=""
for i in 1 2 3 4 5 6; do
    echo "  - {instance_name: f-0$i, image_name: debian-$E2E_N, vcpus: 1, memory_mib: 256, disk_size_gib: 4}" >>"$FCFG"
    FNAMES="$FNAMES f-0$i"
done
# shellcheck disable=SC2086 # one name a word
e2e_own_domains $FNAMES
fkp() { kp -c "$FCFG" "$@"; }
# The work that is killed: the image cache, then provision (no guest boot). A script, so a
# new session (setsid) can run it and the kill reaches kvmprov, not only the shell around it.
# (E2E_IN's words are plain: a command, options, a PID or namespace name.)
cat >"$F/work.sh" <<EOF
${E2E_IN[*]} "$KVMPROV" -c "$FCFG" image-cache >"$F/work.log" 2>&1 &&
    ${E2E_IN[*]} "$KVMPROV" -c "$FCFG" provision --stage provision >>"$F/work.log" 2>&1
EOF
# One uninterrupted run of that work, bounded. Once in three full CI runs here a re-run after a
# SIGKILL sat forever in libvirt's client waiting for libvirtd's answer to virStorageVolGetInfo
# right after a seed upload stream (the daemon still answered other clients). That is
# libvirtd's, not a kvmprov result, and must not hang the suite: a run past its bound is stopped,
# said loudly with where it sat, libvirtd is replaced, and the work is run once more and checked.
LIBVIRTD_HANGS=0
work() {
    local rc
    capture rc - timeout -k 10 240 bash "$F/work.sh"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] || return "$rc"
    LIBVIRTD_HANGS=$((LIBVIRTD_HANGS + 1))
    log "NOTE: a kvmprov run hung for 240 s inside a libvirt call (libvirtd hang); its last lines:"
    tail -n 3 "$F/work.log" | sed 's/^/    /'
    bash "$TESTKIT/netns-libvirtd.sh" restart "$E2E_NS"
    timeout -k 10 240 bash "$F/work.sh"
}

# What a converged host looks like: the declared domains, exactly their two volumes each, one
# verified image + sidecar in the cache and nothing else.
converged() {
    local doms vols want_vols img sum want
    doms=$(virsh_ns list --all --name | grep '^f-0' | sort | tr '\n' ' ')
    [ "$doms" = "f-01 f-02 f-03 f-04 f-05 f-06 " ] || { log "domains: $doms"; return 1; }
    vols=$(cd "$F/instances" && ls | sort | tr '\n' ' ')
    want_vols=""
    for d in $FNAMES; do want_vols="$want_vols$d-seed.iso $d.qcow2 "; done
    want_vols=$(tr ' ' '\n' <<<"$want_vols" | grep . | sort | tr '\n' ' ')
    [ "$vols" = "$want_vols" ] || { log "pool: $vols"; return 1; }
    img=$(cd "$F/images" && ls | grep -v '\.json$')
    [ "$(wc -w <<<"$img")" -eq 1 ] || { log "cache: $(ls "$F/images")"; return 1; }
    case "$img" in *.part) log "cache holds a part file"; return 1 ;; esac
    sum=$(sha512sum "$F/images/$img" | cut -d' ' -f1)
    want=$(jq -r .sha512 "$F/images/$img.json")
    [ "$sum" = "$want" ] || { log "cached image does not verify"; return 1; }
}
# libvirtd 9.0 itself has died, once in seven CI runs, just after kvmprov was killed in the
# middle of its parallel requests (its log ends with "Cannot write data: Broken pipe" to the
# dead client; 0 deaths in 60 SIGTERMs tried on purpose). A daemon crash is not a kvmprov
# result: say so loudly, start a new daemon and go on checking what kvmprov does next.
LIBVIRTD_DEATHS=0
libvirtd_survived() {
    local pid
    pid=$(bash "$TESTKIT/netns-libvirtd.sh" alive "$E2E_NS") && return 0
    LIBVIRTD_DEATHS=$((LIBVIRTD_DEATHS + 1))
    log "NOTE: libvirtd $pid died after its client was killed ($1): a libvirtd crash; its last log lines:"
    in_ns tail -n 3 /var/log/libvirt/libvirtd.log 2>/dev/null | sed 's/^/    /' || true
    bash "$TESTKIT/netns-libvirtd.sh" restart "$E2E_NS"
}
reset_host() {
    fkp -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null 2>&1 || true
    rm -rf "$F/images"
}

# --- SIGKILL at many points ------------------------------------------------------------------
# Kill points spread over an uninterrupted run's duration (the faster of two runs).
run_ms=999999
for _ in 1 2; do
    t0=$(date +%s%N)
    work
    ms=$((($(date +%s%N) - t0) / 1000000))
    [ "$ms" -lt "$run_ms" ] && run_ms=$ms
    reset_host
done
log "an uninterrupted run takes ${run_ms} ms; killing at 22 points within it"
kills=0
converges=0
attempts=0
halfwritten=0
scale=100   # percent of run_ms the kill points are spread over; shrinks when a run was faster
while [ "$kills" -lt 22 ] && [ "$attempts" -lt 60 ]; do
    attempts=$((attempts + 1))
    # shellcheck disable=SC2017 # whole milliseconds are precise enough
    ms=$((run_ms * scale / 100 * (kills + 1) / 24))
    delay=$((ms / 1000)).$(printf %03d $((ms % 1000)))
    setsid bash "$F/work.sh" &
    pid=$!
    sleep "$delay"
    if kill -KILL -- "-$pid" 2>/dev/null; then
        kills=$((kills + 1))
    else
        scale=$((scale * 85 / 100))   # it had finished: kill earlier next time
    fi
    wait "$pid" 2>/dev/null || true
    libvirtd_survived "SIGKILL at ${delay}s"
    # Half-written files never under a final name.
    for f in "$F"/images/*.qcow2; do
        [ -e "$f" ] || continue
        [ -e "$f.json" ] || { log "kill at ${delay}s: $f without sidecar"; halfwritten=$((halfwritten + 1)); }
    done
    if work && converged; then
        converges=$((converges + 1))
    else
        log "no convergence after a kill at ${delay}s:"
        sed 's/^/    /' "$F/work.log"
    fi
    reset_host
done
log "SIGKILL points: $kills delivered in $attempts attempts, $converges of $attempts re-runs converged"
check "every re-run after SIGKILL converged ($converges/$attempts)" test "$converges" -eq "$attempts"
check "at least 20 kills landed while kvmprov was running ($kills)" test "$kills" -ge 20
check "regression image-without-sidecar-after-SIGKILL: no image under its final name without its sidecar ($halfwritten)" test "$halfwritten" -eq 0

# --- two runs at once --------------------------------------------------------------------------
fkp image-cache >/dev/null
fkp --output json provision --stage provision >"$F/r1.json" 2>"$F/r1.err" &
p1=$!
fkp --output json provision --stage provision >"$F/r2.json" 2>"$F/r2.err" &
p2=$!
capture rc1 - wait "$p1"
capture rc2 - wait "$p2"
check "two concurrent runs: the host converged without duplicates" converged
if [ "$rc1" -ne 0 ] || [ "$rc2" -ne 0 ]; then
    cat "$F/r1.err" "$F/r2.err"
    lost_lock() {
        local f
        for f in "$F/r1.json" "$F/r2.json"; do
            jqt '.error // "" | test("another kvmprov run \\(pid [0-9]*\\) is working on")' <"$f" && return 0
        done
        return 1
    }
    check "the run that lost the lock says so clearly" lost_lock
fi
# Instances created (not pools) by both runs; a document that is no JSON counts none.
created=0
for f in "$F/r1.json" "$F/r2.json"; do
    n=$(jq '[.stages[]?.outcomes[] | select(.op == "create" and .status == "done" and
        (.target | startswith("pool ") | not))] | length' "$f" 2>/dev/null) || n=0
    created=$((created + ${n:-0}))
done
check "exactly one run created the 6 instances (created=$created)" test "$created" -eq 6
reset_host

# --- two configs, each with its own pool, sharing one image cache, at once ----------------------
S="$F/shared"
mkdir -p "$S"
chmod 0755 "$S"
for k in a b; do
    e2e_config_head "$S/images" "$S/pool-$k" >"$S/$k.yml"
    echo "  - {instance_name: s-$k, image_name: debian-$E2E_N, vcpus: 1, memory_mib: 256, disk_size_gib: 4}" >>"$S/$k.yml"
done
e2e_own_domains s-a s-b
log_mark=$(wc -l <"$E2E_MIRROR_LOG")
for k in a b; do
    "${E2E_IN[@]}" "$KVMPROV" -c "$S/$k.yml" provision --no-wait >"$S/$k.log" 2>&1 &
    eval "sp_$k=\$!"
done
capture rc_a - wait "$sp_a"
capture rc_b - wait "$sp_b"
evidence "$S/a.log" "$S/b.log"
check "two configs sharing one cache provision at once (exit $rc_a and $rc_b)" test "$rc_a" -eq 0 -a "$rc_b" -eq 0
gets=$(tail -n +"$((log_mark + 1))" "$E2E_MIRROR_LOG" | grep -c "genericcloud-amd64-.*qcow2 range=- status=200" || true)
check "the image was downloaded by one of them only ($gets full downloads)" test "$gets" -eq 1
check "the shared cache holds one image and no partial file" \
    bash -c '[ "$(ls "$0"/*.qcow2 | wc -l)" -eq 1 ] && ! ls "$0"/*.part >/dev/null 2>&1' "$S/images"
check "both domains were defined" bash -c 'grep -qx s-a <<<"$0" && grep -qx s-b <<<"$0"' "$(virsh_ns list --all --name)"
for k in a b; do
    kp -c "$S/$k.yml" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null 2>&1 || true
done

# --- SIGTERM -------------------------------------------------------------------------------------
fkp image-cache >/dev/null
"${E2E_IN[@]}" "$KVMPROV" -c "$FCFG" provision --stage provision >/dev/null 2>&1 &
pid=$!
sleep 0.05
kill -TERM "$pid"
capture rc - wait "$pid"
check "SIGTERM ends the run with 143 (got $rc), or it had finished (0)" test "$rc" -eq 143 -o "$rc" -eq 0
libvirtd_survived SIGTERM
check "the next run completes after SIGTERM" work
check "and converges" converged
reset_host

# --- Ctrl-C (SIGINT) in the middle of a download ------------------------------------------------
rm -rf "$F/images"
log_mark=$(wc -l <"$E2E_MIRROR_LOG")
"${E2E_IN[@]}" "$KVMPROV" -c "$FCFG" image-cache >"$F/int.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
    [ -n "$(find "$F/images" -name '*.part' -size +1M 2>/dev/null)" ] && break
    sleep 0.01
done
kill -INT "$pid"
capture rc - wait "$pid"
check "SIGINT stops the download with exit 130 (got $rc)" test "$rc" -eq 130
libvirtd_survived SIGINT
check "SIGINT says it stopped and what the next run does" grep -q "interrupted; stopped" "$F/int.log"
left=$(ls "$F/images" 2>/dev/null)
check "after SIGINT the cache holds only temporary files: $(tr '\n' ' ' <<<"$left")" \
    test -n "$left" -a -z "$(grep -v '\.part' <<<"$left" || true)"
check "the next run completes after SIGINT" work
check "it resumed the partial download with a Range request" \
    grep -q "qcow2 range=bytes=[1-9]" <(tail -n +"$((log_mark + 1))" "$E2E_MIRROR_LOG")
check "and converges after SIGINT" converged
reset_host

# --- libvirtd restarted in the middle of a run --------------------------------------------------
RCFG="$F/restart.yml"
{
    echo "kvm_runtime_timeout_seconds: 600"
    e2e_config_head "$F/images" "$F/instances"
    echo "  - {instance_name: f-restart, image_name: debian-$E2E_N, vcpus: 1, memory_mib: 1024, disk_size_gib: 4}"
} >"$RCFG"
e2e_own_domains f-restart
"${E2E_IN[@]}" "$KVMPROV" -c "$RCFG" provision >"$F/restart.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
    grep -q "✓ start .*f-restart" "$F/restart.log" && break
    sleep 0.1
done
sleep 2   # inside the wait for the guest's address
bash "$TESTKIT/netns-libvirtd.sh" restart "$E2E_NS"
t0=$(date +%s)
capture rc - wait "$pid"
waited=$(($(date +%s) - t0))
check "the run fails (exit 1) when libvirtd restarts under it (got $rc)" test "$rc" -eq 1
check "it stops within 30 s of the restart, not at its deadline (${waited}s)" test "$waited" -le 30
check "the message says the connection to libvirtd was lost" \
    grep -q "connection to libvirtd was lost" "$F/restart.log"
capture --stdout rc out "${E2E_IN[@]}" "$KVMPROV" -c "$RCFG" --output json provision 2>"$F/restart2.log"
evidence "$F/restart2.log"
check "the next run completes after the restart (exit $rc)" test "$rc" -eq 0
ready() { jqt 'any(.stages[].outcomes[]; .target == "f-restart" and .op == "wait" and .status == "done" and (.reason | test("ready at")))' <<<"$out"; }
check "and the guest is SSH-ready" ready
"${E2E_IN[@]}" "$KVMPROV" -c "$RCFG" -e kvm_cleanup_confirmed=true \
    -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null 2>&1 || true
reset_host
[ "$LIBVIRTD_HANGS" -eq 0 ] ||
    log "NOTE: libvirtd left a kvmprov run waiting $LIBVIRTD_HANGS time(s); it was replaced and the work re-run each time"
[ "$LIBVIRTD_DEATHS" -eq 0 ] ||
    log "NOTE: libvirtd died $LIBVIRTD_DEATHS time(s) after kvmprov was killed; a new one was started each time"
