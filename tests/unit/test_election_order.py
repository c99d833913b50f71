"""The Elector's ordering of Lease records when resourceVersions go back (issue 11 item 11).

After an etcd restore, or a Lease deleted and created again on a fresh etcd, the
apiserver hands out lower resourceVersions than the ones a candidate kept. The integer
ordering in election.py exists for one reason (a late watch event, or a late LIST, must
not undo a newer record and make a fresh leader think it lost); it must not make a
candidate ignore what the apiserver says now. Pure logic against a fake LeaseClient that
counts every call, as client-go's leaderelection tests do; a fake clock, no threads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from bindha_rwx.config import Timing
from bindha_rwx.election import (
    ApiUnavailable,
    Conflict,
    Elector,
    LeaseRecord,
    LeaseWatcher,
)

TIMING = Timing(lease_duration=2.0, renew_deadline=1.2, retry_period=0.3, stop_timeout=0.5)
OTHERS = 2  # leaseDurationSeconds on the other holders' records


class FakeLease:
    """One Lease on a fake apiserver: compare-and-swap on resourceVersion, etcd's
    revision counter, and a count of every call by kind."""

    name = "bind-master-leader"

    def __init__(self, revision: int = 999) -> None:
        self.revision = revision
        self.record: LeaseRecord | None = None
        self.calls: Counter[str] = Counter()
        self.events: list[tuple[str, LeaseRecord]] = []  # the next watch stream's events
        self.while_listing: Callable[[], None] = lambda: None
        self.stop_watching: Callable[[], None] = lambda: None

    def put(self, holder: str | None, revision: int) -> LeaseRecord:
        """The Lease as someone else wrote it (another pod, or the restored etcd)."""
        self.revision = revision
        self.record = LeaseRecord(holder=holder, lease_duration=OTHERS, transitions=3,
                                  resource_version=str(revision))
        return self.record

    def _store(self, record: LeaseRecord) -> LeaseRecord:
        self.revision += 1
        self.record = replace(record, resource_version=str(self.revision))
        return self.record

    def get(self, timeout: float) -> LeaseRecord | None:
        self.calls["get"] += 1
        return self.record

    def create(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        self.calls["create"] += 1
        if self.record is not None:
            self.calls["conflict"] += 1
            raise Conflict("AlreadyExists")
        return self._store(record)

    def replace(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        self.calls["replace"] += 1
        if self.record is None:
            raise ApiUnavailable("HTTP 404 Not Found")
        if record.resource_version != self.record.resource_version:
            self.calls["conflict"] += 1
            raise Conflict("the object has been modified")
        return self._store(record)

    def list_version(self, timeout: float) -> tuple[str, LeaseRecord | None]:
        self.calls["list"] += 1
        answer = str(self.revision), self.record
        self.while_listing()  # what happens between the LIST being served and its answer
        return answer

    def watch(self, resource_version: str, timeout: float) -> Iterator[tuple[str, Any]]:
        self.calls["watch"] += 1
        events, self.events = self.events, []
        for kind, record in events:
            yield kind, record.to_api(self.name)
        self.stop_watching()  # one stream per test step


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def turn(elector: Elector) -> None:
    """One turn of Elector.run() by hand: renew while leading, else try to acquire."""
    try:
        if elector.holds():
            elector._renew()
        else:
            elector._try_acquire()
    except Conflict:
        pass  # run() counts it and tries again on the next turn


def watch_once(elector: Elector, lease: FakeLease) -> None:
    """The watcher (re)starting: one LIST, then the queued watch events, synchronously."""
    watcher = LeaseWatcher(lease, elector.observe, TIMING)  # type: ignore[arg-type]
    lease.stop_watching = watcher.stop
    watcher.run()


def writes(calls: Counter[str]) -> int:
    return calls["create"] + calls["replace"]


@dataclass(frozen=True)
class Case:
    name: str
    role: str          # where pod-a is when etcd goes back: "follower" or "leader"
    holder: str        # who holds the Lease in the restored (or fresh) etcd
    revision: int      # its resourceVersion there: lower than any pod-a saw
    via: str           # how pod-a learns it: "get" (its own turn), "list" (the watcher
                       # restarting after the apiserver came back), "renew" (as leader)


WENT_BACK = [
    Case("restore, a follower's own GET", "follower", "pod-y", 40, "get"),
    Case("restore, a follower's watcher LIST", "follower", "pod-y", 40, "list"),
    Case("restore to the same dead holder", "follower", "pod-x", 900, "get"),
    Case("created again on a fresh etcd", "follower", "pod-y", 1, "list"),
    Case("restore, the leader's watcher LIST", "leader", "pod-y", 40, "list"),
    Case("restore, the leader's renewal", "leader", "pod-y", 40, "renew"),
    Case("restore to the leader itself", "leader", "pod-a", 40, "renew"),
]


@pytest.mark.parametrize("case", WENT_BACK, ids=[c.name for c in WENT_BACK])
def test_a_resource_version_that_went_back_is_followed(case: Case):
    clock, lease = Clock(), FakeLease()
    elector = Elector(lease, "pod-a", TIMING, clock=clock)  # type: ignore[arg-type]
    if case.role == "follower":
        lease.put("pod-x", 1000)
        turn(elector)  # pod-x leads, renewed just now: pod-a follows
        assert not elector.holds() and writes(lease.calls) == 0
    else:
        turn(elector)  # pod-a creates the Lease: resourceVersion 1000
        assert elector.holds() and lease.record.resource_version == "1000"
    clock.now += 0.2
    lease.put(case.holder, case.revision)  # etcd goes back: a snapshot, or a fresh etcd
    learned = clock.now
    if case.via == "list":
        watch_once(elector, lease)
    else:
        turn(elector)
    calls = Counter(lease.calls)

    if case.holder == "pod-a":
        # The restored Lease is still ours: one conflict to learn it, then one write
        # per renewal, not a conflict, a GET and a write each time.
        assert elector.holds()
        for _ in range(3):
            clock.now += TIMING.retry_period
            turn(elector)
            assert elector.holds()
        assert lease.calls - calls == Counter(replace=3), lease.calls - calls
        assert lease.record.holder == "pod-a"
        return

    # (2) A leader notices at once that another holds the Lease now.
    assert not elector.holds(), "the Lease has another holder: pod-a must know it lost"
    assert elector.observed()[0].holder == case.holder
    # (1) Anyone acquires once that holder's Lease expires as observed locally: not
    # before (no write at all), and at the first turn after.
    clock.now = learned + OTHERS - 0.1
    turn(elector)
    assert not elector.holds()
    assert writes(lease.calls) == writes(calls), "a write before the Lease expired"
    clock.now = learned + OTHERS + 0.1
    turn(elector)
    assert elector.holds(), f"pod-a never acquires: {dict(lease.calls)}"
    assert lease.record.holder == "pod-a"
    assert lease.calls["conflict"] == calls["conflict"], "acquired only after conflicts"


def test_a_late_watch_event_does_not_undo_a_fresh_leader():
    """The ordering's reason: the release it took over arrives through the watch after
    pod-a's own acquiring write."""
    clock, lease = Clock(), FakeLease()
    elector = Elector(lease, "pod-a", TIMING, clock=clock)  # type: ignore[arg-type]
    released = lease.put(None, 1000)  # pod-x released the Lease
    turn(elector)
    assert elector.holds() and lease.record.resource_version == "1001"
    lease.events = [("MODIFIED", released)]  # the watch is late: it shows 1000 now
    watch_once(elector, lease)
    assert elector.holds()
    assert elector.observed()[0].resource_version == "1001"


def test_a_late_list_does_not_undo_a_fresh_leader():
    """The same for the watcher's LIST: served before pod-a's acquiring write, its answer
    arrives after it. A LIST is no older than the records kept when it was sent; this one
    is older than a record that arrived while it was on its way."""
    clock, lease = Clock(), FakeLease()
    elector = Elector(lease, "pod-a", TIMING, clock=clock)  # type: ignore[arg-type]
    lease.put(None, 1000)
    lease.while_listing = lambda: turn(elector)  # pod-a acquires meanwhile: 1001
    watch_once(elector, lease)
    assert lease.record.resource_version == "1001" and lease.record.holder == "pod-a"
    assert elector.holds(), "a LIST answer older than our own write made us think we lost"
    assert elector.observed()[0].resource_version == "1001"
