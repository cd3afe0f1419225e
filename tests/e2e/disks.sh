# Scenario: data disks on one booted TCG guest (Debian $E2E_N twin, DHCP on libvirt's NAT
# network): `data` (ext4, mounted at /srv/data) and `raw` (left raw). `provision --check` has a
# line per disk and changes nothing; inside the guest /srv/data is the `data` disk, both
# /dev/disk/by-id/virtio-<name> links exist, fstab has nofail, the raw disk holds no file
# system; status JSON lists both. A file written to /srv/data survives `cleanup-force` (which
# names the kept disks) and a re-provision (the disk is used as it is, not formatted again);
# `cleanup-force-disks` then deletes the data disk volumes too. The seed's user-data passes
# cloud-init 22.4's and 25.1's schema.
# Runs alone: tests/e2e/run.sh disks
DK="$E2E_SCRATCH"
DK_CFG="$DK/vars.yml"
DK_POOL="$DK/instances"
e2e_own_domains e2e-disks
{
    e2e_config_head "$DK/images" "$DK_POOL" "e2e-disks-pw"
    cat <<EOF
  - instance_name: e2e-disks
    image_name: debian-$E2E_N
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
    disks:
      - name: data
        size_gib: 1
        filesystem: ext4
        mount: /srv/data
        mount_options: noatime
      - name: raw
        size_gib: 1
EOF
} >"$DK_CFG"

check "check accepts the data disks config" kp -c "$DK_CFG" check

# --- --check: a line per disk, nothing changed ------------------------------------------------
plan=$(kp -c "$DK_CFG" --check --output json provision 2>"$DK/check.log") || true
check "provision --check: a create line for the data disk" \
    outcome "$plan" e2e-disks create '^data disk e2e-disks_data\.qcow2 \(data 1 GiB ext4 on /srv/data, /dev/disk/by-id/virtio-data\): missing, created empty$'
check "provision --check: a create line for the raw disk" \
    outcome "$plan" e2e-disks create '^data disk e2e-disks_raw\.qcow2 \(raw 1 GiB raw, /dev/disk/by-id/virtio-raw\): missing, created empty$'
check "provision --check created no volume and no domain" \
    bash -c '[ ! -e "$0/e2e-disks_data.qcow2" ] && [ ! -e "$0/e2e-disks_raw.qcow2" ] && ! grep -qx e2e-disks <<<"$1"' \
    "$DK_POOL" "$(virsh_ns list --all --name)"

# --- first life ----------------------------------------------------------------------------------
log "kvmprov provision (full): one TCG guest with two data disks"
capture rc - kp -c "$DK_CFG" --output json -e kvm_runtime_timeout_seconds=1200 provision >"$DK/provision.json" 2>"$DK/provision.log"
evidence "$DK/provision.log"
console_evidence "$DK_POOL/e2e-disks-console.log"
check "provision with data disks exits 0" test "$rc" -eq 0
check "e2e-disks is ready: SSH with the pinned host key and cloud-init done" \
    outcome "$(cat "$DK/provision.json")" e2e-disks wait "^ready at .*cloud-init done"
check "provision created the data disk volume" \
    outcome "$(cat "$DK/provision.json")" e2e-disks create '^data disk e2e-disks_data\.qcow2 .*: missing, created empty$'
# -U: the running qemu holds the images' write lock.
check "both data disk volumes are qcow2 files in the instance pool" \
    bash -c 'for d in data raw; do qemu-img info -U "$0/e2e-disks_$d.qcow2" | grep -q "file format: qcow2" || exit 1; done' "$DK_POOL"

dk_ssh() { kp -c "$DK_CFG" ssh e2e-disks -- "$1" 2>&1; }
by_ids() {
    dk_ssh 'for d in data raw; do test -b /dev/disk/by-id/virtio-$d || exit 1; done; echo both'
}
check "both /dev/disk/by-id/virtio-<serial> links exist" test "$(by_ids)" = both
mnt=$(dk_ssh 'findmnt -n -o SOURCE,FSTYPE /srv/data; readlink -f /dev/disk/by-id/virtio-data') || true
echo "$mnt"
check "findmnt /srv/data shows the data disk, ext4" \
    bash -c 'src=$(sed -n 1p <<<"$0" | cut -d" " -f1); fs=$(sed -n 1p <<<"$0" | tr -s " " | cut -d" " -f2); dev=$(sed -n 2p <<<"$0"); [ "$fs" = ext4 ] && [ "$(basename "$src")" = "$(basename "$dev")" ]' "$mnt"
fstab=$(dk_ssh 'grep virtio-data /etc/fstab') || true
check "fstab mounts it by serial with nofail and the configured options" \
    bash -c 'grep -q "/srv/data" <<<"$0" && grep -q "noatime,nofail" <<<"$0"' "$fstab"
check "the raw disk holds no file system" \
    test "$(dk_ssh 'sudo -n blkid /dev/disk/by-id/virtio-raw >/dev/null; echo $?')" = 2
check "a file written to /srv/data" \
    test "$(dk_ssh 'echo kept-across-lives | sudo -n tee /srv/data/marker >/dev/null && sync && cat /srv/data/marker')" = kept-across-lives
st=$(kp -c "$DK_CFG" --output json status 2>"$DK/status.err") || true
check "status JSON lists both data disks with their volumes" \
    jqt '.instances[0].disks | length == 2 and .[0].name == "data" and .[0].capacity_bytes == 1073741824 and .[0].mount == "/srv/data" and .[1].by_id == "/dev/disk/by-id/virtio-raw" and .[1].capacity_bytes == 1073741824' <<<"$st"
ci=$(dk_ssh "cloud-init status --long") || true
check "cloud-init finished without errors or warnings" bash -c 'grep -q "status: done" <<<"$0" && ! grep -qi "recoverable_errors: {[^}]" <<<"$0"' "$ci"

seed="$DK_POOL/e2e-disks-seed.iso"
e2e_seed_docs "$seed" "$DK/seed-docs" e2e-disks
check "the seed's user-data has fs_setup and mounts" \
    bash -c 'grep -q "^\"fs_setup\":" "$0" && grep -q "^\"mounts\":" "$0"' "$DK/seed-docs/e2e-disks.user-data"
e2e_seed_schema "$DK/seed-docs" "$DK/schema.log"

# --- cleanup-force keeps the data disks; the next life finds the file --------------------------
out=$(kp -c "$DK_CFG" -e kvm_cleanup_confirmed=true --output json cleanup 2>"$DK/cleanup.err") || true
check "cleanup-force removed the domain" bash -c '! grep -qx e2e-disks <<<"$0"' "$(virsh_ns list --all --name)"
check "cleanup-force names the data disk it keeps" \
    outcome "$out" e2e-disks skip "^data disk $DK_POOL/e2e-disks_data\\.qcow2 kept: removed only with kvm_cleanup_remove_instance_disks=true"
check "cleanup-force kept both data disk volumes" \
    bash -c '[ -s "$0/e2e-disks_data.qcow2" ] && [ -s "$0/e2e-disks_raw.qcow2" ]' "$DK_POOL"

log "kvmprov provision again: the data disks are used as they are"
capture rc - kp -c "$DK_CFG" --output json -e kvm_runtime_timeout_seconds=1200 provision >"$DK/provision2.json" 2>"$DK/provision2.log"
evidence "$DK/provision2.log"
check "re-provision exits 0" test "$rc" -eq 0
check "re-provision used the existing data disk as it is" \
    outcome "$(cat "$DK/provision2.json")" e2e-disks ok '^data disk e2e-disks_data\.qcow2 .*: exists, used as it is$'
check "e2e-disks is ready again" \
    outcome "$(cat "$DK/provision2.json")" e2e-disks wait "^ready at .*cloud-init done"
check "the file written in the first life is still in /srv/data" \
    test "$(dk_ssh 'cat /srv/data/marker')" = kept-across-lives
check "both /dev/disk/by-id links again" test "$(by_ids)" = both
plan=$(kp -c "$DK_CFG" --check --output json provision 2>/dev/null) || true
check "provision --check on the provisioned guest: both disks ok, the instance matches" \
    bash -c 'for r in "^data disk e2e-disks_data" "^data disk e2e-disks_raw" "^domain exists and matches the config"; do jq -e --arg r "$r" "any(.stages[].outcomes[]; .target == \"e2e-disks\" and .op == \"ok\" and (.reason | test(\$r)))" <<<"$0" >/dev/null || exit 1; done' "$plan"

# --- cleanup-force-disks deletes them -----------------------------------------------------------
kp -c "$DK_CFG" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null
check "cleanup-force-disks removed e2e-disks" bash -c '! grep -qx e2e-disks <<<"$0"' "$(virsh_ns list --all --name)"
check "cleanup-force-disks deleted both data disk volumes" \
    bash -c '[ ! -e "$0/e2e-disks_data.qcow2" ] && [ ! -e "$0/e2e-disks_raw.qcow2" ]' "$DK_POOL"
