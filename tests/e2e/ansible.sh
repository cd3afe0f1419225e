# Scenario: Ansible against `kvmprov inventory`. Run by tests/e2e/run.sh (e2e_scenario), alone or
# after any other: its own variables file, image cache and pool under its scratch directory.
# It provisions two guests (as boot did before: boot ends with a cleanup, so there were never
# guests to reuse): e2e-dhcp (Debian 13, DHCP) and e2e-static (Debian 12, static address);
# installs ansible-core from PyPI into a venv in its scratch directory; pings the guests through
# the static (YAML) and the dynamic inventory; runs a two-task playbook; checks that a guest whose
# pinned host key does not match is refused and that a stopped guest is left out with its
# reason; and cleans up.
A="$E2E_SCRATCH"
CFG="$A/vars.yml"
e2e_own_domains e2e-dhcp e2e-static
{
    cat <<EOF2
kvm_domain_type: qemu
kvm_image_cache_path: $A/images
kvm_instance_disk_pool_path: $A/instances
kvm_runtime_timeout_seconds: 900
EOF2
    e2e_catalog_both
    cat <<EOF2
kvm_cloud_init_defaults:
  user: debian
  password: "e2e-Plain-Secret-42"
kvm_instance_definitions:
  - {instance_name: e2e-dhcp, image_name: debian-13, vcpus: 1, memory_mib: 1024, disk_size_gib: 4}
  - {instance_name: e2e-static, image_name: debian-12, vcpus: 1, memory_mib: 1024, disk_size_gib: 4, ipv4_address: 192.168.122.60/24}
EOF2
} >"$CFG"
chmod 0600 "$CFG"
kpa() { kp -c "$CFG" "$@"; }
# shellcheck source=tests/e2e/ansible-lib.sh
source "$E2E_ROOT/tests/e2e/ansible-lib.sh"
ANS_VENV="$A/ansible-venv"
INV_YAML="$A/inventory.yml"
INV_SCRIPT="$A/kvmprov-inventory.sh"
mapfile -t ANS_ENV < <(ansible_env "$A/ansible-home")
# Ansible inside the namespace, where the guests are.
ans() { in_ns env "${ANS_ENV[@]}" "$ANS_VENV/bin/$1" "${@:2}"; }

# --- ansible-core from PyPI, while the guests boot ----------------------------------------------
log "installing ansible-core into $ANS_VENV"
ansible_install "$ANS_VENV" "$A/pip.log" &
pip_pid=$!

# --- the guests --------------------------------------------------------------------------------
log "kvmprov provision: two TCG guests"
capture rc - kpa provision >"$A/ansible-provision.log" 2>&1
evidence "$A/ansible-provision.log"
capture pip_rc - wait "$pip_pid"
check "pip install ansible-core ($("$ANS_VENV/bin/ansible" --version 2>/dev/null | head -n 1))" test "$pip_rc" -eq 0
check "provision for the Ansible checks exits 0" test "$rc" -eq 0

# --- static inventory ----------------------------------------------------------------------------
capture rc - kpa inventory --format yaml >"$INV_YAML" 2>"$A/inventory.err"
check "inventory --format yaml exits 0 with nothing left out" \
    test "$rc" -eq 0 -a ! -s "$A/inventory.err"
check "the static inventory pins host keys (StrictHostKeyChecking=yes, UserKnownHostsFile)" \
    bash -c '[ "$(grep -c "StrictHostKeyChecking=yes" "$0")" -eq 2 ] && [ "$(grep -c "UserKnownHostsFile=" "$0")" -eq 2 ]' "$INV_YAML"
check "the static inventory gives e2e-static its address" \
    grep -q 'ansible_host: "192.168.122.60"' "$INV_YAML"
capture rc out ans ansible all -i "$INV_YAML" -m ansible.builtin.ping
echo "$out" >"$A/ansible-ping-static.log"
check "ansible -m ping through the static inventory reaches both guests" \
    ansible_all_succeeded "$out" e2e-dhcp e2e-static

# --- dynamic inventory: a two-line script -------------------------------------------------------
ansible_dynamic_inventory "$INV_SCRIPT" "$KVMPROV" -c "$CFG"
capture rc graph ans ansible-inventory -i "$INV_SCRIPT" --graph
capture rc out ans ansible all -i "$INV_SCRIPT" -m ansible.builtin.ping
echo "$out" >"$A/ansible-ping-dynamic.log"
check "the dynamic inventory has the image, hypervisor and network groups" \
    bash -c 'for g in @image_debian_12: @image_debian_13: @hypervisor_localhost: @network_default:; do grep -qF -- "$g" <<<"$0" || exit 1; done' "$graph"
check "ansible -m ping through the dynamic inventory reaches both guests" \
    ansible_all_succeeded "$out" e2e-dhcp e2e-static

# --- a playbook ------------------------------------------------------------------------------------
ansible_playbook "$A/playbook.yml"
capture rc - ans ansible-playbook -i "$INV_SCRIPT" "$A/playbook.yml" >"$A/ansible-playbook.log" 2>&1
evidence "$A/ansible-playbook.log"
check "the two-task playbook succeeds on both guests" \
    ansible_play_ok "$A/ansible-playbook.log" "$rc" e2e-dhcp e2e-static
check "the playbook's file is on the guest" \
    test "$(kpa ssh e2e-static -- cat /etc/kvmprov-ansible 2>&1)" = e2e-static

# --- a host key that does not match is refused ------------------------------------------------------
ansible_impostor_inventory "$INV_YAML" e2e-static "$A"
kh=$(ansible_pinned_known_hosts "$INV_YAML" e2e-static)
bad_kh="$A/known_hosts.mismatch"
capture rc out ans ansible e2e-static -i "$A/inventory-mismatch.yml" -m ansible.builtin.ping
echo "$out" >"$A/ansible-mismatch.log"
check "the mismatching known_hosts copy differs from the pinned one" \
    bash -c '[ -s "$0" ] && ! cmp -s "$0" "$1"' "$kh" "$bad_kh"
check "ansible refuses e2e-static when its pinned key does not match" ansible_refused "$out" "$rc"

# --- a stopped guest is left out, with the reason on stderr --------------------------------------
virsh_ns destroy e2e-dhcp >/dev/null
capture rc - kpa inventory --list >"$A/inventory-one.json" 2>"$A/inventory-one.err"
check "inventory leaves out the stopped guest and says why" \
    bash -c '[ "$2" -eq 0 ] && grep -q "e2e-dhcp left out: shutoff" "$1" && ! grep -q "\"e2e-dhcp\"" "$0" && grep -q "\"e2e-static\"" "$0"' \
    "$A/inventory-one.json" "$A/inventory-one.err" "$rc"

kpa -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null
