#!/usr/bin/env bash
# Builds the busybox demo image as an OCI image archive (a tar of an OCI
# image layout) from Debian's busybox-static; nothing is downloaded.
#
#   scripts/busybox-image.sh OUT.tar
#   orchd image import OUT.tar --name busybox:latest --data-dir DIR
set -euo pipefail
out=${1:?usage: busybox-image.sh OUT.tar}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$here/build-test-image" "$work/layout" >/dev/null
tar -C "$work/layout" -cf "$out" .
echo "wrote $out"
