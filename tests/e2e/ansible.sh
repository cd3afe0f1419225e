# Scenario: Ansible against `kvmprov inventory`. Sourced by tests/e2e/run.sh after `boot`, whose
# variables file ($CFG: catalog, pool, password) and cached images it reuses:
#   tests/e2e/run.sh boot ansible
# It provisions two of boot's guests again (boot ends with a cleanup): e2e-dhcp (Debian 13, DHCP)
# and e2e-static (Debian 12, static address); installs ansible-core from PyPI into a venv in
# $E2E_DIR; pings the guests through the static (YAML) and the dynamic inventory; runs a
# two-task playbook; checks that a guest whose pinned host key does not match is refused and
# that a stopped guest is left out with its reason; and cleans up.
if [ -z "${CFG:-}" ] || [ ! -f "$CFG" ]; then
    fail "ansible: needs the boot scenario first (tests/e2e/run.sh boot ansible)"
    return 0
fi
E2E_DOMAINS="$E2E_DOMAINS e2e-dhcp e2e-static"
# Only these two of boot's instances (an -e override of the list, as boot does for one).
ANS_ONLY="kvm_instance_definitions=[\
{instance_name: e2e-dhcp, image_name: debian-13, vcpus: 1, memory_mib: 1024, disk_size_gib: 4}, \
{instance_name: e2e-static, image_name: debian-12, vcpus: 1, memory_mib: 1024, disk_size_gib: 4, ipv4_address: 192.168.122.60/24}]"
kpa() { kp -c "$CFG" -e "$ANS_ONLY" "$@"; }
# shellcheck source=tests/e2e/ansible-lib.sh
source "$E2E_ROOT/tests/e2e/ansible-lib.sh"
ANS_VENV="$E2E_DIR/ansible-venv"
INV_YAML="$E2E_DIR/inventory.yml"
INV_SCRIPT="$E2E_DIR/kvmprov-inventory.sh"
mapfile -t ANS_ENV < <(ansible_env "$E2E_DIR/ansible-home")
# Ansible inside the namespace, where the guests are.
ans() { in_ns env "${ANS_ENV[@]}" "$ANS_VENV/bin/$1" "${@:2}"; }

# --- ansible-core from PyPI --------------------------------------------------------------------
log "installing ansible-core into $ANS_VENV"
set +e
ansible_install "$ANS_VENV" "$E2E_DIR/pip.log"
rc=$?
set -e
check "pip install ansible-core ($("$ANS_VENV/bin/ansible" --version 2>/dev/null | head -n 1))" test "$rc" -eq 0

# --- the guests, running again -----------------------------------------------------------------
log "kvmprov provision: boot's two guests again (image cached)"
set +e
kpa provision >"$E2E_DIR/ansible-provision.log" 2>&1
rc=$?
set -e
E2E_EVIDENCE+=("$E2E_DIR/ansible-provision.log")
check "provision for the Ansible checks exits 0" test "$rc" -eq 0

# --- static inventory ----------------------------------------------------------------------------
set +e
kpa inventory --format yaml >"$INV_YAML" 2>"$E2E_DIR/inventory.err"
rc=$?
set -e
check "inventory --format yaml exits 0 with nothing left out" \
    test "$rc" -eq 0 -a ! -s "$E2E_DIR/inventory.err"
check "the static inventory pins host keys (StrictHostKeyChecking=yes, UserKnownHostsFile)" \
    bash -c '[ "$(grep -c "StrictHostKeyChecking=yes" "$0")" -eq 2 ] && [ "$(grep -c "UserKnownHostsFile=" "$0")" -eq 2 ]' "$INV_YAML"
check "the static inventory gives e2e-static its address" \
    grep -q 'ansible_host: "192.168.122.60"' "$INV_YAML"
set +e
out=$(ans ansible all -i "$INV_YAML" -m ansible.builtin.ping 2>&1)
set -e
echo "$out" >"$E2E_DIR/ansible-ping-static.log"
check "ansible -m ping through the static inventory reaches both guests" \
    ansible_all_succeeded "$out" e2e-dhcp e2e-static

# --- dynamic inventory: a two-line script -------------------------------------------------------
ansible_dynamic_inventory "$INV_SCRIPT" "$KVMPROV" -c "$CFG" -e "$ANS_ONLY"
set +e
graph=$(ans ansible-inventory -i "$INV_SCRIPT" --graph 2>&1)
out=$(ans ansible all -i "$INV_SCRIPT" -m ansible.builtin.ping 2>&1)
set -e
echo "$out" >"$E2E_DIR/ansible-ping-dynamic.log"
check "the dynamic inventory has the image, hypervisor and network groups" \
    bash -c 'for g in @image_debian_12: @image_debian_13: @hypervisor_localhost: @network_default:; do grep -qF -- "$g" <<<"$0" || exit 1; done' "$graph"
check "ansible -m ping through the dynamic inventory reaches both guests" \
    ansible_all_succeeded "$out" e2e-dhcp e2e-static

# --- a playbook ------------------------------------------------------------------------------------
ansible_playbook "$E2E_DIR/playbook.yml"
set +e
ans ansible-playbook -i "$INV_SCRIPT" "$E2E_DIR/playbook.yml" >"$E2E_DIR/ansible-playbook.log" 2>&1
rc=$?
set -e
E2E_EVIDENCE+=("$E2E_DIR/ansible-playbook.log")
check "the two-task playbook succeeds on both guests" \
    ansible_play_ok "$E2E_DIR/ansible-playbook.log" "$rc" e2e-dhcp e2e-static
check "the playbook's file is on the guest" \
    test "$(kpa ssh e2e-static -- cat /etc/kvmprov-ansible 2>&1)" = e2e-static

# --- a host key that does not match is refused ------------------------------------------------------
ansible_impostor_inventory "$INV_YAML" e2e-static "$E2E_DIR"
kh=$(ansible_pinned_known_hosts "$INV_YAML" e2e-static)
bad_kh="$E2E_DIR/known_hosts.mismatch"
set +e
out=$(ans ansible e2e-static -i "$E2E_DIR/inventory-mismatch.yml" -m ansible.builtin.ping 2>&1)
rc=$?
set -e
echo "$out" >"$E2E_DIR/ansible-mismatch.log"
check "the mismatching known_hosts copy differs from the pinned one" \
    bash -c '[ -s "$0" ] && ! cmp -s "$0" "$1"' "$kh" "$bad_kh"
check "ansible refuses e2e-static when its pinned key does not match" ansible_refused "$out" "$rc"

# --- a stopped guest is left out, with the reason on stderr --------------------------------------
virsh_ns destroy e2e-dhcp >/dev/null
set +e
kpa inventory --list >"$E2E_DIR/inventory-one.json" 2>"$E2E_DIR/inventory-one.err"
rc=$?
set -e
check "inventory leaves out the stopped guest and says why" \
    bash -c '[ "$2" -eq 0 ] && grep -q "e2e-dhcp left out: shutoff" "$1" && ! grep -q "\"e2e-dhcp\"" "$0" && grep -q "\"e2e-static\"" "$0"' \
    "$E2E_DIR/inventory-one.json" "$E2E_DIR/inventory-one.err" "$rc"

kpa -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null
