#!/usr/bin/env bash
# The product image for the test node, cached: print the path of a docker-archive of
# bindha-rwx:<package version> (named docker.io/library/bindha-rwx:<version>, as a pod's
# `image: bindha-rwx:<version>` resolves), ready for `ctr images import`.
#
# Keyed by the hash of what decides the image's content (Dockerfile, .dockerignore,
# pyproject.toml, setup.cfg, README.md, bindha_rwx/ less caches) and of
# scripts/build-image.sh. On a miss: scripts/build-image.sh --no-check (buildah;
# BINDHA_IMAGE_CHECK=1 keeps its podman checks), then `buildah push` of the image from its
# store into the cache. Cold ~95 s with the debootstrapped base cached, ~150 s without
# (pip from PyPI, apt from Debian); warm 0.02 s. Older cached archives are removed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache_root=${BINDHA_TESTPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bindha-rwx}
work=${BINDHA_IMAGE_WORK:-/var/tmp/bindha-rwx-image}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/bindha_rwx/__init__.py")
[ -n "$version" ] || { echo "build-node-image.sh: no __version__ in bindha_rwx/__init__.py" >&2; exit 1; }
tag=bindha-rwx:$version
key=$( { cd "$repo" && find Dockerfile .dockerignore pyproject.toml setup.cfg README.md bindha_rwx \
           scripts/build-image.sh -type f -not -name '*.pyc' -not -path '*/__pycache__/*' \
           -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)
out="$cache_root/image-$key"
archive="$out/bindha-rwx-$version.tar"
if [ -f "$archive" ]; then
  echo "node image: cached $archive" >&2
  echo "$archive"
  exit 0
fi
start=$(date +%s)
check=(--no-check)
[ "${BINDHA_IMAGE_CHECK:-0}" = 1 ] && check=()
# Low priority: the machine has 2 cores and other tests may be timing.
nice -n 10 "$repo/scripts/build-image.sh" --tag "$tag" "${check[@]}" >&2
mkdir -p "$out"
rm -f "$archive.tmp"
timeout 600 buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs \
  push --quiet "$tag" "docker-archive:$archive.tmp:docker.io/library/$tag" >&2
mv "$archive.tmp" "$archive"
find "$cache_root" -maxdepth 1 -name 'image-*' -not -name "image-$key" \
  -exec rm -rf --one-file-system {} +
echo "node image: built $tag in $(( $(date +%s) - start ))s into $archive" \
     "($(( $(stat -c %s "$archive") / 1048576 )) MiB)" >&2
echo "$archive"
