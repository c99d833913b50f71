"""Fixtures for the faultfs tests: a FaultVolume per test, with processes that are always
ended and mounts that are always gone afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.faultfs import (
    FaultVolume,
    PodMount,
    cleanup_stale_mounts,
    fault_mounts,
    unavailable,
)
from tests.conftest import require
from tests.holderprocess import HolderProcess

ROOT = Path(__file__).resolve().parents[2]
HOLDER = Path(__file__).with_name("lockholder.py")


@pytest.fixture(scope="session", autouse=True)
def _no_stale_faultfs_mounts() -> None:
    """Mounts a killed earlier run left behind (their daemon is dead) go first."""
    if unavailable() is None:
        cleanup_stale_mounts()


class Holder(HolderProcess):
    """The holder script next to this file, locking ``path``."""

    def __init__(self, path: Path) -> None:
        super().__init__(HOLDER, path)


@dataclass
class Lab:
    """Pods' mounts of one backing directory, and the processes a test started."""

    root: Path
    volume: FaultVolume
    processes: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = field(
        default_factory=list)
    # Processes that are not our children, with a word of their command line: killed at
    # the end only if that pid still runs that command (a pid can be reused).
    strays: list[tuple[int, str]] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    @property
    def backing(self) -> Path:
        return self.volume.backing

    def mount(self, pod: str) -> PodMount:
        return self.volume.mount(pod, self.root / pod / "dyn")

    def spawn(self, code: str, *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def holder(self, path: Path) -> Holder:
        holder = Holder(path)
        self.processes.append(holder.process)
        return holder

    def open(self, path: Path, flags: int = os.O_RDWR) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC)
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        """Heal first (held callers may finish), then end processes, fds, mounts."""
        for pod_mount in self.volume.mounts.values():
            if pod_mount.alive:
                with contextlib.suppress(Exception):
                    pod_mount.heal()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        for pid, word in self.strays:
            if word.encode() in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.strays.clear()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        self.volume.close()


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    why = unavailable()
    require(why is None, why or "")
    lab = Lab(root=tmp_path, volume=FaultVolume(tmp_path / "backing"))
    try:
        yield lab
    finally:
        lab.close()
        left = [m.mountpoint for m in fault_mounts() if m.mountpoint.startswith(str(tmp_path))]
        assert not left, f"mounts left behind: {left}"
