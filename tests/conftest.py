"""Fixtures shared by every test: prerequisites that fail under CI instead of skipping."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bindha_rwx import log
from harness.bindlab import write_key_files
from harness.loopback import AddressPool

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The node end-to-end suite takes minutes: deselected (not skipped) unless
    BINDHA_NODE_E2E=1, which scripts/test-node sets."""
    if os.environ.get("BINDHA_NODE_E2E") == "1":
        return
    kept = [item for item in items if item.get_closest_marker("node_e2e") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def require(condition: bool, why: str) -> None:
    """Skip a test whose prerequisite is missing; under CI that is a failure, never a skip."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI: {why}")
    pytest.skip(why)


@pytest.fixture(autouse=True)
def _log_lines_stay_with_their_test() -> Iterator[None]:
    """bindha_rwx.log writes from a thread of its own: drain it before the test ends,
    so an in-process component's lines land in that test's captured output."""
    yield
    log.flush(2.0)


@pytest.fixture(scope="session")
def address_pool() -> AddressPool:
    require(os.geteuid() == 0, "needs root to alias loopback addresses and bind port 53")
    return AddressPool()


@pytest.fixture(scope="session")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """update-key and transfer-key, as a mounted Secret would hold them."""
    return write_key_files(tmp_path_factory.mktemp("keys"), ["update-key", "transfer-key"])


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """The ReadWriteMany volume: one directory all pods of a test share."""
    dyn = tmp_path / "shared-dyn"
    dyn.mkdir()
    yield dyn


@pytest.fixture(scope="session")
def ceph_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real Ceph cluster with a CephFS for the session (harness/cephlab.py), shared
    by tests/cephfs and the master pods' CephFS tests."""
    from harness.cephlab import CephLab, LabSettings, ceph_fuse_mounts, unavailable

    why = unavailable()
    require(why is None, why or "")
    workdir = tmp_path_factory.mktemp("cephlab")
    lab = CephLab(workdir, LabSettings(standby_mds=True))  # as a real cluster runs
    lab.start()
    print(f"\ncephfs: lab up in {lab.timings['start']:.2f}s "
          f"({', '.join(f'{k} {v:.2f}s' for k, v in lab.timings.items() if k != 'start')})")
    try:
        yield lab
    finally:
        netns = [h.netns for h in lab.hosts]
        lab.stop()
        left = [m for m in ceph_fuse_mounts() if m.startswith(str(workdir))]
        assert not left, f"mounts left behind: {left}"
        gone = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                              timeout=10, check=True).stdout
        names = {line.split()[0] for line in gone.splitlines() if line.strip()}
        assert not [n for n in netns if n.rsplit("/", 1)[1] in names], gone
