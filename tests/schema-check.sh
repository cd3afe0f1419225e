#!/usr/bin/env bash
# The variables file's JSON Schema with a real validator: check-jsonschema (from PyPI, in a venv
# under /tmp) checks the schema against the draft 2020-12 metaschema, accepts the shipped example
# and rejects hostile variants of it (typos at every level, wrong types, a number out of range, a missing field), each of
# which `kvmprov check` rejects too.
#   tests/schema-check.sh [KVMPROV]      default: target/release/kvmprov
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
kvmprov=${1:-$root/target/release/kvmprov}
schema="$root/vars/kvm-provisioning.schema.json"
example="$root/vars/kvm-provisioning.yml"
venv=${SCHEMA_CHECK_VENV:-/tmp/kvmprov-schema-check-venv}
[ -x "$kvmprov" ] || { echo "build first: make build" >&2; exit 2; }
[ -x "$venv/bin/check-jsonschema" ] || {
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q check-jsonschema
}
validate() { "$venv/bin/check-jsonschema" --schemafile "$schema" "$1"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
"$venv/bin/check-jsonschema" --check-metaschema "$schema" >/dev/null
validate "$example" >/dev/null || { echo "FAIL: the shipped example does not validate"; failed=1; }
# An instance taking its image_name from the profile it names: accepted by both.
profiled="$work/profiled.yml"
sed 's/^# kvm_instance_profiles:/kvm_instance_profiles:\n  db:\n    image_name: debian-12\n    vcpus: 4/
     /^  - instance_name: app-01$/{n;s/^    image_name: debian-12$/    profile: db/}' "$example" >"$profiled"
grep -q '^    profile: db$' "$profiled" || { echo "FAIL: the profile edit changed nothing"; failed=1; }
validate "$profiled" >/dev/null && "$kvmprov" -c "$profiled" check >/dev/null \
    || { echo "FAIL: the example with a profile is refused"; failed=1; }

# A NIC straight on a host bridge: accepted by both.
bridged="$work/bridged.yml"
sed '/^  - instance_name: app-01$/{n;s/$/\n    nics: [{network: default}, {bridge: br0}]/}' "$example" >"$bridged"
grep -q 'bridge: br0' "$bridged" || { echo "FAIL: the bridge edit changed nothing"; failed=1; }
if ! validate "$bridged" >/dev/null || ! "$kvmprov" -c "$bridged" check >/dev/null; then
    echo "FAIL: the example with a NIC on a host bridge is refused"; failed=1
fi

# name | sed expression applied to the example
cases=(
    "typo at the top|s/^kvm_instance_definitions:/kvm_instance_definition:/"
    "typo in an instance|s/^    vcpus: 2$/    vcpu: 2/"
    "typo in cloud-init defaults|s/^  ssh_password_authentication:/  ssh_password_authentification:/"
    "typo in a catalog entry|s/^    image_checksum_manifest_url: \(.*trixie.*\)/    image_checksum_url: \1/"
    "word for a number|s/^    memory_mib: 2048/    memory_mib: lots/"
    "number out of range|s/^    vcpus: 2$/    vcpus: 512/"
    "string for a boolean|s/^kvm_domain_autostart: false/kvm_domain_autostart: \"sometimes\"/"
    "unknown enum value|s/^kvm_domain_type: auto/kvm_domain_type: xen/"
    "unknown firmware|s/^    snapshot_name: baseline/    snapshot_name: baseline\n    firmware: efi/"
    "string for a list|s/^  ssh_authorized_keys: \[\]/  ssh_authorized_keys: \"ssh-ed25519 AAAA\"/"
    "missing required field|/^    image_url: .*trixie/d"
    "neither image_name nor profile|/^  - instance_name: app-01$/{n;d}"
    "typo in a profile|s/^# kvm_instance_profiles:/kvm_instance_profiles:\n  db:\n    vcpu: 4/"
    "instance_name in a profile|s/^# kvm_instance_profiles:/kvm_instance_profiles:\n  db:\n    instance_name: x/"
    "a NIC on a network and a bridge|/^  - instance_name: app-01$/{n;s/$/\n    nics: [{network: default, bridge: br0}]/}"
    "a NIC on neither a network nor a bridge|/^  - instance_name: app-01$/{n;s/$/\n    nics: [{model: e1000e}]/}"
)
for c in "${cases[@]}"; do
    name=${c%%|*}
    f="$work/${name// /-}.yml"
    sed "${c#*|}" "$example" >"$f"
    if cmp -s "$f" "$example"; then
        echo "FAIL: $name: the edit changed nothing"; failed=1; continue
    fi
    if out=$(validate "$f" 2>&1); then
        echo "FAIL: $name: the schema accepts it"; failed=1
    elif "$kvmprov" -c "$f" check >/dev/null 2>&1; then
        echo "FAIL: $name: kvmprov check accepts it"; failed=1
    else
        echo "ok: $name: $(grep -m1 -o '\$[^:]*: .*' <<<"$out" | cut -c1-100)"
    fi
done
[ "$failed" -eq 0 ] && echo "schema check: the example passes, every hostile variant fails"
exit "$failed"
