#!/usr/bin/env bash
# Build the parts of the test node (harness/kubenode.py) from the Go module proxy, cached
# by the hash of their sources and the Go version, and print their paths on stdout:
#   kubelet, kube-scheduler, kube-proxy  Kubernetes v1.36.3, the module set of
#                                        scripts/testplane (scripts/kubenode/k8s)
#   containerd, containerd-shim-runc-v2, ctr
#                                        containerd 2.x through a wrapper module
#                                        (scripts/kubenode/containerd)
#   pause.tar                            the sandbox image, an OCI archive of a static
#                                        pause (scripts/kubenode/pause): no registry
# runc and the CNI plugins (bridge, host-local, loopback) are Debian's (apt: runc,
# containernetworking-plugins); scripts/setup.sh installs them. No Go ships in bindha_rwx.
set -euo pipefail
here=$(cd "$(dirname "$0")/kubenode" && pwd)
repo=$(cd "$here/../.." && pwd)
k8s_version=v1.36.3
cache_root=${BINDHA_TESTPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bindha-rwx}
key=$( { find "$here" -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) \
           -print0 | sort -z | xargs -0 cat; cat "$0"; go version; } \
       | sha256sum | cut -c1-16)
out="$cache_root/kubenode-$key"
parts=(kubelet kube-scheduler kube-proxy containerd containerd-shim-runc-v2 ctr pause.tar)
list() { for part in "${parts[@]}"; do echo "$out/$part"; done; }
pack_pause() {
  # The packer is Python (harness/kubenode.py, stdlib only): the harness packs test images too.
  [ -f "$out/pause.tar" ] || PYTHONPATH="$repo" python3 -m harness.kubenode pack-pause \
    "$out/pause" "$out/pause.tar" >/dev/null
}
if [ -f "$out/.complete" ]; then
  pack_pause
  echo "kubenode: cached $out" >&2
  list
  exit 0
fi
mkdir -p "$out"
# Low priority, one build at a time: the machine has 2 cores and other tests may be timing.
gobuild() { nice -n 10 env CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath "$@"; }
total=$(date +%s)

pkg=k8s.io/component-base/version
k8s_ldflags="-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=36 -X $pkg.gitTreeState=clean"
for part in kubelet kube-scheduler kube-proxy; do
  start=$(date +%s)
  (cd "$here/k8s" && gobuild -ldflags "$k8s_ldflags" -o "$out/$part.tmp" "./$part")
  mv "$out/$part.tmp" "$out/$part"
  echo "kubenode: built $part in $(( $(date +%s) - start ))s" >&2
done

start=$(date +%s)
ctd_version=$(cd "$here/containerd" && go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)
ctd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$ctd_version"
for part in containerd containerd-shim-runc-v2 ctr; do
  (cd "$here/containerd" && gobuild -tags no_btrfs,no_devmapper,no_zfs -ldflags "$ctd_ldflags" \
     -o "$out/$part.tmp" "github.com/containerd/containerd/v2/cmd/$part")
  mv "$out/$part.tmp" "$out/$part"
done
echo "kubenode: built containerd $ctd_version (containerd, shim, ctr) in $(( $(date +%s) - start ))s" >&2

(cd "$here/pause" && gobuild -ldflags "-s -w" -o "$out/pause" .)
pack_pause
touch "$out/.complete"
echo "kubenode: built all in $(( $(date +%s) - total ))s into $out" >&2
list
