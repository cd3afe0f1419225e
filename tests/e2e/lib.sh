# Shared helpers for the end-to-end tests (sourced, not run).
# A test environment: a network namespace with its own libvirtd, a local mirror on 127.0.0.1
# inside it serving a locally built Debian image, and a scratch directory. Everything started
# here is recorded and removed by e2e_teardown, which the caller runs from an EXIT trap.
# Scenarios (tests/e2e/run.sh) each run in a subshell with a scratch directory of their own and
# record what they make (e2e_own_*): e2e_release removes it after the scenario, so no scenario
# depends on another's files, instances or variables. Results (pass/fail, evidence) are files,
# so counts add up across those subshells.

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KVMPROV="$E2E_ROOT/target/release/kvmprov"
TESTKIT="$E2E_ROOT/testkit"
E2E_CACHE=${KVMPROV_TESTKIT_CACHE:-/var/cache/kvmprov-testkit}
E2E_SUITE=${E2E_SUITE:-bookworm}
E2E_VERSION=${E2E_VERSION:-20261124-0001}
E2E_N=12
[ "$E2E_SUITE" = trixie ] && E2E_N=13

# E2E_LANE (run.sh, with more than one lane): the lane's tag in every log line.
log() { printf '[e2e %s%s] %s\n' "${E2E_LANE:+$E2E_LANE }" "$(date +%H:%M:%S)" "$*"; }

# e2e_results_init DIR: results go to DIR/results (one "PASS|FAIL<TAB>name" line per check),
# DIR/evidence and DIR/consoles: output files of the runs under test, and serial console logs of
# guests that never got ready; on failure their error lines close the summary, so the last lines
# a CI log shows say why, not only what failed.
e2e_results_init() {
    E2E_RESULTS=$1
    : >"$E2E_RESULTS/results"
    : >"$E2E_RESULTS/evidence"
    : >"$E2E_RESULTS/consoles"
}

pass() { printf 'PASS\t%s\n' "$*" >>"$E2E_RESULTS/results"; log "PASS: $*"; }
fail() { printf 'FAIL\t%s\n' "$*" >>"$E2E_RESULTS/results"; log "FAIL: $*"; }

# evidence FILE...: quote FILE's error lines in the summary if a check failed. Inside a scenario
# the file is kept (copied) when the scenario's scratch directory goes.
evidence() { printf '%s\n' "$@" >>"${E2E_OWNED:-$E2E_RESULTS}/evidence"; }
# console_evidence FILE...: a guest's serial console log, quoted the same way.
console_evidence() { printf '%s\n' "$@" >>"${E2E_OWNED:-$E2E_RESULTS}/consoles"; }

# check NAME CMD...: run a check, record pass/fail, never abort the suite.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

# capture RC OUT CMD...   run CMD and go on whatever it returns: its exit status into variable RC,
#                        its output (stdout and stderr) into variable OUT.
# capture --stdout RC OUT CMD...   only stdout into OUT; stderr goes where the call sends it.
# capture RC - CMD...     keep no output: it goes where the call's redirections send it.
# The one way the tests read a status that may be non-zero (errexit is never switched off around
# a command). CMD runs on the left of `||`, so bash keeps `set -e` off inside it: a function
# given as CMD runs to its end whatever fails in it.
capture() {
    local __cap_stdout_only=0 __cap_out="" __cap_rc=0
    [ "$1" = --stdout ] && { __cap_stdout_only=1; shift; }
    local __cap_rc_var=$1 __cap_out_var=$2
    shift 2
    if [ "$__cap_out_var" = - ]; then
        "$@" || __cap_rc=$?
    elif [ "$__cap_stdout_only" -eq 1 ]; then
        __cap_out=$("$@") || __cap_rc=$?
    else
        __cap_out=$("$@" 2>&1) || __cap_rc=$?
    fi
    printf -v "$__cap_rc_var" %d "$__cap_rc"
    [ "$__cap_out_var" = - ] || printf -v "$__cap_out_var" %s "$__cap_out"
}

# Facts from kvmprov's `--output json` document (its envelope: `command`, `ok`, `error`, then
# `stages`, `instances`, `hypervisors` or `config`), read with jq instead of grepping the human text.
#   jqt FILTER [JQ ARGS...] <<<"$DOC"   true when FILTER is true on DOC
# (An empty DOC is false: jq 1.6's -e says true when it read no input at all.)
jqt() {
    local doc
    doc=$(cat)
    [ -n "${doc//[[:space:]]/}" ] && jq -e "$@" >/dev/null <<<"$doc"
}
#   outcome DOC TARGET OP REGEX         DOC reports an action OP ("" for any) on TARGET whose
#                                       reason matches REGEX
outcome() {
    jqt --arg t "$2" --arg op "$3" --arg r "$4" \
        'any(.stages[].outcomes[]; .target == $t and ($op == "" or .op == $op) and (.reason | test($r)))' <<<"$1"
}

# changes DOC: the actions DOC reports done that changed something, one "op target reason" a
# line; fails when DOC is no stage report. Read-only are the ops for which kvmprov's
# `Op::mutates` (src/plan.rs) is false, what the human summary's "changed" column leaves out:
# any other op, one added later too, counts as a change (`--output json` has no per-action
# "changed" field to read instead).
changes() {
    jq -r '.stages[].outcomes[] | select(.status == "done" and
        (.op | IN("ok", "check", "verify", "wait", "refuse", "drift", "skip") | not))
        | "\(.op) \(.target) \(.reason)"' <<<"$1"
}

# Run inside the test namespace: E2E_IN is the command prefix that gets there (e2e_setup sets it:
# `nsenter` into a private daemon's holder, or `ip netns exec`). It execs CMD, so
# `"${E2E_IN[@]}" CMD &` leaves CMD's own PID in $!.
in_ns() { "${E2E_IN[@]}" "$@"; }
virsh_ns() { in_ns virsh -q -c qemu:///system "$@"; }

# Run kvmprov inside the namespace (so it reaches the guests and the mirror).
kp() { in_ns "$KVMPROV" "$@"; }

# The head of a test variables file: qemu domains, the given cache and pool, the mirror's image
# as debian-$E2E_N, an optional password, and the `kvm_instance_definitions:` key (items follow).
#   e2e_config_head CACHE_DIR POOL_DIR [PASSWORD] >FILE
e2e_config_head() {
    cat <<EOF
kvm_domain_type: qemu
kvm_image_cache_path: $1
kvm_instance_disk_pool_path: $2
kvm_cloud_image_catalog:
  - image_name: debian-$E2E_N
    image_url: $E2E_BASE/$E2E_SUITE/latest/debian-$E2E_N-genericcloud-amd64.qcow2
    image_checksum_manifest_url: $E2E_BASE/$E2E_SUITE/latest/SHA512SUMS
EOF
    [ -z "${3:-}" ] || printf 'kvm_cloud_init_defaults:\n  password: "%s"\n' "$3"
    echo "kvm_instance_definitions:"
}

# The catalog with both releases' twins, as debian-12 and debian-13 (boot and ansible run both).
e2e_catalog_both() {
    cat <<EOF
kvm_cloud_image_catalog:
  - image_name: debian-12
    image_url: $E2E_BASE/bookworm/latest/debian-12-genericcloud-amd64.qcow2
    image_checksum_manifest_url: $E2E_BASE/bookworm/latest/SHA512SUMS
  - image_name: debian-13
    image_url: $E2E_BASE/trixie/latest/debian-13-genericcloud-amd64.qcow2
    image_checksum_manifest_url: $E2E_BASE/trixie/latest/SHA512SUMS
EOF
}

# e2e_images: E2E_IMAGE_12 and E2E_IMAGE_13, both releases' twins (the boot scenario runs a
# Debian 13 guest: its GRUB differs), built once or reused from E2E_CACHE.
e2e_images() {
    local f
    log "building (or reusing) the bookworm and trixie twin images"
    E2E_IMAGE_12=$(bash "$TESTKIT/build-image.sh" bookworm "$E2E_CACHE" | tail -n 1)
    E2E_IMAGE_13=$(bash "$TESTKIT/build-image.sh" trixie "$E2E_CACHE" | tail -n 1)
    for f in "$E2E_IMAGE_12" "$E2E_IMAGE_13"; do
        [ -f "$f" ] || { log "image build did not produce a file: $f"; return 1; }
    done
}

# e2e_setup: the environment (namespace, libvirtd, mirror) in E2E_DIR, a new scratch directory
# unless the caller gives one (and then removes it). With E2E_PRIVATE=1 the libvirtd is a
# private one (testkit/netns-libvirtd.sh up --private): several environments run side by side
# (run.sh's lanes); otherwise it is the machine's one system libvirtd, in the namespace.
e2e_setup() {
    E2E_NS=${E2E_NS:-kvmprov-e2e-$$}
    if [ -z "${E2E_DIR:-}" ]; then
        E2E_DIR=$(mktemp -d /tmp/kvmprov-e2e.XXXXXX)
        E2E_DIR_MADE=1
    fi
    chmod 0755 "$E2E_DIR"
    log "scratch $E2E_DIR, namespace $E2E_NS"
    e2e_results_init "$E2E_DIR"
    mkdir -p "$E2E_DIR/owned" "$E2E_DIR/kept"
    [ -n "${E2E_IMAGE_12:-}" ] || e2e_images
    if [ -n "${E2E_PRIVATE:-}" ]; then
        # Recorded first: a daemon that came half up is taken down too (`down` reads its state).
        E2E_NS_UP=1
        bash "$TESTKIT/netns-libvirtd.sh" up "$E2E_NS" --private "$E2E_DIR/libvirt"
        E2E_IN=(nsenter -t "$(bash "$TESTKIT/netns-libvirtd.sh" holder "$E2E_NS")" -m -n)
    else
        bash "$TESTKIT/netns-libvirtd.sh" up "$E2E_NS"
        E2E_NS_UP=1
        E2E_IN=(ip netns exec "$E2E_NS")
    fi
    E2E_MIRROR="$E2E_DIR/mirror"
    E2E_MIRROR_LOG="$E2E_DIR/mirror.log"
    bash "$TESTKIT/make-mirror.sh" "$E2E_IMAGE_12" "$E2E_MIRROR" bookworm "$E2E_VERSION"
    bash "$TESTKIT/make-mirror.sh" "$E2E_IMAGE_13" "$E2E_MIRROR" trixie "$E2E_VERSION"
    in_ns ip link set lo up
    # Not through in_ns: a function in the background would be a subshell, and $! its PID.
    "${E2E_IN[@]}" python3 "$TESTKIT/mirror.py" --root "$E2E_MIRROR" --port 0 \
        --port-file "$E2E_DIR/mirror.port" --log "$E2E_MIRROR_LOG" >"$E2E_DIR/mirror.out" 2>&1 &
    E2E_MIRROR_PID=$!
    for _ in $(seq 1 50); do [ -s "$E2E_DIR/mirror.port" ] && break; sleep 0.1; done
    E2E_PORT=$(cat "$E2E_DIR/mirror.port")
    E2E_BASE="http://127.0.0.1:$E2E_PORT/images/cloud"
    log "mirror at $E2E_BASE (pid $E2E_MIRROR_PID)"
}

# --- scenarios ---------------------------------------------------------------------------------
# What a scenario made, recorded as it makes it (files under E2E_OWNED, which e2e_scenario sets):
#   e2e_own_domains NAME...     libvirt domains: destroyed and undefined (with snapshots, NVRAM)
#   e2e_own_networks NAME...    libvirt networks: destroyed and undefined
#   e2e_own_links NAME...       network interfaces in the namespace: deleted
#   e2e_own_daemon PID COMM     a daemon (not our child): stopped while PID is still a COMM
# Pools whose directory is in the scenario's scratch directory go too, then the directory.
# e2e_seed_docs SEED DIR NAME: the seed ISO's user-data and network-config as DIR/NAME.user-data
# and DIR/NAME.network-config (isoinfo: a loop mount would need the iso9660 module).
e2e_seed_docs() {
    local doc
    mkdir -p "$2"
    for doc in user-data network-config; do
        isoinfo -i "$1" -R -x "/$doc" >"$2/$3.$doc" || rm -f "$2/$3.$doc"
    done
}

# e2e_seed_schema DIR LOG: check the documents in DIR with cloud-init 22.4's and 25.1's own
# schema (tests/cloud-init-schema.sh), its output in LOG (kept as evidence).
e2e_seed_schema() {
    local rc
    capture rc - bash "$E2E_ROOT/tests/cloud-init-schema.sh" "$1" >"$2" 2>&1
    tail -n 3 "$2"
    evidence "$2"
    check "the e2e seed's user-data and network-config pass cloud-init schema 22.4 and 25.1" test "$rc" -eq 0
}

e2e_own_domains() { printf '%s\n' "$@" >>"$E2E_OWNED/domains"; }
e2e_own_networks() { printf '%s\n' "$@" >>"$E2E_OWNED/networks"; }
e2e_own_links() { printf '%s\n' "$@" >>"$E2E_OWNED/links"; }
e2e_own_daemon() { printf '%s %s\n' "$1" "$2" >>"$E2E_OWNED/daemons"; }

# e2e_scenario NAME: run tests/e2e/NAME.sh in a subshell of its own, in the environment
# e2e_setup made: its scratch directory is E2E_SCRATCH (0755, empty), E2E_DIR is unset (a
# scenario reads nothing another one left), `set -euo pipefail` holds. Its status goes to
# E2E_SCENARIO_RC (not 0: it stopped before its end); call it plainly, not on the left of `||`
# or in `capture`, where bash would keep `set -e` off inside it.
# shellcheck disable=SC2034 # E2E_SCENARIO_RC: read by run.sh
e2e_scenario() {
    local name=$1 pid
    mkdir -p "$E2E_DIR/owned/$name" "$E2E_DIR/$name"
    chmod 0755 "$E2E_DIR/$name"
    echo "$E2E_DIR/$name" >"$E2E_DIR/owned/$name/scratch"
    (
        set -euo pipefail
        E2E_OWNED="$E2E_DIR/owned/$name"
        # shellcheck disable=SC2034 # the scenario's, read by the file sourced below
        E2E_SCRATCH="$E2E_DIR/$name"
        unset E2E_DIR
        # shellcheck source=/dev/null
        source "$E2E_ROOT/tests/e2e/$name.sh"
    ) &
    # In the background and waited for, so a SIGTERM to run.sh is handled at once.
    pid=$!
    E2E_SCENARIO_PID=$pid
    E2E_SCENARIO_RC=0
    wait "$pid" || E2E_SCENARIO_RC=$?
    E2E_SCENARIO_PID=""
}

# e2e_release NAME: remove what scenario NAME recorded, its pools and scratch directory; keep its
# evidence files for the summary. A teardown: every step is tried whatever the one before did.
e2e_release() (
    set +e
    owned="$E2E_DIR/owned/$1"
    [ -d "$owned" ] || return 0
    scratch=$(cat "$owned/scratch" 2>/dev/null)
    while read -r pid comm; do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] && kill "$pid" 2>/dev/null
    done < <(cat "$owned/daemons" 2>/dev/null)
    while read -r d; do
        virsh_ns destroy "$d" >/dev/null 2>&1
        virsh_ns undefine "$d" --snapshots-metadata --nvram >/dev/null 2>&1 ||
            virsh_ns undefine "$d" --snapshots-metadata >/dev/null 2>&1
    done < <(cat "$owned/domains" 2>/dev/null)
    while read -r n; do
        virsh_ns net-destroy "$n" >/dev/null 2>&1
        virsh_ns net-undefine "$n" >/dev/null 2>&1
    done < <(cat "$owned/networks" 2>/dev/null)
    while read -r l; do in_ns ip link del "$l" >/dev/null 2>&1; done < <(cat "$owned/links" 2>/dev/null)
    if [ -n "$scratch" ]; then
        for p in $(virsh_ns pool-list --all --name 2>/dev/null); do
            target=$(virsh_ns pool-dumpxml "$p" 2>/dev/null | sed -n 's|.*<path>\(.*\)</path>.*|\1|p' | head -n 1)
            case "$target" in "$scratch" | "$scratch"/*) ;; *) continue ;; esac
            virsh_ns pool-destroy "$p" >/dev/null 2>&1
            virsh_ns pool-undefine "$p" >/dev/null 2>&1
        done
    fi
    e2e_keep "$owned" "$E2E_DIR/kept/$1" "$E2E_RESULTS"
    [ -n "$scratch" ] && rm -rf "$scratch"
    rm -rf "$owned"
    return 0
)

# e2e_keep LISTS KEPT RESULTS: copy the files named in LISTS/evidence and LISTS/consoles into
# directory KEPT and name the copies in RESULTS/evidence and RESULTS/consoles, so the summary
# still quotes them once the directory they were in is gone.
e2e_keep() {
    local kind f
    mkdir -p "$2"
    for kind in evidence consoles; do
        while read -r f; do
            [ -s "$f" ] || continue
            cp "$f" "$2/" && echo "$2/$(basename "$f")" >>"$3/$kind"
        done < <(cat "$1/$kind" 2>/dev/null)
    done
}

# Domains this test declared (E2E_DOMAINS, set by the test: the benchmarks) and what any
# scenario recorded are destroyed and undefined here, whatever state the run left them in; then
# the mirror, libvirtd and the namespace go.
e2e_teardown() {
    set +e
    # A scenario still running (run.sh stopped by a signal): stop it before taking its daemon.
    [ -n "${E2E_SCENARIO_PID:-}" ] && kill "$E2E_SCENARIO_PID" 2>/dev/null
    # (E2E_IN is set once the daemon is up: before, there is nothing to ask it.)
    if [ -n "${E2E_NS_UP:-}" ] && [ -n "${E2E_IN:-}" ]; then
        local s
        for s in "$E2E_DIR"/owned/*; do [ -d "$s" ] && e2e_release "$(basename "$s")"; done
        for d in ${E2E_DOMAINS:-}; do
            in_ns virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
            in_ns virsh -q -c qemu:///system undefine "$d" --snapshots-metadata --nvram >/dev/null 2>&1 ||
                in_ns virsh -q -c qemu:///system undefine "$d" --snapshots-metadata >/dev/null 2>&1
        done
        local pools
        pools=$(in_ns virsh -q -c qemu:///system pool-list --all --name 2>/dev/null)
        # kvmprov's pools, and any pool in the scratch directory (virt-install makes one for the
        # directory of each disk it is given: the chain in the benchmark left b, b-1, b-2, ...).
        local target
        for p in $pools; do
            target=$(in_ns virsh -q -c qemu:///system pool-dumpxml "$p" 2>/dev/null |
                sed -n 's|.*<path>\(.*\)</path>.*|\1|p' | head -n 1)
            case "$p" in kvmprov-*) ;; *) case "$target" in "$E2E_DIR"/*) ;; *) continue ;; esac ;; esac
            in_ns virsh -q -c qemu:///system pool-destroy "$p" >/dev/null 2>&1
            in_ns virsh -q -c qemu:///system pool-undefine "$p" >/dev/null 2>&1
        done
    fi
    [ -n "${E2E_MIRROR_PID:-}" ] && kill "$E2E_MIRROR_PID" 2>/dev/null && wait "$E2E_MIRROR_PID" 2>/dev/null
    [ -n "${E2E_NS_UP:-}" ] && bash "$TESTKIT/netns-libvirtd.sh" down "$E2E_NS"
    [ -n "${E2E_DIR_MADE:-}" ] && [ -d "$E2E_DIR" ] && rm -rf "$E2E_DIR"
    return 0
}

# e2e_counts [FROM_LINE]: "N passed, N failed" of the results (from line FROM_LINE on).
e2e_counts() {
    tail -n +"${1:-1}" "$E2E_RESULTS/results" |
        awk -F'\t' '$1 == "PASS" {p++} $1 == "FAIL" {f++} END {printf "%d passed, %d failed\n", p, f}'
}

e2e_summary() {
    local failed
    failed=$(grep -c $'^FAIL\t' "$E2E_RESULTS/results" || true)
    echo
    if [ "$failed" -gt 0 ]; then
        log "failed checks:"
        sed -n $'s/^FAIL\t/  - /p' "$E2E_RESULTS/results" | while IFS= read -r n; do log "$n"; done
        local f
        while IFS= read -r f; do
            [ -s "$f" ] || continue
            log "errors in $(basename "$f"):"
            { grep -E '✗|^error|error:|timed out|cannot |denied|failed' "$f" || tail -n 4 "$f"; } |
                grep -v 'action(s) failed$' | tail -n 6 | cut -c1-400 | sed 's/^/    /'
        done <"$E2E_RESULTS/evidence"
        # A wait that ran out says what the guest's console showed last: why it never got ready.
        while IFS= read -r f; do
            if ! { [ -s "$f" ] && grep -q 'last console lines' "$f"; }; then continue; fi
            log "the last console lines kvmprov quoted in $(basename "$f"):"
            awk '/last console lines/ {n = 0; buf = ""} {buf = buf $0 "\n"; n++} END {printf "%s", buf}' "$f" |
                sed -n '1,16p' | tr -cd '\11\12\40-\176' | cut -c1-200 | sed 's/^/    /'
        done <"$E2E_RESULTS/evidence"
        while IFS= read -r f; do
            [ -s "$f" ] || continue
            log "units that failed and ssh lines on the console of $(basename "$f" -console.log):"
            { grep -a -E '\[FAILED\]|Failed to start|ssh' "$f" || echo "(none)"; } |
                tail -n 6 | tr -cd '\11\12\40-\176' | cut -c1-200 | sed 's/^/    /'
        done <"$E2E_RESULTS/consoles"
    fi
    echo "e2e: $(e2e_counts 1)"
    [ "$failed" -eq 0 ]
}
