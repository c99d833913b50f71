"""A TCP proxy between one "pod" and the API server that a test can black-hole.

Black-holed, it keeps every connection open but forwards nothing, in either
direction: to the pod this looks like a network partition (calls hang until their
timeouts), not like a refused connection. Restoring closes the broken connections so
the client reconnects.

With a latency set, every chunk is forwarded that many seconds after it arrived, in
each direction and in order (a request's round trip grows by twice the latency): an
overloaded or distant API server rather than a cut-off one. The latency applies to
data read from then on; chunks already queued keep their times.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque


class ApiProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1",
                 listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self._server = socket.create_server((listen_host, 0))
        self.port = int(self._server.getsockname()[1])
        self._blackholed = threading.Event()
        self._latency = 0.0
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, name=f"apiproxy-{self.port}", daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://{self.listen_host}:{self.port}"

    @property
    def latency(self) -> float:
        return self._latency

    def set_latency(self, seconds: float) -> None:
        """Delay forwarding by ``seconds`` in each direction (0 turns it off)."""
        self._latency = max(0.0, float(seconds))

    def blackhole(self) -> None:
        self._blackholed.set()

    def restore(self) -> None:
        self._blackholed.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            _close(conn)

    def close(self) -> None:
        self._closed.set()
        _close(self._server)
        self.restore()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        delayed: _Delayed | None = None
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._blackholed.is_set():
                    continue  # swallowed: a partition, not a refusal
                if self._latency > 0 or delayed is not None:
                    # Once anything was delayed, later data queues behind it (order).
                    delayed = delayed or _Delayed(dst)
                    delayed.put(time.monotonic() + self._latency, data)
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            if delayed is not None:
                delayed.finish(src)  # deliver what is queued, then close both
            else:
                _close(src)
                _close(dst)


class _Delayed:
    """One direction's queue of (due time, data), sent in order by its own thread."""

    def __init__(self, dst: socket.socket) -> None:
        self._dst = dst
        self._queue: deque[tuple[float, bytes]] = deque()
        self._cond = threading.Condition()
        self._src: socket.socket | None = None
        self._finished = False
        threading.Thread(target=self._send, daemon=True).start()

    def put(self, due: float, data: bytes) -> None:
        with self._cond:
            if self._queue:
                due = max(due, self._queue[-1][0])  # never overtake queued data
            self._queue.append((due, data))
            self._cond.notify()

    def finish(self, src: socket.socket) -> None:
        with self._cond:
            self._src, self._finished = src, True
            self._cond.notify()

    def _next(self) -> bytes | None:
        """The next chunk once it is due; None when finished and drained."""
        with self._cond:
            while True:
                if self._queue:
                    wait = self._queue[0][0] - time.monotonic()
                    if wait <= 0:
                        return self._queue.popleft()[1]
                    self._cond.wait(wait)
                elif self._finished:
                    return None
                else:
                    self._cond.wait()

    def _send(self) -> None:
        try:
            while (data := self._next()) is not None:
                self._dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(self._dst)
            if self._src is not None:
                _close(self._src)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
