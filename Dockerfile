# bindha-rwx image: Debian bookworm-slim, BIND 9 from Debian, this package.
# Build: docker build -t bindha-rwx:$(git describe --always) .
# The entrypoint execs bindha-rwx, so it is PID 1 (signals, reaping); the manifests
# pass `run` (masters) or `secondary` as arguments.
FROM debian:bookworm-slim

# The bind user first, with a fixed uid/gid (101) that the manifests' securityContext
# names; bind9's postinst reuses an existing bind user.
RUN groupadd -r -g 101 bind \
 && useradd -r -u 101 -g 101 -d /var/cache/bind -s /usr/sbin/nologin bind \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      bind9 bind9-utils bind9-dnsutils util-linux python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Optional, for a build behind a TLS-intercepting proxy or with a PyPI mirror: pip's own
# variables, set only for this build (--build-arg), not in the image's environment.
ARG PIP_CERT
ARG PIP_INDEX_URL
COPY pyproject.toml setup.cfg README.md /src/
COPY bindha_rwx /src/bindha_rwx
# pip and setuptools go once the package is in: nothing installs at run time (-23 MB).
RUN python3 -m venv /opt/bindha \
 && /opt/bindha/bin/pip install --no-cache-dir --disable-pip-version-check /src \
 && /opt/bindha/bin/python3 -m pip uninstall -y -q pip setuptools \
 && rm -rf /src \
 && mkdir -p /var/lib/named /var/run/bindha \
 && chown -R 101:101 /var/lib/named /var/run/bindha

# TMPDIR: the root filesystem is read-only in the pods (readOnlyRootFilesystem), so
# /tmp is not writable and Python's tempfile (named-checkconf runs on temp copies:
# `render`, the supervisor's config check) fails with "No usable temporary directory".
# /var/run/bindha is an emptyDir (medium: Memory) in both StatefulSets.
ENV PATH=/opt/bindha/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/var/run/bindha
USER 101:101
# Mounted at run time (see manifests/base): /etc/bindha/config.yaml (ConfigMap),
# /etc/bindha/keys/*.key (Secret), /var/lib/named/dyn (the RWX volume, masters),
# /var/lib/named (emptyDir on masters, a PVC on secondaries), /var/run/bindha (emptyDir).
ENTRYPOINT ["/opt/bindha/bin/bindha-rwx"]
CMD ["--help"]
