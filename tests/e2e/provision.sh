# Scenario: preflight and provision against the real libvirtd, no guest boot.
# Preflight cases (missing network, inactive network with/without auto-start, a pool path the
# qemu user cannot traverse with/without the ACL fix, pools and state directories other users
# can write or planted, a planted demo directory), what provision generates (domain XML
# valid for libvirt's schema, seed ISO readable with isoinfo, user-data accepted by
# cloud-init, nothing world-readable, no plain password), and 20 instances in parallel.
# Run by tests/e2e/run.sh (e2e_scenario): everything under its scratch directory.

P="$E2E_SCRATCH"
# pcfg FILE POOL_DIR COUNT [extra instance fields]: a config with COUNT instances p-01…
pcfg() {
    local f=$1 pool=$2 count=$3 extra=${4:-} i
    e2e_config_head "$P/images" "$pool" prov-Plain-Secret-77 >"$f"
    for i in $(seq 1 "$count"); do
        i=$(printf %02d "$i")
        echo "  - {instance_name: p-$i, image_name: debian-$E2E_N, vcpus: 1, memory_mib: 256, disk_size_gib: 4$extra}" >>"$f"
    done
}
for i in $(seq 1 20); do e2e_own_domains "p-$(printf %02d "$i")"; done

# --- preflight: networks ---------------------------------------------------------------------
pcfg "$P/net.yml" "$P/pool" 1 ", libvirt_network_name: nosuchnet"
capture rc out kp -c "$P/net.yml" preflight
check "preflight fails on a missing network (exit 1)" test "$rc" -eq 1
check "the missing-network message lists the defined networks" grep -q "Network not found: \`nosuchnet\`.*default (active)" <<<"$out"

cat >"$P/off.xml" <<EOF
<network><name>kvmprov-e2e-off</name><bridge name='virbr-kpoff'/><ip address='192.168.150.1' netmask='255.255.255.0'><dhcp><range start='192.168.150.2' end='192.168.150.254'/></dhcp></ip></network>
EOF
virsh_ns net-define "$P/off.xml" >/dev/null
e2e_own_networks kvmprov-e2e-off
pcfg "$P/off.yml" "$P/pool" 1 ", libvirt_network_name: kvmprov-e2e-off"
capture rc out kp -c "$P/off.yml" preflight
check "preflight fails on an inactive network without auto-start" test "$rc" -eq 1
check "the inactive-network message says how to start it" grep -q "kvm_auto_start_required_libvirt_networks=true" <<<"$out"
check "preflight with auto-start starts the network" \
    kp -c "$P/off.yml" -e kvm_auto_start_required_libvirt_networks=true preflight
check "the network is active afterwards" bash -c 'grep -qx kvmprov-e2e-off <<<"$0"' "$(virsh_ns net-list --name)"
virsh_ns net-destroy kvmprov-e2e-off >/dev/null 2>&1 || true
virsh_ns net-undefine kvmprov-e2e-off >/dev/null 2>&1 || true

# --- preflight: a pool the qemu user cannot reach ---------------------------------------------
mkdir -p "$P/locked/pool"
chmod 0700 "$P/locked"
pcfg "$P/locked.yml" "$P/locked/pool" 1
capture rc out kp -c "$P/locked.yml" -e kvm_auto_fix_runtime_pool_access=false preflight
check "preflight fails when libvirt-qemu cannot traverse the pool" test "$rc" -eq 1
check "the message prints the exact setfacl fix" grep -q "setfacl -m u:libvirt-qemu:x $P/locked" <<<"$out"
check "preflight with the ACL fix succeeds" kp -c "$P/locked.yml" preflight
check "the ACL grants libvirt-qemu traverse" bash -c 'getfacl -p "$0" 2>/dev/null | grep -q "^user:libvirt-qemu:--x"' "$P/locked"
check "others still have no access to the locked directory" test "$(stat -c %A "$P/locked" | cut -c8-10)" = "---"

# --- preflight: trees other users can write, a planted .kvmprov (issue 23 items 1, 2) ----------
# kvmprov runs as root into the pool, the cache and <pool>/.kvmprov: refused, with one sentence
# naming the directory, its owner and mode and the fix, and nothing written through them.
mkdir -p "$P/ww"
chmod 0777 "$P/ww"
pcfg "$P/ww.yml" "$P/ww/pool" 1
capture rc out kp -c "$P/ww.yml" preflight
check "regression_pool_under_world_writable_dir_was_used: preflight refuses (exit 1)" test "$rc" -eq 1
check "regression_pool_under_world_writable_dir_was_used: one sentence names $P/ww, every user and the fix" \
    grep -q "$P/ww (owner uid 0, mode 0777) can be written by every user, who could then plant files kvmprov runs as root on: \`chmod o-w $P/ww\`" <<<"$out"
check "regression_pool_under_world_writable_dir_was_used: the pool was not created" test ! -e "$P/ww/pool"

mkdir -p "$P/planted" "$P/victim"
chmod 0755 "$P/planted" "$P/victim"
echo keep >"$P/victim/keep"
chown -R nobody "$P/victim"
ln -s "$P/victim" "$P/planted/.kvmprov"
chown -h nobody "$P/planted/.kvmprov"
before=$(stat -c '%a %U' "$P/victim"; ls -A "$P/victim")
pcfg "$P/planted.yml" "$P/planted" 1
for cmd in preflight "provision --stage provision"; do
    # shellcheck disable=SC2086
    capture rc out kp -c "$P/planted.yml" $cmd
    check "regression_planted_kvmprov_symlink_was_followed: $cmd refuses (exit 1)" test "$rc" -eq 1
    check "regression_planted_kvmprov_symlink_was_followed: $cmd says it is a link and to remove it" \
        grep -q "$P/planted/.kvmprov is a symbolic link, and kvmprov follows no link it did not make there: remove it" <<<"$out"
    check "regression_planted_kvmprov_symlink_was_followed: $cmd left the victim's mode and files alone" \
        test "$(stat -c '%a %U' "$P/victim"; ls -A "$P/victim")" = "$before"
done

mkdir -p "$P/theirs"
chown nobody "$P/theirs"
chmod 0755 "$P/theirs"
pcfg "$P/theirs.yml" "$P/theirs" 1
capture rc out kp -c "$P/theirs.yml" preflight
check "regression_pool_owned_by_another_user_was_used: preflight refuses (exit 1)" test "$rc" -eq 1
check "regression_pool_owned_by_another_user_was_used: the message names the owner and the fix" \
    grep -q "$P/theirs is owned by uid 65534 (mode 0755), not by uid 0 that kvmprov runs as or root" <<<"$out"
check "regression_pool_owned_by_another_user_was_used: nothing was created in it" test -z "$(ls -A "$P/theirs")"

mkdir -p "$P/sticky"
chmod 1777 "$P/sticky"
pcfg "$P/sticky.yml" "$P/sticky/pool" 1
check "a pool under a root-owned 1777 directory passes preflight" kp -c "$P/sticky.yml" preflight
check "its state directory is root's, 0700" test "$(stat -c '%a %U' "$P/sticky/pool/.kvmprov")" = "700 root"

# --- make demo: a demo directory somebody else planted (issue 23 item 15) ---------------------
mkdir -p "$P/demo-planted"
sleep 600 &
decoy=$!
e2e_own_daemon "$decoy" sleep
echo "$decoy" >"$P/demo-planted/mirror.pid"
echo "kvm_libvirt_uri: qemu:///system" >"$P/demo-planted/vars.yml"
chown -R nobody "$P/demo-planted"
capture rc out env KVMPROV_DEMO_DIR="$P/demo-planted" bash "$TESTKIT/demo.sh" down
check "regression_demo_trusted_a_planted_demo_dir: demo-clean refuses (exit 1)" test "$rc" -eq 1
check "regression_demo_trusted_a_planted_demo_dir: it names the owner" grep -q "$P/demo-planted is owned by uid 65534" <<<"$out"
check "regression_demo_trusted_a_planted_demo_dir: the PID it held was not killed" kill -0 "$decoy"
check "regression_demo_trusted_a_planted_demo_dir: the directory is left as it was" test -f "$P/demo-planted/vars.yml"
kill "$decoy" 2>/dev/null; wait "$decoy" 2>/dev/null || true
mkdir -p "$P/demo-real"
ln -s "$P/demo-real" "$P/demo-link"
capture rc out env KVMPROV_DEMO_DIR="$P/demo-link" bash "$TESTKIT/demo.sh" up
check "regression_demo_trusted_a_planted_demo_dir: make demo refuses a linked demo dir before anything" \
    bash -c '[ "$0" -eq 1 ] && grep -q "is a symbolic link" <<<"$1" && ! grep -q "^==>" <<<"$1"' "$rc" "$out"
mkdir -p "$P/demo-root"
chmod 0755 "$P/demo-root"
ln -s /etc/hostname "$P/demo-root/vars.yml"
capture rc out env KVMPROV_DEMO_DIR="$P/demo-root" bash "$TESTKIT/demo.sh" down
check "regression_demo_trusted_a_planted_demo_dir: a vars.yml link is refused" \
    bash -c '[ "$0" -eq 1 ] && grep -q "vars.yml is not a regular file of root" <<<"$1"' "$rc" "$out"

# --- the hypervisor crate against this real daemon (overlay, upload read-back, define/start) ---
mkdir -p "$P/hv"
chmod 0755 "$P/hv"
check "hypervisor crate: real-daemon test" in_ns env KVMPROV_HV_TEST_URI=qemu:///system \
    KVMPROV_HV_TEST_DIR="$P/hv" KVMPROV_HV_TEST_NETWORK=default \
    cargo test -q --locked --manifest-path "$E2E_ROOT/Cargo.toml" -p kvmprov-hypervisor --test libvirt real_daemon

# --- what provision generates -----------------------------------------------------------------
pcfg "$P/one.yml" "$P/pool" 1
check "image-cache for the provision scenario" kp -c "$P/one.yml" image-cache
check "provision (preflight..provision) for one instance" kp -c "$P/one.yml" provision --stage provision
virsh_ns dumpxml p-01 >"$P/p-01.xml"
check "the domain XML passes virt-xml-validate" virt-xml-validate "$P/p-01.xml" domain
seed="$P/pool/p-01-seed.iso"
iso_r=$(isoinfo -R -x /user-data -i "$seed")
iso_j=$(isoinfo -J -x /user-data -i "$seed")
check "the seed's user-data reads back through Rock Ridge and Joliet alike" test -n "$iso_r" -a "$iso_r" = "$iso_j"
check "the seed's meta-data names the host" bash -c 'isoinfo -R -x /meta-data -i "$0" | grep -q "\"local-hostname\": \"p-01\""' "$seed"
printf '%s\n' "$iso_r" >"$P/user-data"
check "cloud-init schema accepts the user-data" cloud-init schema --config-file "$P/user-data"
check "user-data has the SHA-512 hash, not the password" \
    bash -c 'grep -qF "\"\$6\$" "$0" && ! grep -q "prov-Plain-Secret-77" "$0"' "$P/user-data"
check "no file in the pool is world-readable" test -z "$(find "$P/pool" -type f -perm -o+r)"
check "the plain password is in no file of the pool" bash -c '! grep -rqa "prov-Plain-Secret-77" "$0"' "$P/pool"
kp -c "$P/one.yml" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null

# --- 20 instances in parallel -----------------------------------------------------------------
pcfg "$P/twenty.yml" "$P/pool" 20
start=$(date +%s%N)
"${E2E_IN[@]}" "$KVMPROV" -c "$P/twenty.yml" -vvv provision --stage provision >"$P/twenty.log" 2>&1 &
kpid=$!
# Every process's arguments, sampled while kvmprov works: the password must never be there.
: >"$P/ps.log"
while kill -0 "$kpid" 2>/dev/null; do ps -eo args >>"$P/ps.log"; sleep 0.01; done
capture rc - wait "$kpid"
log "20 instances: disks, seeds, domains in $((($(date +%s%N) - start) / 1000000)) ms"
check "provision of 20 instances succeeds" test "$rc" -eq 0
check "the password is in no process argument (ps sampled $(grep -c '^COMMAND' "$P/ps.log") times)" \
    bash -c '! grep -q "prov-Plain-Secret-77" "$0"' "$P/ps.log"
check "the password is not in the -vvv log" bash -c '! grep -q "prov-Plain-Secret-77" "$0"' "$P/twenty.log"
check "no private key material in the -vvv log" bash -c '! grep -q "PRIVATE KEY" "$0"' "$P/twenty.log"
json=$(kp -c "$P/twenty.yml" --output json check; kp -c "$P/twenty.yml" --output json --check provision)
check "the password and private keys are not in JSON output" \
    bash -c '! grep -qE "prov-Plain-Secret-77|PRIVATE KEY" <<<"$0"' "$json"
defined=$(virsh_ns list --all --name | grep -c '^p-' || true)
check "all 20 domains are defined (got $defined)" test "$defined" -eq 20
again=$(kp -c "$P/twenty.yml" --output json provision --stage provision)
check "a second provision run plans nothing" jqt 'all(.stages[].outcomes[]; .op == "ok")' <<<"$again"
kp -c "$P/twenty.yml" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null
left=$(virsh_ns list --all --name | grep -c '^p-' || true)
check "cleanup removed all 20" test "$left" -eq 0
