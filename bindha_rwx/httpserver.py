"""The pod's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for
the kubelet's probes.

HTTP probes replace the exec probes, which started a Python process in the container
every periodSeconds per probe (docs/benchmarks.md has the CPU saved). The verdicts are
the exec probes' own (bindha_rwx.probes): liveness reads the heartbeat the renew loop
writes, so a hung controller fails it even though this server's thread still answers,
and a frozen process (SIGSTOP) does not answer at all, which the kubelet's timeout
counts as a failure. Each request runs on a thread of its own; none touches the
supervisor's locks beyond a metrics snapshot.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A route: () -> (HTTP status, content type, body)
Route = Callable[[], tuple[int, str, bytes]]
TEXT = "text/plain; charset=utf-8"


def verdict_route(check: Callable[[], tuple[bool, str]]) -> Route:
    """A probe as a route: 200 with the reason when ok, 503 with it when not."""
    def route() -> tuple[int, str, bytes]:
        ok, reason = check()
        return (200 if ok else 503), TEXT, f"{'ok' if ok else 'FAIL'}: {reason}\n".encode()
    return route


class HttpEndpoint:
    """Serves a fixed set of GET routes on one address and port."""

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes = dict(routes)
        self._server: ThreadingHTTPServer | None = None

    def serve(self, address: str, port: int) -> int:
        """Start serving on address:port (0: any free port); returns the port."""
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404, f"only {', '.join(sorted(routes))} here")
                    return
                try:
                    status, kind, body = route()
                except Exception as exc:  # a probe's own bug must not look like "alive"
                    status, kind = 500, TEXT
                    body = f"FAIL: {type(exc).__name__}: {exc}\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass  # probes and scrapes are not events

        self._server = _Server((address, port), Handler)
        threading.Thread(target=self._server.serve_forever, name="http", daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Server(ThreadingHTTPServer):
    """HTTPServer.server_bind() looks up the address's FQDN: a reverse DNS query that
    blocked the supervisor's start for 10 s where no resolver answers (seen in the
    tests' network namespaces). The name is never used; skip the lookup."""

    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
