# Scenario: several NICs on one booted TCG guest (Debian $E2E_N twin): the first on libvirt's NAT
# network by DHCP, the second on an isolated libvirt network with an IPv6 subnet, with a static
# IPv4 and a static IPv6 address, the third straight on a host bridge in the test's namespace (no
# libvirt network for it) whose DHCP server is a dnsmasq the test starts; and a raw data disk.
# Preflight finds the bridge (and refuses one that does not exist, in one line); `provision
# --check` plans a line per NIC and disk and creates nothing; inside the guest each address sits
# on the interface with its NIC's MAC (the bridge NIC's from the test's dnsmasq) and there is one
# IPv4 default route (the primary NIC's); the domain has the three interfaces, the third of type
# bridge; `status --output json` and `kvmprov inventory` list every NIC's addresses (the bridge
# NIC's found on the guest's console); `provision --check` afterwards changes nothing; the seed's
# network-config passes cloud-init 22.4's and 25.1's schema.
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

# The host bridge: no libvirt network wraps it; its DHCP server is this test's dnsmasq.
BR=brn0
BR_MAC="52:54:00:77:01:20"
in_ns ip link add "$BR" type bridge
e2e_own_links "$BR"
in_ns ip addr add 192.168.151.1/24 dev "$BR"
in_ns ip link set "$BR" up
in_ns dnsmasq --conf-file=/dev/null --interface="$BR" --bind-interfaces --except-interface=lo \
    --port=0 --dhcp-range=192.168.151.100,192.168.151.200,12h \
    --dhcp-leasefile="$NI/$BR.leases" --pid-file="$NI/$BR-dnsmasq.pid" \
    --log-dhcp --log-facility="$NI/$BR-dnsmasq.log"
# A daemon (not our child): stopped by its PID file's number after the scenario.
e2e_own_daemon "$(cat "$NI/$BR-dnsmasq.pid")" dnsmasq

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
      - bridge: $BR
        mac: "$BR_MAC"
    disks:
      - {name: scratch, size_gib: 1}
EOF
} >"$NI_CFG"

# --- preflight: the bridge is there; one that is not fails in one line --------------------------
pre=$(kp -c "$NI_CFG" --check --output json preflight 2>"$NI/preflight.log") || true
check "preflight finds host bridge $BR on the hypervisor" outcome "$pre" "bridge $BR" check "^host bridge exists on the hypervisor$"
check "preflight says the bridge NIC's address comes from the guest's console" \
    outcome "$pre" "address e2e-nics nic2" check "serial console \\(host bridge $BR"
sed "s/- bridge: $BR/- bridge: brn9/" "$NI_CFG" >"$NI/nobridge.yml"
capture rc - kp -c "$NI/nobridge.yml" --check --output json preflight >"$NI/nobridge.json" 2>"$NI/nobridge.log"
check "preflight refuses a host bridge that does not exist (exit $rc)" test "$rc" -eq 1
check "... in one sentence naming the bridge and the hypervisor" \
    jqt 'any(.stages[].outcomes[]; .target == "bridge brn9" and .status == "failed" and (.detail | test("^host bridge `brn9` does not exist on qemu:///system: create it there")))' <"$NI/nobridge.json"

# --- --check: a line per NIC, nothing made -----------------------------------------------------
# The image first: an instance whose image is not cached yet is planned as blocked.
kp -c "$NI_CFG" provision --stage image-cache >"$NI/image-cache.log" 2>&1 || true
kp -c "$NI_CFG" --check --output json provision >"$NI/check.json" 2>"$NI/check.log" || true
check "provision --check plans the primary NIC on default by DHCP" \
    outcome "$(cat "$NI/check.json")" "e2e-nics nic0" create "^network default, mac 52:54:00:.*, DHCPv4, primary$"
check "provision --check plans the second NIC with its static addresses" \
    outcome "$(cat "$NI/check.json")" "e2e-nics nic1" create "^network e2e-v6, mac 52:54:00:77:00:10, static 10.77.0.10/24, static fd77::10/64$"
check "provision --check plans the NIC on host bridge $BR by DHCP" \
    outcome "$(cat "$NI/check.json")" "e2e-nics nic2" create "^bridge $BR, mac $BR_MAC, DHCPv4$"
check "provision --check plans the data disk" \
    outcome "$(cat "$NI/check.json")" e2e-nics create "^data disk e2e-nics_scratch\\.qcow2 .*: missing, created empty$"
check "provision --check created no domain and no volume" \
    bash -c '! grep -qx e2e-nics <<<"$0" && [ ! -e "$1/e2e-nics_scratch.qcow2" ]' "$(virsh_ns list --all --name)" "$NI/instances"

# --- the guest ----------------------------------------------------------------------------------
log "kvmprov provision (full): one TCG guest with two NICs"
capture rc - kp -c "$NI_CFG" --output json -e kvm_runtime_timeout_seconds=1200 provision >"$NI/provision.json" 2>"$NI/provision.log"
evidence "$NI/provision.log"
console_evidence "$NI/instances/e2e-nics-console.log"
check "provision with two NICs exits 0" test "$rc" -eq 0
check "e2e-nics is ready: SSH on the primary NIC, cloud-init done" \
    outcome "$(cat "$NI/provision.json")" e2e-nics wait "^ready at .*cloud-init done"

xml=$(virsh_ns dumpxml e2e-nics)
check "the domain has two network interfaces, the second on e2e-v6 with its MAC" \
    bash -c '[ "$(grep -c "<interface type=.network.>" <<<"$0")" -eq 2 ] && grep -q "<source network=.e2e-v6." <<<"$0" && grep -q "52:54:00:77:00:10" <<<"$0"' "$xml"
nets_xml=$(for n in $(virsh_ns net-list --all --name); do virsh_ns net-dumpxml "$n"; done)
check "the domain's third interface is of type bridge on $BR, and no libvirt network names $BR" \
    bash -c 'grep -q "<interface type=.bridge.>" <<<"$0" && grep -q "<source bridge=.$1./>" <<<"$0" && grep -qi "$2" <<<"$0" && ! grep -q "<bridge name=.$1." <<<"$3"' \
    "$xml" "$BR" "$BR_MAC" "$nets_xml"

st=$(kp -c "$NI_CFG" --output json status 2>/dev/null) || true
echo "$st" >"$NI/status.json"
mac0=$(jq -r '.instances[0].nics[0].mac // empty' <<<"$st")
ip0=$(jq -r '.instances[0].ip // empty' <<<"$st")
check "status --output json lists the three NICs, the primary one with the instance's address" \
    jqt '.instances[0].nics | length == 3 and .[0].primary and .[0].network == "default" and .[0].ipv4 != null' <<<"$st"
check "status --output json: the primary NIC's address is the instance's ip ($ip0)" \
    jqt --arg ip "$ip0" '.instances[0].nics[0].ipv4 == $ip' <<<"$st"
check "status --output json: the second NIC's static IPv4 and IPv6" \
    jqt '.instances[0].nics[1] | .network == "e2e-v6" and .mac == "52:54:00:77:00:10" and .ipv4 == "10.77.0.10" and .ipv6 == "fd77::10"' <<<"$st"
br_ip=$(jq -r '.instances[0].nics[2].ipv4 // empty' <<<"$st")
check "status --output json: the third NIC on bridge $BR with the address the test's dnsmasq leased it ($br_ip)" \
    jqt --arg br "$BR" --arg mac "$BR_MAC" '.instances[0].nics[2] | .bridge == $br and (has("network") | not) and .mac == $mac and (.ipv4 // "" | test("^192\\.168\\.151\\.[0-9]+$"))' <<<"$st"
check "the test's dnsmasq leased $br_ip to the bridge NIC's MAC" \
    bash -c '[ -n "$0" ] && grep -qi "DHCPACK($1) $0 $2" "$3"' "$br_ip" "$BR" "$BR_MAC" "$NI/$BR-dnsmasq.log"
human_st=$(kp -c "$NI_CFG" status 2>&1) || true
check "status lists a line per NIC" \
    bash -c 'grep -q "nic1 e2e-v6 52:54:00:77:00:10 10.77.0.10 fd77::10" <<<"$0" && grep -q "nic2 bridge $1 $2 $3" <<<"$0"' "$human_st" "$BR" "$BR_MAC" "$br_ip"

inv=$(kp -c "$NI_CFG" inventory --list 2>/dev/null) || true
echo "$inv" >"$NI/inventory.json"
check "the inventory lists the NICs of e2e-nics (kvmprov_nics), the third with its bridge" \
    jqt --arg br "$BR" '._meta.hostvars["e2e-nics"].kvmprov_nics | length == 3 and .[1].ipv4 == "10.77.0.10" and .[1].ipv6 == "fd77::10" and .[2].bridge == $br' <<<"$inv"
check "the inventory puts e2e-nics in the group of each of its networks and of its bridge" \
    jqt '(.network_default.hosts | index("e2e-nics")) != null and (.network_e2e_v6.hosts | index("e2e-nics")) != null and (.bridge_brn0.hosts | index("e2e-nics")) != null' <<<"$inv"

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
if2=$(awk -v m="$BR_MAC" '$0 ~ m {sub(":", "", $2); print $2; exit}' <<<"$links")
check "the bridge NIC's interface ($if2, MAC $BR_MAC) has the address dnsmasq leased ($br_ip)" \
    bash -c '[ -n "$2" ] && grep -q "inet $1/24" <<<"$0"' "$(ni_ssh "ip -4 -o addr show dev ${if2:-none}")" "$br_ip" "$if2"
routes=$(ni_ssh 'ip -4 route show default')
log "IPv4 default routes: $routes; IPv6: $(ni_ssh 'ip -6 route show default' | tr '\n' ' ')"
check "one IPv4 default route, through the primary NIC" \
    bash -c '[ "$(grep -c "^default" <<<"$0")" -eq 1 ] && grep -q "dev $1" <<<"$0"' "$routes" "$if0"

plan=$(kp -c "$NI_CFG" --check --output json provision 2>/dev/null) || true
check "provision --check on the provisioned guest changes nothing" test -z "$(changes "$plan")"
check "provision --check on the provisioned guest: the domain matches, the data disk is there" \
    bash -c 'for r in "^data disk e2e-nics_scratch" "^domain exists and matches the config"; do jq -e --arg r "$r" "any(.stages[].outcomes[]; .target == \"e2e-nics\" and .op == \"ok\" and (.reason | test(\$r)))" <<<"$0" >/dev/null || exit 1; done' "$plan"

# --- the seed's network-config passes cloud-init's own schema (22.4 and 25.1) ----------------------
seed="$NI/instances/e2e-nics-seed.iso"
e2e_seed_docs "$seed" "$NI/seed-docs" e2e-nics
check "the seed's network-config matches both NICs by MAC" \
    bash -c 'grep -q "$1" "$0" && grep -q "52:54:00:77:00:10" "$0" && grep -q "fd77::10/64" "$0"' "$NI/seed-docs/e2e-nics.network-config" "$mac0"
e2e_seed_schema "$NI/seed-docs" "$NI/schema.log"

kp -c "$NI_CFG" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null
check "cleanup removed e2e-nics" bash -c '! grep -qx e2e-nics <<<"$0"' "$(virsh_ns list --all --name)"
