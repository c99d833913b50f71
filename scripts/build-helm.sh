#!/usr/bin/env bash
# Build helm from the Go module proxy (cached) and print its path; the chart tests render
# charts/bindha-rwx with it. Test tooling only.
set -euo pipefail
version=v3.22.0
cache_root=${BINDHA_TESTPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bindha-rwx}
out="$cache_root/helm-$version"
if [ ! -x "$out/helm" ]; then
  echo "helm: building $version from the Go module proxy" >&2
  mkdir -p "$out"
  GOBIN="$out" CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 10 go install "helm.sh/helm/v3/cmd/helm@$version" >&2
fi
echo "$out/helm"
