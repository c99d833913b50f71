"""The chaos runner's smoke version: one round of every fault of the failure matrix,
in a random order, under write and query load; the invariants must hold.

The long runs (N rounds each, the product's default timings) are `scripts/chaos`;
their figures are in docs/reliability.md. This asserts invariants, not timings.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from harness.cephfaults import CEPH_FAULTS
from harness.chaos import ChaosRun
from harness.faults import FAULTS
from harness.pods import TEST_TIMING
from tests.conftest import require


def test_one_round_of_every_fault_keeps_the_invariants(tmp_path, api_client, kubeconfig):
    require(os.geteuid() == 0, "needs root: network namespaces, tmpfs mounts, port 53")
    require(shutil.which("dnsperf") is not None, "dnsperf (Debian package) is missing")
    seed = random.randrange(2**31)
    run = ChaosRun(root=tmp_path, rounds=1, faults=list(FAULTS), seed=seed,
                   timing=dict(TEST_TIMING), qps=100)
    result = run.run(api=api_client, kubeconfig=kubeconfig)
    failed = {r["fault"]: r["violations"] for r in result["rounds"] if r["violations"]}
    assert not failed, f"seed {seed}: {failed}"
    assert not result["final"]["violations"], f"seed {seed}: {result['final']['violations']}"
    assert sorted(r["fault"] for r in result["rounds"]) == sorted(FAULTS)
    # The load really ran: updates were acknowledged and the secondaries answered.
    assert result["final"]["acknowledged"] > 100
    assert all(v["completed"] for v in result["final"]["queries"].values()), result["final"]


@pytest.mark.cephfs
def test_one_round_of_every_cephfs_fault_keeps_the_invariants(tmp_path, api_client, kubeconfig):
    """The CephFS rows (harness/cephfaults.py) once each, with storage fencing, on a Ceph
    lab of their own (mds-restart and the full cluster must not touch the session's):
    a lost node, a cut from Ceph only, the MDS hung and restarted, the leader's client
    evicted and its ceph-fuse killed. The tmpfs rows run on CephFS in `scripts/chaos
    --volume cephfs` (docs/reliability.md)."""
    require(os.geteuid() == 0, "needs root: network namespaces, FUSE mounts, port 53")
    require(shutil.which("dnsperf") is not None, "dnsperf (Debian package) is missing")
    seed = random.randrange(2**31)
    run = ChaosRun(root=tmp_path, rounds=1, faults=list(CEPH_FAULTS), seed=seed,
                   timing=dict(TEST_TIMING), qps=100, volume="cephfs", storage_fencing="ceph")
    result = run.run(api=api_client, kubeconfig=kubeconfig)
    failed = {r["fault"]: r["violations"] for r in result["rounds"] if r["violations"]}
    assert not failed, f"seed {seed}: {failed}"
    assert not result["final"]["violations"], f"seed {seed}: {result['final']['violations']}"
    assert sorted(r["fault"] for r in result["rounds"]) == sorted(CEPH_FAULTS)
    node_loss = next(r for r in result["rounds"] if r["fault"] == "node-loss")
    assert node_loss["figures"]["evicted_by_fence"] is True, node_loss
    assert result["final"]["acknowledged"] > 100
