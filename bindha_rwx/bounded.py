"""One call with a deadline, for file I/O that a hung network volume can block for ever.

The call runs on a daemon thread of its own; the caller waits at most ``timeout``
seconds and then goes on (TimeoutError) while the stuck thread stays behind. For rare
calls only (a graceful stop's last check of the epoch), never in a loop: each timeout
leaves one blocked thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Attempt(Generic[T]):
    """``fn()`` on a daemon thread of its own; its result or exception once it ends."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self.result: list[T] = []
        self.error: list[BaseException] = []

        def attempt() -> None:
            try:
                self.result.append(fn())
            except BaseException as exc:
                self.error.append(exc)

        self.thread = threading.Thread(target=attempt, name=name[:40], daemon=True)
        self.thread.start()


def call_within(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``fn()``'s result or exception; TimeoutError naming ``what`` past ``timeout``."""
    call = _Attempt(fn, f"bounded:{what}")
    call.thread.join(timeout)
    if call.error:
        raise call.error[0]
    if not call.result:
        raise TimeoutError(f"{what} did not finish within {timeout:g}s")
    return call.result[0]


def call_patiently(fn: Callable[[], T], tick: float, waiting: Callable[[float], None]) -> T:
    """``fn()``'s result or exception, however long it takes, with ``waiting(seconds
    so far)`` called every ``tick`` while it has not answered: for a call that must
    finish before anything else can start (the start-up's first look at the shared
    volume), whose caller must still say why it waits and keep its heartbeat."""
    started = time.monotonic()
    call = _Attempt(fn, "patient-call")
    while True:
        call.thread.join(tick)
        if not call.thread.is_alive():
            break
        waiting(time.monotonic() - started)
    if call.error:
        raise call.error[0]
    return call.result[0]
