#!/usr/bin/env bash
# End-to-end tests: a real libvirtd in a private network namespace, a locally built Debian
# image on a local mirror (127.0.0.1 inside the namespace), kvmprov driving it. Scenarios, each a
# file here that stands alone: it runs in a subshell with its own scratch directory, config and
# instances, and what it made is removed after it (lib.sh: e2e_scenario, e2e_release), so any
# one runs by itself and the order does not matter. They share only the namespace, libvirtd and
# the mirror, set up once per run.
#   provision  preflight cases, 20 instances in parallel, generated files
#   cleanup    decoys that every cleanup mode must leave alone
#   faults     SIGKILL at many points, two runs at once, SIGTERM, SIGINT mid-download, libvirtd
#              restarted mid-run
#   boot       real TCG guests (both releases, BIOS/UEFI/Secure Boot, NAT/static/bridged), SSH
#   ansible    ansible-core from PyPI against `kvmprov inventory`, on two guests it boots
#   userdata   the operator's user_data, fqdn and password_file on one booted guest
#   disks      two data disks on one booted guest, kept across cleanup-force and a re-provision
#   nics       two NICs (NAT by DHCP; static IPv4 and IPv6 on an isolated network) on one guest
#   snapshots  `kvmprov snapshot` create, revert (planned unless --yes), delete on one booted
#              guest; a UEFI instance refused on libvirt < 10.10, naming the version
# Prints "e2e: N passed, N failed" and exits non-zero when any check failed (or a scenario stopped
# before its end).
#   tests/e2e/run.sh [SCENARIO...]      default: provision cleanup faults boot ansible userdata disks nics snapshots
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

ALL=(provision cleanup faults boot ansible userdata disks nics snapshots)
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=("${ALL[@]}")
for s in "${scenarios[@]}"; do
    [[ " ${ALL[*]} " == *" $s "* ]] || { echo "unknown scenario '$s'; one of: ${ALL[*]}" >&2; exit 2; }
done

[ "$(id -u)" -eq 0 ] || { echo "e2e tests need root (network namespaces, libvirtd)" >&2; exit 2; }
[ -x "$KVMPROV" ] || { echo "build first: cargo build --release" >&2; exit 2; }

trap e2e_teardown EXIT
e2e_setup

for s in "${scenarios[@]}"; do
    log "=== scenario $s"
    t0=$(date +%s)
    mark=$(($(wc -l <"$E2E_RESULTS/results") + 1))
    e2e_scenario "$s"
    [ "$E2E_SCENARIO_RC" -eq 0 ] ||
        fail "scenario $s ran to its end (it stopped with status $E2E_SCENARIO_RC; the lines above say where)"
    e2e_release "$s"
    log "=== scenario $s: $(e2e_counts "$mark") in $(($(date +%s) - t0)) s"
done

e2e_summary
