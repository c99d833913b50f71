#!/usr/bin/env bash
# Build the image from the real Dockerfile WITHOUT a Docker engine, and check it.
#
#   scripts/build-image.sh [--tag NAME] [--no-check] [--clean]
#
# For machines that have no Docker engine and no reachable container registry (only
# Debian's apt repositories and PyPI). As root, with Debian's buildah + podman:
#   1. debootstrap a bookworm minbase rootfs, slim it like the official image, and
#      import it as docker.io/library/debian:bookworm-slim in a private image store
#      (cached: done once);
#   2. `buildah bud --isolation chroot` the repository's Dockerfile (pip reaches PyPI);
#   3. run the image with podman + runc as manifests/base runs it (read-only root, no
#      tmpfs on /tmp, caps dropped but NET_BIND_SERVICE, emptyDirs as host directories)
#      and check: the entrypoint and --help, PID 1, uid 101, `named -v` (9.18), TMPDIR,
#      `bindha-rwx render --role primary|secondary` on the base ConfigMap's config.yaml,
#      no build leftovers. Exits non-zero with FAIL: ... on the first failed check.
# With a Docker engine, just: docker build -t bindha-rwx:dev .
#
# Everything lives under $BINDHA_IMAGE_WORK (default /var/tmp/bindha-rwx-image): the
# image store (vfs driver), the rootfs. Re-running rebuilds the image and reuses the
# base; --clean removes the whole directory and exits. The machine's own container
# store (/var/lib/containers/storage) and docker are not used.
set -euo pipefail

TAG=bindha-rwx:dev
CHECK=1
CLEAN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG="$2"; shift 2 ;;
    --no-check) CHECK=0; shift ;;
    --clean) CLEAN=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${BINDHA_IMAGE_WORK:-/var/tmp/bindha-rwx-image}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE=docker.io/library/debian:bookworm-slim

die() { echo "build-image.sh: $*" >&2; exit 1; }

if [ "$CLEAN" = 1 ]; then
  if [ -d "$WORK" ]; then
    # vfs layers may still be mounted if a run was interrupted
    grep -o " $WORK/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf --one-file-system "$WORK"
  fi
  echo "removed $WORK"; exit 0
fi

[ "$(id -u)" = 0 ] || die "needs root (buildah with chroot isolation and vfs storage)"
missing=()
for tool in buildah podman runc debootstrap; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ ${#missing[@]} = 0 ] || die "missing ${missing[*]}: apt-get install -y buildah podman runc debootstrap"

mkdir -p "$WORK"
STORE=(--root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
bah() { buildah "${STORE[@]}" "$@"; }
pod() { podman "${STORE[@]}" --cgroup-manager cgroupfs --events-backend none "$@"; }

# -- 1. the base image -------------------------------------------------------------
if bah inspect --type image "$BASE" >/dev/null 2>&1; then
  echo "== base $BASE: present in $WORK/storage (--clean to remake it)"
else
  echo "== base $BASE: debootstrap bookworm minbase from $MIRROR"
  rootfs="$WORK/rootfs"
  rm -rf --one-file-system "$rootfs"
  timeout 1200 debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed: see $WORK/debootstrap.log"
  # What the official slim image does (debuerreotype --slimify, docker apt config):
  # no docs/man/locales from later installs, no apt caches, full apt sources.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,info,groff,lintian,linda}/* \
         "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
         "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
    -exec rm -rf {} +
  : >"$rootfs/etc/resolv.conf"; : >"$rootfs/etc/hostname"
  ctr=$(bah from --name bindha-base-import scratch)
  mnt=$(bah mount "$ctr")
  tar -C "$rootfs" -cf - . | tar -C "$mnt" -xpf - --numeric-owner
  bah umount "$ctr" >/dev/null
  bah config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --os linux --arch amd64 "$ctr"
  bah commit --rm -q "$ctr" "$BASE" >/dev/null
  rm -rf --one-file-system "$rootfs"
  echo "   imported as $BASE"
fi

# -- 2. the build (the repository's Dockerfile, unchanged) -------------------------
echo "== buildah bud -t $TAG $REPO"
start=$(date +%s)
# A TLS-intercepting egress proxy (a CA in /usr/local/share/ca-certificates, as on the
# sandbox this was written on) makes pip inside the build fail with
# CERTIFICATE_VERIFY_FAILED. Lend the host's CA bundle to the RUN steps only: a bind
# mount over /mnt (an existing empty directory, so no mount point is left in the image)
# and the Dockerfile's PIP_CERT build argument.
BUILD_OPTS=()
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null \
   && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$WORK/build-ca"
  cp /etc/ssl/certs/ca-certificates.crt "$WORK/build-ca/ca.crt"
  BUILD_OPTS=(-v "$WORK/build-ca:/mnt:ro" --build-arg PIP_CERT=/mnt/ca.crt)
  echo "   (the host trusts local CAs: lending its CA bundle to pip for the build)"
fi
bah bud --isolation chroot --pull=false --layers=false "${BUILD_OPTS[@]}" \
  -t "$TAG" -f "$REPO/Dockerfile" "$REPO"
took=$(( $(date +%s) - start ))
bah rmi --prune >/dev/null 2>&1 || true   # the previous build's image, now untagged
size=$(bah images --format '{{.Size}}' "$TAG" | head -1)
echo "== built $TAG in ${took}s; size $size (uncompressed)"
[ "$CHECK" = 1 ] || exit 0

# -- 3. checks, the way manifests/base runs the container --------------------------
echo "== checks (podman + runc; a few seconds to ~20 s per container with vfs)"
tmp=$(mktemp -d /var/tmp/bindha-image-check.XXXXXX)
trap 'rm -rf --one-file-system "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# runc, not crun: Debian's crun 1.8 refuses a hybrid cgroup v1/v2 host. The ulimits are
# pinned at or below the host's, since raising them needs CAP_SYS_RESOURCE, which a
# sandbox may not have (podman's default RLIMIT_NOFILE/NPROC raise fails there).
nofile=$(ulimit -Sn); [ "$nofile" = unlimited ] && nofile=1048576
RUNC=(--runtime runc)
# A pod of manifests/base: read-only root with no tmpfs on /tmp, all capabilities
# dropped but NET_BIND_SERVICE, no new privileges, the pod's env, emptyDirs (host
# directories of mode 0777, as kubelet makes them) at /var/lib/named and /var/run/bindha,
# the ConfigMap at /etc/bindha and the Secret at /etc/bindha/keys, read-only.
mkdir -p "$tmp/etc/keys" "$tmp/work" "$tmp/run"
chmod 0777 "$tmp/work" "$tmp/run" "$tmp/etc/keys"   # keys: written by uid 101 below
POD=(run --rm "${RUNC[@]}" --ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096
     --network none --read-only --read-only-tmpfs=false --cap-drop ALL
     --cap-add NET_BIND_SERVICE --security-opt no-new-privileges
     -v "$tmp/work:/var/lib/named" -v "$tmp/run:/var/run/bindha"
     -e POD_NAME=bind-master-0 -e POD_NAMESPACE=dns -e POD_IP=10.0.0.10 -e NODE_NAME=node-1)

entry=$(pod image inspect --format '{{json .Config.Entrypoint}}' "$TAG")
[ "$entry" = '["/opt/bindha/bin/bindha-rwx"]' ] || fail "entrypoint is $entry"
out=$(pod "${POD[@]}" "$TAG") || fail "the default command (--help) failed"
grep -q "usage: bindha-rwx" <<<"$out" || fail "--help printed: $out"
echo "ok  entrypoint $entry, exec form (no shell: bindha-rwx is PID 1); CMD --help runs"

# Same process model as the entrypoint: the command is PID 1. Also: the user, BIND's
# version, the temp dir, the keys (made by the image's own tsig-keygen).
rndc_name=$(sed -n 's/^RNDC_KEY_NAME = "\(.*\)"$/\1/p' "$REPO/bindha_rwx/render.py")
[ -n "$rndc_name" ] || fail "no RNDC_KEY_NAME in bindha_rwx/render.py"
out=$(pod "${POD[@]}" -v "$tmp/etc/keys:/out" --entrypoint /bin/sh "$TAG" -c '
  set -e; echo "pid=$$"; id; named -v; echo "tmpdir=$TMPDIR"
  tsig-keygen -a hmac-sha256 update-key >/out/update-key.key
  tsig-keygen -a hmac-sha256 transfer-key >/out/transfer-key.key
  tsig-keygen -a hmac-sha256 '"$rndc_name"' >/var/lib/named/rndc.key') \
  || fail "the shell checks failed: $out"
grep -qx "pid=1" <<<"$out" || fail "the container's command is not PID 1: $out"
ids=$(grep '^uid=' <<<"$out"); ver=$(grep '^BIND ' <<<"$out")
case "$ids" in "uid=101(bind) gid=101(bind)"*) echo "ok  $ids" ;; *) fail "id: $ids" ;; esac
case "$ver" in "BIND 9.18."*) echo "ok  $ver" ;; *) fail "named -v: $ver" ;; esac
grep -qx "tmpdir=/var/run/bindha" <<<"$out" || fail "TMPDIR is not /var/run/bindha: $out"

# The base ConfigMap's config.yaml (its rndcKey is /var/lib/named/rndc.key, made above,
# as the supervisor makes it at start).
awk '/^  config.yaml: \|/{on=1; next} on && /^[^ ]/{on=0} on{sub(/^    /, ""); print}' \
  "$REPO/manifests/base/configmap.yaml" >"$tmp/etc/config.yaml"
grep -q '^zones:' "$tmp/etc/config.yaml" || fail "could not extract config.yaml from the ConfigMap"
chmod 0755 "$tmp/etc"; chmod 0644 "$tmp/etc/config.yaml"; chmod 0644 "$tmp/work/rndc.key"
chgrp -R 101 "$tmp/etc/keys"; chmod 0750 "$tmp/etc/keys"; chmod 0440 "$tmp/etc/keys"/*.key
MOUNTS=(-v "$tmp/etc:/etc/bindha:ro" -v "$tmp/etc/keys:/etc/bindha/keys:ro")
conf=$(pod "${POD[@]}" "${MOUNTS[@]}" "$TAG" render --role primary \
  --config /etc/bindha/config.yaml) || fail "render --role primary failed (output above)"
grep -q '^zone "example.com.\?"' <<<"$conf" || fail "render printed no example.com zone: $conf"
echo "ok  render --role primary (checked by named-checkconf) on a read-only root: $(wc -l <<<"$conf") lines"
conf=$(pod "${POD[@]}" "${MOUNTS[@]}" "$TAG" render --role secondary --primary 10.0.0.11 \
  --config /etc/bindha/config.yaml) || fail "render --role secondary failed (output above)"
echo "ok  render --role secondary --primary 10.0.0.11: $(wc -l <<<"$conf") lines"
leftover=$(pod "${POD[@]}" --entrypoint /bin/sh "$TAG" -c \
  'for f in /src /etc/pip.conf /opt/bindha/bin/pip; do [ ! -e $f ] || echo $f; done
   [ -z "$(ls -A /mnt)" ] || echo /mnt/*')
[ -z "$leftover" ] || fail "build leftovers in the image: $leftover"
echo "ok  no build leftovers (/mnt empty, no /src, no pip)"
echo "== all checks passed: $TAG ($size, built in ${took}s)"
