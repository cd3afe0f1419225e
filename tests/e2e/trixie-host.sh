# Scenario: a Debian 13 hypervisor (trixie's libvirt 11, QEMU 10, OVMF; testkit/debian13-hypervisor.sh)
# reached the way a user on that machine reaches it: through its socket
# (qemu+unix:///system?socket=…), which is "this machine". Its pool directories are bind-mounted
# into its root at the same paths, so kvmprov's files are the files its QEMU opens. One
# provision boots two guests of the Debian 12 twin in parallel: one under BIOS on libvirt's NAT
# network (address from the lease), one under UEFI on a bridged network whose DHCP server is
# not libvirt's (address from its serial console, read locally); both SSH-ready with cloud-init
# done. Then: nothing was uploaded (the cache file is the volume qemu reads), status, and a
# confirmed cleanup that leaves nothing of them there. Run by tests/e2e/run.sh
# (e2e_scenario); the hypervisor, its namespace, bridge, dnsmasq and mirror go after it.
# shellcheck source=testkit/debian13-hypervisor.sh
source "$TESTKIT/debian13-hypervisor.sh"
T="$E2E_SCRATCH"
CFG="$T/vars.yml"
POOLS="$T/pools"
BR=brd13
mkdir -p "$POOLS"

trixie_teardown() {
    set +e
    local pid
    for pid in "${T13_MIRROR_PID:-}" "${T13_DNSMASQ_PID:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null
    done
    d13_stop
}
trap trixie_teardown EXIT

log "starting the Debian 13 hypervisor (root cached in $E2E_CACHE)"
t0=$(date +%s)
d13_start "$T/hv" "kvmprov-d13-$$" "$POOLS"
log "Debian 13 hypervisor up in $(($(date +%s) - t0)) s"
in13() { ip netns exec "$D13_NS" "$@"; }
kp13() { in13 "$KVMPROV" -c "$CFG" "$@"; }

# The mirror, again on 127.0.0.1 but in the hypervisor's namespace, where kvmprov runs (its
# guests' networks are there).
ip netns exec "$D13_NS" python3 "$TESTKIT/mirror.py" --root "$E2E_MIRROR" --port 0 \
    --port-file "$T/mirror.port" --log "$T/mirror.log" >"$T/mirror.out" 2>&1 &
T13_MIRROR_PID=$!
for _ in $(seq 1 50); do [ -s "$T/mirror.port" ] && break; sleep 0.1; done
BASE="http://127.0.0.1:$(cat "$T/mirror.port")/images/cloud"

# The bridged network: a bridge in the hypervisor's namespace, a DHCP server that is not
# libvirt's, a libvirt network forwarding onto it: libvirt knows no lease there.
in13 ip link add "$BR" type bridge
in13 ip addr add 192.168.151.1/24 dev "$BR"
in13 ip link set "$BR" up
in13 dnsmasq --conf-file=/dev/null --interface="$BR" --bind-interfaces --except-interface=lo \
    --port=0 --dhcp-range=192.168.151.100,192.168.151.200,12h \
    --dhcp-leasefile="$T/$BR.leases" --pid-file="$T/$BR-dnsmasq.pid" \
    --log-dhcp --log-facility="$T/$BR-dnsmasq.log"
T13_DNSMASQ_PID=$(cat "$T/$BR-dnsmasq.pid")
echo "<network><name>d13-br</name><forward mode='bridge'/><bridge name='$BR'/></network>" >"$T/net-br.xml"
d13_virsh net-define "$T/net-br.xml" >/dev/null
d13_virsh net-start d13-br >/dev/null

cat >"$CFG" <<EOF
kvm_libvirt_uri: $D13_URI
kvm_domain_type: qemu
kvm_image_cache_path: $POOLS/images
kvm_instance_disk_pool_path: $POOLS/instances
kvm_runtime_timeout_seconds: 900
kvm_cloud_image_catalog:
  - image_name: debian-12
    image_url: $BASE/bookworm/latest/debian-12-genericcloud-amd64.qcow2
    image_checksum_manifest_url: $BASE/bookworm/latest/SHA512SUMS
kvm_cloud_init_defaults:
  user: debian
  password: "d13-Plain-Secret-7"
kvm_instance_definitions:
  - instance_name: d13-bios
    image_name: debian-12
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
  - instance_name: d13-uefi
    image_name: debian-12
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
    firmware: uefi
    libvirt_network_name: d13-br
    snapshot_name: base
EOF
chmod 0600 "$CFG"

# --- the hypervisor is trixie's, and this machine -----------------------------------------------
out=$(kp13 --output json ping) || true
printf '%s\n' "$out" >"$T/ping.json"
evidence "$T/ping.json"
lv=$(jq -r '.hypervisors[0].host.libvirt_version // "-"' <<<"$out" 2>/dev/null) || lv=-
qv=$(jq -r '.hypervisors[0].host.hypervisor_version // "-"' <<<"$out" 2>/dev/null) || qv=-
check "ping through the socket reaches trixie's libvirt 11 (libvirt $lv, QEMU $qv)" \
    bash -c '[[ $0 == 11.* && $1 == 10.* ]]' "$lv" "$qv"

# --- one provision, both guests in parallel -----------------------------------------------------
log "kvmprov provision (full) on the Debian 13 hypervisor: a BIOS and a UEFI guest"
t0=$(date +%s)
run13() { kp13 -v --output json provision 2>&1 >"$T/provision.json" | tee "$T/provision.log"; }
capture rc - run13
took=$(($(date +%s) - t0))
log "provision on the Debian 13 hypervisor took ${took}s"
evidence "$T/provision.log"
prov=$(cat "$T/provision.json")
jq -r '.stages[].outcomes[] | select(.status == "failed") | "  ✗ \(.op) \(.target) \(.reason)\n      error: \(.detail)"' \
    <<<"$prov" >>"$T/provision.log" 2>/dev/null || true
for g in $(jq -r '.stages[].outcomes[] | select(.status == "failed" and .op == "wait") | .target' <<<"$prov" 2>/dev/null || true); do
    console_evidence "$POOLS/instances/$g-console.log"
done
check "provision on the Debian 13 hypervisor exits 0 (${took}s)" test "$rc" -eq 0
for g in d13-bios d13-uefi; do
    check "$g is ready on libvirt 11: SSH with the pinned host key and cloud-init done" \
        outcome "$prov" "$g" wait "^ready at .*cloud-init done"
done
jq -r '.stages[].outcomes[] | select(.op == "wait") | "  \(.status) \(.target) \(.reason)"' <<<"$prov" || true
ssh13() { kp13 ssh "$1" -- "$2" 2>&1; }
check "d13-bios booted through BIOS" test "$(ssh13 d13-bios 'test -d /sys/firmware/efi && echo efi || echo bios')" = bios
check "d13-uefi booted through UEFI" test "$(ssh13 d13-uefi 'test -d /sys/firmware/efi && echo efi || echo bios')" = efi
check "d13-uefi's NVRAM is in the instance pool" test -f "$POOLS/instances/d13-uefi_VARS.fd"

# --- this machine: no upload, the same files, the console read here ---------------------------------
check "the image was downloaded into the local cache and nothing was uploaded to the hypervisor" \
    jqt 'any(.stages[].outcomes[]; .op == "download" and .status == "done")
        and ([.stages[].outcomes[] | select(.op == "upload" or (.reason | test("upload stream")))] | length == 0)' <<<"$prov"
cached=$(ls "$POOLS"/images/debian-12-*.qcow2 2>/dev/null | head -n 1 || true)
inode=$(stat -c %i "$cached" 2>/dev/null || echo none)
check "the trixie root sees the cached image as the same file (inode $inode)" \
    test "$(d13_exec stat -c %i "$cached" 2>/dev/null || echo other)" = "$inode"
check "d13-bios's disk is backed by the cache file itself" \
    bash -c '[ -n "$1" ] && grep -q "backing file: $1" <<<"$0"' "$(qemu-img info -U "$POOLS/instances/d13-bios.qcow2" 2>&1)" "$cached"
check "the console log trixie's virtlogd writes is the file kvmprov reads" \
    grep -qa "ci-info: " "$POOLS/instances/d13-uefi-console.log"
uefi_ip=$(ssh13 d13-uefi "ip -4 -o addr show scope global | awk '{print \$4}' | cut -d/ -f1") || true
check "d13-uefi got its address from the test's dnsmasq ($uefi_ip)" grep -q "DHCPACK($BR) $uefi_ip " "$T/$BR-dnsmasq.log"
check "d13-uefi's address was found without libvirt's lease (console or neighbour)" \
    outcome "$prov" d13-uefi wait "ready at $uefi_ip: address \\((console|neighbour)"
# With the neighbour table emptied only the console can tell the bridged guest's address.
in13 ip neigh flush dev "$BR"
st=$(kp13 --output json status) || true
printf '%s\n' "$st" >"$T/status.json"
evidence "$T/status.json"
check "status finds d13-uefi's address in its console log, read on this machine ($uefi_ip)" \
    jqt --arg ip "$uefi_ip" '.instances[] | select(.name == "d13-uefi") | .ip == $ip' <<<"$st"
check "status shows both guests running and SSH-ready" jqt '
    [.instances[] | select(.name == "d13-bios" or .name == "d13-uefi") | select(.state == "running" and .ssh_ready)] | length == 2' <<<"$st"
check "the plain password is not in the run's output" \
    bash -c '! grep -qa "d13-Plain-Secret-7" "$0" "$1"' "$T/provision.log" "$T/provision.json"

# --- a second run reads back what libvirt 11 wrote as what was asked: nothing to change ----------
capture --stdout rc json kp13 --output json -e kvm_runtime_timeout_seconds=300 provision
printf '%s\n' "$json" >"$T/rerun.json"
evidence "$T/rerun.json"
if changing=$(changes "$json"); then changed=$(grep -c . <<<"$changing" || true); else changed="(no report)"; fi
[ -z "$changing" ] || while IFS= read -r line; do log "  changed: $line"; done <<<"$changing"
check "a second provision on libvirt 11 exits 0 and changes nothing (changed=$changed)" \
    test "$rc" -eq 0 -a "$changed" = 0
check "the second run sees no drift in what libvirt 11 wrote back" \
    jqt '[.stages[].outcomes[] | select(.op == "drift")] | length == 0' <<<"$json"

# --- a UEFI guest's snapshots on libvirt 11 (qcow2 NVRAM): runtime took `base`, then a round trip
snaps=$(kp13 --output json snapshot list d13-uefi 2>/dev/null) || true
check "runtime took d13-uefi's snapshot base on libvirt 11 (UEFI, qcow2 NVRAM)" \
    jqt '[.instances[] | select(.name == "d13-uefi") | .snapshots[].name] | index("base") != null' <<<"$snaps"
# shellcheck source=tests/e2e/snapshot-lib.sh
source "$E2E_ROOT/tests/e2e/snapshot-lib.sh"
# After the revert the guest is found again once the hypervisor has talked to it (the neighbour
# table): its console says nothing new and libvirt knows no lease on this bridge. A TCP connect
# to its SSH port makes the hypervisor resolve it (no ping here: iputils is not installed).
wake13() {
    in13 timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/22"' "$uefi_ip"
    in13 ip neigh show dev "$BR"
}
snap_roundtrip kp13 d13-uefi "$POOLS/instances/d13-uefi_VARS.fd" wake13

# --- cleanup there leaves nothing ---------------------------------------------------------------
capture rc out kp13 -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup
printf '%s\n' "$out" >"$T/cleanup.log"
evidence "$T/cleanup.log"
check "confirmed cleanup on the Debian 13 hypervisor exits 0" test "$rc" -eq 0
left=$(d13_virsh list --all --name)
check "no domain is left on it${left:+ (listed: ${left//$'\n'/ })}" test -z "$left"
left=$(ls "$POOLS/instances")
check "the instance pool holds nothing of the guests${left:+ (left: ${left//$'\n'/ })}" \
    bash -c '! grep -q "^d13-" <<<"$0"' "$left"
check "the cached image stays" test -n "$cached" -a -f "$cached"
