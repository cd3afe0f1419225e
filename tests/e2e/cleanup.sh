# Scenario: cleanup never hurts what it does not own. Decoys that must survive every cleanup
# mode byte for byte and stay defined/running: a domain whose name is a prefix of a declared
# one (app-0 vs app-01), one differing only in case (APP-01), one whose disk lives in the
# instance pool, one whose disk path is a symlink into the cache, and an unrelated pool file.
# A declared instance whose disk was replaced by a symlink to a file outside the pool: its
# domain goes, the outside file stays, the refusal is reported. A declared instance whose disk
# links to another pool file and whose console log links to kvmprov's private key: the links go,
# as links, and nothing else. A foreign domain whose raw disk starts with a qcow2 header naming a
# FIFO: every cleanup and prune still finishes within seconds (they once blocked in open(fifo)).
# Run by tests/e2e/run.sh (e2e_scenario): everything under its scratch directory.

C="$E2E_SCRATCH"
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
e2e_own_domains app-01 app-02 app-03 app-0 APP-01 decoy-pool decoy-link decoy-fifo
ckp() { kp -c "$CCFG" "$@"; }

# Declared instances, defined (not booted): disks, seeds, domains.
check "cleanup scenario: image cached" ckp image-cache
check "cleanup scenario: provision stage creates disks and domains" ckp provision --stage provision

# Decoys.
decoy_domain() { # name disk [driver type]
    cat >"$C/$1.xml" <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='${3:-qcow2}'/>
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
# A foreign domain whose *raw* disk carries a qcow2 header naming a FIFO (what a guest can write
# into its own raw disk); `-u`: qemu-img must not open the FIFO itself.
mkfifo "$C/outside/fifo"
qemu-img create -q -f qcow2 -u -b "$C/outside/fifo" -F raw "$C/outside/raw-fifo.img" 64M
decoy_domain decoy-fifo "$C/outside/raw-fifo.img" raw
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
        "$cached_image" "$C/instances/notes.txt" "$C/outside/precious.img" "$C/outside/raw-fifo.img" 2>&1
    virsh_ns dumpxml --inactive decoy-fifo 2>&1 | sha256sum
    readlink "$C/instances/decoy-link.qcow2"
}
listing() { virsh_ns list --all --name | sort; ls -la "$C/instances" | awk '{print $1, $5, $NF}'; }

# kvmprov under `timeout 30`: status 124 is a run that hung (the FIFO), anything else finished.
#   ckp30 ARGS... ; then $rc is kvmprov's status, $out its stdout ($C/last.err its stderr)
ckp30() {
    capture --stdout rc out timeout 30 "${E2E_IN[@]}" "$KVMPROV" -c "$CCFG" "$@" 2>"$C/last.err"
}
fifo_check() { # what
    check "regression_cleanup_and_prune_hung_on_a_fifo_named_in_a_raw_disks_header: $1 finished within 30 s (status $rc)" \
        test "$rc" -ne 124
}

before=$(fingerprint)
all_before=$(listing)
ckp30 cleanup
fifo_check "dry-run cleanup"
check "dry-run cleanup succeeds beside a raw disk with a qcow2 header" test "$rc" -eq 0
check "unconfirmed cleanup changes nothing (domains and pool listing)" test "$all_before" = "$(listing)"
check "unconfirmed cleanup says how to confirm" grep -q "kvm_cleanup_confirmed=true" <<<"$out"
check "decoys intact after unconfirmed cleanup" test "$before" = "$(fingerprint)"

# A paused declared domain is stopped and removed too.
virsh_ns start app-03 >/dev/null
virsh_ns suspend app-03 >/dev/null
check "app-03 is paused before cleanup" test "$(virsh_ns domstate app-03)" = paused
ckp30 -e kvm_cleanup_confirmed=true cleanup
fifo_check "confirmed cleanup"
left=$(virsh_ns list --all --name)
check "cleanup-force removed app-01, app-02 and the paused app-03" bash -c '! grep -qx "app-0[123]" <<<"$0"' "$left"
check "cleanup-force kept the disks" test -f "$C/instances/app-01.qcow2"
check "decoys intact after cleanup-force" test "$before" = "$(fingerprint)"

# Define the declared ones again (disks are still there) and remove them with their disks.
ckp provision --stage provision >/dev/null 2>&1 || true
# app-03's disk now links to another file of the pool, its console log to kvmprov's private key
# (a stand-in when this run made no key): cleanup once deleted both targets and left the links.
qemu-img create -q -f qcow2 "$C/instances/db-old.qcow2" 64M
key="$C/instances/.kvmprov/id_ed25519"
[ -f "$key" ] || { install -m 0600 /dev/null "$key" && echo "stand-in key" >"$key"; }
rm -f "$C/instances/app-03.qcow2" "$C/instances/app-03-console.log"
ln -s db-old.qcow2 "$C/instances/app-03.qcow2"
ln -s .kvmprov/id_ed25519 "$C/instances/app-03-console.log"
kept_files() { sha256sum "$C/instances/db-old.qcow2" "$key" 2>&1; }
kept_before=$(kept_files)
ckp30 -e kvm_cleanup_remove_instance_disks=true cleanup
fifo_check "dry-run cleanup with disks"
check "regression_cleanup_deleted_a_symlinks_target: the plan says only app-03's link goes" \
    grep -qF "app-03.qcow2 (a symlink to $C/instances/db-old.qcow2: only the link is removed)" <<<"$out"
ckp30 -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true --output json cleanup
fifo_check "confirmed cleanup with disks"
check "regression_cleanup_deleted_a_symlinks_target: the link's target and kvmprov's key survived" \
    test "$kept_before" = "$(kept_files)"
check "regression_cleanup_deleted_a_symlinks_target: both links were removed as links" \
    test ! -L "$C/instances/app-03.qcow2" -a ! -L "$C/instances/app-03-console.log"
check "regression_cleanup_deleted_a_symlinks_target: the report names the link" \
    outcome "$out" app-03 delete "app-03-console.log \\(a symlink to .*id_ed25519: only the link is removed\\)"
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
ckp30 --output json image-cache prune --yes
fifo_check "image-cache prune --yes"
kept() { jqt 'any(.stages[].outcomes[]; .op == "ok" and (.reason | test("backs a domain")))' <<<"$out" && test -f "$cached_image"; }
check "prune keeps an image a domain's disk uses" kept
virsh_ns undefine decoy-link >/dev/null
ckp30 --output json image-cache prune
fifo_check "image-cache prune (listing)"
listed() { jqt 'any(.stages[].outcomes[]; .op == "delete" and (.reason | test("used by no domain")))' <<<"$out" && test -f "$cached_image"; }
check "prune without --yes only lists the unused image" listed
ckp30 image-cache prune --yes
fifo_check "image-cache prune --yes (deleting)"
check "prune --yes deletes it with its sidecar" test ! -e "$cached_image" -a ! -e "$cached_image.json"
