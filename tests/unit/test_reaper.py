"""PID 1 duty: orphans are reaped, our own children are left to their Popen."""

from __future__ import annotations

import os
import subprocess
import time

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
