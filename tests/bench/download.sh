#!/usr/bin/env bash
# `make bench`, part 2: download + verify one SIZE_MIB (default 1024) MiB image from a loopback
# mirror (127.0.0.1, the testkit mirror), measured in one run two ways, best of ROUNDS each:
#   (a) kvmprov image-cache (stream to a .part file, SHA-512 in the same pass, fsync, rename)
#   (b) curl -s URL | sha512sum (no file written at all: the most a download could cost)
# and kvmprov's peak resident memory; rows to $BENCH_RESULTS. No libvirtd needed: image-cache only fills the cache.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KVMPROV=${KVMPROV:-$ROOT/target/release/kvmprov}
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-3}
BENCH_RESULTS=${BENCH_RESULTS:?set by tests/bench/run.sh}
[ -x "$KVMPROV" ] || { echo "build first: cargo build --release" >&2; exit 2; }

DIR=$(mktemp -d /tmp/kvmprov-bench-dl.XXXXXX)
MIRROR_PID=""
# Keeps the script's own exit status: under `set -e` the status of `wait` on the mirror we just
# killed (143) used to end `make bench` with "Error 143" after a successful run.
cleanup() {
    local rc=$?
    if [ -n "$MIRROR_PID" ]; then
        kill "$MIRROR_PID" 2>/dev/null || true
        wait "$MIRROR_PID" 2>/dev/null || true
    fi
    rm -rf "$DIR"
    return "$rc"
}
trap cleanup EXIT

echo "bench: making a ${SIZE_MIB} MiB image and its mirror in $DIR" >&2
# A qcow2 header (version 3, 4 GiB virtual size), then random bytes: kvmprov caches only what
# starts like a qcow2.
{
    printf 'QFI\373\0\0\0\3\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\20\0\0\0\1\0\0\0\0'
    head -c "$((SIZE_MIB * 1024 * 1024 - 32))" /dev/urandom
} >"$DIR/image.qcow2"
bash "$ROOT/testkit/make-mirror.sh" "$DIR/image.qcow2" "$DIR/mirror" bookworm 20260101-0001 2>/dev/null
python3 "$ROOT/testkit/mirror.py" --root "$DIR/mirror" --port 0 --port-file "$DIR/port" \
    >"$DIR/mirror.out" 2>&1 &
MIRROR_PID=$!
for _ in $(seq 1 50); do [ -s "$DIR/port" ] && break; sleep 0.1; done
BASE="http://127.0.0.1:$(cat "$DIR/port")/images/cloud/bookworm"
URL="$BASE/20260101-0001/debian-12-genericcloud-amd64-20260101-0001.qcow2"
cat >"$DIR/vars.yml" <<EOF
kvm_image_cache_path: $DIR/cache
kvm_instance_disk_pool_path: $DIR/pool
kvm_cloud_image_catalog:
  - image_name: big
    image_url: $BASE/latest/debian-12-genericcloud-amd64.qcow2
    image_checksum_manifest_url: $BASE/latest/SHA512SUMS
EOF
cat "$DIR/image.qcow2" >/dev/null   # both read the source from the page cache

now() { date +%s%N; }
best_curl=""
best_kvmprov=""
rss_kb=0
for round in $(seq 1 "$ROUNDS"); do
    # Each command starts with no one else's dirty pages to write back (the provisioning
    # benchmark before this one leaves some): kvmprov's fsync must not pay for them.
    sync
    t0=$(now)
    curl -s "$URL" | sha512sum >/dev/null
    ns=$(($(now) - t0))
    [ -z "$best_curl" ] || [ "$ns" -lt "$best_curl" ] && best_curl=$ns

    rm -rf "$DIR/cache"
    sync
    t0=$(now)
    /usr/bin/time -f '%M' -o "$DIR/rss" "$KVMPROV" -c "$DIR/vars.yml" image-cache --all >"$DIR/kvmprov.log" 2>&1
    ns=$(($(now) - t0))
    [ -z "$best_kvmprov" ] || [ "$ns" -lt "$best_kvmprov" ] && best_kvmprov=$ns
    r=$(tail -n 1 "$DIR/rss")
    [ "$r" -gt "$rss_kb" ] && rss_kb=$r
    echo "bench: round $round done" >&2
done
grep -q "✓ download" "$DIR/kvmprov.log" || { cat "$DIR/kvmprov.log"; echo "kvmprov did not download" >&2; exit 1; }

python3 - "$SIZE_MIB" "$best_curl" "$best_kvmprov" "$rss_kb" >>"$BENCH_RESULTS" <<'PY'
import sys
mib, curl_ns, kp_ns, rss_kb = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"dl\tcurl\t{mib / (curl_ns / 1e9):.1f}\t{curl_ns / 1e9:.2f}")
print(f"dl\tkvmprov\t{mib / (kp_ns / 1e9):.1f}\t{kp_ns / 1e9:.2f}")
print(f"dl\trss\t{rss_kb / 1024:.1f}")
PY
