"""API calls the elector and the watcher make (issue 14, item 6), counted against a fake
LeaseClient as client-go's leaderelection tests count them: a follower whose watch is
connected sends no GET while the holder renews, and one GET before it writes once the
Lease looks expired; without a watch it GETs every turn as before. The watcher LISTs
once and resumes each stream from the last resourceVersion it saw; it LISTs again only
after an error. Fake clock, no threads."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from bindha_rwx.election import ApiUnavailable, Elector, LeaseWatcher
from tests.unit.test_election_order import OTHERS, TIMING, Clock, FakeLease, turn, writes


class StreamingLease(FakeLease):
    """FakeLease whose watch streams come from a script: each entry is the events of
    one stream, or an exception it ends with; every watch call's resourceVersion is
    kept."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[list[tuple[str, Any]] | Exception] = []
        self.watched_from: list[str] = []

    def watch(self, resource_version: str, timeout: float) -> Iterator[tuple[str, Any]]:
        self.calls["watch"] += 1
        self.watched_from.append(resource_version)
        if not self.streams:
            self.stop_watching()
            return
        stream = self.streams.pop(0)
        if isinstance(stream, Exception):
            raise stream
        for kind, record in stream:
            yield kind, record.to_api(self.name)


def test_a_watching_follower_sends_no_get_while_the_holder_renews():
    clock, lease = Clock(), FakeLease()
    watching = [True]
    elector = Elector(lease, "pod-a", TIMING, clock=clock,  # type: ignore[arg-type]
                      watching=lambda: watching[0])
    renewal = lease.put("pod-x", 1000)
    elector.observe(renewal)  # what the watch delivered
    for i in range(10):  # the holder renews every retryPeriod, each seen through the watch
        clock.now += TIMING.retry_period
        elector.observe(lease.put("pod-x", 1001 + i))
        turn(elector)
    assert lease.calls == Counter(), f"a watched, live Lease needs no call: {lease.calls}"
    # The holder stops renewing: once its Lease is expired as seen here, one GET (the
    # truth before any write), then the CAS that takes it.
    clock.now += OTHERS + 0.1
    turn(elector)
    assert elector.holds()
    assert lease.calls == Counter(get=1, replace=1), lease.calls


def test_a_follower_without_a_watch_gets_every_turn():
    clock, lease = Clock(), FakeLease()
    elector = Elector(lease, "pod-a", TIMING, clock=clock)  # type: ignore[arg-type]
    lease.put("pod-x", 1000)
    for i in range(5):
        clock.now += TIMING.retry_period
        lease.put("pod-x", 1001 + i)
        turn(elector)
    assert lease.calls == Counter(get=5) and writes(lease.calls) == 0


def test_a_quiet_stream_cannot_hide_a_live_holder():
    """The watch says connected but delivers nothing (a half-open connection): the
    holder looks expired here, the GET shows it renewed, and nothing is written."""
    clock, lease = Clock(), FakeLease()
    elector = Elector(lease, "pod-a", TIMING, clock=clock,  # type: ignore[arg-type]
                      watching=lambda: True)
    elector.observe(lease.put("pod-x", 1000))
    clock.now += OTHERS + 0.1
    lease.put("pod-x", 1005)  # renewed meanwhile; the stream never said so
    turn(elector)
    assert not elector.holds()
    assert lease.calls == Counter(get=1), lease.calls


def test_the_watcher_lists_once_and_resumes_from_the_last_version():
    clock, lease = Clock(), StreamingLease()
    elector = Elector(lease, "pod-a", TIMING, clock=clock)  # type: ignore[arg-type]
    base = lease.put("pod-x", 1000)
    watcher = LeaseWatcher(lease, elector.observe, TIMING)  # type: ignore[arg-type]
    lease.stop_watching = watcher.stop
    lease.streams = [[("MODIFIED", replace(base, resource_version="1001"))],
                     [],  # the server ended a stream with no event
                     [("MODIFIED", replace(base, resource_version="1002"))]]
    watcher.run()
    assert lease.calls["list"] == 1, lease.calls
    assert lease.watched_from == ["1000", "1001", "1001", "1002"]
    assert elector.observed()[0].resource_version == "1002"


def test_the_watcher_lists_again_after_an_error(monkeypatch):
    clock, lease = Clock(), StreamingLease()
    elector = Elector(lease, "pod-a", TIMING, clock=clock)  # type: ignore[arg-type]
    base = lease.put("pod-x", 1000)
    watcher = LeaseWatcher(lease, elector.observe, TIMING)  # type: ignore[arg-type]
    lease.stop_watching = watcher.stop
    monkeypatch.setattr(watcher._stop, "wait", lambda _t: False)  # no real sleep
    lease.streams = [ApiUnavailable("HTTP 410 Gone"),
                     [("MODIFIED", replace(base, holder="pod-y", resource_version="1500"))]]
    watcher.run()
    assert lease.calls["list"] == 2, lease.calls
    assert elector.observed()[0].holder == "pod-y"
