"""The leader's write probe of the shared volume (DESIGN: shared volume read-only / full / gone).

``named`` answers SERVFAIL ("journal write failed") while the volume takes no writes
and acknowledges nothing, so this probe only reports: it never stops ``named`` (the
master starts a fresh one once the volume is writable again: docs/supervisor.md).
Every ``interval`` seconds it writes and fsyncs a small file
``dynDir/.bindha/probe.<pod>``, and reads the free space.

Storage that hangs must not hold anything else up: the write runs on a worker thread
of its own; the probe's thread waits for it at most ``timeout`` seconds, reports a
hung volume meanwhile, and starts no second write while the first is stuck (so a dead
mount costs one blocked thread, not one per interval). Nobody else waits on either.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RUNBOOK = "docs/runbooks/volume-unavailable.md"
PROBE_BYTES = 64  # the probe file's fixed size
_WHY = {errno.EROFS: "read-only", errno.ENOSPC: "full", errno.EDQUOT: "full (quota)",
        errno.ENOENT: "gone", errno.ESTALE: "gone (stale handle)",
        errno.ENOTCONN: "gone (not connected)", errno.EIO: "failing (I/O error)",
        errno.EACCES: "not writable (permission denied)",
        errno.EPERM: "not writable (operation not permitted; CephFS blocklisted?)"}


@dataclass(frozen=True)
class VolumeHealth:
    """The probe's last word. ``writable`` None: not probed yet."""

    writable: bool | None
    problem: str | None = None  # e.g. "read-only: [Errno 30] ... .bindha/probe.pod-0"
    seconds: float | None = None  # duration of the last finished write + fsync
    free_bytes: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"writable": self.writable, "problem": self.problem,
                "write_seconds": None if self.seconds is None else round(self.seconds, 4),
                "free_bytes": self.free_bytes}


def write_once(path: Path, payload: bytes) -> tuple[float, int | None]:
    """Write + fsync ``path``; returns (seconds, free bytes, None when the filesystem
    reports no size). OSError as the volume says."""
    started = time.monotonic()
    # In place, never truncated, always the same length: a probe that freed its block
    # and allocated it again would hand a full volume's last block to named (seen in
    # the chaos run once every pod probed: named acknowledged updates on a full volume).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, payload[:PROBE_BYTES - 1].ljust(PROBE_BYTES - 1) + b"\n", 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    took = time.monotonic() - started
    stat = os.statvfs(path.parent)
    if stat.f_blocks == 0:
        # No size reported at all (seen on CephFS whose cluster has no mgr: statfs
        # comes from the mgr's pool stats): unknown, not full. The write itself decides.
        return took, None
    free = stat.f_bavail * stat.f_frsize
    if free == 0:
        raise OSError(errno.ENOSPC, "no free blocks left (statvfs)", str(path.parent))
    return took, free


def describe(exc: OSError) -> str:
    why = _WHY.get(exc.errno or 0, "not writable")
    return f"{why}: {exc.strerror or exc} ({exc.filename or ''})".replace(" ()", "")


class VolumeProbe:
    """Periodic write probe; ``on_change(before, now)`` is called on its thread when the
    answer changes (writable, not, unknown), and must not block (log, metric, queued
    Event)."""

    def __init__(self, path: Path, interval: float, timeout: float,
                 active: Callable[[], bool],
                 on_change: Callable[[VolumeHealth, VolumeHealth], None],
                 on_sample: Callable[[float], None] = lambda _seconds: None) -> None:
        """``on_sample(seconds)``: each finished write + fsync's duration (a histogram)."""
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self.active = active
        self.on_change = on_change
        self.on_sample = on_sample
        self._lock = threading.Lock()
        self._health = VolumeHealth(None)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._result: tuple[float, int | None] | OSError | None = None

    def health(self) -> VolumeHealth:
        with self._lock:
            return self._health

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """The probe's thread: one attempt at once, then one per interval while
        ``active()`` (a candidate needs an answer before it may acquire the Lease)."""
        while True:
            if not self.active():
                self._set(VolumeHealth(None))
            else:
                self.probe_once()
            if self._stop.wait(self.interval):
                return

    def probe_once(self) -> VolumeHealth:
        """One write (or wait on the stuck one); the new health."""
        worker = self._worker
        if worker is None or not worker.is_alive():
            self._result = None
            payload = f"{time.time():.3f} {os.getpid()}\n".encode()
            worker = threading.Thread(target=self._attempt, args=(payload,),
                                      name="volume-write", daemon=True)
            self._worker = worker
            worker.start()
        worker.join(self.timeout)
        result = self._result
        if worker.is_alive() or result is None:
            health = VolumeHealth(False, f"hung or gone: a write + fsync of {self.path} did "
                                  f"not finish within {self.timeout:g}s")
        elif isinstance(result, OSError):
            health = VolumeHealth(False, describe(result))
        else:
            health = VolumeHealth(True, None, result[0], result[1])
            self.on_sample(result[0])
        self._set(health)
        return health

    def _attempt(self, payload: bytes) -> None:
        try:
            self._result = write_once(self.path, payload)
        except OSError as exc:
            self._result = exc

    def _set(self, health: VolumeHealth) -> None:
        with self._lock:
            before, self._health = self._health, health
        if before.writable != health.writable or (
                not health.writable and before.problem != health.problem
                and health.writable is not None):
            self.on_change(before, health)
