#!/usr/bin/env bash
# The cloud-init documents kvmprov writes, validated by cloud-init itself: Debian 12's (22.4)
# and Debian 13's (25.1), taken from the twin images' root file systems that testkit/build-image.sh
# caches (/var/cache/kvmprov-testkit/SUITE-twin-rootfs.tar), each unpacked once beside its tar.
#
#   tests/cloud-init-schema.sh            render the seed crate's table of documents (every kind
#                                         its unit tests make) and validate them
#   tests/cloud-init-schema.sh DIR...     validate DIR/*user-data and DIR/*network-config (the
#                                         e2e scenarios pass what they took from their seed ISOs)
#
# What is checked, by which version:
#   user-data       25.1: `cloud-init schema -c` (unknown keys are errors there);
#                   22.4: `cloud-init schema --config-file` (types, formats) plus every top-level
#                   key looked up in 22.4's own schema (22.4 does not report unknown keys itself).
#   network-config  25.1: `cloud-init schema --schema-type network-config` (netplan 1.1's parser);
#                   22.4 has no network-config validation: the document goes, as cloud-init 22.4
#                   hands a v2 config on Debian 12, to netplan 0.106's `netplan generate`.
# Any error, any unknown key, any deprecation fails. First, a broken document of each kind must
# fail with each version, or the check itself is broken. Needs root (chroot).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KVMPROV_TESTKIT_CACHE:-/var/cache/kvmprov-testkit}
[ "$(id -u)" -eq 0 ] || { echo "cloud-init-schema.sh needs root (chroot)" >&2; exit 2; }
say() { printf '[cloud-init-schema] %s\n' "$*" >&2; }

work=$(mktemp -d /tmp/kvmprov-cloud-init-schema.XXXXXX)
staged=()
cleanup() {
    for d in "${staged[@]}"; do rm -rf "$d"; done
    rm -rf "$work"
}
trap cleanup EXIT

# The suite's root file system, unpacked once per tar (its .key names the build).
rootfs() {
    local suite=$1 tar="$cache/$1-twin-rootfs.tar" dir="$cache/$1-twin-rootfs.d"
    if [ ! -f "$tar" ]; then
        say "no $tar: building the $suite twin (testkit/build-image.sh caches its root file system)"
        bash "$root/testkit/build-image.sh" "$suite" "$cache" >/dev/null
    fi
    [ -f "$tar" ] || { echo "$tar is missing although the $suite image is cached: remove $cache/$suite-twin.qcow2 and run again" >&2; return 1; }
    local key
    key=$(cat "$tar.key" 2>/dev/null || stat -c %Y "$tar")
    if [ "$(cat "$dir/.kvmprov-key" 2>/dev/null)" != "$key" ]; then
        say "unpacking $tar"
        rm -rf "$dir"
        mkdir -p "$dir"
        tar -xf "$tar" -C "$dir"
        echo "$key" >"$dir/.kvmprov-key"
    fi
    echo "$dir"
}

# Top-level keys that cloud-init 22.4's schema does not know (it does not say so itself).
keys_py='
import sys, yaml
from cloudinit.config.schema import get_schema
s = get_schema()
known = set(s.get("properties", {}))
for sub in s.get("allOf", []):
    ref = sub.get("$ref", "")
    if ref.startswith("#/$defs/"):
        known |= set(s["$defs"][ref[len("#/$defs/"):]].get("properties", {}))
bad = 0
for f in sys.argv[1:]:
    for k in yaml.safe_load(open(f)) or {}:
        if k not in known:
            print(f"{f}: unknown key {k!r}: not in cloud-init 22.4 schema")
            bad = 1
sys.exit(bad)
'

# validate SUITE ROOTFS KIND FILE: prints what cloud-init said; fails on any problem.
validate() {
    local suite=$1 fs=$2 kind=$3 file=$4 out rc=0
    local stage
    stage=$(mktemp -d "$fs/tmp/kvmprov-schema.XXXXXX")
    staged+=("$stage")
    local inside=${stage#"$fs"}
    case "$suite/$kind" in
        bookworm/user-data)
            cp "$file" "$stage/doc"
            out=$(chroot "$fs" cloud-init schema --config-file "$inside/doc" 2>&1) || rc=1
            out+=$'\n'$(chroot "$fs" python3 -c "$keys_py" "$inside/doc" 2>&1) || rc=1
            ;;
        trixie/user-data)
            cp "$file" "$stage/doc"
            out=$(chroot "$fs" cloud-init schema -c "$inside/doc" 2>&1) || rc=1
            ;;
        bookworm/network-config)
            mkdir -p "$stage/etc/netplan"
            { echo "network:"; sed 's/^/  /' "$file"; } >"$stage/etc/netplan/50-cloud-init.yaml"
            chmod 600 "$stage/etc/netplan/50-cloud-init.yaml"
            out=$(chroot "$fs" netplan generate --root-dir "$inside" 2>&1) || rc=1
            ;;
        trixie/network-config)
            cp "$file" "$stage/doc"
            out=$(chroot "$fs" cloud-init schema --schema-type network-config -c "$inside/doc" 2>&1) || rc=1
            ;;
    esac
    rm -rf "$stage"
    if grep -qiE 'deprecat[a-z]*:[[:space:]]*[^[:space:]]|unknown key|Additional properties' <<<"$out"; then
        rc=1
    fi
    printf '%s\n' "$out"
    return $rc
}

declare -A fs
for suite in bookworm trixie; do
    fs[$suite]=$(rootfs "$suite")
done
say "cloud-init $(chroot "${fs[bookworm]}" cloud-init --version 2>&1 | awk '{print $2}') (bookworm), $(chroot "${fs[trixie]}" cloud-init --version 2>&1 | awk '{print $2}') (trixie)"

# The check must see a broken document of each kind.
printf '#cloud-config\nruncmd: 5\nno_such_module_key: 1\n' >"$work/broken.user-data"
printf 'version: 2\nethernets:\n  primary:\n    match: {macaddress: "52:54:00:00:00:01"}\n    dhcp4: maybe\n    no_such_key: 1\n' >"$work/broken.network-config"
printf '#cloud-config\nno_such_module_key: 1\n' >"$work/unknown.user-data"
for suite in bookworm trixie; do
    for f in broken.user-data unknown.user-data broken.network-config; do
        kind=${f#*.}
        if validate "$suite" "${fs[$suite]}" "$kind" "$work/$f" >"$work/out" 2>&1; then
            echo "FAIL: $suite accepts the broken $f:"; cat "$work/out"; exit 1
        fi
    done
done
say "broken documents are refused by both versions"

dirs=("$@")
if [ ${#dirs[@]} -eq 0 ]; then
    say "rendering the seed crate's documents"
    KVMPROV_CLOUD_INIT_DOCS="$work/docs" cargo test -q --locked -p kvmprov-seed --lib \
        documents_for_cloud_init_schema >"$work/cargo.log" 2>&1 || { cat "$work/cargo.log"; exit 1; }
    dirs=("$work/docs")
fi

checked=0 failed=0
for d in "${dirs[@]}"; do
    shopt -s nullglob
    files=("$d"/*user-data "$d"/*network-config)
    shopt -u nullglob
    [ ${#files[@]} -gt 0 ] || { echo "FAIL: no documents in $d"; exit 1; }
    for f in "${files[@]}"; do
        case "$f" in *user-data) kind=user-data ;; *) kind=network-config ;; esac
        for suite in bookworm trixie; do
            if validate "$suite" "${fs[$suite]}" "$kind" "$f" >"$work/out" 2>&1; then
                checked=$((checked + 1))
            else
                echo "FAIL: $suite: $f:"; cat "$work/out"; failed=$((failed + 1))
            fi
        done
    done
done
echo "cloud-init-schema: $checked passed, $failed failed"
[ "$failed" -eq 0 ]
