# Shared helpers for the end-to-end tests (sourced, not run).
# A test environment: a network namespace with its own libvirtd, a local mirror on 127.0.0.1
# inside it serving a locally built Debian image, and a scratch directory. Everything started
# here is recorded and removed by e2e_teardown, which the caller runs from an EXIT trap.

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KVMPROV="$E2E_ROOT/target/release/kvmprov"
TESTKIT="$E2E_ROOT/testkit"
E2E_CACHE=${KVMPROV_TESTKIT_CACHE:-/var/cache/kvmprov-testkit}
E2E_SUITE=${E2E_SUITE:-bookworm}
E2E_VERSION=${E2E_VERSION:-20261124-0001}
E2E_N=12
[ "$E2E_SUITE" = trixie ] && E2E_N=13

PASSED=0
FAILED=0
FAILED_NAMES=()
# Output files of the runs under test: on failure their error lines close the summary, so the
# last lines a CI log shows say why, not only what failed.
E2E_EVIDENCE=()
# Serial console logs of guests that never got ready: their failed units close the summary.
E2E_CONSOLES=()

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

pass() { PASSED=$((PASSED + 1)); log "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); FAILED_NAMES+=("$*"); log "FAIL: $*"; }

# check NAME CMD...: run a check, record pass/fail, never abort the suite.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
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

# Run inside the test namespace.
in_ns() { ip netns exec "$E2E_NS" "$@"; }

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

e2e_setup() {
    E2E_NS=${E2E_NS:-kvmprov-e2e-$$}
    E2E_DIR=$(mktemp -d /tmp/kvmprov-e2e.XXXXXX)
    chmod 0755 "$E2E_DIR"
    log "scratch $E2E_DIR, namespace $E2E_NS"
    # Both releases' twins: the boot scenario runs a Debian 13 guest (its GRUB differs).
    log "building (or reusing) the bookworm and trixie twin images"
    E2E_IMAGE_12=$(bash "$TESTKIT/build-image.sh" bookworm "$E2E_CACHE" | tail -n 1)
    E2E_IMAGE_13=$(bash "$TESTKIT/build-image.sh" trixie "$E2E_CACHE" | tail -n 1)
    for f in "$E2E_IMAGE_12" "$E2E_IMAGE_13"; do
        [ -f "$f" ] || { log "image build did not produce a file: $f"; return 1; }
    done
    E2E_IMAGE=$E2E_IMAGE_12
    [ "$E2E_SUITE" = trixie ] && E2E_IMAGE=$E2E_IMAGE_13
    bash "$TESTKIT/netns-libvirtd.sh" up "$E2E_NS"
    E2E_NS_UP=1
    E2E_MIRROR="$E2E_DIR/mirror"
    bash "$TESTKIT/make-mirror.sh" "$E2E_IMAGE_12" "$E2E_MIRROR" bookworm "$E2E_VERSION"
    bash "$TESTKIT/make-mirror.sh" "$E2E_IMAGE_13" "$E2E_MIRROR" trixie "$E2E_VERSION"
    in_ns ip link set lo up
    # Not through in_ns: a function in the background would be a subshell, and $! its PID.
    ip netns exec "$E2E_NS" python3 "$TESTKIT/mirror.py" --root "$E2E_MIRROR" --port 0 \
        --port-file "$E2E_DIR/mirror.port" --log "$E2E_DIR/mirror.log" >"$E2E_DIR/mirror.out" 2>&1 &
    E2E_MIRROR_PID=$!
    for _ in $(seq 1 50); do [ -s "$E2E_DIR/mirror.port" ] && break; sleep 0.1; done
    E2E_PORT=$(cat "$E2E_DIR/mirror.port")
    E2E_BASE="http://127.0.0.1:$E2E_PORT/images/cloud"
    log "mirror at $E2E_BASE (pid $E2E_MIRROR_PID)"
}

# Domains this test declared (set by the test) are destroyed and undefined here, whatever
# state the run left them in; then the mirror, libvirtd and the namespace go.
e2e_teardown() {
    set +e
    if [ -n "${E2E_NS_UP:-}" ]; then
        for d in ${E2E_DOMAINS:-}; do
            in_ns virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
            in_ns virsh -q -c qemu:///system undefine "$d" --snapshots-metadata --nvram >/dev/null 2>&1 ||
                in_ns virsh -q -c qemu:///system undefine "$d" --snapshots-metadata >/dev/null 2>&1
        done
        for n in ${E2E_NETWORKS:-}; do
            in_ns virsh -q -c qemu:///system net-destroy "$n" >/dev/null 2>&1
            in_ns virsh -q -c qemu:///system net-undefine "$n" >/dev/null 2>&1
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
    # The bridged network's DHCP server (a daemon: not our child, stopped by its PID file).
    [ -n "${E2E_BR_DNSMASQ:-}" ] && [ "$(cat "/proc/$E2E_BR_DNSMASQ/comm" 2>/dev/null)" = dnsmasq ] &&
        kill "$E2E_BR_DNSMASQ" 2>/dev/null
    [ -n "${E2E_NS_UP:-}" ] && bash "$TESTKIT/netns-libvirtd.sh" down "$E2E_NS"
    [ -n "${E2E_DIR:-}" ] && [ -d "$E2E_DIR" ] && rm -rf "$E2E_DIR"
    return 0
}

e2e_summary() {
    echo
    if [ "$FAILED" -gt 0 ]; then
        log "failed checks:"
        for n in "${FAILED_NAMES[@]}"; do log "  - $n"; done
        local f
        for f in "${E2E_EVIDENCE[@]}"; do
            [ -s "$f" ] || continue
            log "errors in $(basename "$f"):"
            { grep -E '✗|^error|error:|timed out|cannot |denied|failed' "$f" || tail -n 4 "$f"; } |
                grep -v 'action(s) failed$' | tail -n 6 | cut -c1-400 | sed 's/^/    /'
        done
        # A wait that ran out says what the guest's console showed last: why it never got ready.
        for f in "${E2E_EVIDENCE[@]}"; do
            [ -s "$f" ] && grep -q 'last console lines' "$f" || continue
            log "the last console lines kvmprov quoted in $(basename "$f"):"
            awk '/last console lines/ {n = 0; buf = ""} {buf = buf $0 "\n"; n++} END {printf "%s", buf}' "$f" |
                sed -n '1,16p' | tr -cd '\11\12\40-\176' | cut -c1-200 | sed 's/^/    /'
        done
        for f in "${E2E_CONSOLES[@]}"; do
            [ -s "$f" ] || continue
            log "units that failed and ssh lines on the console of $(basename "$f" -console.log):"
            { grep -a -E '\[FAILED\]|Failed to start|ssh' "$f" || echo "(none)"; } |
                tail -n 6 | tr -cd '\11\12\40-\176' | cut -c1-200 | sed 's/^/    /'
        done
    fi
    echo "e2e: $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}
