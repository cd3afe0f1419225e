# Scenario: cleanup never hurts what it does not own. Decoys that must survive every cleanup
# mode byte for byte and stay defined/running: a domain whose name is a prefix of a declared
# one (app-0 vs app-01), one differing only in case (APP-01), one whose disk lives in the
# instance pool, one whose disk path is a symlink into the cache, and an unrelated pool file.
# A declared instance whose disk was replaced by a symlink to a file outside the pool: its
# domain goes, the outside file stays, the refusal is reported.
# Sourced by tests/e2e/run.sh.

C="$E2E_DIR/cleanup"
mkdir -p "$C/outside"
chmod 0755 "$C" "$C/outside"
CCFG="$C/vars.yml"
{
    e2e_config_head "$C/images" "$C/instances"
    cat <<EOF
  - {instance_name: app-01, image_name: debian-$E2E_N, vcpus: 1, memory_mib: 256, disk_size_gib: 4}
  - {instance_name: app-02, image_name: debian-$E2E_N, vcpus: 1, memory_mib: 256, disk_size_gib: 4}
  - {instance_name: app-03, image_name: debian-$E2E_N, vcpus: 1, memory_mib: 256, disk_size_gib: 4}
EOF
} >"$CCFG"
E2E_DOMAINS="$E2E_DOMAINS app-01 app-02 app-03 app-0 APP-01 decoy-pool decoy-link"
ckp() { kp -c "$CCFG" "$@"; }

# Declared instances, defined (not booted): disks, seeds, domains.
check "cleanup scenario: image cached" ckp image-cache
check "cleanup scenario: provision stage creates disks and domains" ckp provision --stage provision

# Decoys.
decoy_domain() { # name disk
    cat >"$C/$1.xml" <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOF
    virsh_ns define "$C/$1.xml" >/dev/null
}
qemu-img create -q -f qcow2 "$C/outside/app-0.qcow2" 64M
qemu-img create -q -f qcow2 "$C/outside/APP-01.qcow2" 64M
qemu-img create -q -f qcow2 "$C/instances/decoy-pool.qcow2" 64M
cached_image=$(ls "$C"/images/*.qcow2 | head -n 1)
ln -s "$cached_image" "$C/instances/decoy-link.qcow2"
decoy_domain app-0 "$C/outside/app-0.qcow2"
decoy_domain APP-01 "$C/outside/APP-01.qcow2"
decoy_domain decoy-pool "$C/instances/decoy-pool.qcow2"
decoy_domain decoy-link "$C/instances/decoy-link.qcow2"
virsh_ns start app-0 >/dev/null
virsh_ns start decoy-pool >/dev/null
echo "operator notes" >"$C/instances/notes.txt"
# app-02's disk replaced by a symlink to a file outside the pool.
echo "precious data outside the pool" >"$C/outside/precious.img"
rm -f "$C/instances/app-02.qcow2"
ln -s "$C/outside/precious.img" "$C/instances/app-02.qcow2"

fingerprint() {
    local d
    for d in app-0 APP-01 decoy-pool decoy-link; do
        echo "$d $(virsh_ns domstate "$d" 2>&1)"
        virsh_ns dumpxml --inactive "$d" 2>&1 | sha256sum
    done
    sha256sum "$C/outside/app-0.qcow2" "$C/outside/APP-01.qcow2" "$C/instances/decoy-pool.qcow2" \
        "$cached_image" "$C/instances/notes.txt" "$C/outside/precious.img" 2>&1
    readlink "$C/instances/decoy-link.qcow2"
}
listing() { virsh_ns list --all --name | sort; ls -la "$C/instances" | awk '{print $1, $5, $NF}'; }

before=$(fingerprint)
all_before=$(listing)
out=$(ckp cleanup 2>&1)
check "unconfirmed cleanup changes nothing (domains and pool listing)" test "$all_before" = "$(listing)"
check "unconfirmed cleanup says how to confirm" grep -q "kvm_cleanup_confirmed=true" <<<"$out"
check "decoys intact after unconfirmed cleanup" test "$before" = "$(fingerprint)"

# A paused declared domain is stopped and removed too.
virsh_ns start app-03 >/dev/null
virsh_ns suspend app-03 >/dev/null
check "app-03 is paused before cleanup" test "$(virsh_ns domstate app-03)" = paused
out=$(ckp -e kvm_cleanup_confirmed=true cleanup 2>&1) || true
left=$(virsh_ns list --all --name)
check "cleanup-force removed app-01, app-02 and the paused app-03" bash -c '! grep -qx "app-0[123]" <<<"$0"' "$left"
check "cleanup-force kept the disks" test -f "$C/instances/app-01.qcow2"
check "decoys intact after cleanup-force" test "$before" = "$(fingerprint)"

# Define the declared ones again (disks are still there) and remove them with their disks.
ckp provision --stage provision >/dev/null 2>&1 || true
out=$(ckp -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true --output json cleanup) || true
jq -r '.stages[].outcomes[] | select(.op == "refuse" or .op == "delete") | "  \(.op) \(.target) \(.reason)"' <<<"$out" || true
left=$(virsh_ns list --all --name)
check "cleanup-force-disks removed the declared domains" bash -c '! grep -qx "app-0[123]" <<<"$0"' "$left"
check "cleanup-force-disks deleted app-01's disk and seed" \
    test ! -e "$C/instances/app-01.qcow2" -a ! -e "$C/instances/app-01-seed.iso"
check "the outside file behind app-02's symlink survived" \
    test "$(cat "$C/outside/precious.img")" = "precious data outside the pool"
check "the refusal for app-02 is reported" outcome "$out" app-02 refuse "outside the instance pool"
check "decoys intact after cleanup-force-disks" test "$before" = "$(fingerprint)"
check "decoy app-0 is still running" test "$(virsh_ns domstate app-0)" = running
check "cache file untouched" test -f "$cached_image"

# image-cache prune: the cached image backs decoy-link's disk (through a symlink): kept.
out=$(ckp --output json image-cache prune --yes)
kept() { jqt 'any(.stages[].outcomes[]; .op == "ok" and (.reason | test("backs a domain")))' <<<"$out" && test -f "$cached_image"; }
check "prune keeps an image a domain's disk uses" kept
virsh_ns undefine decoy-link >/dev/null
out=$(ckp --output json image-cache prune)
listed() { jqt 'any(.stages[].outcomes[]; .op == "delete" and (.reason | test("used by no domain")))' <<<"$out" && test -f "$cached_image"; }
check "prune without --yes only lists the unused image" listed
ckp image-cache prune --yes >/dev/null 2>&1
check "prune --yes deletes it with its sidecar" test ! -e "$cached_image" -a ! -e "$cached_image.json"
