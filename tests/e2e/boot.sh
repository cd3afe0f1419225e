# Scenario: two real TCG guests through `provision` (stage full), checked over SSH, re-run
# idempotently, cleaned up. Sourced by tests/e2e/run.sh (which sets up and tears down).
CFG="$E2E_DIR/vars.yml"
E2E_DOMAINS="$E2E_DOMAINS e2e-dhcp e2e-static"
N=$E2E_N
cat >"$CFG" <<EOF
kvm_hypervisor_host: localhost
kvm_domain_type: qemu
kvm_image_cache_path: $E2E_DIR/boot-images
kvm_instance_disk_pool_path: $E2E_DIR/instances
kvm_runtime_timeout_seconds: 600
kvm_cloud_image_catalog:
  - image_name: debian-$N
    image_url: $E2E_BASE/$E2E_SUITE/latest/debian-$N-genericcloud-amd64.qcow2
    image_checksum_manifest_url: $E2E_BASE/$E2E_SUITE/latest/SHA512SUMS
kvm_cloud_init_defaults:
  user: debian
  password: "e2e-Plain-Secret-42"
kvm_instance_definitions:
  - instance_name: e2e-dhcp
    image_name: debian-$N
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
  - instance_name: e2e-static
    image_name: debian-$N
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
    ipv4_address: 192.168.122.60/24
    snapshot_name: baseline
EOF
chmod 0600 "$CFG"

# --- check and ping -------------------------------------------------------------------------
check "check accepts the test config" kp -c "$CFG" check
out=$(kp -c "$CFG" ping 2>&1) || true
check "ping prints versions and domain types" grep -q "domain type qemu   available" <<<"$out"
set +e
out=$("$KVMPROV" -c "$CFG" -e 'kvm_libvirt_uri=qemu+unix:///system?socket=/nonexistent/sock' ping 2>&1)
rc=$?
set -e
check "ping without a daemon exits 1 with one sentence" test "$rc" -eq 1 -a "$(wc -l <<<"$out")" -eq 1

# --- check mode changes nothing ---------------------------------------------------------------
before=$(virsh_ns list --all --name)
check "provision --check exits 0" kp -c "$CFG" --check provision
after=$(virsh_ns list --all --name)
check "provision --check defined no domain" test "$before" = "$after"
check "provision --check downloaded nothing" test ! -e "$E2E_DIR/boot-images"

# --- the full run -----------------------------------------------------------------------------
log "kvmprov provision (full): two TCG guests, this takes a few minutes"
start=$(date +%s)
# Every process's arguments while the guests boot and are SSH-checked: no password, no key.
(while :; do ps -eo args; sleep 0.2; done) >"$E2E_DIR/boot-ps.log" 2>/dev/null &
ps_pid=$!
set +e
kp -c "$CFG" provision 2>&1 | tee "$E2E_DIR/provision.log"
rc=${PIPESTATUS[0]}
E2E_EVIDENCE+=("$E2E_DIR/provision.log")
set -e
kill "$ps_pid" 2>/dev/null
wait "$ps_pid" 2>/dev/null || true
check "during runtime no process argument holds the password or a private key ($(grep -c '^COMMAND' "$E2E_DIR/boot-ps.log") samples)" \
    bash -c '! grep -qE "e2e-Plain-Secret-42|PRIVATE KEY" "$0"' "$E2E_DIR/boot-ps.log"
check "runtime ran ssh with the pinned host key (seen in ps)" \
    grep -q "ssh .*StrictHostKeyChecking=yes" "$E2E_DIR/boot-ps.log"
log "full run took $(($(date +%s) - start))s"
check "full provision exits 0" test "$rc" -eq 0
grep "ready at" "$E2E_DIR/provision.log" || true

ssh_out() { kp -c "$CFG" ssh "$1" -- "$2" 2>&1; }
check "e2e-dhcp hostname is its instance name" test "$(ssh_out e2e-dhcp hostname)" = e2e-dhcp
check "e2e-static hostname is its instance name" test "$(ssh_out e2e-static hostname)" = e2e-static
addrs=$(ssh_out e2e-static "ip -4 -o addr show scope global")
check "e2e-static has its static address" grep -q "192.168.122.60/24" <<<"$addrs"
check "the user can sudo" test "$(ssh_out e2e-dhcp 'sudo -n id -u')" = 0
shadow=$(ssh_out e2e-dhcp "sudo -n grep '^debian:' /etc/shadow")
check "shadow holds a SHA-512 crypt hash" grep -q '^debian:\$6\$' <<<"$shadow"
check "shadow does not hold the plain password" bash -c '! grep -q "e2e-Plain-Secret-42" <<<"$0"' "$shadow"
ci=$(ssh_out e2e-static "cloud-init status --long")
check "cloud-init finished without errors" grep -q "status: done" <<<"$ci"
st=$(kp -c "$CFG" status 2>&1)
check "status shows both guests running and SSH-ready" \
    bash -c 'grep -Eq "^e2e-dhcp +running .* yes " <<<"$0" && grep -Eq "^e2e-static +running .*192.168.122.60 +yes " <<<"$0"' "$st"
snaps=$(virsh_ns snapshot-list e2e-static --name)
check "snapshot baseline exists" grep -qx baseline <<<"$snaps"

# --- nothing secret is world-readable or in the output -----------------------------------------
check "no world-readable file in the instance pool" \
    test -z "$(find "$E2E_DIR/instances" -perm -o+r -type f 2>/dev/null)"
check "the plain password is in no file of the pool" \
    bash -c '! grep -rqa "e2e-Plain-Secret-42" "$0"' "$E2E_DIR/instances"
check "the plain password is not in the run's output" \
    bash -c '! grep -qa "e2e-Plain-Secret-42" "$0"' "$E2E_DIR/provision.log"

# --- a second full run changes nothing --------------------------------------------------------
set +e
json=$(kp -c "$CFG" --output json provision)
rc=$?
set -e
check "second run exits 0" test "$rc" -eq 0
changed=$(python3 -c '
import json, sys
doc = json.loads(sys.stdin.read())
mut = {"create", "download", "define", "start", "snapshot", "fix", "delete", "undefine", "stop"}
print(sum(1 for s in doc["stages"] for o in s["outcomes"] if o["op"] in mut and o["status"] == "done"))
' <<<"$json")
check "second run changed nothing (changed=$changed)" test "$changed" -eq 0

# --- a paused guest is resumed by runtime ---------------------------------------------------------
virsh_ns suspend e2e-dhcp >/dev/null
set +e
kp -c "$CFG" runtime >"$E2E_DIR/resume.log" 2>&1
rc=$?
set -e
check "runtime resumes a paused guest and finds it SSH-ready" \
    bash -c '[ "$0" -eq 0 ] && grep -q "domain is Paused: resume" "$1"' "$rc" "$E2E_DIR/resume.log"
check "the resumed guest is running" test "$(virsh_ns domstate e2e-dhcp)" = running

# --- cleanup: plan only, then for real ---------------------------------------------------------
instance_id() { virsh_ns dumpxml "$1" | grep -o "instance-id=[\"'][^\"']*" | cut -c14-; }
old_id=$(instance_id e2e-dhcp)
before=$(virsh_ns list --all --name)
kp -c "$CFG" cleanup >/dev/null
check "cleanup without confirmation changes nothing" test "$before" = "$(virsh_ns list --all --name)"
kp -c "$CFG" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup
left=$(virsh_ns list --all --name)
check "confirmed cleanup removed both domains${left:+ (listed after it: ${left//$'\n'/ })}" \
    bash -c '! grep -q "^e2e-" <<<"$0"' "$left"
check "confirmed cleanup removed the disks" test ! -e "$E2E_DIR/instances/e2e-dhcp.qcow2"
check "cleanup kept the cached image" bash -c 'ls "$0"/*.qcow2 >/dev/null' "$E2E_DIR/boot-images"


# --- cleanup then provision again: same name, new instance-id, working guest -------------------
only_dhcp="kvm_instance_definitions=[{instance_name: e2e-dhcp, image_name: debian-$N, vcpus: 1, memory_mib: 1024, disk_size_gib: 4}]"
check "provision again after cleanup" kp -c "$CFG" -e "$only_dhcp" provision
new_id=$(instance_id e2e-dhcp)
check "the re-created instance has a new instance-id ($old_id -> $new_id)" test -n "$new_id" -a "$new_id" != "$old_id"
check "the re-created instance answers over SSH" test "$(ssh_out e2e-dhcp hostname)" = e2e-dhcp
kp -c "$CFG" -e "$only_dhcp" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null
