"""What every supervisor process does the same way, master and secondary alike.

- Its threads start fail-stop (bindha_rwx.failstop): a death or a stall ends the
  process through ``die()``: SIGKILL to every named it runs, a bounded wait for them,
  exit 70. No rndc: nothing may trust the fence, or the primary, any more.
- SIGTERM / SIGINT set ``shutdown`` and wake the controller, which owns the graceful
  stop and sets ``finished`` only on its way out (so an exception that escapes it can
  never read as a clean exit 0).
- The main thread waits for ``finished`` and, as PID 1, reaps orphans without stealing
  named's exit status (bindha_rwx.reaper); an exception there is fail-stop too.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable

from bindha_rwx import log as logs
from bindha_rwx.failstop import Threads
from bindha_rwx.log import get_logger
from bindha_rwx.named import REAP_GRACE, NamedProcess
from bindha_rwx.reaper import reap_orphans

EXIT_OK = 0
# A thread the fence depends on died or stalled: named was killed.
EXIT_THREAD_DIED = 70

log = get_logger("supervisor")


class Scaffold:
    """Threads, signals, PID 1 reaping and the fail-stop exit of one supervisor."""

    def __init__(self, named: Callable[[], Iterable[NamedProcess | None]],
                 event: Callable[[str, str, str], None], wake: Callable[[], None]) -> None:
        """``named``: the named processes to kill on a death (and whose pids the reaper
        leaves to their Popen); ``event``: queue a Kubernetes Event (never blocks);
        ``wake``: wake the controller."""
        self._named = named
        self._event = event
        self._wake = wake
        self.shutdown = threading.Event()
        self.finished = threading.Event()
        self._dying = threading.Lock()
        self.threads = Threads(self.die, self.shutdown)

    def running_named(self) -> list[NamedProcess]:
        return [n for n in self._named() if n is not None]

    def die(self, thread: str, why: str) -> None:
        """The process's last act; safe from any thread, once."""
        if not self._dying.acquire(blocking=False):
            return
        try:
            log.error("supervisor.thread_died", thread=thread, why=why,
                      named="SIGKILL", exit=EXIT_THREAD_DIED)
            self._event("SupervisorFailed", f"thread {thread}: {why}"[:1000], "Warning")
            ended = self.running_named()
            for named in ended:
                named.signal_now(signal.SIGKILL)
            deadline = time.monotonic() + REAP_GRACE
            pause = threading.Event()  # not time.sleep, which may be what failed
            while any(n.running for n in ended) and time.monotonic() < deadline:
                pause.wait(0.02)
            logs.flush(1.0)
        finally:
            os._exit(EXIT_THREAD_DIED)

    def serve(self, exit_event: str) -> int:
        """Signals, then the main thread's wait; returns the exit code of a clean stop."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        is_pid1 = os.getpid() == 1
        try:
            while not self.finished.wait(0.2):
                if is_pid1:
                    reap_orphans({n.pid for n in self.running_named() if n.pid})
        except Exception as exc:  # the main thread is fail-stop too
            self.die("main", f"{type(exc).__name__}: {exc}"[:300])
        log.info(exit_event, code=EXIT_OK)
        return EXIT_OK

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.shutdown.is_set():
            log.info("supervisor.signal", signal=signal.Signals(signum).name)
        self.shutdown.set()
        self._wake()
