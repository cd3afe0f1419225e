# Scenario: `kvmprov snapshot` on one booted TCG guest (Debian $E2E_N twin, BIOS, DHCP on
# libvirt's NAT network) whose `snapshot_name: base` runtime takes. A file is written, snapshot
# `s1` taken of the running guest, the file changed; `revert --check` and `revert` without --yes
# change nothing (the file and the snapshot list stay); `revert --yes` brings the file back with
# the guest still running; `delete` removes s1 from `snapshot list` (base stays). Undeclared
# names exit 2 and change nothing. A UEFI instance with snapshot_name, defined but never started:
# on a libvirt older than 10.10, preflight and `snapshot create` refuse it, naming the version.
# Runs alone: tests/e2e/run.sh snapshots
SN="$E2E_SCRATCH"
SN_CFG="$SN/vars.yml"
SN_UEFI_CFG="$SN/uefi.yml"
SN_POOL="$SN/instances"
e2e_own_domains e2e-snap e2e-snap-uefi
{
    e2e_config_head "$SN/images" "$SN_POOL" "e2e-snap-pw"
    cat <<EOF
  - instance_name: e2e-snap
    image_name: debian-$E2E_N
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
    snapshot_name: base
EOF
} >"$SN_CFG"
{
    e2e_config_head "$SN/images" "$SN_POOL"
    cat <<EOF
  - instance_name: e2e-snap-uefi
    image_name: debian-$E2E_N
    vcpus: 1
    memory_mib: 512
    disk_size_gib: 4
    firmware: uefi
    snapshot_name: base
EOF
} >"$SN_UEFI_CFG"

check "check accepts a UEFI instance with snapshot_name (the hypervisor decides)" kp -c "$SN_UEFI_CFG" check

log "kvmprov provision (full): one TCG guest, snapshot base taken by runtime"
capture rc - kp -c "$SN_CFG" --output json -e kvm_runtime_timeout_seconds=1200 provision >"$SN/provision.json" 2>"$SN/provision.log"
evidence "$SN/provision.log"
console_evidence "$SN_POOL/e2e-snap-console.log"
check "provision exits 0" test "$rc" -eq 0
check "runtime took snapshot base" outcome "$(cat "$SN/provision.json")" e2e-snap snapshot "base"

# shellcheck source=tests/e2e/snapshot-lib.sh
source "$E2E_ROOT/tests/e2e/snapshot-lib.sh"
sn_kp() { kp -c "$SN_CFG" "$@"; }
check "snapshot list shows base" test "$(_snap_names sn_kp e2e-snap)" = base
snap_roundtrip sn_kp e2e-snap

capture rc - kp -c "$SN_CFG" snapshot create nope s1
check "an undeclared name exits 2" test "$rc" -eq 2
capture rc - kp -c "$SN_CFG" snapshot revert e2e-snap "../s1" --yes
check "an invalid snapshot name exits 2" test "$rc" -eq 2
check "neither changed the snapshots" test "$(_snap_names sn_kp e2e-snap)" = base
capture rc out kp -c "$SN_CFG" snapshot delete e2e-snap s1
check "deleting it again fails in one sentence naming what there is" \
    bash -c '[ "$0" -eq 1 ] && grep -q "e2e-snap has no snapshot \`s1\` on .* (it has base)" <<<"$1"' "$rc" "$out"

# --- UEFI on this libvirt ----------------------------------------------------------------------
libvirt=$(kp -c "$SN_CFG" --output json ping 2>/dev/null | jq -r '.hypervisors[0].host.libvirt_version // empty') || true
log "the hypervisor's libvirt: ${libvirt:-unknown}"
capture rc - kp -c "$SN_UEFI_CFG" provision --stage provision >"$SN/uefi-provision.log" 2>&1
evidence "$SN/uefi-provision.log"
check "the UEFI instance is defined (not started)" test "$rc" -eq 0
if [ "$(printf '%s\n' "$libvirt" 10.10.0 | sort -V | head -n1)" != 10.10.0 ]; then
    capture rc out kp -c "$SN_UEFI_CFG" --output json preflight
    check "preflight on libvirt $libvirt refuses snapshot_name for UEFI, naming the version" \
        bash -c '[ "$0" -eq 1 ] && jq -e --arg v "libvirt $2 on" "any(.stages[].outcomes[]; .target == \"snapshot e2e-snap-uefi\" and .status == \"failed\" and (.detail | contains(\$v)) and (.detail | contains(\"10.10.0 or newer\")))" <<<"$1" >/dev/null' \
        "$rc" "$out" "$libvirt"
    capture rc out kp -c "$SN_UEFI_CFG" snapshot create e2e-snap-uefi s1
    check "snapshot create of the UEFI guest on libvirt $libvirt exits 1 naming the version" \
        bash -c '[ "$0" -eq 1 ] && grep -q "libvirt $2 on .* takes no internal snapshots of UEFI guests: libvirt 10.10.0 or newer" <<<"$1"' \
        "$rc" "$out" "$libvirt"
    check "and took none" test -z "$(virsh_ns snapshot-list e2e-snap-uefi --name)"
else
    log "libvirt $libvirt snapshots UEFI guests: the refusal is not tested here"
fi
