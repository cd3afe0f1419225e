# Scenario: the day-two verbs on one booted TCG guest (Debian $E2E_N twin, BIOS, DHCP on
# libvirt's NAT network). A name that is not declared, given to start, stop, restart or
# console, exits 2 and changes nothing. `stop --check` plans and changes nothing; `stop` shuts
# the guest down (ACPI) and a second `stop` has nothing to do; `start` brings it back to
# SSH-ready with cloud-init done; `console --log` prints its (sanitized) console log, and
# `console` attached under a pseudo-terminal (`script`) shows the guest's login prompt, ends on
# Ctrl+] and leaves the terminal as it found it (not raw); `console` without a terminal refuses;
# `restart` reboots it into a new boot (another boot id) and waits for SSH and cloud-init again.
# Then the guest ignores its power button (logind HandlePowerKey=ignore): `stop --timeout 20`
# fails after 20 s with the guest still running, and `stop --force` powers it off.
# Runs alone: tests/e2e/run.sh lifecycle
LC="$E2E_SCRATCH"
LC_CFG="$LC/vars.yml"
LC_POOL="$LC/instances"
LC_VM=e2e-life
e2e_own_domains "$LC_VM"
{
    e2e_config_head "$LC/images" "$LC_POOL" "e2e-life-pw"
    cat <<EOF2
  - instance_name: $LC_VM
    image_name: debian-$E2E_N
    vcpus: 1
    memory_mib: 1024
    disk_size_gib: 4
    firmware: bios
EOF2
} >"$LC_CFG"

lc() { kp -c "$LC_CFG" "$@"; }
state() { virsh_ns domstate "$LC_VM" 2>/dev/null | head -n 1; }
boot_id() { lc ssh "$LC_VM" -- cat /proc/sys/kernel/random/boot_id 2>/dev/null; }

log "kvmprov provision (full): one TCG guest"
capture rc - lc --output json -e kvm_runtime_timeout_seconds=1200 provision >"$LC/provision.json" 2>"$LC/provision.log"
evidence "$LC/provision.log"
console_evidence "$LC_POOL/$LC_VM-console.log"
check "provision exits 0" test "$rc" -eq 0
check "$LC_VM is ready after provision" \
    outcome "$(cat "$LC/provision.json")" "$LC_VM" wait "^ready at .*cloud-init done"

# --- an undeclared name: exit 2, nothing changed ------------------------------------------------
for verb in start stop restart; do
    capture rc out lc --output json "$verb" "$LC_VM" not-declared
    check "$verb with an undeclared name exits 2" test "$rc" -eq 2
    check "$verb with an undeclared name says which and that nothing changed" \
        bash -c 'grep -q "\`not-declared\` is not a declared instance of .*(declared: e2e-life); nothing was changed" <<<"$0"' "$out"
done
capture rc out lc console not-declared
check "console with an undeclared name exits 2" test "$rc" -eq 2
check "an undeclared name changed nothing: $LC_VM is still running" test "$(state)" = running

# --- stop --------------------------------------------------------------------------------------
plan=$(lc --check --output json stop 2>/dev/null) || true
check "stop --check plans an ACPI shutdown with the timeout" \
    outcome "$plan" "$LC_VM" stop '^shut down \(ACPI\), wait up to 120 s for it to power off$'
check "stop --check changed nothing" test "$(state)" = running
t0=$(date +%s)
capture rc - lc --output json stop >"$LC/stop.json" 2>"$LC/stop.log"
evidence "$LC/stop.log"
log "stop took $(($(date +%s) - t0)) s"
check "stop exits 0" test "$rc" -eq 0
check "stop shut the guest down (ACPI)" outcome "$(cat "$LC/stop.json")" "$LC_VM" stop '^shut down: powered off [0-9]+ s after the request$'
check "$LC_VM is shut off" test "$(state)" = "shut off"
again=$(lc --output json stop 2>/dev/null) || true
check "a second stop has nothing to do" outcome "$again" "$LC_VM" ok "^already shut off$"
check "a second stop changed nothing" test -z "$(changes "$again")"

# --- start ---------------------------------------------------------------------------------------
plan=$(lc --check --output json start "$LC_VM" 2>/dev/null) || true
check "start --check plans a start" outcome "$plan" "$LC_VM" start "^domain is ShutOff$"
check "start --check plans the wait for SSH and cloud-init" outcome "$plan" "$LC_VM" wait "SSH with pinned host key"
check "start --check changed nothing" test "$(state)" = "shut off"
t0=$(date +%s)
capture rc - lc --output json start "$LC_VM" >"$LC/start.json" 2>"$LC/start.log"
evidence "$LC/start.log"
log "start took $(($(date +%s) - t0)) s"
check "start exits 0" test "$rc" -eq 0
check "start: $LC_VM is SSH-ready with cloud-init done" \
    outcome "$(cat "$LC/start.json")" "$LC_VM" wait "^ready at .*cloud-init done"
check "start: ssh runs a command" test "$(lc ssh "$LC_VM" -- echo up 2>/dev/null)" = up

# --- console -------------------------------------------------------------------------------------
capture --stdout rc logtext lc console --log "$LC_VM"
check "console --log exits 0" test "$rc" -eq 0
check "console --log shows the login prompt" grep -q "e2e-life login:" <<<"$logtext"
check "console --log prints no escape character" test "$(tr -d -c '\033' <<<"$logtext" | wc -c)" -eq 0
capture rc out lc console "$LC_VM" </dev/null
check "console without a terminal exits 2" test "$rc" -eq 2
check "console without a terminal points to --log" grep -q "console --log e2e-life" <<<"$out"
# Under a pseudo-terminal: Enter (a fresh login prompt), then Ctrl+]; then the terminal's modes.
session="$KVMPROV -c $LC_CFG console $LC_VM; echo console-rc=\$?; stty -a"
capture rc - in_ns timeout 120 script -qfec "$session" /dev/null \
    < <(sleep 4; printf '\r'; sleep 10; printf '\035'; sleep 5) >"$LC/console.out" 2>&1
evidence "$LC/console.out"
check "console under script: the session ends" test "$rc" -eq 0
check "console shows the escape key at start" grep -q "Escape character is ^\] (Ctrl+\])" "$LC/console.out"
check "console shows the guest's login prompt" grep -q "e2e-life login:" "$LC/console.out"
check "console ends on Ctrl+] with status 0" grep -q "console-rc=0" "$LC/console.out"
check "console leaves the terminal out of raw mode (icanon, echo)" \
    bash -c 'stty=$(sed -n "/console-rc=/,\$p" "$0"); grep -qw icanon <<<"$stty" && grep -qw echo <<<"$stty" && ! grep -qw -- -icanon <<<"$stty"' "$LC/console.out"

# --- restart -------------------------------------------------------------------------------------
before=$(boot_id) || true
t0=$(date +%s)
capture rc - lc --output json restart >"$LC/restart.json" 2>"$LC/restart.log"
evidence "$LC/restart.log"
log "restart took $(($(date +%s) - t0)) s"
check "restart exits 0" test "$rc" -eq 0
check "restart asked for a reboot" outcome "$(cat "$LC/restart.json")" "$LC_VM" reboot '^reboot(ed|ing): '
check "restart waited for a new boot, SSH and cloud-init" \
    outcome "$(cat "$LC/restart.json")" "$LC_VM" wait "^new boot [0-9a-f-]{36} after [0-9]+ s, ready at .*cloud-init done"
after=$(boot_id) || true
check "the guest's boot id changed across the restart" \
    bash -c '[ ${#0} -eq 36 ] && [ ${#1} -eq 36 ] && [ "$0" != "$1" ]' "$before" "$after"

# --- a guest that ignores ACPI -------------------------------------------------------------------
lc ssh "$LC_VM" -- 'sudo -n mkdir -p /etc/systemd/logind.conf.d && printf "[Login]\nHandlePowerKey=ignore\n" | sudo -n tee /etc/systemd/logind.conf.d/ignore-power.conf >/dev/null && sudo -n systemctl restart systemd-logind' >/dev/null 2>&1 || true
t0=$(date +%s)
capture rc - lc --output json stop --timeout 20 >"$LC/stop-ignored.json" 2>"$LC/stop-ignored.log"
took=$(($(date +%s) - t0))
log "stop of a guest ignoring ACPI took $took s"
check "stop of a guest that ignores ACPI fails (exit 1) after its timeout" \
    bash -c '[ "$0" -eq 1 ] && [ "$1" -ge 20 ] && [ "$1" -lt 60 ]' "$rc" "$took"
check "the failure is one clear line naming the instance, hypervisor and --force" \
    grep -qs "e2e-life on qemu[^ ]*/system did not power off within 20 s of the shutdown request (does it ignore ACPI?); it is still running: \`kvmprov stop --force e2e-life\` powers it off" "$LC/stop-ignored.json" "$LC/stop-ignored.log"
check "$LC_VM is still running after the failed stop" test "$(state)" = running
capture rc - lc --output json stop --force --timeout 20 >"$LC/stop-force.json" 2>"$LC/stop-force.log"
evidence "$LC/stop-force.log"
check "stop --force exits 0" test "$rc" -eq 0
check "stop --force powered it off after the timeout" \
    outcome "$(cat "$LC/stop-force.json")" "$LC_VM" stop '^still running 20 s after the shutdown request: powered off \(--force\)$'
check "$LC_VM is shut off after stop --force" test "$(state)" = "shut off"
