"""Naive elector: what a shell loop around `kubectl get` / `kubectl patch` does.

It makes exactly the HTTP calls such a loop makes, one new connection per call as a
fresh kubectl process would:

    GET   /apis/coordination.k8s.io/v1/namespaces/NS/leases/NAME
    PATCH (same URL, application/merge-patch+json)
          {"spec": {"holderIdentity": ME, "renewTime": NOW}}   -- no resourceVersion

Every 5 s (a ``sleep 5`` after each turn): if the Lease has no holder, or its
renewTime is older than TTL = 5 s by this host's wall clock, or it is held by me, it
PATCHes blindly; a successful PATCH means "I lead", so named is started if it is not
running. A Lease held by another, fresh by the local clock, means "I do not lead", so
named is killed. A failed call changes nothing (the loop just goes round). SIGTERM:
kill named and exit (a ``trap``), without releasing the Lease. The Lease object must
exist: ``kubectl patch`` cannot create it (a manifest would).

kubectl has no request timeout by default; calls here time out after 30 s only so
that the benchmark harness bounds every call.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from benchmarks.peers.common import NamedChild, emit, exit_now, parse_args

TTL = 5.0
POLL = 5.0
CALL_TIMEOUT = 30.0


class _Connection(http.client.HTTPSConnection):
    """HTTPS to the proxy's address, verified against the apiserver's name."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, server_name: str,
                 timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._tls = context
        self._server_name = server_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self._server_name)


class LeaseApi:
    """The two kubectl calls, from the kubeconfig's server, CA and token."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str) -> None:
        data = yaml.safe_load(kubeconfig.read_text())
        cluster = data["clusters"][0]["cluster"]
        server = cluster["server"].removeprefix("https://")
        self.host, port = server.rsplit(":", 1)
        self.port = int(port)
        self.server_name = cluster.get("tls-server-name") or self.host
        self.context = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.token = data["users"][0]["user"]["token"]
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"

    def _call(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        conn = _Connection(self.host, self.port, self.context, self.server_name, CALL_TIMEOUT)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/merge-patch+json"
        try:
            conn.request(method, self.path, body=payload, headers=headers)
            answer = conn.getresponse()
            text = answer.read()
        finally:
            conn.close()
        if answer.status != 200:
            raise OSError(f"{method} {answer.status}: {text[:200]!r}")
        return dict(json.loads(text))

    def get(self) -> dict[str, Any]:
        return self._call("GET")

    def patch(self, identity: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._call("PATCH", {"spec": {"holderIdentity": identity, "renewTime": now}})


def may_take(spec: dict[str, Any], identity: str) -> bool:
    """Unheld, stale by the local wall clock, or mine: what the script's `if` tests."""
    holder = spec.get("holderIdentity")
    renew = spec.get("renewTime")
    if not holder or holder == identity or not renew:
        return True
    renewed = datetime.strptime(renew, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return time.time() - renewed.timestamp() > TTL


def turn(api: LeaseApi, identity: str, leading: bool) -> bool:
    """One pass of the loop; returns whether it now believes it leads."""
    try:
        spec = api.get().get("spec") or {}
    except (OSError, ValueError, http.client.HTTPException) as exc:
        emit("call_failed", call="get", error=str(exc))
        return leading
    if not may_take(spec, identity):
        return False
    try:
        api.patch(identity)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        emit("call_failed", call="patch", error=str(exc))
        return leading
    return True


def main() -> int:
    args = parse_args(__doc__ or "")
    api = LeaseApi(Path(args.kubeconfig), args.namespace, args.lease)
    named = NamedChild(args.named)
    stop = threading.Event()

    def on_term(_signum: int, _frame: object) -> None:
        named.stop()
        exit_now(0)

    signal.signal(signal.SIGTERM, on_term)
    emit("candidate", identity=args.identity)
    leading = False
    while not stop.is_set():
        now_leading = turn(api, args.identity, leading)
        if now_leading and not leading:
            emit("leading")
        if not now_leading and leading:
            emit("stopped_leading")
        leading = now_leading
        if leading and not named.running():
            named.start()
        elif not leading and named.running():
            named.stop()
        stop.wait(POLL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
