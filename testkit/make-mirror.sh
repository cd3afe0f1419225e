#!/usr/bin/env bash
# Lay out a directory like cloud.debian.org/images/cloud for one image build:
#   <root>/images/cloud/<suite>/<VERSION>/debian-<N>-genericcloud-amd64-<VERSION>.qcow2 + SHA512SUMS
#   <root>/images/cloud/<suite>/latest/debian-<N>-genericcloud-amd64.qcow2 + SHA512SUMS
#   <root>/images/cloud/<suite>/latest/debian-<N>-genericcloud-amd64.json   (per-image manifest)
#
#   testkit/make-mirror.sh IMAGE_QCOW2 MIRROR_ROOT SUITE VERSION
set -euo pipefail
image=${1:?image} root=${2:?mirror root} suite=${3:?suite} version=${4:?version}
case "$suite" in
    bookworm) n=12 ;;
    trixie) n=13 ;;
    *) echo "unsupported suite $suite" >&2; exit 2 ;;
esac
base="$root/images/cloud/$suite"
stem="debian-$n-genericcloud-amd64"
dated="$base/$version"
mkdir -p "$dated" "$base/latest"
ln -f "$image" "$dated/$stem-$version.qcow2" 2>/dev/null || cp "$image" "$dated/$stem-$version.qcow2"
ln -f "$dated/$stem-$version.qcow2" "$base/latest/$stem.qcow2"
sum=$(sha512sum "$dated/$stem-$version.qcow2" | cut -d' ' -f1)
echo "$sum  $stem-$version.qcow2" >"$dated/SHA512SUMS"
echo "$sum  $stem.qcow2" >"$base/latest/SHA512SUMS"
b64=$(printf '%s' "$sum" | xxd -r -p | base64 -w0 | tr -d '=')
python3 - "$base/latest/$stem.json" "$suite" "$version" "$stem" "$b64" <<'PY'
import json, sys
out, suite, version, stem, b64 = sys.argv[1:]
doc = {
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {"apiVersion": "cloud.debian.org/v1alpha1", "kind": "Build",
         "metadata": {"labels": {"cloud.debian.org/vendor": "generic", "cloud.debian.org/version": version}},
         "data": {"info": {"arch": "amd64", "release": suite, "vendor": "generic"}}},
        {"apiVersion": "cloud.debian.org/v1alpha1", "kind": "Upload",
         "metadata": {
             "labels": {"upload.cloud.debian.org/image-format": "qcow2",
                        "cloud.debian.org/version": version},
             "annotations": {"cloud.debian.org/digest": "sha512:" + b64}},
         "data": {"provider": "cloud.debian.org",
                  "ref": f"{suite}/{version}/{stem}-{version}.qcow2"}},
    ],
}
json.dump(doc, open(out, "w"), indent=2)
PY
echo "mirror: $base (latest -> $version)" >&2
