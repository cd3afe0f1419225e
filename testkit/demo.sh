#!/usr/bin/env bash
# `make demo` / `make demo-clean`: the main job on a machine without internet.
#   up:   install the host packages the demo needs (testkit/install-deps.sh image, then demo),
#         build kvmprov and a Debian 12 cloud image locally (cached) side by side, serve it on 127.0.0.1 laid out like
#         cloud.debian.org, start libvirtd in a private network namespace, and run
#         `kvmprov provision` (stage full) for one VM, demo-01. Prints how to log in.
#   down: remove the VM, its files, the mirror, libvirtd and the namespace.
# Needs root. Its state lives in /var/tmp/kvmprov-demo (KVMPROV_DEMO_DIR elsewhere), a
# directory root made: one that another user made or can write, or a link, is refused before
# anything in it is read, killed or run (its owner could swap the config or the mirror's PID).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KVMPROV="$ROOT/target/release/kvmprov"
DEMO=${KVMPROV_DEMO_DIR:-/var/tmp/kvmprov-demo}
NS=kvmprov-demo
CACHE=${KVMPROV_TESTKIT_CACHE:-/var/cache/kvmprov-testkit}
SUITE=bookworm
VERSION=20261124-0001
CFG="$DEMO/vars.yml"

say() { printf '==> %s\n' "$*"; }
refuse() { echo "demo.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || { echo "make demo needs root (network namespace, libvirtd)" >&2; exit 2; }

# The demo directory is used only if it is a real directory (no link) owned by root that no
# other user can write, and so are the directories above it (a sticky one like /var/tmp
# excepted); its config and PID file must be root's regular files, not links. Missing is fine.
check_demo_dir() {
    local d=$DEMO owner mode f
    [ -e "$d" ] || [ -L "$d" ] || return 0
    [ ! -L "$d" ] || refuse "$d is a symbolic link (to $(readlink "$d")), not the directory root made: remove it (rm $d) and run make demo again"
    [ -d "$d" ] || refuse "$d is not a directory: remove it and run make demo again"
    owner=$(stat -c %u "$d") mode=$(stat -c %a "$d")
    [ "$owner" -eq 0 ] || refuse "$d is owned by uid $owner (mode $mode), not root, so that user could swap the demo's config or the PID demo-clean kills: check and remove it (rm -rf $d), then run make demo again"
    (( (8#$mode & 8#022) == 0 )) || refuse "$d (owner root, mode $mode) can be written by group or other users, who could swap the demo's config or the PID demo-clean kills: check and remove it (rm -rf $d), then run make demo again"
    local up
    up=$(dirname "$d")
    while :; do
        [ ! -L "$up" ] || refuse "$up, above $d, is a symbolic link: use a KVMPROV_DEMO_DIR below real directories"
        owner=$(stat -c %u "$up") mode=$(stat -c %a "$up")
        [ "$owner" -eq 0 ] || refuse "$up, above $d, is owned by uid $owner (mode $mode), not root: use a KVMPROV_DEMO_DIR below root's directories"
        (( (8#$mode & 8#022) == 0 || (8#$mode & 8#1000) != 0 )) ||
            refuse "$up, above $d, (owner root, mode $mode) can be written by group or other users without the sticky bit: chmod go-w $up, or use another KVMPROV_DEMO_DIR"
        [ "$up" = / ] && break
        up=$(dirname "$up")
    done
    for f in "$CFG" "$d/mirror.pid"; do
        [ -e "$f" ] || [ -L "$f" ] || continue
        [ ! -L "$f" ] && [ -f "$f" ] && [ "$(stat -c %u "$f")" -eq 0 ] ||
            refuse "$f is not a regular file of root's (a link, or another owner's): remove $d (rm -rf $d) and run make demo again"
    done
}

# The demo's mirror, by its PID file: killed only if that PID is still the mirror.py it started.
stop_mirror() {
    local pid
    [ -f "$DEMO/mirror.pid" ] || return 0
    pid=$(cat "$DEMO/mirror.pid")
    if [[ "$pid" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "testkit/mirror.py --root $DEMO/mirror "; then
        kill "$pid" 2>/dev/null
    else
        say "not stopping PID $pid from $DEMO/mirror.pid: it is not the demo's mirror (any more)"
    fi
    rm -f "$DEMO/mirror.pid"
}

down() {
    check_demo_dir
    set +e
    if [ -f "$CFG" ] && ip netns list 2>/dev/null | grep -qw "$NS"; then
        say "removing demo-01 (kvmprov cleanup, disks included)"
        ip netns exec "$NS" "$KVMPROV" -c "$CFG" -e kvm_cleanup_confirmed=true \
            -e kvm_cleanup_remove_instance_disks=true cleanup
    fi
    stop_mirror
    bash "$ROOT/testkit/netns-libvirtd.sh" down "$NS"
    rm -rf "$DEMO"
    say "demo removed (the built image stays cached in $CACHE)"
}

up() {
    check_demo_dir
    # Made by root now (mkdir fails on anything planted since the check), or root's checked one.
    mkdir -m 0755 "$DEMO" 2>/dev/null || check_demo_dir
    chmod 0755 "$DEMO"
    # The image (mostly apt downloads and dpkg) and kvmprov (mostly CPU) are built side by side:
    # on a fresh machine that saves the shorter of the two.
    # The crates download while apt works (the build itself needs libvirt-dev first).
    (cd "$ROOT" && cargo fetch --locked) >"$DEMO/cargo-fetch.log" 2>&1 &
    local fetch_pid=$!
    bash "$ROOT/testkit/install-deps.sh" image
    say "building the $SUITE test image in the background (cached after the first time; log: $DEMO/build-image.log)"
    bash "$ROOT/testkit/build-image.sh" "$SUITE" "$CACHE" >"$DEMO/build-image.out" 2>"$DEMO/build-image.log" &
    local image_pid=$! t0=$SECONDS
    if ! bash "$ROOT/testkit/install-deps.sh" demo || ! { wait "$fetch_pid" || { cat "$DEMO/cargo-fetch.log" >&2; false; }; } ||
        ! { say "building kvmprov (cargo build --release --locked)" && (cd "$ROOT" && cargo build --release --locked); }; then
        kill "$image_pid" 2>/dev/null
        wait "$image_pid" 2>/dev/null
        exit 1
    fi
    say "kvmprov built in $((SECONDS - t0)) s"
    say "starting libvirtd in network namespace $NS (while the image builds)"
    bash "$ROOT/testkit/netns-libvirtd.sh" up "$NS"
    if ! wait "$image_pid"; then
        tail -n 30 "$DEMO/build-image.log" >&2
        echo "building the image failed (whole log: $DEMO/build-image.log)" >&2
        exit 1
    fi
    image=$(tail -n 1 "$DEMO/build-image.out")
    say "image ready after $((SECONDS - t0)) s: $image"
    say "serving the image on 127.0.0.1 (inside $NS) like cloud.debian.org"
    rm -rf "$DEMO/mirror"
    bash "$ROOT/testkit/make-mirror.sh" "$image" "$DEMO/mirror" "$SUITE" "$VERSION"
    rm -f "$DEMO/mirror.port"
    ip netns exec "$NS" python3 "$ROOT/testkit/mirror.py" --root "$DEMO/mirror" --port 0 \
        --port-file "$DEMO/mirror.port" --log "$DEMO/mirror.log" >"$DEMO/mirror.out" 2>&1 &
    echo $! >"$DEMO/mirror.pid"
    for _ in $(seq 1 50); do [ -s "$DEMO/mirror.port" ] && break; sleep 0.1; done
    port=$(cat "$DEMO/mirror.port")
    base="http://127.0.0.1:$port/images/cloud/$SUITE/latest"
    cat >"$CFG" <<EOF
# The demo's variables file (written by testkit/demo.sh).
kvm_hypervisor_host: localhost
kvm_domain_type: auto
kvm_image_cache_path: $DEMO/images
kvm_instance_disk_pool_path: $DEMO/instances
kvm_runtime_timeout_seconds: 900
kvm_cloud_image_catalog:
  - image_name: debian-12
    image_url: $base/debian-12-genericcloud-amd64.qcow2
    image_checksum_manifest_url: $base/SHA512SUMS
kvm_cloud_init_defaults:
  user: debian
  password: "demo-password"
kvm_instance_definitions:
  - instance_name: demo-01
    image_name: debian-12
    vcpus: 2
    memory_mib: 1024
    disk_size_gib: 8
    snapshot_name: baseline
EOF
    chmod 0600 "$CFG"
    # Nested KVM crashes real guests on some hosts: DEMO_DOMAIN_TYPE=qemu forces emulation.
    say "kvmprov provision (full): preflight, image-cache, provision, runtime"
    ip netns exec "$NS" "$KVMPROV" -c "$CFG" -e "kvm_domain_type=${DEMO_DOMAIN_TYPE:-qemu}" provision
    say "logging in over SSH (pinned host key): hostname, cloud-init status"
    ip netns exec "$NS" "$KVMPROV" -c "$CFG" ssh demo-01 -- 'hostname; cloud-init status'
    cat <<EOF

demo-01 is up. The guests live in network namespace $NS, so run kvmprov there:

  ip netns exec $NS $KVMPROV -c $CFG ssh demo-01     # log in
  ip netns exec $NS $KVMPROV -c $CFG status          # state, IP, SSH, snapshots
  make demo-clean                                     # remove everything the demo created
EOF
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
