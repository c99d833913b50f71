"""Run a real supervisor with one fault injected from inside, for the fail-stop tests.

    python -m harness.inject FAULT -- run --config ...

The fault is armed once the file named by ``BINDHA_INJECT_TRIGGER`` exists, so a test
picks the moment (say, once the pod leads) and which pod. Everything else is the
product as shipped: these only make one of its own calls fail the way a new user saw
(a time-faking preload library made ``time.sleep`` raise OSError in the guard), or a
hung volume would (a read of the epoch that never returns).

Faults:
- ``guard-sleep-raises``: ``time.sleep`` raises OSError in the thread named "guard";
- ``controller-raises``: the controller's state write raises RuntimeError (a bug);
- ``controller-hangs``: the controller's epoch check blocks for ever (a hung volume
  under the controller, while the elector goes on renewing);
- ``secondary-controller-raises``: the same bug in a secondary's controller.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time
from pathlib import Path


def _armed() -> bool:
    trigger = os.environ.get("BINDHA_INJECT_TRIGGER")
    return bool(trigger) and Path(trigger).exists()


def _guard_sleep_raises() -> None:
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "guard" and _armed():
            raise OSError(22, "injected: sleep failed")
        real_sleep(seconds)

    time.sleep = sleep


def _controller_raises() -> None:
    from bindha_rwx.master import Master

    real = Master._write_state

    def write_state(self: Master) -> None:
        if _armed():
            raise RuntimeError("injected: a bug in the controller")
        real(self)

    Master._write_state = write_state  # type: ignore[method-assign]


def _controller_hangs() -> None:
    from bindha_rwx.fencing import SharedVolume

    real = SharedVolume.read_epoch

    def read_epoch(self: SharedVolume) -> int:
        if _armed():
            threading.Event().wait()  # never returns, as a read on a dead mount
        return real(self)

    SharedVolume.read_epoch = read_epoch  # type: ignore[method-assign]


def _secondary_controller_raises() -> None:
    from bindha_rwx.secondary import Secondary

    real = Secondary._write_state

    def write_state(self: Secondary) -> None:
        if _armed():
            raise RuntimeError("injected: a bug in the secondary's controller")
        real(self)

    Secondary._write_state = write_state  # type: ignore[method-assign]


FAULTS = {"guard-sleep-raises": _guard_sleep_raises, "controller-raises": _controller_raises,
          "controller-hangs": _controller_hangs,
          "secondary-controller-raises": _secondary_controller_raises}


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in FAULTS or sys.argv[2] != "--":
        sys.exit(f"usage: python -m harness.inject {{{','.join(FAULTS)}}} -- ARGS...")
    FAULTS[sys.argv[1]]()
    sys.argv = ["bindha-rwx", *sys.argv[3:]]
    runpy.run_module("bindha_rwx", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
