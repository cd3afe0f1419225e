#!/usr/bin/env bash
# `make bench`: the benchmark parts in one run, then one table of their figures against
# issues 18's, 25's and 27's targets (tests/bench/table.py):
#   provision.sh  10 instances to started: kvmprov, the replaced chain, the bare-libvirt bound
#   download.sh   1 GiB download + verify: kvmprov against curl | sha512sum, peak RSS
#   boot.sh       boot to ready, 1 and 4 guests: kvmprov, kcli, virt-lightning, virt-install
#   shapes.sh     one instance with two data disks and two NICs against a plain one (issue 25)
#   fleet.sh      10, 50, 100 instances on three hypervisors over qemu+ssh: kvmprov against the
#                 bound with the same parallelism, re-run, peak RSS, libvirt calls per instance
# Each part runs its own namespace and libvirtd (one at a time). Needs root. ~25 minutes on
# 2 cores, most of it the TCG guests booting. BENCH_PARTS="provision fleet" runs fewer.
set -euo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
export BENCH_RESULTS
BENCH_RESULTS=$(mktemp /tmp/kvmprov-bench.XXXXXX.tsv)
trap 'rm -f "$BENCH_RESULTS"' EXIT
printf 'cores\t%s\n' "$(nproc)" >>"$BENCH_RESULTS"
# shellcheck source=tests/bench/lib.sh
source "$dir/lib.sh"
for part in ${BENCH_PARTS:-provision download boot shapes fleet}; do
    quiet
    echo "bench: === $part" >&2
    bash "$dir/$part.sh"
done
# The rows behind the table, kept for later comparison (the table is made from them).
kept="$dir/../../target/bench/rows-$(date +%Y%m%dT%H%M%S).tsv"
mkdir -p "$(dirname "$kept")"
cp "$BENCH_RESULTS" "$kept"
echo "bench: rows kept in $(realpath "$kept")" >&2
python3 "$dir/table.py" "$BENCH_RESULTS"
