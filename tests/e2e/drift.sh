# Scenario: drift applied, on two booted TCG guests (Debian $E2E_N twin, BIOS, 1 vCPU, 768 MiB,
# 4 GiB root disk). A data disk and a NIC added to the first are hot-plugged: seen inside it by
# serial and by MAC, with no restart (same boot id). Then both take a change that needs a restart
# (the first: vCPUs 1 → 2, memory 768 → 1024 MiB, root disk 4 → 6 GiB; the second: memory):
# `provision --check` shows each field's old and new value and how it is applied, in the human
# text and the JSON, and changes nothing; applying restarts each guest once, one at a time (their
# unavailable windows do not overlap), and inside the first `nproc`, /proc/meminfo and the root
# file system show the new values while a file written before is still there. A run after it
# finds no drift left. Last, the first guest's firmware goes BIOS → UEFI (a recreate step): with
# only kvm_drift_apply_confirmed the step is reported with the variable that applies it and
# nothing changes; `--check` with both confirmations says the guest is re-created; applying with
# both re-creates it (new root disk, seed and domain) and it comes back SSH-ready with its pinned
# (new) host key, booted by UEFI, with the bytes written on its kept data disk still there.
# Runs alone: tests/e2e/run.sh drift
DR="$E2E_SCRATCH"
DR_CFG="$DR/vars.yml"
DR_POOL="$DR/instances"
e2e_own_domains e2e-drift-a e2e-drift-b

# drift_config A_VCPUS A_MEM A_DISK B_MEM EXTRA_A
drift_config() {
    e2e_config_head "$DR/images" "$DR_POOL" "e2e-drift-pw"
    cat <<EOF
  - instance_name: e2e-drift-a
    image_name: debian-$E2E_N
    vcpus: $1
    memory_mib: $2
    disk_size_gib: $3
$5
  - instance_name: e2e-drift-b
    image_name: debian-$E2E_N
    vcpus: 1
    memory_mib: $4
    disk_size_gib: 4
EOF
}
DR_PLUGGED='    disks:
      - {name: extra, size_gib: 1}
    nics:
      - network: default
      - {network: default, mac: "52:54:00:d7:00:02"}'

dr_ssh() { kp -c "$DR_CFG" ssh "$1" -- "$2" 2>&1; }
boot_id() { dr_ssh "$1" 'cat /proc/sys/kernel/random/boot_id'; }

# --- two guests ----------------------------------------------------------------------------------
drift_config 1 768 4 768 "" >"$DR_CFG"
log "kvmprov provision (full): two TCG guests"
# dr_failures JSON: the run's error and its failed actions, in the log (what a failed apply says).
dr_failures() {
    jq -r '(.error // empty), (.stages[]?.outcomes[]? | select(.status == "failed") | "\(.target) \(.op) failed: \(.detail)")' "$1" 2>/dev/null |
        cut -c1-400 | while IFS= read -r l; do log "  $l"; done
}
capture rc - kp -c "$DR_CFG" --output json -e kvm_runtime_timeout_seconds=1200 provision >"$DR/provision.json" 2>"$DR/provision.log"
evidence "$DR/provision.log"
console_evidence "$DR_POOL/e2e-drift-a-console.log" "$DR_POOL/e2e-drift-b-console.log"
check "provision of two guests exits 0" test "$rc" -eq 0
dr_ssh e2e-drift-a 'echo kept-across-the-restart | sudo tee /var/tmp/drift-keep >/dev/null; sync' || true
boot_a0=$(boot_id e2e-drift-a) || true
boot_b0=$(boot_id e2e-drift-b) || true
log "boot ids: a $boot_a0, b $boot_b0"

# --- live: a data disk and a NIC plugged into the running guest ------------------------------------
drift_config 1 768 4 768 "$DR_PLUGGED" >"$DR_CFG"
plan=$(kp -c "$DR_CFG" --check --output json provision 2>"$DR/check-live.log") || true
echo "$plan" >"$DR/check-live.json"
check "provision --check: the data disk and the NIC are planned live" \
    jqt '[.stages[].outcomes[] | select(.target == "e2e-drift-a" and .op == "drift") | (.drift // [])[]]
         | (map(select(.field == "disks" and .how == "live" and (.new | startswith("extra 1 GiB")))) | length == 1)
           and (map(select(.field == "nics" and .how == "live" and (.new | test("mac 52:54:00:d7:00:02")))) | length == 1)' <<<"$plan"
capture rc - kp -c "$DR_CFG" --output json -e kvm_drift_apply_confirmed=true provision --stage runtime >"$DR/apply-live.json" 2>"$DR/apply-live.log"
evidence "$DR/apply-live.log"
dr_failures "$DR/apply-live.json"
check "applying the live drift exits 0" test "$rc" -eq 0
check "the live drift is applied without a restart" \
    outcome "$(cat "$DR/apply-live.json")" e2e-drift-a apply '^drift applied: .*\(live: .*\)$'
check "the guest was not restarted (same boot id)" test "$(boot_id e2e-drift-a)" = "$boot_a0"
check "inside the guest: the new data disk by its serial (/dev/disk/by-id/virtio-extra)" \
    bash -c 'grep -q "^yes$" <<<"$0"' "$(dr_ssh e2e-drift-a 'test -b /dev/disk/by-id/virtio-extra && echo yes')"
check "inside the guest: a NIC with the new MAC 52:54:00:d7:00:02" \
    bash -c 'grep -q "52:54:00:d7:00:02" <<<"$0"' "$(dr_ssh e2e-drift-a 'ip -o link show')"
check "the data disk's volume is in the instance pool" test -f "$DR_POOL/e2e-drift-a_extra.qcow2"

# --- a plan that needs restarts: shown, nothing changed ----------------------------------------------
drift_config 2 1024 6 1024 "$DR_PLUGGED" >"$DR_CFG"
human=$(kp -c "$DR_CFG" --check provision 2>&1) || true
echo "$human" >"$DR/check-restart.txt"
plan=$(kp -c "$DR_CFG" --check --output json provision 2>"$DR/check-restart.log") || true
echo "$plan" >"$DR/check-restart.json"
check "provision --check (human): vcpus, memory and root disk with old → new and restart" \
    bash -c 'grep -q "vcpus 1 → 2 (restart" <<<"$0" && grep -q "memory_mib 768 → 1024 (restart" <<<"$0" && grep -q "disk_size_gib 4 → 6 (restart" <<<"$0"' "$human"
check "provision --check (JSON): the same three fields for e2e-drift-a, each old, new and how" \
    jqt '[.stages[].outcomes[] | select(.target == "e2e-drift-a" and .op == "drift") | (.drift // [])[] | [.field, .old, .new, .how]]
         == [["vcpus","1","2","restart"],["memory_mib","768","1024","restart"],["disk_size_gib","4","6","restart"]]' <<<"$plan"
check "provision --check (JSON): e2e-drift-b's memory, restart" \
    jqt '[.stages[].outcomes[] | select(.target == "e2e-drift-b" and .op == "drift") | (.drift // [])[] | [.field, .old, .new, .how]]
         == [["memory_mib","768","1024","restart"]]' <<<"$plan"
check "provision --check changed nothing: e2e-drift-a still 1 vCPU and 768 MiB" \
    bash -c 'grep -q "<vcpu placement=.static.>1</vcpu>" <<<"$0" && grep -q "<memory unit=.KiB.>786432</memory>" <<<"$0"' "$(virsh_ns dumpxml e2e-drift-a)"
check "provision --check changed nothing: the root disk is still 4 GiB" \
    bash -c 'grep -q "virtual size: 4 GiB" <<<"$0"' "$(qemu-img info -U "$DR_POOL/e2e-drift-a.qcow2")"
check "provision --check changed nothing: the same boot ids" \
    test "$(boot_id e2e-drift-a)/$(boot_id e2e-drift-b)" = "$boot_a0/$boot_b0"

# --- applied: one guest at a time ----------------------------------------------------------------------
log "kvmprov provision with kvm_drift_apply_confirmed=true: two restarts, one at a time"
t0=$(date +%s)
capture rc - kp -c "$DR_CFG" --output json -e kvm_drift_apply_confirmed=true -e kvm_runtime_timeout_seconds=900 provision >"$DR/apply.json" 2>"$DR/apply.log"
evidence "$DR/apply.log"
dr_failures "$DR/apply.json"
log "the rollout took $(($(date +%s) - t0)) s"
check "applying the drift exits 0" test "$rc" -eq 0
for g in e2e-drift-a e2e-drift-b; do
    check "$g was restarted once and is ready again" \
        outcome "$(cat "$DR/apply.json")" "$g" apply 'restarted: unavailable .* cloud-init done'
done
win() { jq -r --arg t "$1" '.stages[].outcomes[] | select(.target == $t and .op == "apply") | .reason
    | capture("unix (?<a>[0-9.]+) to (?<b>[0-9.]+)") | "\(.a) \(.b)"' "$DR/apply.json"; }
read -r a0 a1 <<<"$(win e2e-drift-a)" || true
read -r b0 b1 <<<"$(win e2e-drift-b)" || true
log "unavailable: e2e-drift-a ${a0:-?}–${a1:-?}, e2e-drift-b ${b0:-?}–${b1:-?}"
check "the two guests' unavailable windows do not overlap" \
    awk -v a0="${a0:-0}" -v a1="${a1:-0}" -v b0="${b0:-0}" -v b1="${b1:-0}" \
    'BEGIN { exit !(a1 > a0 && b1 > b0 && (a1 <= b0 || b1 <= a0)) }'
check "the boot ids changed (each guest restarted)" \
    bash -c '[ "$0" != "$1" ] && [ "$2" != "$3" ]' "$(boot_id e2e-drift-a)" "$boot_a0" "$(boot_id e2e-drift-b)" "$boot_b0"
check "inside e2e-drift-a: nproc is 2" test "$(dr_ssh e2e-drift-a nproc)" = 2
memkb=$(dr_ssh e2e-drift-a "awk '/^MemTotal:/ {print \$2}' /proc/meminfo") || true
log "e2e-drift-a MemTotal: $memkb kB"
check "inside e2e-drift-a: /proc/meminfo shows ~1024 MiB (MemTotal > 900 MiB)" test "${memkb:-0}" -gt 921600
rootkb=$(dr_ssh e2e-drift-a "df -k --output=size / | tail -1") || true
log "e2e-drift-a root file system: $rootkb KiB"
check "inside e2e-drift-a: the root file system grew to at least 5.5 GiB" test "${rootkb// /}" -ge 5767168
check "inside e2e-drift-a: the file written before the restart is still there" \
    test "$(dr_ssh e2e-drift-a 'cat /var/tmp/drift-keep')" = kept-across-the-restart
memkb_b=$(dr_ssh e2e-drift-b "awk '/^MemTotal:/ {print \$2}' /proc/meminfo") || true
check "inside e2e-drift-b: /proc/meminfo shows ~1024 MiB" test "${memkb_b:-0}" -gt 921600

plan=$(kp -c "$DR_CFG" --check --output json provision 2>/dev/null) || true
check "after the rollout no drift is left" \
    jqt '[.stages[].outcomes[] | select(.op == "drift")] | length == 0' <<<"$plan"

# --- recreate: BIOS → UEFI on e2e-drift-a, its data disk kept ---------------------------------------
dr_ssh e2e-drift-a 'printf kept-on-the-data-disk | sudo dd of=/dev/disk/by-id/virtio-extra conv=fsync status=none' || true
boot_a1=$(boot_id e2e-drift-a) || true
boot_b1=$(boot_id e2e-drift-b) || true
drift_config 2 1024 6 1024 "$DR_PLUGGED
    firmware: uefi" >"$DR_CFG"
capture rc - kp -c "$DR_CFG" --output json -e kvm_drift_apply_confirmed=true provision --stage runtime >"$DR/recreate-unconfirmed.json" 2>"$DR/recreate-unconfirmed.log"
evidence "$DR/recreate-unconfirmed.log"
check "applying without the recreate confirmation exits 0" test "$rc" -eq 0
check "without it the firmware step is reported with the variable that applies it (one line)" \
    jqt '[.stages[].outcomes[] | select(.target == "e2e-drift-a" and .op == "skip" and (.reason | test("not re-created: firmware .*kvm_drift_recreate_confirmed=true")))] | length == 1' <"$DR/recreate-unconfirmed.json"
check "without it nothing changed: e2e-drift-a is still BIOS and in the same boot" \
    bash -c '! grep -Eq "firmware=.efi.|<loader" <<<"$0" && [ "$1" = "$2" ]' "$(virsh_ns dumpxml e2e-drift-a)" "$(boot_id e2e-drift-a)" "$boot_a1"
plan=$(kp -c "$DR_CFG" --check --output json -e kvm_drift_apply_confirmed=true -e kvm_drift_recreate_confirmed=true provision 2>"$DR/check-recreate.log") || true
echo "$plan" >"$DR/check-recreate.json"
check "provision --check with both confirmations: firmware bios → uefi, recreate, the guest is re-created" \
    jqt '[.stages[].outcomes[] | select(.target == "e2e-drift-a" and .op == "drift") | (.drift // [])[]
          | select(.field == "firmware" and .old == "bios" and .new == "uefi" and .how == "recreate" and (.why | test("re-created")))] | length == 1' <<<"$plan"
check "provision --check with both confirmations changed nothing" \
    bash -c '! grep -Eq "firmware=.efi.|<loader" <<<"$0"' "$(virsh_ns dumpxml e2e-drift-a)"
log "kvmprov provision --stage runtime with both drift confirmations: e2e-drift-a re-created"
t0=$(date +%s)
capture rc - kp -c "$DR_CFG" --output json -e kvm_drift_apply_confirmed=true -e kvm_drift_recreate_confirmed=true -e kvm_runtime_timeout_seconds=900 provision --stage runtime >"$DR/recreate.json" 2>"$DR/recreate.log"
evidence "$DR/recreate.log"
console_evidence "$DR_POOL/e2e-drift-a-console.log"
dr_failures "$DR/recreate.json"
log "the recreate took $(($(date +%s) - t0)) s"
check "applying the recreate exits 0" test "$rc" -eq 0
check "e2e-drift-a was re-created and is ready again (SSH with its pinned key, cloud-init done)" \
    outcome "$(cat "$DR/recreate.json")" e2e-drift-a apply 're-created: unavailable .* cloud-init done'
check "its data disk was kept, not deleted" \
    bash -c '! jq -e "[.stages[].outcomes[] | select(.op == \"delete\" and (.reason | test(\"_extra\")))] | length > 0" "$0" >/dev/null' "$DR/recreate.json"
check "the domain boots by UEFI now (a loader in its XML)" \
    bash -c 'grep -Eq "firmware=.efi.|<loader" <<<"$0"' "$(virsh_ns dumpxml e2e-drift-a)"
check "inside e2e-drift-a: /sys/firmware/efi exists, a new boot" \
    bash -c '[ "$0" = yes ] && [ "$1" != "$2" ]' "$(dr_ssh e2e-drift-a 'test -d /sys/firmware/efi && echo yes')" "$(boot_id e2e-drift-a)" "$boot_a1"
check "inside e2e-drift-a: the bytes written on the data disk before are still there" \
    test "$(dr_ssh e2e-drift-a 'sudo head -c 21 /dev/disk/by-id/virtio-extra')" = kept-on-the-data-disk
check "e2e-drift-b was not touched (same boot)" test "$(boot_id e2e-drift-b)" = "$boot_b1"
plan=$(kp -c "$DR_CFG" --check --output json provision 2>/dev/null) || true
check "after the recreate no drift is left" \
    jqt '[.stages[].outcomes[] | select(.op == "drift")] | length == 0' <<<"$plan"

kp -c "$DR_CFG" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null
check "cleanup removed both guests" \
    bash -c '! grep -q "^e2e-drift-" <<<"$0"' "$(virsh_ns list --all --name)"
