"""Leader election over a coordination.k8s.io/v1 Lease: a small explicit state machine.

Modelled on client-go's tools/leaderelection, with what that package (and the Python
client's copy of it) lacks for a fence: a watch so that a release is acted on at once,
a release on shutdown, and a monotonic deadline the fence guard can read without
asking this thread.

Invariants (DESIGN 1, 2, 6, 7):

- Every write is a compare-and-swap: create fails with 409 when the Lease exists,
  replace carries the ``resourceVersion`` we read; 409 means someone else wrote first.
- Expiry of another holder is judged only from ``observed_at``, the local monotonic
  time at which this process first saw the record's current ``resourceVersion``,
  plus the record's ``leaseDurationSeconds``. Another host's ``renewTime`` is never
  compared with our clock.
- As leader, ``renewed_at`` is the monotonic time at which the last successful write
  was *sent*. We hold the Lease only while ``clock() - renewed_at < renewDeadline``
  (``holds()``); this is computed, so it turns false on time even if this thread is
  stuck in a call. Others cannot see our write before we sent it, so their expiry
  moment is at least ``renewed_at + leaseDuration``, and
  ``renewDeadline + stopTimeout < leaseDuration`` (enforced by config) leaves room to
  kill ``named`` in between.
- One thread runs ``run()``; it does API calls only (each with a timeout) and never
  waits behind slow work. The watcher thread only feeds observations and wakes it.
- Records are ordered by ``resourceVersion`` only when they may be late (``observe``):
  the answer to a call sent after we kept our record is the truth, even at a lower
  ``resourceVersion`` (after an etcd restore they start lower again).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from bindha_rwx.config import Timing, holder_pod
from bindha_rwx.log import get_logger
from bindha_rwx.metrics import Metrics

EPOCH_ANNOTATION = "bindha.io/epoch"
# The leader's pod IP, written with the acquiring write itself, so that secondaries
# learn their new primary from the same watch event that tells them who leads.
LEADER_IP_ANNOTATION = "bindha.io/leader-ip"
# Operator state on the Lease (bindha-rwx pause / switchover), read by every candidate.
PAUSED_ANNOTATION = "bindha.io/paused"
SWITCHOVER_ANNOTATION = "bindha.io/switchover-to"
log = get_logger("election")
Clock = Callable[[], float]
# Orders what the threads see: a GET, LIST or write takes a ticket when it is sent, and
# Elector.observe takes one when it keeps a record (next() on a count is atomic).
_tickets = itertools.count()


class Conflict(Exception):
    """409: another writer changed the Lease since we read it."""


class ApiUnavailable(Exception):
    """The API server did not answer in time, or answered with an error."""


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease that the election reads and writes."""

    holder: str | None
    lease_duration: int
    transitions: int
    resource_version: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    # Not part of the Lease: the ticket taken when the GET, LIST or write that returned
    # this record was sent; None for a record from a watch event.
    asked: int | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_api(cls, lease: client.V1Lease) -> LeaseRecord:
        spec = lease.spec or client.V1LeaseSpec()
        return cls(
            holder=spec.holder_identity or None,
            lease_duration=int(spec.lease_duration_seconds or 0),
            transitions=int(spec.lease_transitions or 0),
            resource_version=lease.metadata.resource_version or "",
            annotations=dict(lease.metadata.annotations or {}),
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
        )

    def to_api(self, name: str) -> client.V1Lease:
        return client.V1Lease(
            metadata=client.V1ObjectMeta(name=name, annotations=self.annotations or None,
                                         resource_version=self.resource_version or None),
            spec=client.V1LeaseSpec(
                holder_identity=self.holder, lease_duration_seconds=self.lease_duration,
                lease_transitions=self.transitions, acquire_time=self.acquire_time,
                renew_time=self.renew_time))


class LeaseClient:
    """The only code that reads or writes the Lease; every call has a timeout."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.api = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name

    def _call(self, fn: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=max(0.1, timeout), **kwargs)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(exc.reason) from None
            raise ApiUnavailable(f"HTTP {exc.status} {exc.reason}") from None
        except (Urllib3Error, OSError) as exc:
            raise ApiUnavailable(type(exc).__name__) from None

    def get(self, timeout: float) -> LeaseRecord | None:
        try:
            lease = self._call(self.api.read_namespaced_lease, self.name, self.namespace,
                               timeout=timeout)
        except ApiUnavailable as exc:
            if str(exc).startswith("HTTP 404"):
                return None
            raise
        return LeaseRecord.from_api(lease)

    def create(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        body = replace(record, resource_version="").to_api(self.name)
        lease = self._call(self.api.create_namespaced_lease, self.namespace, body,
                           timeout=timeout)
        return LeaseRecord.from_api(lease)

    def replace(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        """Compare-and-swap on ``record.resource_version``."""
        lease = self._call(self.api.replace_namespaced_lease, self.name, self.namespace,
                           record.to_api(self.name), timeout=timeout)
        return LeaseRecord.from_api(lease)

    def watch(self, resource_version: str, timeout: float) -> Iterator[tuple[str, Any]]:
        """Watch events of this one Lease; the server ends the stream after ``timeout``."""
        stream = watch.Watch().stream(
            self.api.list_namespaced_lease, self.namespace,
            field_selector=f"metadata.name={self.name}", resource_version=resource_version,
            allow_watch_bookmarks=True, timeout_seconds=max(1, int(timeout)),
            _request_timeout=timeout + 5)
        for event in stream:
            yield event["type"], event["object"]

    def list_version(self, timeout: float) -> tuple[str, LeaseRecord | None]:
        """The collection's resourceVersion to watch from, and the Lease if it exists."""
        leases = self._call(self.api.list_namespaced_lease, self.namespace,
                            field_selector=f"metadata.name={self.name}", timeout=timeout)
        record = LeaseRecord.from_api(leases.items[0]) if leases.items else None
        return leases.metadata.resource_version, record


class Role(Enum):
    FOLLOWER = "follower"
    LEADER = "leader"


class Elector:
    """Acquire, renew, watch and release one Lease for ``identity``."""

    def __init__(self, lease: LeaseClient, identity: str, timing: Timing,
                 clock: Clock = time.monotonic,
                 on_change: Callable[[], None] | None = None,
                 heartbeat: Callable[[float], None] | None = None,
                 annotations: dict[str, str] | None = None,
                 metrics: Metrics | None = None,
                 may_acquire: Callable[[], str | None] | None = None,
                 watching: Callable[[], bool] | None = None) -> None:
        self.lease = lease
        self.identity = identity
        self.pod = holder_pod(identity)  # switchover targets and operators name pods
        self.timing = timing
        self.clock = clock
        self.on_change = on_change or (lambda: None)
        self.heartbeat = heartbeat or (lambda _now: None)
        # Asked before every acquisition: a reason not to lead now (the candidate's own
        # volume is unusable), or None.
        self.may_acquire = may_acquire or (lambda: None)
        # True while a LeaseWatcher's stream feeds observe(): a follower then needs no
        # GET of its own while the holder's Lease is live (see _try_acquire).
        self.watching = watching or (lambda: False)
        self._refused_for: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._release_requested = threading.Event()
        self._final_release = False
        self.released = threading.Event()
        # Guarded by _lock:
        self._role = Role.FOLLOWER
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._kept = -1  # the ticket taken when _observed was kept
        self._renewed_at = -math.inf
        self._annotations: dict[str, str] = dict(annotations or {})
        self.metrics = metrics or Metrics()
        self._cooldown_until = -math.inf
        self._switchover: tuple[str | None, float] = (None, 0.0)
        self.last_api_ok = -math.inf
        self.writes = 0

    # -- what other threads read ------------------------------------------------

    def holds(self) -> bool:
        """True while we lead and the last renewal is younger than renewDeadline."""
        with self._lock:
            return (self._role is Role.LEADER
                    and self.clock() - self._renewed_at < self.timing.renew_deadline)

    def valid_until(self) -> float:
        """Monotonic time at which holds() turns false unless a renewal succeeds."""
        with self._lock:
            if self._role is not Role.LEADER:
                return -math.inf
            return self._renewed_at + self.timing.renew_deadline

    def observed(self) -> tuple[LeaseRecord | None, float]:
        with self._lock:
            return self._observed, self._observed_at

    def set_annotation(self, key: str, value: str) -> None:
        """Published with the next renewal (the fencing epoch, for operators)."""
        with self._lock:
            self._annotations[key] = value
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    def request_release(self) -> None:
        """Leave the Lease for good on the next turn of run() (shutdown): holder
        cleared, transitions kept, and run() returns without trying again."""
        self._final_release = True
        self._release_requested.set()
        self.wake()

    def step_down(self, cooldown: float) -> None:
        """Release now and do not try to acquire again for ``cooldown`` seconds."""
        with self._lock:
            self._cooldown_until = self.clock() + cooldown
        self._release_requested.set()
        self.wake()

    # -- observations ---------------------------------------------------------

    def observe(self, record: LeaseRecord | None) -> None:
        """Feed a record seen by a GET, a LIST, a write or the watch.

        The answer to a call sent after we kept the current record is the truth, even at
        a lower resourceVersion: after an etcd restore (or a Lease created again on a
        fresh etcd) resourceVersions go back, and ignoring them would leave every
        candidate judging, and writing against, a record the apiserver no longer has.
        Only a record that may be older than the one we keep is ordered: a watch event,
        or the answer to a call sent before we kept ours (a late LIST). A late one must
        not undo a newer record: a fresh leader would think it lost.
        """
        changed = False
        with self._lock:
            old = self._observed
            if record is None or old is None or record.resource_version != old.resource_version:
                late = record is not None and (record.asked is None or record.asked < self._kept)
                if not (late and old is not None and _rv_older(record.resource_version,
                                                                old.resource_version)):
                    self._observed = record
                    self._observed_at = self.clock()
                    self._kept = next(_tickets)
                    changed = True
            current = self._observed
            target = current.annotations.get(SWITCHOVER_ANNOTATION) if current else None
            if target != self._switchover[0]:
                self._switchover = (target, self.clock())
            lost = self._role is Role.LEADER and (current is None
                                                  or current.holder != self.identity)
            if lost:
                # Someone else holds it now: we lost, whatever our deadline says.
                self._role = Role.FOLLOWER
                self._renewed_at = -math.inf
        if lost:  # said outside the lock that holds() needs (invariant 12)
            log.warning("lease.lost", holder=current.holder if current else None,
                        reason="the Lease has another holder, or was deleted")
        if changed and record is not None:
            self.metrics.set("leader_transitions", record.transitions)
        if changed:
            if (old.holder if old else None) != (record.holder if record else None):
                log.info("lease.holder_seen", holder=record.holder if record else None,
                         previous=old.holder if old else None)
            self.wake()
            self.on_change()

    def _ask(self, call: Callable[..., LeaseRecord | None], *args: Any) -> Any:
        """One GET or write of the Lease; its answer says when it was sent (observe)."""
        asked = next(_tickets)
        return _stamped(call(*args), asked)

    def _expired(self, record: LeaseRecord, observed_at: float) -> bool:
        return self.clock() - observed_at > record.lease_duration

    # -- the loop -------------------------------------------------------------

    def run(self) -> None:
        """Until stop(): acquire when free, renew while leading, release on request."""
        while not self._stop.is_set():
            now = self.clock()
            self.heartbeat(now)
            if self._release_requested.is_set():
                self._release()
                self._release_requested.clear()
                self.released.set()
                if self._final_release or self._stop.is_set():
                    break
            with self._lock:
                leading = self._role is Role.LEADER
                cooling = now < self._cooldown_until
                overdue = leading and now - self._renewed_at >= self.timing.renew_deadline
            if overdue:
                # holds() turned false already; make it explicit. The next turn may take
                # the Lease again, but only by a CAS that proves nobody else took it.
                self._lose("renewDeadline passed without a successful renewal")
                leading = False
            try:
                if leading:
                    self._renew()
                elif not cooling:
                    self._try_acquire()
                self.last_api_ok = self.clock()
            except ApiUnavailable as exc:
                log.warning("lease.api_error", error=str(exc), leading=leading)
                if leading:
                    self.metrics.inc("renew_failures_total")
            except Conflict:
                if leading:
                    self.metrics.inc("renew_failures_total")
            self._wait_next(now)
        self.heartbeat(self.clock())

    def _wait_next(self, started: float) -> None:
        """Sleep until the next turn, waking at once on a watch event or a request."""
        next_turn = started + self.timing.retry_period
        with self._lock:
            record, observed_at = self._observed, self._observed_at
            following = self._role is Role.FOLLOWER
        if following and record is not None and record.holder:
            # Wake just after the holder's Lease would expire, not up to a retryPeriod
            # later: crash takeover then costs leaseDuration, not leaseDuration + retry.
            next_turn = min(next_turn, observed_at + record.lease_duration + 0.01)
        slice_ = self.timing.renew_deadline / 3
        while not self._stop.is_set():
            left = next_turn - self.clock()
            if left <= 0:
                return
            if self._wake.wait(min(left, slice_)):
                self._wake.clear()
                with self._lock:
                    leading = self._role is Role.LEADER
                # A leader renews on its own schedule; a follower reacts to news at once.
                if not leading or self._release_requested.is_set():
                    return
            self.heartbeat(self.clock())

    def _call_timeout(self) -> float:
        """Never wait past the point where holds() would turn false anyway."""
        limit = self.timing.retry_period
        with self._lock:
            if self._role is Role.LEADER:
                limit = min(limit, self._renewed_at + self.timing.renew_deadline - self.clock())
        return max(0.1, limit)

    def _desired(self, base: LeaseRecord | None, acquiring: bool) -> LeaseRecord:
        now = _micro_now()
        with self._lock:
            annotations = dict(base.annotations if base else {})
            annotations.update(self._annotations)
        if SWITCHOVER_ANNOTATION in annotations and (
                (acquiring and annotations[SWITCHOVER_ANNOTATION] == self.pod)
                or self.switchover_target() is None):
            # Done (we are its target), or stale: nobody may act on it any more.
            del annotations[SWITCHOVER_ANNOTATION]
        transitions = base.transitions if base else 0
        acquire_time = base.acquire_time if base else None
        if acquiring and (base is None or base.holder != self.identity):
            if base is not None:
                transitions += 1
            acquire_time = now
        return LeaseRecord(
            holder=self.identity,
            lease_duration=math.ceil(self.timing.lease_duration),
            transitions=transitions,
            resource_version=base.resource_version if base else "",
            annotations=annotations,
            acquire_time=acquire_time or now,
            renew_time=now,
        )

    def switchover_target(self) -> str | None:
        """The pod a switchover asks for, while the request is younger than
        2 x leaseDuration as seen from here; a stale one (its target died, or never took
        the Lease) is ignored everywhere, and the leader drops it at its next write."""
        with self._lock:
            target, seen_at = self._switchover
        if target and self.clock() - seen_at < 2 * self.timing.lease_duration:
            return target
        return None

    def _yields(self, record: LeaseRecord | None) -> bool:
        """An operator's word keeps us from acquiring: paused, or a switchover to another.

        A switchover that its target has not taken within 2 x leaseDuration (judged from
        when we first saw it) is ignored, so a dead target cannot leave us leaderless.
        """
        if record is None or record.holder == self.identity:
            return False
        if record.annotations.get(PAUSED_ANNOTATION) == "true":
            return True
        target = self.switchover_target()
        return bool(target and target != self.pod)

    def _try_acquire(self) -> None:
        record, observed_at = self.observed()
        if not (self.watching() and self._held_by_another(record, observed_at)):
            # No watch to trust, or the Lease looks free or expired from here: ask. A
            # watched Lease that another pod renews needs no GET (client-go's followers
            # GET every retryPeriod; the watch already says each renewal as it happens).
            # A stream that went quiet is caught the same way: the holder then looks
            # expired from here, and this GET shows the truth before any write.
            record = self._ask(self.lease.get, self._call_timeout())
            self.observe(record)
            record, observed_at = self.observed()
        if self._yields(record):
            return
        if record is not None and record.holder and record.holder != self.identity \
                and not self._expired(record, observed_at):
            return
        refused = self.may_acquire()
        if refused != self._refused_for:
            self._refused_for = refused
            if refused:
                log.warning("lease.not_acquiring", why=refused)
        if refused:
            return
        desired = self._desired(record, acquiring=True)
        sent = self.clock()
        self.writes += 1
        if record is None:
            written = self._ask(self.lease.create, desired, self._call_timeout())
        else:
            written = self._ask(self.lease.replace, desired, self._call_timeout())
        with self._lock:
            self._role = Role.LEADER
            self._renewed_at = sent
        self.observe(written)
        log.info("lease.acquired", holder=self.identity, transitions=written.transitions,
                 previous=record.holder if record else None)
        self.on_change()

    def _held_by_another(self, record: LeaseRecord | None, observed_at: float) -> bool:
        return bool(record is not None and record.holder and record.holder != self.identity
                    and not self._expired(record, observed_at))

    def _renew(self) -> None:
        record, _ = self.observed()
        desired = self._desired(record, acquiring=False)
        sent = self.clock()
        try:
            self.writes += 1
            written = self._ask(self.lease.replace, desired, self._call_timeout())
        except Conflict:
            # Someone changed the Lease (an operator's annotation, or a new holder).
            current = self._ask(self.lease.get, self._call_timeout())
            self.observe(current)
            if current is None or current.holder != self.identity:
                self._lose("conflict: the Lease has another holder")
                return
            self.writes += 1
            written = self._ask(self.lease.replace, self._desired(current, acquiring=False),
                                self._call_timeout())
        with self._lock:
            if self._role is Role.LEADER:
                self._renewed_at = sent
        self.metrics.inc("renewals_total")
        self.metrics.observe("lease_renew_duration_seconds", self.clock() - sent)
        self.observe(written)

    def _lose(self, reason: str) -> None:
        with self._lock:
            was_leader = self._role is Role.LEADER
            self._role = Role.FOLLOWER
            self._renewed_at = -math.inf
        if was_leader:
            log.warning("lease.lost", reason=reason)
            self.on_change()

    def _release(self) -> None:
        """Clear the holder (CAS) so that a watching standby acquires at once."""
        with self._lock:
            leading = self._role is Role.LEADER
            self._role = Role.FOLLOWER
            self._renewed_at = -math.inf
        self.on_change()
        if not leading:
            return
        for _ in range(2):
            record, _ = self.observed()
            if record is None or record.holder != self.identity:
                return
            released = replace(record, holder=None, lease_duration=1,
                               renew_time=_micro_now(),
                               annotations={**record.annotations, **self._annotations})
            try:
                self.writes += 1
                self.observe(self._ask(self.lease.replace, released,
                                       self.timing.retry_period))
                log.info("lease.released", transitions=record.transitions)
                return
            except Conflict:
                try:
                    self.observe(self._ask(self.lease.get, self.timing.retry_period))
                except ApiUnavailable:
                    return
            except ApiUnavailable as exc:
                log.warning("lease.release_failed", error=str(exc))
                return


# Seconds a watch stream lasts before the server ends it and it resumes (no LIST).
WATCH_SECONDS = 60.0


class LeaseWatcher:
    """Feeds every change of the Lease to ``observe`` as it happens.

    The masters pass their elector's observe(); secondaries, which only follow the
    leader, pass their own. ``connected`` says whether a watch stream is open now.
    """

    def __init__(self, lease: LeaseClient, observe: Callable[[LeaseRecord | None], None],
                 timing: Timing) -> None:
        self.lease = lease
        self.observe = observe
        self.timing = timing
        self._stop = threading.Event()
        self.connected = False
        self.connected_at = -math.inf

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """LIST once, then WATCH, and when the server ends a stream, WATCH again from the
        last resourceVersion seen: no LIST per stream (client-go's reflector does the
        same). LIST again only after an error (410 Gone after a compaction, "too large
        resource version" after an etcd restore, a broken connection)."""
        stream_timeout = max(WATCH_SECONDS, 5 * self.timing.retry_period)
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    # A fresh LIST: its answer is the truth the watch events are ordered
                    # after.
                    asked = next(_tickets)
                    version, record = self.lease.list_version(self.timing.retry_period)
                    self.observe(_stamped(record, asked))
                self.connected = True
                self.connected_at = time.monotonic()
                for kind, obj in self.lease.watch(version, stream_timeout):
                    if self._stop.is_set():
                        return
                    seen = _resource_version(obj)
                    if seen:
                        version = seen
                    if kind in ("ADDED", "MODIFIED"):
                        self.observe(LeaseRecord.from_api(obj))
                    elif kind == "DELETED":
                        self.observe(None)
                    self.connected_at = time.monotonic()
            except (ApiUnavailable, Conflict, ApiException, Urllib3Error, OSError,
                    ValueError) as exc:
                self.connected = False
                version = None
                log.warning("lease.watch_error", error=f"{type(exc).__name__}: {exc}"[:200])
                self._stop.wait(self.timing.retry_period)


def _resource_version(obj: Any) -> str | None:
    metadata = getattr(obj, "metadata", None)
    if metadata is None and isinstance(obj, dict):
        return (obj.get("metadata") or {}).get("resourceVersion")
    return getattr(metadata, "resource_version", None)


def _micro_now() -> datetime:
    """Now, never on a whole second: the client serializes datetimes with isoformat(),
    which drops the fraction when it is 0, and the apiserver's MicroTime then refuses
    the write (it wants exactly six digits)."""
    now = datetime.now(UTC)
    return now if now.microsecond else now.replace(microsecond=1)


def _stamped(record: LeaseRecord | None, asked: int) -> LeaseRecord | None:
    return replace(record, asked=asked) if record is not None else None


def _rv_older(candidate: str, current: str) -> bool:
    """True if a record that may be late is older than the one we keep.

    resourceVersions are opaque by contract; etcd-backed ones are increasing integers
    within one etcd history (a restore or a fresh etcd starts them lower again), and
    only when both parse as integers do we use that, and only for records that may be
    late (Elector.observe).
    """
    try:
        return int(candidate) < int(current)
    except ValueError:
        return False
