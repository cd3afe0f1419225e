# Shared by the benchmark parts that drive libvirtd (sourced after tests/e2e/lib.sh and e2e_setup).
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
