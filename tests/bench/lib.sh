# shellcheck shell=bash
# Shared by the benchmark scripts: `quiet`, and for the parts that drive libvirtd (after
# tests/e2e/lib.sh and e2e_setup) the check that libvirt did not re-probe QEMU.
#
# libvirt re-probes QEMU (seconds to minutes per call) when its qemu user loses /dev/kvm, e.g.
# when the machine's host changes the device's group; every figure taken then is meaningless.
# Each probe rewrites libvirt's capabilities cache, so a file there newer than the mark means a
# probe happened during the run.
CAPS_DIR=/var/cache/libvirt/qemu/capabilities

# A probe that is due anyway (a cold or outdated cache) happens here, before the mark.
probe_mark_set() {
    in_ns virsh -q -c qemu:///system domcapabilities --virttype qemu >/dev/null
    touch "$E2E_DIR/probe-mark"
}
reprobed() { find "$CAPS_DIR" -name '*.xml' -newer "$E2E_DIR/probe-mark" 2>/dev/null | head -n 1; }
# Exit 1 without figures when libvirt re-probed QEMU since the mark.
refuse_if_reprobed() {
    local f
    f=$(reprobed)
    [ -z "$f" ] && return 0
    echo "bench: no figures: libvirt re-probed QEMU during the run ($f was rewritten at $(date -r "$f" +%T)); is /dev/kvm usable by libvirt-qemu? ($(getfacl -p /dev/kvm 2>/dev/null | grep -c libvirt-qemu) ACL entries)" >&2
    exit 1
}

# Wait (at most 60 s) until the CPUs are at least 90% idle over a second. Each part starts on a
# quiet machine: the part before leaves guests exiting and pages to write back; the download
# measured 0.87x curl right after the provisioning part and 1.14-1.24x on its own.
quiet() {
    sync
    python3 - <<'PY'
import time
def cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[3] + v[4], sum(v)
for _ in range(60):
    i0, t0 = cpu()
    time.sleep(1)
    i1, t1 = cpu()
    if (i1 - i0) / max(1, t1 - t0) >= 0.9:
        break
PY
}

# The larger of two numbers, and the smallest of the non-empty arguments (fractions allowed).
fmax() { python3 -c "import sys; print(max(float(sys.argv[1]), float(sys.argv[2])))" "$1" "$2"; }
fmin() { python3 -c "import sys; print(min(float(x) for x in sys.argv[1:] if x))" "$@"; }
