# Scenario: the operator's own cloud-init and a password kept out of the variables file, on one
# booted TCG guest (Debian $E2E_N twin, DHCP on libvirt's NAT network): user_data from
# kvm_cloud_init_defaults (inline) and from the instance's user_data_file, fqdn, password_file.
# Inside the guest: both write_files, a runcmd marker (and the instance's own runcmd after it),
# the timezone, the fqdn, a second user, the password file's password as a `$6$` hash. The
# plain password appears in no seed byte, domain XML, -vvv log, JSON or process argument. A
# colliding kvmprov key and a password file others can read are refused at `check`, with the
# line. The seed's user-data and network-config pass cloud-init 22.4's and 25.1's schema.
# Runs alone: tests/e2e/run.sh userdata
UD="$E2E_SCRATCH"
UD_CFG="$UD/vars.yml"
UD_PW="e2e-Ud-File-Secret-77"
e2e_own_domains e2e-ud

printf '%s\n' "$UD_PW" >"$UD/password"
chmod 0600 "$UD/password"
cat >"$UD/instance-user-data.yml" <<'EOF'
#cloud-config
write_files:
  - path: /etc/kvmprov-e2e/instance.txt
    permissions: '0640'
    content: |
      from the instance's user_data_file
runcmd:
  - [sh, -c, "echo ud-marker > /var/lib/kvmprov-ud-marker"]
users:
  - name: e2e-second
    shell: /bin/bash
    lock_passwd: true
EOF
chmod 0644 "$UD/instance-user-data.yml"
{
    e2e_config_head "$UD/images" "$UD/instances"
    cat <<EOF
  - instance_name: e2e-ud
    image_name: debian-$E2E_N
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
    fqdn: e2e-ud.example.test
    runcmd: ["echo own > /var/lib/kvmprov-own-runcmd"]
    user_data_file: instance-user-data.yml
kvm_cloud_init_defaults:
  password_file: password
  user_data:
    timezone: Europe/Berlin
    write_files:
      - path: /etc/kvmprov-e2e/defaults.txt
        content: "from kvm_cloud_init_defaults\n"
EOF
} >"$UD_CFG"
chmod 0600 "$UD_CFG"

# --- refused at check, with the line ---------------------------------------------------------
check "check accepts the user_data config" kp -c "$UD_CFG" check
sed 's/^    timezone: Europe\/Berlin$/    timezone: Europe\/Berlin\n    ssh_pwauth: true/' "$UD_CFG" >"$UD/collide.yml"
line=$(grep -n '^    ssh_pwauth: true$' "$UD/collide.yml" | cut -d: -f1)
capture rc out kp -c "$UD/collide.yml" check
echo "$out" | head -n 3
check "a user_data key kvmprov sets is refused at check with its line (exit $rc)" \
    bash -c '[ "$0" -eq 2 ] && grep -q "collide.yml:$1:5: user_data key \`ssh_pwauth\` is set by kvmprov" <<<"$2"' "$rc" "$line" "$out"
chmod 0644 "$UD/password"
capture rc out kp -c "$UD_CFG" check
chmod 0600 "$UD/password"
check "a password_file others can read is refused (path, owner, mode; exit $rc)" \
    bash -c '[ "$0" -eq 2 ] && grep -q "$1" <<<"$2" && grep -q "mode 0644" <<<"$2" && grep -q "owner uid" <<<"$2"' "$rc" "$UD/password" "$out"
check "that error does not show the password" bash -c '! grep -q "$0" <<<"$1"' "$UD_PW" "$out"

# --- the guest --------------------------------------------------------------------------------
log "kvmprov -vvv provision (full): one TCG guest with user_data"
(while :; do ps -eo args; sleep 0.2; done) >"$UD/ps.log" 2>/dev/null &
ud_ps=$!
# Released by e2e_release (as a bash process) if the scenario stops before its kill below.
e2e_own_daemon "$ud_ps" bash
capture rc - kp -c "$UD_CFG" -vvv --output json -e kvm_runtime_timeout_seconds=1200 provision >"$UD/provision.json" 2>"$UD/provision.log"
kill "$ud_ps" 2>/dev/null
wait "$ud_ps" 2>/dev/null || true
evidence "$UD/provision.log"
console_evidence "$UD/instances/e2e-ud-console.log"
check "provision with user_data and password_file exits 0" test "$rc" -eq 0
check "e2e-ud is ready: SSH with the pinned host key and cloud-init done" \
    outcome "$(cat "$UD/provision.json")" e2e-ud wait "^ready at .*cloud-init done"

ud_ssh() { kp -c "$UD_CFG" ssh e2e-ud -- "$1" 2>&1; }
check "write_files from the defaults' inline user_data" \
    test "$(ud_ssh 'cat /etc/kvmprov-e2e/defaults.txt')" = "from kvm_cloud_init_defaults"
check "write_files from the instance's user_data_file, mode 0640" \
    test "$(ud_ssh 'sudo -n cat /etc/kvmprov-e2e/instance.txt; stat -c %a /etc/kvmprov-e2e/instance.txt')" = "from the instance's user_data_file
640"
check "the user_data_file's runcmd ran" test "$(ud_ssh 'cat /var/lib/kvmprov-ud-marker')" = ud-marker
check "the instance's own runcmd ran too" test "$(ud_ssh 'cat /var/lib/kvmprov-own-runcmd')" = own
check "timezone from user_data" test "$(ud_ssh 'readlink /etc/localtime')" = /usr/share/zoneinfo/Europe/Berlin
check "fqdn: hostname -f" test "$(ud_ssh 'hostname -f')" = e2e-ud.example.test
check "fqdn: the host name stays the instance name" test "$(ud_ssh hostname)" = e2e-ud
check "fqdn in /etc/hosts" bash -c 'grep -q "e2e-ud.example.test" <<<"$0"' "$(ud_ssh 'cat /etc/hosts')"
check "the second user from user_data exists, kvmprov's login user too" \
    bash -c 'grep -q "^e2e-second:" <<<"$0" && grep -q "^debian:" <<<"$0"' "$(ud_ssh 'getent passwd')"
shadow=$(ud_ssh "sudo -n grep '^debian:' /etc/shadow") || true
hash=$(cut -d: -f2 <<<"$shadow")
salt=$(cut -d'$' -f3 <<<"$hash")
want=$(openssl passwd -6 -salt "$salt" -stdin <<<"$UD_PW")
check "shadow holds the password file's password as a SHA-512 crypt hash" \
    bash -c '[[ "$0" == \$6\$* ]] && [ "$0" = "$1" ]' "$hash" "$want"
ci=$(ud_ssh "cloud-init status --long") || true
check "cloud-init finished without errors or warnings" bash -c 'grep -q "status: done" <<<"$0" && ! grep -qi "recoverable_errors: {[^}]" <<<"$0"' "$ci"

# --- the plain password nowhere ----------------------------------------------------------------
seed="$UD/instances/e2e-ud-seed.iso"
check "the seed ISO exists" test -s "$seed"
check "the plain password is in no byte of the seed ISO" bash -c '! grep -qa "$0" "$1"' "$UD_PW" "$seed"
check "the plain password is in no file of the pool" bash -c '! grep -rqa "$0" "$1"' "$UD_PW" "$UD/instances"
check "the plain password is not in the domain XML" bash -c '! grep -q "$0" <<<"$1"' "$UD_PW" "$(virsh_ns dumpxml e2e-ud)"
check "the plain password is not in the -vvv log nor the JSON" \
    bash -c '! grep -qa "$0" "$1" "$2"' "$UD_PW" "$UD/provision.log" "$UD/provision.json"
check "the -vvv log was written ($(wc -l <"$UD/provision.log") lines)" test -s "$UD/provision.log"
st=$(kp -c "$UD_CFG" --output json status 2>&1) || true
cj=$(kp -c "$UD_CFG" --output json check 2>&1) || true
check "the plain password is not in status or check JSON" bash -c '! grep -q "$0" <<<"$1$2"' "$UD_PW" "$st" "$cj"
check "no process argument held the password during the run ($(grep -c '^COMMAND' "$UD/ps.log") samples)" \
    bash -c '! grep -q "$0" "$1"' "$UD_PW" "$UD/ps.log"

# --- the seed's documents pass cloud-init's own schema (22.4 and 25.1) -------------------------------
e2e_seed_docs "$seed" "$UD/seed-docs" e2e-ud
check "the seed's user-data joins the user_data (write_files, timezone, fqdn)" \
    bash -c 'grep -q "timezone" "$0" && grep -q "write_files" "$0" && grep -q "e2e-ud.example.test" "$0"' "$UD/seed-docs/e2e-ud.user-data"
e2e_seed_schema "$UD/seed-docs" "$UD/schema.log"

kp -c "$UD_CFG" -e kvm_cleanup_confirmed=true -e kvm_cleanup_remove_instance_disks=true cleanup >/dev/null
check "cleanup removed e2e-ud" bash -c '! grep -qx e2e-ud <<<"$0"' "$(virsh_ns list --all --name)"
