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

sn_ssh() { kp -c "$SN_CFG" ssh e2e-snap -- "$1" 2>&1; }
# The names `snapshot list --output json` gives e2e-snap, one line, oldest first.
sn_names() {
    kp -c "$SN_CFG" --output json snapshot list e2e-snap 2>/dev/null |
        jq -r '[.instances[] | select(.name == "e2e-snap") | .snapshots[].name] | join(" ")'
}
check "snapshot list shows base" test "$(sn_names)" = base

check "a file written in the guest" \
    test "$(sn_ssh 'echo one >~/marker && sync && cat ~/marker')" = one
plan=$(kp -c "$SN_CFG" --check --output json snapshot create e2e-snap s1 2>"$SN/check.err") || true
check "create --check plans a snapshot of the running guest with its memory" \
    outcome "$plan" e2e-snap snapshot '^take snapshot `s1` \(running: disks and memory\)$'
check "create --check took none" test "$(sn_names)" = base

t0=$(date +%s)
capture rc out kp -c "$SN_CFG" --output json snapshot create e2e-snap s1
printf '%s\n' "$out" >"$SN/create.out"
evidence "$SN/create.out"
check "snapshot create exits 0 ($(($(date +%s) - t0)) s)" test "$rc" -eq 0
check "snapshot list shows base and s1" test "$(sn_names)" = "base s1"
check "the file changed after the snapshot" \
    test "$(sn_ssh 'echo two >~/marker && sync && cat ~/marker')" = two

for how in "--check snapshot revert e2e-snap s1 --yes" "snapshot revert e2e-snap s1"; do
    # shellcheck disable=SC2086 # the words of $how are kvmprov's arguments
    capture rc out kp -c "$SN_CFG" --output json $how
    check "$how exits 0" test "$rc" -eq 0
    check "$how only plans the revert" \
        jqt '.check == true and .stages[0].outcomes[0].op == "revert" and .stages[0].outcomes[0].status == "planned"' <<<"$out"
    check "$how changed nothing: the file is still changed" test "$(sn_ssh 'cat ~/marker')" = two
done

t0=$(date +%s)
capture rc out kp -c "$SN_CFG" --output json snapshot revert e2e-snap s1 --yes
printf '%s\n' "$out" >"$SN/revert.out"
evidence "$SN/revert.out"
check "snapshot revert --yes exits 0 ($(($(date +%s) - t0)) s)" test "$rc" -eq 0
check "the guest runs on after the revert" test "$(virsh_ns domstate e2e-snap)" = running
# The guest is back at the moment of s1: its SSH server answers at once (up to 60 s of grace
# for a slow TCG host).
back=""
for _ in $(seq 1 12); do
    back=$(sn_ssh 'cat ~/marker') || true
    [ "$back" = one ] && break
    sleep 5
done
check "revert brought the file back (got: $back)" test "$back" = one

capture rc - kp -c "$SN_CFG" snapshot create nope s1
check "an undeclared name exits 2" test "$rc" -eq 2
capture rc - kp -c "$SN_CFG" snapshot revert e2e-snap "../s1" --yes
check "an invalid snapshot name exits 2" test "$rc" -eq 2
check "neither changed the snapshots" test "$(sn_names)" = "base s1"

capture rc out kp -c "$SN_CFG" --output json snapshot delete e2e-snap s1
check "snapshot delete exits 0" test "$rc" -eq 0
check "snapshot list no longer has s1 (base stays)" test "$(sn_names)" = base
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
