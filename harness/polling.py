"""Polling a condition, the one way tests and labs wait (never a sleep as
synchronisation): ``wait_until`` returns the first true value or raises with what was
awaited; ``samples`` yields for a window in which an invariant is checked at every step.
Imports nothing of the package, so every harness module may use it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(interval)


def samples(duration: float, interval: float) -> Iterator[float]:
    """Yield elapsed seconds every ``interval`` for ``duration`` seconds."""
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < duration:
        yield elapsed
        time.sleep(interval)
