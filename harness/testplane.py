"""Start and stop the test control plane: a real kube-apiserver with embedded etcd.

The binary comes from scripts/build-testplane.sh (Go module proxy, cached). The API
server listens on 127.0.0.1 only, authenticates with static tokens and authorizes
with RBAC, so tests can prove the manifests' Roles with tokens of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness.process import log_tail, stop_group

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build-testplane.sh"
ADMIN_USER = "admin"


def build_binary() -> Path:
    """Path of the testplane binary, building it (minutes, once) if not cached."""
    explicit = os.environ.get("BINDHA_TESTPLANE_BIN")
    if explicit:
        return Path(explicit)
    result = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True,
                            timeout=3600, check=True)
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TestPlane:
    """One running apiserver; ``kubeconfig`` is usable by kubectl and the Python client."""

    binary: Path
    workdir: Path
    port: int = 0
    # A lab bridge's address (harness.netlab) lets a kubelet in a namespace of its own
    # reach the apiserver; the self-signed serving cert names this address.
    host: str = "127.0.0.1"
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    extra_tokens: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    # The ServiceAccount admission plugin (a pod's projected token, automounted) is off by
    # default: the kube tests create pods in namespaces without the "default" account. A
    # plane with a node (tests/node) turns it on: the kubelet then asks TokenRequest for
    # each pod's token, signed with sa.key (no token controller needed).
    service_accounts: bool = False
    process: subprocess.Popen[bytes] | None = None

    __test__ = False  # not a pytest test class

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def log_file(self) -> Path:
        return self.workdir / "apiserver.log"

    def add_token(self, token: str, user: str, groups: tuple[str, ...] = ()) -> None:
        """Register a bearer token before start() (for RBAC tests)."""
        self.extra_tokens[token] = (user, groups)

    def start(self, timeout: float = 180.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        sa_key = self.workdir / "sa.key"
        if not sa_key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True,
                           capture_output=True, timeout=60)
        tokens = self.workdir / "tokens.csv"
        lines = [f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"']
        for token, (user, groups) in self.extra_tokens.items():
            group_field = f',"{",".join(groups)}"' if groups else ""
            lines.append(f"{token},{user},{user}{group_field}")
        tokens.write_text("\n".join(lines) + "\n")
        etcd_client, etcd_peer = free_port(), free_port()
        args = [
            str(self.binary), "apiserver",
            "--etcd-data-dir", str(self.workdir / "etcd"),
            "--etcd-client-url", f"http://127.0.0.1:{etcd_client}",
            "--etcd-peer-url", f"http://127.0.0.1:{etcd_peer}",
            "--",
            f"--secure-port={self.port}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            # Dial kubelets by the node's IP: by hostname the apiserver would ask the
            # machine's nameserver (off the machine) on the first `kubectl logs`.
            "--kubelet-preferred-address-types=InternalIP",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={sa_key}",
            f"--service-account-signing-key-file={sa_key}",
            *(() if self.service_accounts else ("--disable-admission-plugins=ServiceAccount",)),
            "--allow-privileged=true",
            "--v=0",
        ]
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        self._wait_ready(timeout)
        self._write_kubeconfig()

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            # The apiserver's self-signed serving cert (with its CA) from --cert-dir.
            "clusters": [{"name": "testplane", "cluster": {
                "server": self.url,
                "certificate-authority": str(self.workdir / "certs" / "apiserver.crt")}}],
            "users": [{"name": ADMIN_USER, "user": {"token": self.admin_token}}],
            "contexts": [{"name": "testplane", "context": {
                "cluster": "testplane", "user": ADMIN_USER}}],
            "current-context": "testplane",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(f"{self.url}/readyz",
                                          headers={"Authorization": f"Bearer {self.admin_token}"})
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited with {self.process.returncode}; "
                                   f"see {self.log_file}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as answer:
                    if answer.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"kube-apiserver not ready after {timeout:g}s ({last}); "
                           f"see {self.log_file}:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_file, lines)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``: test data is thrown away anyway."""
        process, self.process = self.process, None
        stop_group(process, timeout)

def main() -> int:
    """`python -m harness.testplane up`: run a control plane until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m harness.testplane")
    parser.add_argument("action", choices=("build", "up"))
    parser.add_argument("--dir", help="working directory (default: a temp dir)")
    args = parser.parse_args()
    binary = build_binary()
    if args.action == "build":
        print(binary)
        return 0
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bindha-testplane-"))
    plane = TestPlane(binary=binary, workdir=workdir)
    started = time.monotonic()
    plane.start()
    print(f"kube-apiserver ready at {plane.url} in {time.monotonic() - started:.1f}s")
    print(f"export KUBECONFIG={plane.kubeconfig}")
    sys.stdout.flush()
    # Block only now: children inherit the signal mask, and the apiserver must not.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
