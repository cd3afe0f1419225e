# Scenario: several NICs on one booted TCG guest (Debian $E2E_N twin): the first on libvirt's NAT
# network by DHCP, the second on an isolated libvirt network with an IPv6 subnet, with a static
# IPv4 and a static IPv6 address. `provision --check` plans a line per NIC and creates nothing;
# inside the guest each address sits on the interface with its NIC's MAC and there is one IPv4
# default route (the primary NIC's); the domain has both interfaces; `status --output json`
# and `kvmprov inventory` list both NICs' addresses; the seed's network-config passes cloud-init
# 22.4's and 25.1's schema.
# Runs alone: tests/e2e/run.sh nics
NI="$E2E_SCRATCH"
NI_CFG="$NI/vars.yml"
e2e_own_domains e2e-nics

# The second network: isolated (no forward), libvirt's DHCPv4-less subnet and an IPv6 subnet.
cat >"$NI/net-v6.xml" <<'EOF'
<network><name>e2e-v6</name><bridge name='virbr-v6'/>
  <ip address='10.77.0.1' prefix='24'/>
  <ip family='ipv6' address='fd77::1' prefix='64'/>
</network>
EOF
e2e_own_networks e2e-v6
virsh_ns net-define "$NI/net-v6.xml" >/dev/null
virsh_ns net-start e2e-v6 >/dev/null

{
    e2e_config_head "$NI/images" "$NI/instances" "e2e-nics-pw"
    cat <<EOF
  - instance_name: e2e-nics
    image_name: debian-$E2E_N
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
    nics:
      - network: default
      - network: e2e-v6
        mac: "52:54:00:77:00:10"
        ipv4_address: 10.77.0.10/24
        ipv6_address: fd77::10/64
EOF
} >"$NI_CFG"

# --- --check: a line per NIC, nothing made -----------------------------------------------------
# The image first: an instance whose image is not cached yet is planned as blocked.
kp -c "$NI_CFG" provision --stage image-cache >"$NI/image-cache.log" 2>&1 || true
kp -c "$NI_CFG" --check --output json provision >"$NI/check.json" 2>"$NI/check.log" || true
check "provision --check plans the primary NIC on default by DHCP" \
    outcome "$(cat "$NI/check.json")" "e2e-nics nic0" create "^network default, mac 52:54:00:.*, DHCPv4, primary$"
check "provision --check plans the second NIC with its static addresses" \
    outcome "$(cat "$NI/check.json")" "e2e-nics nic1" create "^network e2e-v6, mac 52:54:00:77:00:10, static 10.77.0.10/24, static fd77::10/64$"
check "provision --check created no domain" bash -c '! grep -qx e2e-nics <<<"$0"' "$(virsh_ns list --all --name)"

# --- the guest ----------------------------------------------------------------------------------
log "kvmprov provision (full): one TCG guest with two NICs"
capture rc - kp -c "$NI_CFG" --output json -e kvm_runtime_timeout_seconds=1200 provision >"$NI/provision.json" 2>"$NI/provision.log"
evidence "$NI/provision.log"
console_evidence "$NI/instances/e2e-nics-console.log"
check "provision with two NICs exits 0" test "$rc" -eq 0
check "e2e-nics is ready: SSH on the primary NIC, cloud-init done" \
    outcome "$(cat "$NI/provision.json")" e2e-nics wait "^ready at .*cloud-init done"

xml=$(virsh_ns dumpxml e2e-nics)
check "the domain has two interfaces, the second on e2e-v6 with its MAC" \
    bash -c '[ "$(grep -c "<interface type=.network.>" <<<"$0")" -eq 2 ] && grep -q "<source network=.e2e-v6." <<<"$0" && grep -q "52:54:00:77:00:10" <<<"$0"' "$xml"

st=$(kp -c "$NI_CFG" --output json status 2>/dev/null) || true
echo "$st" >"$NI/status.json"
mac0=$(jq -r '.instances[0].nics[0].mac // empty' <<<"$st")
ip0=$(jq -r '.instances[0].ip // empty' <<<"$st")
check "status --output json lists both NICs, the primary one with the instance's address" \
    jqt '.instances[0].nics | length == 2 and .[0].primary and .[0].network == "default" and .[0].ipv4 != null' <<<"$st"
check "status --output json: the primary NIC's address is the instance's ip ($ip0)" \
    jqt --arg ip "$ip0" '.instances[0].nics[0].ipv4 == $ip' <<<"$st"
check "status --output json: the second NIC's static IPv4 and IPv6" \
    jqt '.instances[0].nics[1] | .network == "e2e-v6" and .mac == "52:54:00:77:00:10" and .ipv4 == "10.77.0.10" and .ipv6 == "fd77::10"' <<<"$st"
check "status lists a line per NIC" \
    bash -c 'grep -q "nic1 e2e-v6 52:54:00:77:00:10 10.77.0.10 fd77::10" <<<"$0"' "$(kp -c "$NI_CFG" status 2>&1)"

inv=$(kp -c "$NI_CFG" inventory --list 2>/dev/null) || true
echo "$inv" >"$NI/inventory.json"
check "the inventory lists both NICs of e2e-nics (kvmprov_nics)" \
    jqt '._meta.hostvars["e2e-nics"].kvmprov_nics | length == 2 and .[1].ipv4 == "10.77.0.10" and .[1].ipv6 == "fd77::10"' <<<"$inv"
check "the inventory puts e2e-nics in the group of each of its networks" \
    jqt '(.network_default.hosts | index("e2e-nics")) != null and (.network_e2e_v6.hosts | index("e2e-nics")) != null' <<<"$inv"

ni_ssh() { kp -c "$NI_CFG" ssh e2e-nics -- "$1" 2>&1; }
links=$(ni_ssh 'ip -o link show')
if1=$(awk -v m="52:54:00:77:00:10" '$0 ~ m {sub(":", "", $2); print $2; exit}' <<<"$links")
if0=$(awk -v m="$mac0" 'm != "" && $0 ~ m {sub(":", "", $2); print $2; exit}' <<<"$links")
log "primary NIC $mac0 is $if0, second NIC is $if1"
check "the guest has an interface for each NIC's MAC" bash -c '[ -n "$0" ] && [ -n "$1" ] && [ "$0" != "$1" ]' "$if0" "$if1"
check "the primary NIC's interface has the DHCP address $ip0" \
    bash -c 'grep -q "inet $1/" <<<"$0"' "$(ni_ssh "ip -4 -o addr show dev $if0")" "$ip0"
check "the second NIC's interface has 10.77.0.10/24" \
    bash -c 'grep -q "inet 10.77.0.10/24" <<<"$0"' "$(ni_ssh "ip -4 -o addr show dev $if1")"
check "the second NIC's interface has fd77::10/64" \
    bash -c 'grep -q "inet6 fd77::10/64" <<<"$0"' "$(ni_ssh "ip -6 -o addr show dev $if1")"
routes=$(ni_ssh 'ip -4 route show default')
log "IPv4 default routes: $routes; IPv6: $(ni_ssh 'ip -6 route show default' | tr '\n' ' ')"
check "one IPv4 default route, through the primary NIC" \
    bash -c '[ "$(grep -c "^default" <<<"$0")" -eq 1 ] && grep -q "dev $1" <<<"$0"' "$routes" "$if0"

# --- the seed's network-config passes cloud-init's own schema (22.4 and 25.1) ----------------------
seed="$NI/instances/e2e-nics-seed.iso"
e2e_seed_docs "$seed" "$NI/seed-docs" e2e-nics
check "the seed's network-config matches both NICs by MAC" \
    bash -c 'grep -q "$1" "$0" && grep -q "52:54:00:77:00:10" "$0" && grep -q "fd77::10/64" "$0"' "$NI/seed-docs/e2e-nics.network-config" "$mac0"
e2e_seed_schema "$NI/seed-docs" "$NI/schema.log"

kp -c "$NI_CFG" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null
check "cleanup removed e2e-nics" bash -c '! grep -qx e2e-nics <<<"$0"' "$(virsh_ns list --all --name)"
