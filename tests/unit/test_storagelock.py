"""The OFD storage lock on a local directory: who keeps it, who frees it (invariant 11)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bindha_rwx.storagelock import LockLost, LockWatch, StorageLock, lock_holder_conflicts


def test_a_second_description_is_refused_and_closing_frees_it(tmp_path: Path):
    path = tmp_path / "lock"
    first, second = StorageLock(path, 0), StorageLock(path, 0)
    assert first.try_acquire()
    assert not second.try_acquire()  # the same process, another description: refused
    assert lock_holder_conflicts(path)  # and opening the file to look frees nothing
    assert not second.try_acquire()
    first.touch()
    first.close()
    assert second.try_acquire()
    second.close()
    assert not lock_holder_conflicts(path)


def test_the_lock_lives_in_a_child_that_inherited_the_descriptor(tmp_path: Path):
    path = tmp_path / "lock"
    lock = StorageLock(path, 0)
    assert lock.try_acquire() and lock.fd is not None
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, pass_fds=(lock.fd,))
    try:
        lock.close()  # the supervisor's copy is gone, named's (the child's) is not
        other = StorageLock(path, 0)
        assert not other.try_acquire(), "the lock went with the parent's descriptor"
        child.stdin.close()  # type: ignore[union-attr]
        child.wait(10)
        assert other.try_acquire(), "the lock outlived the last descriptor"
        other.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_touch_of_a_closed_lock_is_lost(tmp_path: Path):
    lock = StorageLock(tmp_path / "lock", 0)
    with pytest.raises(LockLost):
        lock.touch()


def test_the_watch_turns_stale_on_time_when_a_touch_hangs(tmp_path: Path):
    now = [100.0]
    lost: list[str] = []
    watch = LockWatch(interval=0.4, budget=1.6, on_lost=lost.append, clock=lambda: now[0])
    lock = StorageLock(tmp_path / "lock", 0)
    assert lock.try_acquire()
    watch.watch(lock)
    assert watch.fresh()
    now[0] += 1.5
    assert watch.fresh()
    now[0] += 0.2  # no touch finished for longer than the budget: stale by itself
    assert not watch.fresh()
    watch._touch(lock)  # one that succeeds (started now) makes it fresh again
    assert watch.fresh()
    lock.close()
    watch._touch(lock)
    assert not watch.fresh() and lost and "not held" in lost[0]
