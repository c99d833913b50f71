#!/usr/bin/env bash
# Everything a fresh machine needs for the tests and the demo, idempotent:
#   apt: bind9 bind9-utils bind9-dnsutils iproute2 openssl util-linux dnsperf, strace (the ExternalDNS test traces its connections), and fuse3
#        (fusermount3, with libfuse3-3 for harness/faultfs.py), and Ceph 16.2 for the CephFS
#        lab (harness/cephlab.py): ceph-mon ceph-osd ceph-mds ceph-fuse ceph-common
#        (~113 packages, ~68 MB download, ~290 MB on disk, ~35 s), and runc +
#        containernetworking-plugins for the test node (harness/kubenode.py), and prometheus
#        (promtool and a real Prometheus for the shipped alerts; its daemon is not started),
#        kubectl (the documented `kubectl get` columns; the tests drive the API from Python),
#        and buildah + podman + debootstrap for the product image (scripts/build-image.sh)
#        (each when missing)
#   .venv with this package and its test extra
#   the test control plane (kube-apiserver + etcd), built from the Go module proxy, cached
#   kustomize and helm (for the manifests and chart tests), built from the Go module
#   proxy, cached (helm ~4.5 min once)
#   ExternalDNS (tests/kube/test_external_dns.py), built from the Go module proxy with the
#   go1.27.3 toolchain it fetches there, cached (scripts/build-external-dns.sh)
#   the test node (kubelet, kube-scheduler, kube-proxy, containerd 2.x, pause image),
#   built from the Go module proxy, cached (scripts/build-kubenode.sh, ~90 s cold)
#   the product image for the test node (scripts/build-node-image.sh: build-image.sh from
#   Debian's mirror and PyPI, cached by the hash of what the Dockerfile copies; ~95 s cold
#   with the debootstrapped base cached, ~150 s without, 0.02 s warm)
# With BINDHA_SETUP_BENCH=1 (scripts/bench, scripts/chaos) also: the
# bench extra (matplotlib) in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

need_apt=()
for tool in named:bind9 named-checkconf:bind9-utils rndc:bind9-utils tsig-keygen:bind9 \
            dig:bind9-dnsutils nsupdate:bind9-dnsutils ip:iproute2 openssl:openssl \
            setpriv:util-linux nsenter:util-linux dnsperf:dnsperf fusermount3:fuse3 \
            ceph-mon:ceph-mon ceph-osd:ceph-osd ceph-mds:ceph-mds ceph-fuse:ceph-fuse \
            ceph:ceph-common ceph-authtool:ceph-common monmaptool:ceph-common \
            runc:runc /usr/lib/cni/bridge:containernetworking-plugins \
            prometheus:prometheus promtool:prometheus kubectl:kubectl \
            buildah:buildah podman:podman debootstrap:debootstrap strace:strace; do
  cmd=${tool%%:*} pkg=${tool#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "$cmd" ]; then
    need_apt+=("$pkg")
  fi
done
if [ ${#need_apt[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${need_apt[@]}" | sort -u | tr '\n' ' ')
  say "installing Debian packages: $pkgs"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # Packages with daemons (prometheus) must not start them: the tests run their own.
  # Without a policy-rc.d of the machine's, one that denies every start, for this install.
  policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    made_policy=1
  fi
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $pkgs >/dev/null
  if [ -n "$made_policy" ]; then $sudo rm -f "$policy"; fi
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  say "Python 3.11 or newer is needed (found $("$python" --version 2>&1)); set PYTHON=..."
  exit 1
fi
extras=test stamp=.venv/.installed
if [ -n "${BINDHA_SETUP_BENCH:-}" ]; then extras=test,bench stamp=.venv/.installed-bench; fi
if [ ! -x .venv/bin/python ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "creating .venv and installing bindha-rwx[$extras]"
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[$extras]"
  touch "$stamp"
fi

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  else
    say "Go is needed to build the test control plane (go 1.21+; it fetches the toolchain"
    say "that scripts/testplane/go.mod names from the Go module proxy)"
    exit 1
  fi
fi
scripts/build-testplane.sh >/dev/null
scripts/build-kustomize.sh >/dev/null
scripts/build-helm.sh >/dev/null
scripts/build-external-dns.sh >/dev/null
scripts/build-kubenode.sh >/dev/null
scripts/build-node-image.sh >/dev/null
say "ready"
