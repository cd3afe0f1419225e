# Scenario: real TCG guests from the twins of Debian's images through `provision` (stage full):
# a Debian 13 guest by DHCP on libvirt's NAT network (BIOS), a Debian 12 guest with a static
# address (and a snapshot; BIOS), a Debian 12 guest under plain UEFI (no Secure Boot) on a
# bridged libvirt network whose DHCP server is a dnsmasq of this test (libvirt knows no lease),
# a Debian 13 UEFI guest with Secure Boot; each SSH-ready with its pinned host key and
# cloud-init done, then cleaned up. Every firmware variant and both releases boot. Also: Debian 13's
# twin hangs in GRUB without a video device (what kvmprov's domain has one for), and a network
# where no address source can work fails at preflight. Run by tests/e2e/run.sh (e2e_scenario):
# everything under its scratch directory; the bridge and its dnsmasq go after it.
BOOT="$E2E_SCRATCH"
CFG="$BOOT/vars.yml"
e2e_own_domains e2e-dhcp e2e-static e2e-bridge e2e-uefi e2e-novideo

# The bridged network: a bridge in the test's namespace, a DHCP server that is not libvirt's,
# and a libvirt network that forwards onto the bridge.
BR=brx0
in_ns ip link add "$BR" type bridge
e2e_own_links "$BR"
in_ns ip addr add 192.168.150.1/24 dev "$BR"
in_ns ip link set "$BR" up
in_ns dnsmasq --conf-file=/dev/null --interface="$BR" --bind-interfaces --except-interface=lo \
    --port=0 --dhcp-range=192.168.150.100,192.168.150.200,12h \
    --dhcp-leasefile="$BOOT/$BR.leases" --pid-file="$BOOT/$BR-dnsmasq.pid" \
    --log-dhcp --log-facility="$BOOT/$BR-dnsmasq.log"
# A daemon (not our child): stopped by its PID file's number after the scenario.
br_dnsmasq=$(cat "$BOOT/$BR-dnsmasq.pid")
e2e_own_daemon "$br_dnsmasq" dnsmasq
log "dnsmasq $br_dnsmasq serves DHCP on $BR (not libvirt's)"
cat >"$BOOT/net-br.xml" <<EOF
<network><name>e2e-br</name><forward mode='bridge'/><bridge name='$BR'/></network>
EOF
# A network without any DHCP server: nothing can tell a DHCP guest's address there.
cat >"$BOOT/net-nodhcp.xml" <<EOF
<network><name>e2e-nodhcp</name><bridge name='virbr-nd'/><ip address='192.168.160.1' netmask='255.255.255.0'/></network>
EOF
e2e_own_networks e2e-br e2e-nodhcp
for n in br nodhcp; do
    virsh_ns net-define "$BOOT/net-$n.xml" >/dev/null
    virsh_ns net-start "e2e-$n" >/dev/null
done

# Secure Boot when Debian's ovmf has the Microsoft-keys build (it does from bookworm on).
SECURE=false
[ -f /usr/share/OVMF/OVMF_CODE_4M.ms.fd ] && SECURE=true

{
    cat <<EOF
kvm_hypervisor_host: localhost
kvm_domain_type: qemu
kvm_image_cache_path: $BOOT/boot-images
kvm_instance_disk_pool_path: $BOOT/instances
kvm_runtime_timeout_seconds: 900
EOF
    e2e_catalog_both
    cat <<EOF
kvm_cloud_init_defaults:
  user: debian
  password: "e2e-Plain-Secret-42"
kvm_instance_definitions:
  - instance_name: e2e-dhcp
    image_name: debian-13
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
  - instance_name: e2e-static
    image_name: debian-12
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
    ipv4_address: 192.168.122.60/24
    snapshot_name: baseline
  - instance_name: e2e-bridge
    image_name: debian-12
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
    libvirt_network_name: e2e-br
    firmware: uefi
    secure_boot: false
  - instance_name: e2e-uefi
    image_name: debian-13
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
    firmware: uefi
    secure_boot: $SECURE
EOF
} >"$CFG"
chmod 0600 "$CFG"

# --- the twins are Debian's images where kvmprov can tell -----------------------------------------
for pair in "bookworm:$E2E_IMAGE_12" "trixie:$E2E_IMAGE_13"; do
    suite=${pair%%:*}
    capture rc cmp_out bash "$TESTKIT/build-image.sh" --compare "$suite" "${pair#*:}"
    echo "$cmp_out" | cut -c1-600
    check "the $suite twin has Debian's package set (every missing name explained)" test "$rc" -eq 0
    check "the $suite twin has no qemu-guest-agent" bash -c '! grep -q "^qemu-guest-agent	" "$0"' "${pair#*:}.packages"
done

# --- check and ping -------------------------------------------------------------------------
check "check accepts the test config" kp -c "$CFG" check
out=$(kp -c "$CFG" --output json ping) || true
check "ping reports versions and domain types" \
    jqt '.ok and (.hypervisors[0].host | .qemu and (.libvirt_version | length > 0))' <<<"$out"
capture rc out "$KVMPROV" -c "$CFG" -e 'kvm_libvirt_uri=qemu+unix:///system?socket=/nonexistent/sock' ping
check "ping without a daemon exits 1 with one sentence" test "$rc" -eq 1 -a "$(wc -l <<<"$out")" -eq 1

# --- check mode changes nothing ---------------------------------------------------------------
before=$(virsh_ns list --all --name)
check "provision --check exits 0" kp -c "$CFG" --check provision
after=$(virsh_ns list --all --name)
check "provision --check defined no domain" test "$before" = "$after"
check "provision --check downloaded nothing" test ! -e "$BOOT/boot-images"

# --- preflight: networks, address sources, a network where nothing can work ---------------------
pre=$(kp -c "$CFG" --output json preflight) || true
jq -r '.stages[].outcomes[] | select(.target | test("^(network|address|firmware) e2e")) | "  \(.op) \(.target) \(.reason)"' <<<"$pre" || true
check "preflight names the bridged network's mode and that libvirt serves no DHCP there" \
    outcome "$pre" "network e2e-br" "" "mode bridge on bridge $BR, no libvirt DHCP"
check "preflight says the bridged guest's address comes from its console" \
    outcome "$pre" "address e2e-bridge" "" "serial console"
check "preflight says the NAT guest's address comes from libvirt's lease" \
    outcome "$pre" "address e2e-dhcp" "" "DHCP lease from libvirt on \`default\` \\(nat"
check "preflight finds the UEFI firmware" outcome "$pre" "firmware e2e-uefi" "" "OVMF installed"
check "preflight finds the plain UEFI firmware for e2e-bridge" outcome "$pre" "firmware e2e-bridge" "" "OVMF installed"
nowhere="kvm_instance_definitions=[{instance_name: e2e-nowhere, image_name: debian-12, libvirt_network_name: e2e-nodhcp}]"
t0=$(date +%s%N)
capture rc out kp -c "$CFG" -e "$nowhere" preflight
ms=$((($(date +%s%N) - t0) / 1000000))
check "a guest on a network without DHCP fails preflight (exit $rc, ${ms} ms)" test "$rc" -eq 1 -a "$ms" -lt 20000
check "the failure names the network and the three ways out" \
    bash -c 'grep -q "network \`e2e-nodhcp\`" <<<"$0" && grep -q ipv4_address <<<"$0" && grep -q "<dhcp>" <<<"$0" && grep -q "guest agent" <<<"$0"' "$out"
check "nothing was created for it" bash -c '! grep -qx e2e-nowhere <<<"$0"' "$(virsh_ns list --all --name)"

# --- the full run -----------------------------------------------------------------------------
log "kvmprov provision (full): four TCG guests, this takes a few minutes"
start=$(date +%s)
# Every process's arguments while the guests boot and are SSH-checked: no password, no key.
(while :; do ps -eo args; sleep 0.2; done) >"$BOOT/boot-ps.log" 2>/dev/null &
ps_pid=$!
# Released by e2e_release (as a bash process) if the scenario stops before its kill below.
e2e_own_daemon "$ps_pid" bash
# The document to provision.json; the -v log (stderr) shown as it comes and kept (pipefail:
# the pipeline's status is kvmprov's).
# Four TCG guests on two cores, the UEFI one the slowest: 25 minutes before a guest counts as
# hung (a loaded CI machine took over 15 for it once); the later runs find them booted.
full_run() {
    kp -c "$CFG" -v --output json -e kvm_runtime_timeout_seconds=1500 provision 2>&1 >"$BOOT/provision.json" |
        tee "$BOOT/provision.log"
}
capture rc - full_run
evidence "$BOOT/provision.log"
prov=$(cat "$BOOT/provision.json")
# Failed actions into the log too: on failure the summary quotes its error lines.
jq -r '.stages[].outcomes[] | select(.status == "failed") | "  ✗ \(.op) \(.target) \(.reason)\n      error: \(.detail)"' \
    <<<"$prov" >>"$BOOT/provision.log" 2>/dev/null || true
for g in $(jq -r '.stages[].outcomes[] | select(.status == "failed" and .op == "wait") | .target' <<<"$prov" 2>/dev/null || true); do
    console_evidence "$BOOT/instances/$g-console.log"
done
kill "$ps_pid" 2>/dev/null
wait "$ps_pid" 2>/dev/null || true
check "during runtime no process argument holds the password or a private key ($(grep -c '^COMMAND' "$BOOT/boot-ps.log") samples)" \
    bash -c '! grep -qE "e2e-Plain-Secret-42|PRIVATE KEY" "$0"' "$BOOT/boot-ps.log"
check "runtime ran ssh with the pinned host key (seen in ps)" \
    grep -q "ssh .*StrictHostKeyChecking=yes" "$BOOT/boot-ps.log"
log "full run took $(($(date +%s) - start))s"
check "full provision exits 0" test "$rc" -eq 0
jq -r '.stages[].outcomes[] | select(.op == "wait") | "  \(.status) \(.target) \(.reason)"' <<<"$prov" || true

ssh_out() { kp -c "$CFG" ssh "$1" -- "$2" 2>&1; }
check "e2e-dhcp hostname is its instance name" test "$(ssh_out e2e-dhcp hostname)" = e2e-dhcp
check "e2e-static hostname is its instance name" test "$(ssh_out e2e-static hostname)" = e2e-static
addrs=$(ssh_out e2e-static "ip -4 -o addr show scope global") || true
check "e2e-static has its static address" grep -q "192.168.122.60/24" <<<"$addrs"
check "the user can sudo" test "$(ssh_out e2e-dhcp 'sudo -n id -u')" = 0
shadow=$(ssh_out e2e-dhcp "sudo -n grep '^debian:' /etc/shadow") || true
check "shadow holds a SHA-512 crypt hash" grep -q '^debian:\$6\$' <<<"$shadow"
check "shadow does not hold the plain password" bash -c '! grep -q "e2e-Plain-Secret-42" <<<"$0"' "$shadow"
# sshd's PasswordAuthentication: kvmprov writes the line ahead where cloud-init's set-passwords
# would (22.4 and 25.1 alike), so that module does not restart sshd in the middle of the boot.
for g in e2e-dhcp e2e-static; do
    pa=$(ssh_out "$g" "sudo -n sshd -T | grep -i '^passwordauthentication '; sudo -n stat -c '%a %U' /etc/ssh/sshd_config.d/50-cloud-init.conf; sudo -n cat /etc/ssh/sshd_config.d/50-cloud-init.conf") || true
    check "$g: sshd refuses passwords, set in 50-cloud-init.conf (0600, root) as set-passwords writes it" \
        test "$pa" = $'passwordauthentication no\n600 root\nPasswordAuthentication no'
    cilog=$(ssh_out "$g" "sudo -n grep -E 'No need to restart SSH service|Restarted the SSH daemon' /var/log/cloud-init.log") || true
    check "regression_sshd_restarted_during_boot_for_ssh_pwauth: $g's cloud-init left sshd running ($cilog)" \
        bash -c 'grep -q "No need to restart SSH service" <<<"$0" && ! grep -q "Restarted the SSH daemon" <<<"$0"' "$cilog"
done
ci=$(ssh_out e2e-static "cloud-init status --long") || true
check "cloud-init finished without errors" grep -q "status: done" <<<"$ci"
st=$(kp -c "$CFG" --output json status) || true
notready=$(jq -r '[.instances[] | select(.ssh_ready | not) | "\(.name) \(.state) \(.ip // "-")"] | join(", ")' <<<"$st" 2>/dev/null) || true
check "status shows the guests running and SSH-ready (the bridged one too; not ready: ${notready:-none})" jqt '
    def row($n): .instances[] | select(.name == $n);
    (row("e2e-dhcp") | .state == "running" and .ssh_ready)
    and (row("e2e-static") | .state == "running" and .ip == "192.168.122.60" and .ssh_ready)
    and (row("e2e-bridge") | .state == "running" and (.ip // "" | test("^192\\.168\\.150\\.[0-9]+$")) and .ssh_ready)' <<<"$st"
for g in e2e-dhcp e2e-static e2e-bridge e2e-uefi; do
    check "$g is ready: SSH with the pinned host key and cloud-init done" \
        outcome "$prov" "$g" wait "^ready at .*cloud-init done"
    check "$g has no qemu-guest-agent" test "$(ssh_out "$g" 'dpkg-query -W -f=\${Status} qemu-guest-agent 2>/dev/null || echo absent')" = absent
done
check "e2e-dhcp runs Debian 13" test "$(ssh_out e2e-dhcp '. /etc/os-release; echo $VERSION_ID')" = 13
bridge_ip=$(ssh_out e2e-bridge "ip -4 -o addr show scope global | awk '{print \$4}' | cut -d/ -f1" || true)
bridge_mac=$(virsh_ns domiflist e2e-bridge | awk '/e2e-br/ {print $5}' || true)
check "e2e-bridge is ready at the address the test's dnsmasq leased it ($bridge_ip)" \
    outcome "$prov" e2e-bridge wait "ready at $bridge_ip: address \\((console|neighbour)"
check "e2e-bridge announced that address on its serial console (the source that works on any network)" \
    grep -qa "ci-info: .*| *$bridge_ip *|.*| *$bridge_mac *|" "$BOOT/instances/e2e-bridge-console.log"
check "e2e-bridge's address was leased by the test's dnsmasq" grep -q "DHCPACK($BR) $bridge_ip " "$BOOT/$BR-dnsmasq.log"
check "e2e-uefi booted through UEFI" test "$(ssh_out e2e-uefi 'test -d /sys/firmware/efi && echo efi')" = efi
if [ "$SECURE" = true ]; then
    sb=$(ssh_out e2e-uefi 'mokutil --sb-state 2>&1 || od -An -t u1 /sys/firmware/efi/efivars/SecureBoot-* 2>&1') || true
    check "e2e-uefi runs with Secure Boot enabled ($sb)" grep -qi "SecureBoot enabled" <<<"$sb"
fi
uefi_xml=$(virsh_ns dumpxml e2e-uefi)
check "e2e-uefi's NVRAM is in the instance pool" grep -q "<nvram[^>]*>$BOOT/instances/e2e-uefi_VARS.fd</nvram>" <<<"$uefi_xml"
# Plain UEFI on Debian 12's libvirt (9.0): before the fix its define failed ("loader attribute
# 'secure' cannot be specified when firmware autoselection is enabled").
check "regression_plain_uefi_guest_was_refused_at_define: e2e-bridge (Debian 12, UEFI without Secure Boot) is ready" \
    outcome "$prov" e2e-bridge wait "^ready at .*cloud-init done"
check "e2e-bridge booted through UEFI" test "$(ssh_out e2e-bridge 'test -d /sys/firmware/efi && echo efi')" = efi
sb=$(ssh_out e2e-bridge 'od -An -t u1 /sys/firmware/efi/efivars/SecureBoot-* 2>&1') || true
check "e2e-bridge runs without Secure Boot (SecureBoot variable: $(tr -s ' ' <<<"$sb"))" test "$(awk '{print $NF}' <<<"$sb")" = 0
plain_loader=$(virsh_ns dumpxml e2e-bridge | grep -o "<loader[^>]*>[^<]*" || true)
check "libvirt chose OVMF's plain build for e2e-bridge ($plain_loader)" \
    bash -c 'grep -q "OVMF_CODE" <<<"$0" && ! grep -qE "\.ms\.|secboot|secure=.yes" <<<"$0"' "$plain_loader"
check "e2e-bridge's NVRAM is in the instance pool" test -f "$BOOT/instances/e2e-bridge_VARS.fd"
# When the address appeared (the test's DHCP server's log) and when kvmprov used it (its -v
# log line). libvirt's lease file keeps only the newest renewal, so NAT guests are not timed here.
addr_line=$(grep -m1 "e2e-bridge: address .* from the " "$BOOT/provision.log" || true)
addr_src=$(sed -n 's/.* from the \([a-z]*\) after.*/\1/p' <<<"$addr_line")
addr_found=$(grep -o '^[0-9T:.-]*' <<<"$addr_line" | head -n 1 || true)
addr_acked=$(grep -m1 "DHCPACK($BR) .* $bridge_mac" "$BOOT/$BR-dnsmasq.log" | awk '{print $1" "$2" "$3}' || true)
if [ -n "$addr_found" ] && [ -n "$addr_acked" ]; then
    log "address timing for e2e-bridge: DHCP server acknowledged at $(date -u -d "$addr_acked" +%T), kvmprov used it (source: $addr_src) at $(date -u -d "$addr_found" +%T.%N | cut -c1-12): $(awk -v a="$(date -d "$addr_found" +%s.%N)" -v b="$(date -d "$addr_acked" +%s)" 'BEGIN { printf "%.1f", a - b }') s later"
fi
# The console source: how long after the guest has its address it announces it (guest clock).
jr=$(ssh_out e2e-bridge "sudo -n journalctl -b -o short-unix --no-pager | grep -m1 'DHCPv4 address'; sudo -n journalctl -b -o short-unix --no-pager | grep -m1 'ci-info: .*$bridge_ip'" || true)
t_dhcp=$(sed -n 1p <<<"$jr" | cut -d' ' -f1)
t_ann=$(sed -n 2p <<<"$jr" | cut -d' ' -f1)
if [ -n "$t_dhcp" ] && [ -n "$t_ann" ]; then
    log "address timing for e2e-bridge: the guest announced $bridge_ip on its console $(awk -v a="$t_ann" -v b="$t_dhcp" 'BEGIN { printf "%.1f", a - b }') s after networkd acquired it (kvmprov reads the console every 0.25 s)"
fi
snaps=$(virsh_ns snapshot-list e2e-static --name)
check "snapshot baseline exists" grep -qx baseline <<<"$snaps"

# --- nothing secret is world-readable or in the output -----------------------------------------
check "no world-readable file in the instance pool" \
    test -z "$(find "$BOOT/instances" -perm -o+r -type f 2>/dev/null)"
check "the plain password is in no file of the pool" \
    bash -c '! grep -rqa "e2e-Plain-Secret-42" "$0"' "$BOOT/instances"
check "the plain password is not in the run's output" \
    bash -c '! grep -qa "e2e-Plain-Secret-42" "$0" "$1"' "$BOOT/provision.log" "$BOOT/provision.json"

# --- a second full run changes nothing --------------------------------------------------------
capture --stdout rc json kp -c "$CFG" --output json -e kvm_runtime_timeout_seconds=300 provision
check "second run exits 0" test "$rc" -eq 0
# What the report says was changed (lib.sh `changes`: every op but the read-only ones, a new one too).
if changing=$(changes "$json"); then changed=$(grep -c . <<<"$changing" || true); else changed="(no report)"; fi
[ -z "$changing" ] || while IFS= read -r line; do log "  changed: $line"; done <<<"$changing"
check "second run changed nothing (changed=$changed)" test "$changed" = 0
# kvmprov reads what libvirt wrote back (the resolved pflash loader) as what it asked for.
check "the second run reads both UEFI guests' firmware back as configured (no firmware drift)" \
    bash -c '! grep -qE "firmware (bios|uefi)[^ ]* \\(config" <<<"$0"' "$json"

# --- a paused guest is resumed by runtime ---------------------------------------------------------
virsh_ns suspend e2e-dhcp >/dev/null
capture rc - kp -c "$CFG" --output json -e kvm_runtime_timeout_seconds=300 runtime >"$BOOT/resume.json" 2>"$BOOT/resume.log"
evidence "$BOOT/resume.log"
resumed() { [ "$rc" -eq 0 ] && outcome "$(cat "$BOOT/resume.json")" e2e-dhcp start "^domain is Paused: resume$"; }
check "runtime resumes a paused guest and finds it SSH-ready" resumed
check "the resumed guest is running" test "$(virsh_ns domstate e2e-dhcp)" = running

# --- Debian 13's twin without a video device hangs in GRUB (why kvmprov's domain has one) -------
img13=$(ls "$BOOT"/boot-images/debian-13-*.qcow2 | head -n 1)
qemu-img create -q -f qcow2 -b "$img13" -F qcow2 "$BOOT/instances/novideo.qcow2" 4G
# e2e-dhcp's domain, renamed, without its identity (uuid, kvmprov's metadata, MAC) and its video
# device, on its own disk and console log (libvirt prints one element or end tag a line).
virsh_ns dumpxml e2e-dhcp | sed -e 's|<name>e2e-dhcp</name>|<name>e2e-novideo</name>|' \
    -e '/<uuid>/d' -e '/<metadata>/,/<\/metadata>/d' -e '/<video>/,/<\/video>/d' -e '/<mac address=/d' \
    -e "s|<source file='[^']*/e2e-dhcp.qcow2'|<source file='$BOOT/instances/novideo.qcow2'|" \
    -e "s|<log file='[^']*'|<log file='$BOOT/novideo-console.log'|" >"$BOOT/novideo.xml"
check "the domain without video names the new disk and no video device" \
    bash -c 'grep -q "novideo.qcow2" "$0" && ! grep -q "<video" "$0"' "$BOOT/novideo.xml"
virsh_ns define "$BOOT/novideo.xml" >/dev/null
virsh_ns start e2e-novideo >/dev/null
log "e2e-novideo (Debian 13 twin, no video device) started: watching its console for 60s"
for _ in $(seq 1 60); do
    grep -qa "Linux version" "$BOOT/novideo-console.log" 2>/dev/null && break
    sleep 1
done
check "without a video device Debian 13's twin stops in GRUB (the bug kvmprov's VGA device fixes)" \
    bash -c 'grep -qa "Booting .Debian GNU/Linux" "$0" && ! grep -qa "Linux version" "$0"' "$BOOT/novideo-console.log"
check "with kvmprov's domain the same image boots its kernel" \
    grep -qa "Linux version" "$BOOT/instances/e2e-dhcp-console.log"
virsh_ns destroy e2e-novideo >/dev/null 2>&1 || true
virsh_ns undefine e2e-novideo >/dev/null 2>&1 || true
rm -f "$BOOT/instances/novideo.qcow2"

# --- UEFI NVRAM follows the cleanup rules -------------------------------------------------------------
only_uefi="kvm_instance_definitions=[{instance_name: e2e-uefi, image_name: debian-13, vcpus: 1, memory_mib: 1024, disk_size_gib: 4, firmware: uefi, secure_boot: $SECURE}]"
kp -c "$CFG" -e "$only_uefi" -e kvm_cleanup_confirmed=true cleanup >/dev/null
check "cleanup-force (disks kept) keeps the UEFI guest's NVRAM" test -f "$BOOT/instances/e2e-uefi_VARS.fd"
check "cleanup-force removed the UEFI domain" bash -c '! grep -qx e2e-uefi <<<"$0"' "$(virsh_ns list --all --name)"

# --- cleanup: plan only, then for real ---------------------------------------------------------
instance_id() { virsh_ns dumpxml "$1" | grep -o "instance-id=[\"'][^\"']*" | cut -c14-; }
old_id=$(instance_id e2e-dhcp)
before=$(virsh_ns list --all --name)
kp -c "$CFG" cleanup >/dev/null
check "cleanup without confirmation changes nothing" test "$before" = "$(virsh_ns list --all --name)"
kp -c "$CFG" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup
left=$(virsh_ns list --all --name)
check "confirmed cleanup removed the domains${left:+ (listed after it: ${left//$'\n'/ })}" \
    bash -c '! grep -q "^e2e-" <<<"$0"' "$left"
check "confirmed cleanup removed the disks" test ! -e "$BOOT/instances/e2e-dhcp.qcow2"
check "cleanup with disks removed the UEFI guest's NVRAM" test ! -e "$BOOT/instances/e2e-uefi_VARS.fd"
check "cleanup with disks removed the plain UEFI guest's NVRAM" test ! -e "$BOOT/instances/e2e-bridge_VARS.fd"
check "cleanup kept the cached image" bash -c 'ls "$0"/*.qcow2 >/dev/null' "$BOOT/boot-images"


# --- cleanup then provision again: same name, new instance-id, working guest -------------------
only_dhcp="kvm_instance_definitions=[{instance_name: e2e-dhcp, image_name: debian-13, vcpus: 1, memory_mib: 1024, disk_size_gib: 4}]"
check "provision again after cleanup" kp -c "$CFG" -e "$only_dhcp" provision
new_id=$(instance_id e2e-dhcp)
check "the re-created instance has a new instance-id ($old_id -> $new_id)" test -n "$new_id" -a "$new_id" != "$old_id"
check "the re-created instance answers over SSH" test "$(ssh_out e2e-dhcp hostname)" = e2e-dhcp

# --- prune after cleanup-force keeps the base of the kept disk; provision boots from that disk ----
kp -c "$CFG" -e "$only_dhcp" -e kvm_cleanup_confirmed=true cleanup >/dev/null
base13=$(ls "$BOOT"/boot-images/debian-13-*.qcow2)
kp -c "$CFG" image-cache prune --yes >"$BOOT/prune.log" 2>&1 || true
evidence "$BOOT/prune.log"
check "prune after cleanup-force keeps the image the kept disk is backed by" test -f "$base13"
check "prune removed the image nothing uses" bash -c '! ls "$0"/debian-12-*.qcow2 >/dev/null 2>&1' "$BOOT/boot-images"
check "provision re-creates the domain on the kept disk" kp -c "$CFG" -e "$only_dhcp" provision
check "and the guest answers over SSH from it" test "$(ssh_out e2e-dhcp hostname)" = e2e-dhcp
kp -c "$CFG" -e "$only_dhcp" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null
