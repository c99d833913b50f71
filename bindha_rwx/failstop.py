"""Fail-stop threads: a thread the fence depends on that dies or stalls ends the process.

DESIGN invariant 12. A Python thread that raises ends quietly and leaves the process
running: a supervisor without its guard, or without the controller, would go on
renewing the Lease (or exit 0 without releasing it) while nobody watches ``named``.
So every supervisor thread starts through ``Threads.start``: an exception that leaves
its target, or a target that returns while the process is not stopping, calls
``on_death`` (the supervisor's last act: kill named, exit non-zero), and a thread that
reports no ``progress`` within its budget counts as dead too (``stalled``, checked by
the guard, which does no I/O). Budgets are per thread: the guard loops every 20 ms,
the controller may wait out a graceful stop of named.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

OnDeath = Callable[[str, str], None]


@dataclass
class _Watched:
    budget: float | None
    last: float


class Threads:
    """Starts and watches the supervisor's threads."""

    def __init__(self, on_death: OnDeath, stopping: threading.Event,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_death = on_death
        self.stopping = stopping
        self.clock = clock
        self._watched: dict[str, _Watched] = {}
        self._guard = threading.Lock()

    def start(self, name: str, target: Callable[[], object],
              budget: float | None = None) -> threading.Thread:
        """Run ``target`` on a daemon thread; ``budget``: seconds it may go without
        calling ``progress(name)`` before it counts as stalled (None: not watched)."""
        with self._guard:
            self._watched[name] = _Watched(budget, self.clock())
        thread = threading.Thread(target=self._run, args=(name, target), name=name,
                                  daemon=True)
        thread.start()
        return thread

    def progress(self, name: str) -> None:
        """``name`` is alive and not stuck; a float store, safe from any thread."""
        watched = self._watched.get(name)
        if watched is not None:
            watched.last = self.clock()

    def ages(self) -> dict[str, tuple[float, float | None]]:
        """Seconds since each thread's last progress, with its budget."""
        now = self.clock()
        with self._guard:
            return {name: (now - w.last, w.budget) for name, w in self._watched.items()}

    def watchdog(self, name: str, freeze_gap: float) -> str | None:
        """For the watching thread (the guard), each tick: its own progress, then the
        first stalled thread.

        A gap of more than ``freeze_gap`` since the watcher's own last tick means the
        whole process stood still (SIGSTOP, a paused VM, a starved host), not one
        thread: every budget then starts again, so a resumed supervisor is not taken
        for a stalled one (the Lease and lock checks deal with the freeze itself).
        """
        now = self.clock()
        watched = self._watched.get(name)
        if watched is not None and now - watched.last > freeze_gap:
            with self._guard:
                for other in self._watched.values():
                    other.last = now
            return None
        self.progress(name)
        return self.stalled()

    def stalled(self) -> str | None:
        """The first watched thread past its budget, said for a log line; else None."""
        if self.stopping.is_set():
            return None  # the shutdown path has deadlines of its own
        for name, (age, budget) in self.ages().items():
            if budget is not None and age > budget:
                return f"thread {name} made no progress for {age:.1f}s (budget {budget:g}s)"
        return None

    def _run(self, name: str, target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as exc:
            self.on_death(name, f"{type(exc).__name__}: {exc}"[:300])
            return
        if not self.stopping.is_set():
            self.on_death(name, "returned while the supervisor was not stopping")
