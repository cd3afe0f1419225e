#!/usr/bin/env bash
# End-to-end tests: a real libvirtd in a private network namespace, a locally built Debian
# image on a local mirror (127.0.0.1 inside the namespace), kvmprov driving it. Scenarios
# (each a file here, sourced in order, sharing one namespace): boot (real guests, SSH),
# provision (preflight cases, 20 instances in parallel, generated files), cleanup (decoys),
# faults (SIGKILL at many points, two runs at once, SIGTERM, SIGINT mid-download,
# libvirtd restarted mid-run), ansible (ansible-core from PyPI against `kvmprov inventory`),
# userdata (the operator's user_data, fqdn and password_file on one booted guest), nics (two NICs,
# static IPv4 and IPv6, on one booted guest).
# Prints "e2e: N passed, N failed" and exits non-zero when any check failed.
#   tests/e2e/run.sh [SCENARIO...]      default: provision cleanup faults boot ansible userdata nics
#   tests/e2e/run.sh boot ansible       boot, then Ansible through `kvmprov inventory` (needs PyPI)
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

[ "$(id -u)" -eq 0 ] || { echo "e2e tests need root (network namespaces, libvirtd)" >&2; exit 2; }
[ -x "$KVMPROV" ] || { echo "build first: cargo build --release" >&2; exit 2; }

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(provision cleanup faults boot ansible userdata nics)

E2E_DOMAINS=""
trap e2e_teardown EXIT
e2e_setup
virsh_ns() { in_ns virsh -q -c qemu:///system "$@"; }

for s in "${scenarios[@]}"; do
    log "=== scenario $s"
    # shellcheck source=/dev/null
    source "$(dirname "$0")/$s.sh"
done

e2e_summary
