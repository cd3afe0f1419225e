# The `kvmprov snapshot` round trip on one booted guest, shared by tests/e2e/snapshots.sh (a
# BIOS guest on the e2e libvirtd) and any scenario with a hypervisor that snapshots UEFI guests
# (libvirt 10.10 or newer, e.g. the Debian 13 one of testkit/debian13-hypervisor.sh). Sourced,
# not run; needs lib.sh's check, capture, jqt and outcome.
#
#   snap_roundtrip KP INSTANCE [NVRAM [WAKE]]
# KP: a command running kvmprov with the scenario's config (`kp13`, or a function around
# `kp -c FILE`); INSTANCE: a declared guest that is running and SSH-ready. Checks: a file is
# written; `snapshot create --check` plans and takes nothing; `create s1` works (disks and
# memory of the running guest); the file is changed; `revert --check --yes` and `revert`
# without --yes exit 0 and change nothing; `revert --yes` leaves the guest running with the file
# as it was at s1; `delete s1` leaves the list as it was before. NVRAM (a UEFI guest's
# `<name>_VARS.fd`): also checked to be qcow2, what libvirt needs to snapshot a UEFI guest.
# For a UEFI guest on the Debian 13 hypervisor: give it `snapshot_name: base` in the config
# (kvmprov then gives it the qcow2 NVRAM) and call, after provision:
#   snap_roundtrip kp13 d13-uefi "$POOLS/instances/d13-uefi_VARS.fd"

# The snapshot names `snapshot list` gives INSTANCE, oldest first, on one line.
_snap_names() {
    "$1" --output json snapshot list "$2" 2>/dev/null |
        jq -r --arg g "$2" '[.instances[] | select(.name == $g) | .snapshots[].name] | join(" ")'
}

_snap_ssh() { "$1" ssh "$2" -- "$3" 2>&1; }

snap_roundtrip() {
    local kpf=$1 g=$2 nvram=${3:-} wake=${4:-} before out rc t0 how back
    if [ -n "$nvram" ]; then
        check "$g: its NVRAM is qcow2 (libvirt snapshots UEFI guests only so)" \
            bash -c 'qemu-img info -U "$0" 2>&1 | grep -q "^file format: qcow2"' "$nvram"
    fi
    before=$(_snap_names "$kpf" "$g")
    check "$g: a file written in the guest" \
        test "$(_snap_ssh "$kpf" "$g" 'echo one >~/marker && sync && cat ~/marker')" = one
    capture --stdout rc out "$kpf" --check --output json snapshot create "$g" s1
    check "$g: create --check plans a snapshot of the running guest with its memory" \
        outcome "$out" "$g" snapshot '^take snapshot `s1` \(running: disks and memory\)$'
    check "$g: create --check took none" test "$(_snap_names "$kpf" "$g")" = "$before"

    t0=$(date +%s)
    capture rc out "$kpf" --output json snapshot create "$g" s1
    check "$g: snapshot create exits 0 ($(($(date +%s) - t0)) s)" test "$rc" -eq 0
    check "$g: snapshot list has s1 after what was there" \
        test "$(_snap_names "$kpf" "$g")" = "${before:+$before }s1"
    check "$g: the file changed after the snapshot" \
        test "$(_snap_ssh "$kpf" "$g" 'echo two >~/marker && sync && cat ~/marker')" = two

    for how in "--check snapshot revert $g s1 --yes" "snapshot revert $g s1"; do
        # shellcheck disable=SC2086 # the words of $how are kvmprov's arguments
        capture --stdout rc out "$kpf" --output json $how
        check "$g: $how exits 0 and only plans the revert" bash -c '[ "$0" -eq 0 ] && jq -e ".check == true and .stages[0].outcomes[0].op == \"revert\" and .stages[0].outcomes[0].status == \"planned\"" <<<"$1" >/dev/null' "$rc" "$out"
        check "$g: $how changed nothing: the file is still changed" \
            test "$(_snap_ssh "$kpf" "$g" 'cat ~/marker')" = two
    done

    t0=$(date +%s)
    capture rc out "$kpf" --output json snapshot revert "$g" s1 --yes
    check "$g: snapshot revert --yes exits 0 ($(($(date +%s) - t0)) s)" test "$rc" -eq 0
    # Back at the moment of s1 and running on: SSH answers (60 s of grace for a slow TCG host).
    back=""
    for _ in $(seq 1 12); do
        # WAKE: a command that makes the restored guest known again where kvmprov looks for its
        # address (a guest on a bridge with a foreign DHCP server: the console log starts anew
        # with the restored QEMU and says nothing, the neighbour table forgot it).
        [ -z "$wake" ] || $wake >/dev/null 2>&1 || true
        back=$(_snap_ssh "$kpf" "$g" 'cat ~/marker') || true
        [ "$back" = one ] && break
        sleep 5
    done
    if [ "$back" != one ]; then
        # What the guest looked like to kvmprov: why it could not be reached.
        log "$g after the revert: $("$kpf" status "$g" 2>&1 | tail -n 3 | tr '\n' ' ' | cut -c1-300)"
        [ -z "$wake" ] || log "$g wake ($wake): $($wake 2>&1 | tail -n 2 | tr '\n' ' ')"
    fi
    check "$g: revert brought the file back with the guest running (got: ${back:0:60})" test "$back" = one

    capture rc out "$kpf" --output json snapshot delete "$g" s1
    check "$g: snapshot delete exits 0" test "$rc" -eq 0
    check "$g: snapshot list no longer has s1" test "$(_snap_names "$kpf" "$g")" = "$before"
}
