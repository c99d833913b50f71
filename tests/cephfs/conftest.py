"""Fixtures for the CephFS tests: one Ceph lab for the session (harness/cephlab.py), and per
test two pods' ceph-fuse mounts, each in a network namespace of its own, with the lock
holders a test starts always ended and the mounts always gone afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.cephlab import CephLab, CephMount, ceph_fuse_mounts
from tests.holderprocess import HolderProcess

HOLDER = Path(__file__).with_name("holder.py")


class Holder(HolderProcess):
    """The holder script next to this file, locking ``path``."""

    def __init__(self, path: Path) -> None:
        super().__init__(HOLDER, path)


@dataclass
class Pods:
    """Two pods' mounts of the lab's CephFS, and a directory of this test's on it."""

    lab: CephLab
    a: CephMount
    b: CephMount
    name: str  # the test's directory, relative to the CephFS root
    holders: list[Holder] = field(default_factory=list)
    children: list[int] = field(default_factory=list)  # holders' spawned children (pids)

    def path(self, mount: CephMount, *parts: str) -> Path:
        return mount.mountpoint.joinpath(self.name, *parts)

    def holder(self, mount: CephMount, *parts: str) -> Holder:
        holder = Holder(self.path(mount, *parts))
        self.holders.append(holder)
        return holder

    def adopt(self, pid: int) -> None:
        """A holder's child (``spawn``): not ours to wait for, but ours to end."""
        self.children.append(pid)

    def close(self) -> None:
        for pid in self.children:
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/comm") as comm:
                    spawned = comm.read().strip() == "sleep"  # still that child, not a reuse
                if spawned:
                    os.kill(pid, signal.SIGKILL)
        for holder in self.holders:
            if holder.process.poll() is None:
                holder.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                holder.process.wait(10)
        for mount in (self.a, self.b):
            mount.unmount()
            if mount.host is not None:
                self.lab.remove_host(mount.host)


@pytest.fixture
def pods(ceph_lab: CephLab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pods]:
    a = ceph_lab.mount("pod-a", tmp_path / "pod-a", netns=ceph_lab.host().netns)
    try:
        b = ceph_lab.mount("pod-b", tmp_path / "pod-b", netns=ceph_lab.host().netns)
    except BaseException:
        a.unmount()
        if a.host is not None:
            ceph_lab.remove_host(a.host)
        raise
    pods = Pods(ceph_lab, a, b, request.node.name)
    try:
        pods.path(a).mkdir()
        yield pods
    finally:
        pods.close()
        left = [m for m in ceph_fuse_mounts() if m.startswith(str(tmp_path))]
        assert not left, f"mounts left behind: {left}"
