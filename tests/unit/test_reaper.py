"""PID 1 duty: orphans are reaped, our own children are left to their Popen."""

from __future__ import annotations

import os
import subprocess
import threading
import time

from bindha_rwx import reaper
from bindha_rwx.reaper import reap_orphans


def is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1].startswith("Z")


def wait_zombie(pid: int) -> int:
    """Wait until ``pid`` has exited, without reaping it."""
    deadline = time.monotonic() + 5
    while not is_zombie(pid):
        assert time.monotonic() < deadline, "child did not exit"
        time.sleep(0.01)
    return pid


def exited_child() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return wait_zombie(pid)


def test_strangers_are_reaped_managed_children_are_not():
    managed = subprocess.Popen(["true"])
    managed_pid = wait_zombie(managed.pid)
    # The managed zombie comes first in the kernel's list: nothing is taken from it.
    assert reap_orphans({managed_pid}) == []
    assert managed.wait(5) == 0  # its Popen still gets the exit status
    stranger = exited_child()
    assert reap_orphans(set()) == [stranger]
    assert not os.path.exists(f"/proc/{stranger}")


def test_a_busy_reaper_never_steals_a_tool_s_exit_status():
    """PID 1 reaps in a loop while tools run: a named-checkconf that fails must still
    be seen failing (a stolen status reads as 0, and a bad config would pass)."""
    stop = threading.Event()

    def reap() -> None:
        while not stop.is_set():
            reap_orphans(set())

    thread = threading.Thread(target=reap, daemon=True)
    thread.start()
    try:
        codes = [reaper.run(["sh", "-c", "exit 3"], timeout=5).returncode for _ in range(200)]
    finally:
        stop.set()
        thread.join(5)
    assert set(codes) == {3}
