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
from typing import TypeVar

T = TypeVar("T")


def call_within(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``fn()``'s result or exception; TimeoutError naming ``what`` past ``timeout``."""
    result: list[T] = []
    error: list[BaseException] = []

    def attempt() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=attempt, name=f"bounded:{what}"[:40], daemon=True)
    thread.start()
    thread.join(timeout)
    if error:
        raise error[0]
    if not result:
        raise TimeoutError(f"{what} did not finish within {timeout:g}s")
    return result[0]


def call_patiently(fn: Callable[[], T], tick: float, waiting: Callable[[float], None]) -> T:
    """``fn()``'s result or exception, however long it takes, with ``waiting(seconds
    so far)`` called every ``tick`` while it has not answered: for a call that must
    finish before anything else can start (the start-up's first look at the shared
    volume), whose caller must still say why it waits and keep its heartbeat."""
    result: list[T] = []
    error: list[BaseException] = []

    def attempt() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=attempt, name="patient-call", daemon=True)
    thread.start()
    while True:
        thread.join(tick)
        if not thread.is_alive():
            break
        waiting(time.monotonic() - started)
    if error:
        raise error[0]
    return result[0]
