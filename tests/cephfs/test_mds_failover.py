"""An MDS failover under a lock holder (the lab runs a standby MDS, as a real cluster does).

The active MDS is killed for good; the mon hands rank 0 to the standby once it misses the
old one's beacons (``mds_beacon_grace``, Ceph's default 15 s here); the standby replays
the journal and the clients reconnect to it, each re-asserting its file locks. What the
fence needs from that: the holder keeps its lock across the failover (no other client
gets it meanwhile or after), its writes go on once the new MDS is active, and the new
MDS frees the lock when the holder dies, as the old one did.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness.polling import samples, wait_until
from tests.cephfs.conftest import Pods
from tests.cephfs.test_cephlab import BUSY, figure, open_rw, try_lock

pytestmark = [pytest.mark.cephfs, pytest.mark.root]


def test_the_lock_survives_an_mds_failover_and_the_new_mds_frees_it(pods: Pods) -> None:
    lab = pods.lab
    holder = pods.holder(pods.a, "lock")
    assert holder.do("lock") == "ok"
    assert holder.do("write") == "ok"
    fd_b = open_rw(pods.path(pods.b, "lock"))
    try:
        assert try_lock(fd_b) in BUSY
        started = time.monotonic()
        old, new, took = lab.fail_over_mds()
        assert new != old
        # The holder's client reconnects to the new MDS and re-asserts its lock; until
        # then its calls wait. Nobody else may get the lock, during or after.
        wait_until(lambda: holder.do("touch") == "ok", 60, "the holder re-asserts its lock")
        resumed = time.monotonic()
        assert holder.do("write") == "ok"
        for _ in samples(2.0, 0.1):
            assert try_lock(fd_b) in BUSY, "the other client got the lock after the failover"
        assert pods.a.session() is not None and pods.b.session() is not None
        killed = time.monotonic()
        holder.process.send_signal(signal.SIGKILL)
        wait_until(lambda: try_lock(fd_b) == "ok", 10, "the new MDS frees the dead "
                   "holder's lock", interval=0.01)
        figure(f"MDS failover mds.{old} -> mds.{new}: the standby active {took:.1f}s after "
               f"the kill, the holder's lock re-asserted {resumed - started:.1f}s after it; "
               f"freed {(time.monotonic() - killed) * 1000:.0f} ms after the holder died")
    finally:
        os.close(fd_b)
