#!/usr/bin/env bash
# Build ExternalDNS (sigs.k8s.io/external-dns, whose rfc2136 provider publishes a Service's
# records into the lab by dynamic update and reads the zone back by AXFR) from the Go module
# proxy, cached, and print its path. Test tooling only: tests/kube/test_external_dns.py.
#
# v0.23.0 is the newest the proxy lists; its go.mod says go 1.27.0, so the go command
# fetches the go1.27.3 toolchain from the module proxy (GOTOOLCHAIN below, this script
# only). Four of its pinned dependency versions are not served by the proxy (403 "This
# module version is not available"); each is replaced by the nearest version that is:
#   github.com/openshift/api        v0.0.0-20260819011109-af5c920502e2 -> ...20251015095338
#   github.com/openshift/client-go  v0.0.0-20260810202730-ddca5e0b7146 -> ...20251015124057
#   github.com/civo/civogo          v0.7.3  -> v0.7.2
#   github.com/exoscale/egoscale/v3 v3.1.50 -> v3.1.40
# (the OpenShift route source and the Civo and Exoscale providers, none used here).
# A cold build takes long: it compiles every cloud SDK (docs/testplane.md has the time).
set -euo pipefail
version=v0.23.0
export GOTOOLCHAIN=go1.27.3
cache_root=${BINDHA_TESTPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bindha-rwx}
out="$cache_root/external-dns-$version"
if [ -x "$out/external-dns" ]; then
  echo "$out/external-dns"
  exit 0
fi
echo "external-dns: building $version from the Go module proxy (a cold build takes minutes)" >&2
start=$(date +%s)
mkdir -p "$out"
src=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/external-dns@$version" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ -z "$src" ] || [ ! -f "$src/go.mod" ]; then
  echo "external-dns: the module proxy gave no source for $version" >&2
  exit 1
fi
work=$(mktemp -d "$out/src.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$src/." "$work/"
chmod -R u+w "$work"
cd "$work"
go mod edit \
  -replace github.com/openshift/api=github.com/openshift/api@v0.0.0-20251015095338-264e80a2b6e7 \
  -replace github.com/openshift/client-go=github.com/openshift/client-go@v0.0.0-20251015124057-db0dee36e235 \
  -replace github.com/civo/civogo=github.com/civo/civogo@v0.7.2 \
  -replace github.com/exoscale/egoscale/v3=github.com/exoscale/egoscale/v3@v3.1.40
# GOFLAGS=-mod=mod adds the replacements' go.sum lines (checked against the checksum DB).
CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" nice -n 10 go build -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/external-dns/pkg/apis/externaldns.Version=$version" \
  -o "$out/external-dns.tmp" . >&2
mv "$out/external-dns.tmp" "$out/external-dns"
echo "external-dns: built $out/external-dns in $(( $(date +%s) - start ))s" >&2
echo "$out/external-dns"
