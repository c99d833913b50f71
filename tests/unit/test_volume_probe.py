"""The write probe (bindha_rwx.volume) on a local directory: what it says, and that a
write that never returns holds up nobody (a FIFO without a reader blocks open(2) the
way a dead network mount blocks a write)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from bindha_rwx.volume import VolumeHealth, VolumeProbe


def make(path: Path, changes: list[tuple[VolumeHealth, VolumeHealth]]) -> VolumeProbe:
    return VolumeProbe(path, interval=0.05, timeout=0.2, active=lambda: True,
                       on_change=lambda before, now: changes.append((before, now)))


def test_a_writable_directory_is_reported_once(tmp_path: Path):
    changes: list[tuple[VolumeHealth, VolumeHealth]] = []
    probe = make(tmp_path / "probe.pod-0", changes)
    for _ in range(3):
        health = probe.probe_once()
    assert health.writable is True and health.problem is None
    assert health.free_bytes and health.seconds is not None
    assert (tmp_path / "probe.pod-0").read_text().strip()
    assert [(b.writable, a.writable) for b, a in changes] == [(None, True)]


def test_a_missing_directory_is_gone(tmp_path: Path):
    changes: list[tuple[VolumeHealth, VolumeHealth]] = []
    health = make(tmp_path / "absent" / "probe.pod-0", changes).probe_once()
    assert health.writable is False and health.problem and health.problem.startswith("gone")
    assert len(changes) == 1


def test_a_hung_write_is_reported_and_blocks_nothing(tmp_path: Path):
    fifo = tmp_path / "probe.pod-0"
    os.mkfifo(fifo)
    changes: list[tuple[VolumeHealth, VolumeHealth]] = []
    probe = make(fifo, changes)
    started = time.monotonic()
    first = probe.probe_once()
    second = probe.probe_once()
    assert time.monotonic() - started < 2  # each waits its timeout, no more
    assert first.writable is False and first.problem and first.problem.startswith("hung")
    assert second == first and len(changes) == 1  # said once
    writers = [t for t in threading.enumerate() if t.name == "volume-write"]
    assert len(writers) == 1, "a second write was started while the first hung"
    # Unblock the stuck open: the write then ends (a FIFO cannot be fsynced: EINVAL).
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        writers[0].join(5)
        assert not writers[0].is_alive()
    finally:
        os.close(reader)


def test_a_filesystem_that_reports_no_size_is_not_full(tmp_path: Path, monkeypatch):
    """CephFS whose cluster has no mgr reports f_blocks = 0 (seen in the Ceph lab): the
    size is unknown, not zero; a volume reporting a size and no free block is full."""
    real = os.statvfs

    def sized(blocks: int, free: int):
        def statvfs(path):
            st = real(path)
            return os.statvfs_result((st.f_bsize, st.f_frsize, blocks, free, free,
                                      st.f_files, st.f_ffree, st.f_favail, st.f_flag,
                                      st.f_namemax))
        return statvfs

    monkeypatch.setattr(os, "statvfs", sized(0, 0))
    health = make(tmp_path / "probe.pod-0", []).probe_once()
    assert health.writable is True and health.free_bytes is None
    monkeypatch.setattr(os, "statvfs", sized(1000, 0))
    health = make(tmp_path / "probe.pod-0", []).probe_once()
    assert health.writable is False and health.problem.startswith("full")
