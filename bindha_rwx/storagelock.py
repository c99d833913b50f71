"""The storage lock: an open-file-description lock that lives as long as a writer can.

Why not a classic POSIX lock (fcntl F_SETLK, as fasteners takes): it belongs to the
*process*, so it vanishes when the supervisor exits or closes any descriptor of the
file, while its ``named`` may still be writing (stuck in I/O on a dead volume, it can
survive SIGKILL for as long as the volume hangs). DESIGN invariant 11 wants the lock
to live exactly as long as a writer can write.

An OFD lock (``F_OFD_SETLK``, Linux 3.15+) belongs to the open file description: every
descriptor that refers to it, in any process, keeps it, and it goes only when the last
of them closes. The supervisor opens the lock file once, locks it, and hands the
descriptor to ``named`` (``pass_fds``): named 9.18 keeps inherited descriptors open
(seen here), so the lock outlives the supervisor until named is gone too, and closing
the supervisor's own copy (``close``) never frees a lock that named still keeps.
Nothing ever unlocks with ``F_UNLCK``: that would drop the lock for named's copy too.

A lost lock is noticed (invariant 14): NFSv4 and CephFS report a lock lost to a lease
expiry or an eviction only on the locked file, so ``touch`` re-asserts the lock through
the same descriptor (``F_OFD_SETLK`` again: a no-op for the holder, an error once the
lock is gone or the client evicted). On a network volume that call can hang, so the
supervisor runs it on a worker thread of its own (LockWatch) and the fence guard reads
only a timestamp.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

# struct flock on Linux x86-64/arm64: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (+ padding). l_pid must be 0 for OFD locks.
_FLOCK = "hhqqi4x"
_BUSY = (errno.EAGAIN, errno.EACCES)


class LockLost(Exception):
    """The lock can no longer be asserted through our descriptor; the message says why."""


def _setlk(fd: int, kind: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0))


def lock_holder_conflicts(path: Path) -> bool:
    """True if another open file description holds a lock on ``path`` (F_OFD_GETLK).

    For `fence status`: opening the file is harmless for an OFD lock (closing our own
    descriptor never drops another description's lock).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                             struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    finally:
        os.close(fd)
    return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK


class StorageLock:
    """The OFD write lock on one lock generation's file.

    The descriptor stays open between failed attempts (a standby blocked on the fence
    retries with a fcntl, not a fresh open: on CephFS an open of a file whose holder's
    client is frozen can block for about 30 s, shared/cephfs-notes.md).
    """

    def __init__(self, path: Path, generation: int) -> None:
        self.path = path
        self.generation = generation
        self._fd: int | None = None
        self._locked = False

    @property
    def fd(self) -> int | None:
        """Our descriptor once we hold the lock: pass it to named."""
        return self._fd if self._locked else None

    @property
    def held(self) -> bool:
        """We took it and have not closed our copy (not proof that it still holds: touch)."""
        return self._locked

    def open(self) -> None:
        """Open the lock file without locking it (harmless for an OFD lock): a standby
        does this ahead, since on CephFS a fresh open of a file whose holder's client is
        frozen blocks for about 30 s, while a descriptor opened before answers at once."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def try_acquire(self) -> bool:
        """One non-blocking attempt; False if another description holds it.

        OSError for anything else (the volume's own error): the caller treats it as a
        failure to take the fence, and nothing was taken.
        """
        if self._locked:
            return True
        self.open()
        assert self._fd is not None
        try:
            _setlk(self._fd, fcntl.F_WRLCK)
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            self.close()
            raise
        self._locked = True
        return True

    def acquire(self, timeout: float, interval: float = 0.05) -> bool:
        """Try until ``timeout`` seconds have passed; False if someone else holds it."""
        deadline = time.monotonic() + timeout
        while True:
            if self.try_acquire():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    def touch(self) -> None:
        """Re-assert the lock through our descriptor; LockLost if it is gone.

        May block on a hung volume: call it from a thread that nothing waits on.
        """
        fd = self.fd
        if fd is None:
            raise LockLost(f"{self.path}: not held")
        try:
            _setlk(fd, fcntl.F_WRLCK)
        except OSError as exc:
            why = "another client holds it now" if exc.errno in _BUSY else (
                exc.strerror or str(exc))
            raise LockLost(f"{self.path}: {why} (errno {exc.errno})") from None

    def close(self) -> None:
        """Close our copy of the descriptor. The lock goes once no process keeps one:
        at once if named is gone, else when named ends. Never F_UNLCK (module text)."""
        fd, self._fd, self._locked = self._fd, None, False
        if fd is not None:
            # EIO on close of a dead mount: the descriptor is gone all the same.
            with contextlib.suppress(OSError):
                os.close(fd)


class LockWatch:
    """Touches the held lock every ``interval`` on a worker thread; the guard reads
    ``fresh()``, a comparison of two floats that never blocks.

    ``fresh()`` is true while the last touch that succeeded *started* less than
    ``budget`` seconds ago, and no touch has failed. A touch stuck on a hung volume
    therefore turns it false on time, as ``Elector.holds()`` does for the Lease.
    """

    def __init__(self, interval: float, budget: float,
                 on_lost: Callable[[str], None],
                 progress: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.budget = budget
        self.on_lost = on_lost
        self.progress = progress
        self.clock = clock
        self._state = threading.Lock()
        self._lock: StorageLock | None = None
        self._ok_at = -float("inf")
        self._lost: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    def watch(self, lock: StorageLock) -> None:
        """Start watching a lock just taken (the take itself counts as a touch)."""
        with self._state:
            self._lock, self._ok_at, self._lost = lock, self.clock(), None
        self._wake.set()

    def forget(self) -> None:
        with self._state:
            self._lock, self._lost = None, None

    def fresh(self) -> bool:
        with self._state:
            return (self._lock is not None and self._lost is None
                    and self.clock() - self._ok_at < self.budget)

    def lost(self) -> str | None:
        with self._state:
            return self._lost

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """The watch's thread: never waits on a touch for longer than ``interval``."""
        while not self._stop.is_set():
            self.progress()
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._state:
                lock = self._lock
            if lock is None or self._stop.is_set():
                continue
            worker = self._worker
            if worker is not None and worker.is_alive():
                continue  # the last touch still hangs: fresh() runs out on its own
            worker = threading.Thread(target=self._touch, args=(lock,), name="lock-touch",
                                      daemon=True)
            self._worker = worker
            worker.start()
            worker.join(self.interval)

    def _touch(self, lock: StorageLock) -> None:
        started = self.clock()
        try:
            lock.touch()
        except LockLost as exc:
            with self._state:
                if self._lock is not lock:
                    return
                self._lost = str(exc)
            self.on_lost(str(exc))
            return
        with self._state:
            if self._lock is lock:
                self._ok_at = max(self._ok_at, started)
