#!/usr/bin/env bash
# Build the client-go leader-election peer of the comparison benchmark
# (benchmarks/peers/clientgo, k8s.io/client-go v0.36.3 from the Go module proxy), cached
# by the hash of its sources and the Go version. Prints the binary's path on stdout.
# Benchmark tooling only: no Go code ships in bindha_rwx.
set -euo pipefail
here=$(cd "$(dirname "$0")/../benchmarks/peers/clientgo" && pwd)
cache_root=${BINDHA_TESTPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bindha-rwx}
key=$( { cat "$here/go.mod" "$here/go.sum" "$here/main.go"; go version; } | sha256sum | cut -c1-16)
out="$cache_root/clientgo-peer-$key/clientgo-peer"
if [ -x "$out" ]; then
  echo "clientgo-peer: cached $out" >&2
  echo "$out"
  exit 0
fi
mkdir -p "$(dirname "$out")"
echo "clientgo-peer: building (client-go from the Go module proxy)" >&2
start=$(date +%s)
# GOFLAGS=-mod=mod lets the build fill a cold module cache from go.sum alone.
(cd "$here" && CGO_ENABLED=0 GOFLAGS=-mod=mod timeout 1800 go build -trimpath -ldflags "-s -w" -o "$out.tmp" .)
mv "$out.tmp" "$out"
echo "clientgo-peer: built $out in $(( $(date +%s) - start ))s" >&2
echo "$out"
