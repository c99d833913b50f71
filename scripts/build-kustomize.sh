#!/usr/bin/env bash
# Build kustomize from the Go module proxy (cached) and print its path; the manifests
# tests build every kustomization with it. Test tooling only.
set -euo pipefail
version=v5.7.1
cache_root=${BINDHA_TESTPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bindha-rwx}
out="$cache_root/kustomize-$version"
if [ ! -x "$out/kustomize" ]; then
  echo "kustomize: building $version from the Go module proxy" >&2
  mkdir -p "$out"
  GOBIN="$out" CGO_ENABLED=0 GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$version" >&2
fi
echo "$out/kustomize"
