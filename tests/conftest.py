"""Fixtures shared by every test: prerequisites that fail under CI instead of skipping."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bindha_rwx import log
from harness.bindlab import write_key_files
from harness.loopback import AddressPool

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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
