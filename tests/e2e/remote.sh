#!/usr/bin/env bash
# Remote and multiple hypervisors, end to end: two "hypervisors" on this machine (each a network
# and mount namespace with its own libvirtd, storage and sshd; testkit/remote-hypervisors.sh),
# reached over qemu+ssh from an operator namespace. Hypervisor 1 runs this machine's Debian 12
# libvirt, hypervisor 2 Debian 13's (libvirt 11, QEMU 10, sshd: testkit/debian13-hypervisor.sh). One run provisions a TCG guest on each,
# downloads the image once and uploads it to both through libvirt streams, SSH-checks the
# guests through their hypervisor, attaches to a guest's serial console through its hypervisor's
# libvirt connection (`kvmprov console` under a pseudo-terminal), runs Ansible (ansible-core from
# PyPI) against `kvmprov inventory` through the hypervisors' jump, survives one host going down
# and another's network being cut mid-upload (that host's work ends within 60 s, the re-run
# converges), and cleans up.
#   tests/e2e/remote.sh            (root; `make test-remote`, also run by `make test`)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/e2e/lib.sh
source "$HERE/lib.sh"
# shellcheck source=testkit/remote-hypervisors.sh
source "$TESTKIT/remote-hypervisors.sh"

[ "$(id -u)" -eq 0 ] || { echo "remote tests need root (namespaces, libvirtd, sshd)" >&2; exit 2; }
[ -x "$KVMPROV" ] || { echo "build first: cargo build --release" >&2; exit 2; }

teardown() {
    set +e
    # Run by tests/e2e/run.sh as a lane's job: the results, and copies of the files that show
    # why a check failed, join the lane's.
    if [ -n "${E2E_RESULTS_TO:-}" ] && [ -f "${DIR:-}/results" ]; then
        cat "$DIR/results" >>"$E2E_RESULTS_TO/results"
        e2e_keep "$DIR" "$E2E_RESULTS_TO/kept/remote" "$E2E_RESULTS_TO"
    fi
    [ -n "${MIRROR_PID:-}" ] && kill "$MIRROR_PID" 2>/dev/null && wait "$MIRROR_PID" 2>/dev/null
    rh_teardown
    [ -n "${DIR:-}" ] && rm -rf "$DIR"
    return 0
}
trap teardown EXIT
# A signal ends the run through the EXIT trap: guests, daemons and namespaces go.
trap 'exit 143' TERM INT

DIR=$(mktemp -d /tmp/kvmprov-remote.XXXXXX)
# 0700 on purpose: qemu on the hypervisors cannot traverse it until preflight grants it (over ssh).
chmod 0700 "$DIR"
log "scratch $DIR"
e2e_results_init "$DIR"
IMAGE=$(bash "$TESTKIT/build-image.sh" "$E2E_SUITE" "$E2E_CACHE" | tail -n 1)
rh_setup "$DIR" 1
rh_add_host 2 debian13
RH_N=2

bash "$TESTKIT/make-mirror.sh" "$IMAGE" "$DIR/mirror" "$E2E_SUITE" "$E2E_VERSION"
ip netns exec "$RH_OP" python3 "$TESTKIT/mirror.py" --root "$DIR/mirror" --port 0 \
    --port-file "$DIR/mirror.port" --log "$DIR/mirror.log" >"$DIR/mirror.out" 2>&1 &
MIRROR_PID=$!
for _ in $(seq 1 50); do [ -s "$DIR/mirror.port" ] && break; sleep 0.1; done
E2E_BASE="http://127.0.0.1:$(cat "$DIR/mirror.port")/images/cloud"
N=$E2E_N
HV1=root@$(rh_addr 1)
HV2=root@$(rh_addr 2)
URI1="qemu+ssh://$HV1/system"
URI2="qemu+ssh://$HV2/system"
A=rh-a-$$
B=rh-b-$$

CFG="$DIR/vars.yml"
{
    echo "kvm_hypervisor_host: $HV1"
    echo "kvm_runtime_timeout_seconds: 600"
    e2e_config_head "$RH_POOLS/images" "$RH_POOLS/instances"
    cat <<EOF
  - instance_name: $A
    image_name: debian-$N
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
    snapshot_name: baseline
  - instance_name: $B
    image_name: debian-$N
    hypervisor_host: $HV2
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
EOF
} >"$CFG"
kp_op() { rh_op "$KVMPROV" -c "$CFG" "$@"; }
virsh_hv() {
    local i=$1
    shift
    rh_exec "$i" virsh -q -c qemu:///system "$@"
}
image_bytes() { awk '/genericcloud-amd64.*qcow2 / {sub("bytes=", "", $4); s += $4} END {print s + 0}' "$DIR/mirror.log"; }

# --- reachability -----------------------------------------------------------------------------
out=$(kp_op ping 2>&1) || true
check "ping reaches both hypervisors over qemu+ssh" \
    test "$(grep -c 'domain type qemu   available' <<<"$out")" -eq 2
out=$(kp_op --output json ping 2>/dev/null) || true
hv_version() { jq -r --arg u "$1" '.hypervisors[] | select(.uri == $u) | .host.libvirt_version' <<<"$out" 2>/dev/null; }
check "hypervisor 1 runs Debian 12's libvirt ($(hv_version "$URI1")), hypervisor 2 Debian 13's ($(hv_version "$URI2"))" \
    bash -c '[[ $0 == 9.* && $1 == 11.* ]]' "$(hv_version "$URI1")" "$(hv_version "$URI2")"

# --- one run, two hosts ----------------------------------------------------------------------
log "kvmprov provision (full) on two remote hypervisors: two TCG guests, a few minutes"
start=$(date +%s)
# Shown as it comes and kept (pipefail: the pipeline's status is kvmprov's).
two_host_run() { kp_op provision 2>&1 | tee "$DIR/provision.log"; }
capture rc - two_host_run
log "two-host run took $(($(date +%s) - start))s"
P=$(cat "$DIR/provision.log")
evidence "$DIR/provision.log"
check "two-host provision exits 0" test "$rc" -eq 0
size=$(stat -c %s "$IMAGE")
check "the image was downloaded once ($(image_bytes) bytes of $size)" test "$(image_bytes)" -eq "$size"
# $DIR is shared by both "hypervisors": whichever checks first grants it.
check "preflight granted the qemu user traverse over ssh" \
    grep -qE "ssh root@10\.231\.[12]\.2 -- setfacl -m u:[0-9]+:x $DIR" <<<"$P"
check "the image was uploaded to hypervisor 1 through libvirt" grep -q "upload .*to $URI1 through a libvirt upload stream" <<<"$P"
check "the image was uploaded to hypervisor 2 through libvirt" grep -q "upload .*to $URI2 through a libvirt upload stream" <<<"$P"
file=$(basename "$(ls "$RH_POOLS"/images/*.qcow2)")
for i in 1 2; do
    vols=$(virsh_hv "$i" vol-list --pool "$(virsh_hv "$i" pool-list --name | grep images)" 2>&1)
    check "hypervisor $i holds the image and its record as volumes" \
        grep -q "$file.json" <<<"$vols"
    check "hypervisor $i's copy has the image's size" \
        test "$(rh_exec "$i" stat -c %s "$RH_POOLS/images/$file")" -eq "$size"
done
check "$A runs on hypervisor 1 only" test "$(virsh_hv 1 domstate "$A")" = running -a \
    -z "$(virsh_hv 2 list --all --name | grep -x "$A" || true)"
check "$B runs on hypervisor 2 only" test "$(virsh_hv 2 domstate "$B")" = running -a \
    -z "$(virsh_hv 1 list --all --name | grep -x "$B" || true)"
check "instance disks live on the hypervisors, not on the operator" \
    test ! -e "$RH_POOLS/instances/$A.qcow2" -a "$(rh_exec 1 stat -c %s "$RH_POOLS/instances/$A.qcow2")" -gt 0
check "both guests were SSH-checked through their hypervisor" \
    test "$(grep -c 'ready at 192.168.122' <<<"$P")" -eq 2
check "the summary groups by host" grep -q "^$URI2 *provision" <<<"$P"
check "snapshot taken on hypervisor 1" grep -qx baseline <<<"$(virsh_hv 1 snapshot-list "$A" --name)"

out=$(kp_op ssh "$B" -- hostname 2>&1) || true
keep() { printf '%s\n' "$out" >"$DIR/$1.log" && evidence "$DIR/$1.log"; }
keep ssh
check "kvmprov ssh reaches the guest on hypervisor 2 through it" test "$out" = "$B"
out=$(kp_op status 2>&1) || true
keep status
check "status shows both guests ssh-ready" test "$(grep -c ' yes ' <<<"$out")" -eq 2

# --- the serial console through hypervisor 2's libvirt connection (no ssh session of ours) ---
# Under a pseudo-terminal: Enter (a fresh login prompt), then Ctrl+].
session="$KVMPROV -c $CFG console $B; echo console-rc=\$?"
capture rc - rh_op timeout 90 script -qfec "$session" /dev/null \
    < <(sleep 4; printf '\r'; sleep 10; printf '\035'; sleep 5) >"$DIR/console.out" 2>&1
evidence "$DIR/console.out"
check "console of the guest on hypervisor 2 shows its login prompt" grep -q "$B login:" "$DIR/console.out"
check "console of the guest on hypervisor 2 ends on Ctrl+]" grep -q "console-rc=0" "$DIR/console.out"

# --- Ansible through each guest's hypervisor ----------------------------------------------------
# The inventory sends every guest through its hypervisor (ProxyCommand over the operator's ssh,
# the wrapper first on PATH) and pins its host key; ansible-core from PyPI runs in the operator
# namespace, from where the guests' NAT networks are not routable.
# shellcheck source=tests/e2e/ansible-lib.sh
source "$HERE/ansible-lib.sh"
ANS_VENV="$DIR/ansible-venv"
log "installing ansible-core into $ANS_VENV"
capture rc - ansible_install "$ANS_VENV" "$DIR/pip.log"
check "pip install ansible-core" test "$rc" -eq 0
mapfile -t ANS_ENV < <(ansible_env "$DIR/ansible-home")
ans_op() { rh_op env "${ANS_ENV[@]}" "$ANS_VENV/bin/$1" "${@:2}"; }
capture --stdout rc out kp_op inventory --format yaml 2>"$DIR/inventory.err"
printf '%s\n' "$out" >"$DIR/inventory.yml"
check "inventory --format yaml exits 0 with nothing left out" test "$rc" -eq 0 -a ! -s "$DIR/inventory.err"
check "the inventory reaches $A through hypervisor 1 and $B through hypervisor 2" \
    bash -c 'grep -A4 "^    \"$1\":\$" "$0" | grep -qE "ProxyCommand=ssh .* -W .?%h:%p.? -- 10\.231\.1\.2" &&
             grep -A4 "^    \"$2\":\$" "$0" | grep -qE "ProxyCommand=ssh .* -W .?%h:%p.? -- 10\.231\.2\.2"' \
    "$DIR/inventory.yml" "$A" "$B"
out=$(ans_op ansible all -i "$DIR/inventory.yml" -m ansible.builtin.ping 2>&1) || true
keep ansible-ping
check "ansible -m ping through the hypervisors' jump reaches both guests" ansible_all_succeeded "$out" "$A" "$B"
ansible_dynamic_inventory "$DIR/kvmprov-inventory.sh" "$KVMPROV" -c "$CFG"
ansible_playbook "$DIR/playbook.yml"
capture rc - ans_op ansible-playbook -i "$DIR/kvmprov-inventory.sh" "$DIR/playbook.yml" >"$DIR/ansible-playbook.log" 2>&1
evidence "$DIR/ansible-playbook.log"
check "the two-task playbook (dynamic inventory) succeeds on both guests" \
    ansible_play_ok "$DIR/ansible-playbook.log" "$rc" "$A" "$B"
check "the playbook's file is on the guest behind hypervisor 2" \
    test "$(kp_op ssh "$B" -- cat /etc/kvmprov-ansible 2>&1)" = "$B"
ansible_impostor_inventory "$DIR/inventory.yml" "$B" "$DIR"
capture rc out ans_op ansible "$B" -i "$DIR/inventory-mismatch.yml" -m ansible.builtin.ping
keep ansible-mismatch
check "the impostor's known_hosts differs from the pinned one" \
    bash -c '[ -s "$0" ] && ! cmp -s "$0" "$1"' "$(ansible_pinned_known_hosts "$DIR/inventory.yml" "$B")" "$DIR/known_hosts.mismatch"
check "ansible refuses $B behind its hypervisor when its pinned key does not match" ansible_refused "$out" "$rc"

# The remote guests' disks are backed by the uploaded copies: prune keeps the local version.
out=$(kp_op image-cache prune 2>&1) || true
keep prune
check "prune keeps the image the remote guests' disks are backed by" \
    bash -c 'grep -q "backs a domain.s disk" <<<"$0" && ! grep -q "used by no domain" <<<"$0"' "$out"

# --- a re-run changes nothing and fetches nothing -------------------------------------------
before=$(image_bytes)
capture rc out kp_op provision
keep rerun
check "re-run exits 0" test "$rc" -eq 0
check "re-run downloads and uploads nothing" test "$(image_bytes)" -eq "$before" -a \
    -z "$(grep -E '✓ (upload|download) ' <<<"$out" || true)"

capture rc out kp_op --check provision
keep plan
check "a plan after the run plans no upload (the copies are known to be there)" test "$rc" -eq 0 -a \
    -z "$(grep -E 'upload stream|not in the local cache' <<<"$out" || true)"

# --- verify-on-run re-hashes the remote copies through download streams ---------------------
capture rc out kp_op -e kvm_image_cache_verify_on_run=true provision --stage image-cache
check "verify-on-run re-hashes both remote copies" test "$rc" -eq 0 -a \
    "$(grep -c '✓ verify .*re-hashing through a libvirt download stream' <<<"$out")" -eq 2

# --- one host down fails only its instances --------------------------------------------------
rh_stop_sshd 2
capture rc out kp_op provision --stage provision
check "with hypervisor 2 down the run exits 1" test "$rc" -eq 1
check "hypervisor 1's instance is still worked on" grep -q "✓ ok *$A" <<<"$out"
check "the failure names hypervisor 2" grep -q "$URI2: cannot connect" <<<"$out"
rh_start_sshd 2

# --- a hypervisor whose network is cut mid-run: its work ends within 60 s, the other's goes on ----
# Before keepalive a libvirt call to a host that stopped answering blocked forever (a CI run saw
# one wait 14 minutes). Hypervisor 2's image copy is removed so the run uploads it again, and
# every packet between the operator and hypervisor 2 is dropped once that upload has begun.
pool2=$(virsh_hv 2 pool-list --name | grep images || true)
virsh_hv 2 vol-delete --pool "$pool2" "$file.json" >/dev/null
virsh_hv 2 vol-delete --pool "$pool2" "$file" >/dev/null
cut_rules() { # -I to cut, -D to restore
    ip netns exec "$RH_OP" iptables "$1" OUTPUT -d "$(rh_addr 2)" -j DROP
    ip netns exec "$RH_OP" iptables "$1" INPUT -s "$(rh_addr 2)" -j DROP
}
# A full run (its image-cache stage uploads); hypervisor 1's guest is checked as ready meanwhile.
PATH="$RH_DIR/bin:$PATH" ip netns exec "$RH_OP" "$KVMPROV" -c "$CFG" provision >"$DIR/cut.log" 2>&1 &
cut_pid=$!
evidence "$DIR/cut.log"
for _ in $(seq 1 600); do
    rh_exec 2 test -e "$RH_POOLS/images/$file" && break
    kill -0 "$cut_pid" 2>/dev/null || break
    sleep 0.1
done
sent=$(rh_exec 2 stat -c %s "$RH_POOLS/images/$file" 2>/dev/null || echo none)
cut_rules -I
cut_at=$(date +%s)
log "network to hypervisor 2 cut while its image upload runs (volume: $sent bytes)"
for _ in $(seq 1 120); do kill -0 "$cut_pid" 2>/dev/null || break; sleep 1; done
took=$(($(date +%s) - cut_at))
if kill -0 "$cut_pid" 2>/dev/null; then
    kill "$cut_pid" 2>/dev/null
    log "the run was still going ${took}s after the cut: stopped it"
fi
capture rc - wait "$cut_pid"
out=$(cat "$DIR/cut.log")
log "with hypervisor 2 cut off the run ended ${took}s after the cut (exit $rc)"
check "regression_libvirt_call_hung_on_a_cut_network: the run ends within 60 s of the cut (${took}s), exit 1" \
    test "$took" -le 60 -a "$rc" -eq 1
check "the error names hypervisor 2 and the lost connection" \
    bash -c 'grep -q "$1" <<<"$0" && grep -qE "connection to libvirtd was lost|keepalive" <<<"$0"' "$out" "$URI2"
check "hypervisor 1's guest is still checked ready while hypervisor 2 is cut off" \
    bash -c 'grep "$1" <<<"$0" | grep -q "ready at 192.168.122"' "$out" "$A"
cut_rules -D
capture rc out kp_op provision
keep cut-rerun
check "after the network returns the re-run converges (exit $rc)" test "$rc" -eq 0
check "the re-run uploaded hypervisor 2's image again, record included" \
    bash -c 'grep -q "$1.json" <<<"$0"' "$(virsh_hv 2 vol-list --pool "$pool2" 2>&1)" "$file"
check "hypervisor 2's copy has the image's size again" \
    test "$(rh_exec 2 stat -c %s "$RH_POOLS/images/$file")" -eq "$size"
check "$B still runs on hypervisor 2" test "$(virsh_hv 2 domstate "$B")" = running

# --- a hypervisor whose storage is the operator's own (the same machine over qemu+ssh) -------
# Its image pool is the very directory of the local cache: the cached file is used in place,
# never uploaded onto itself (before: "volume target path … already exists").
rh_add_host 3 shared
RH_N=3
HV3=root@$(rh_addr 3)
C="kvmprov-rs-$$"
CFG3="$DIR/shared.yml"
{
    echo "kvm_hypervisor_host: $HV3"
    e2e_config_head "$RH_POOLS/images" "$RH_POOLS/instances-hv3"
    echo "  - {instance_name: $C, image_name: debian-$N, vcpus: 1, memory_mib: 256, disk_size_gib: 4}"
} >"$CFG3"
cached=$(ls "$RH_POOLS"/images/*.qcow2)
inode=$(stat -c %i "$cached")
sum=$(sha512sum "$cached" | cut -d' ' -f1)
before=$(image_bytes)
capture rc out rh_op "$KVMPROV" -c "$CFG3" provision --no-wait
keep shared
check "a hypervisor sharing the cache directory provisions (exit $rc)" test "$rc" -eq 0
check "nothing was downloaded or uploaded for it" test "$(image_bytes)" -eq "$before" -a \
    -z "$(grep -E '✓ (upload|download) ' <<<"$out" || true)"
check "the cached image is the same file, unchanged" \
    test "$(stat -c %i "$cached")" = "$inode" -a "$(sha512sum "$cached" | cut -d' ' -f1)" = "$sum"
check "$C is defined on hypervisor 3 with its disk backed by that file" \
    bash -c 'grep -q "$1" <<<"$0"' "$(rh_exec 3 qemu-img info -U "$RH_POOLS/instances-hv3/$C.qcow2" 2>&1)" "$cached"
rh_op "$KVMPROV" -c "$CFG3" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null 2>&1 || true
check "cleanup on the shared hypervisor kept the cache file" test -f "$cached"

# --- cleanup on both ------------------------------------------------------------------------
capture rc out kp_op -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup
check "cleanup on both hosts exits 0" test "$rc" -eq 0
check "no declared domain remains" test -z "$(virsh_hv 1 list --all --name)$(virsh_hv 2 list --all --name)"
left=$(rh_exec 2 ls "$RH_POOLS/instances")
check "hypervisor 2's instance pool holds nothing of $B" test -z "$(grep "$B" <<<"$left" || true)"
check "the uploaded images stay in the hypervisors' caches" rh_exec 1 test -f "$RH_POOLS/images/$file"

e2e_summary
