"""The elector against the real apiserver: compare-and-swap, expiry, watch, release."""

from __future__ import annotations

import datetime
import shutil
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client, config

from bindha_rwx.config import Timing
from bindha_rwx.election import Elector, LeaseClient, LeaseRecord, LeaseWatcher
from harness.pods import wait_until
from tests.kube.conftest import start_plane

TIMING = Timing(lease_duration=2.0, renew_deadline=1.2, retry_period=0.3, stop_timeout=0.5)


class Candidate:
    """An elector and its watcher on threads, as the supervisor runs them."""

    def __init__(self, api: client.ApiClient, namespace: str, identity: str,
                 timing: Timing = TIMING, lease: LeaseClient | None = None) -> None:
        self.lease = lease or LeaseClient(api, namespace, "bind-master-leader")
        self.elector = Elector(self.lease, identity, timing)
        self.watcher = LeaseWatcher(self.lease, self.elector.observe, timing)
        self.threads = [threading.Thread(target=self.elector.run, daemon=True),
                        threading.Thread(target=self.watcher.run, daemon=True)]

    def start(self) -> Candidate:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self, release: bool) -> None:
        if release:
            self.elector.request_release()
            assert self.elector.released.wait(5)
        self.elector.stop()
        self.watcher.stop()
        self.threads[0].join(5)


@pytest.fixture
def candidates(api_client, namespace):
    made: list[Candidate] = []

    def make(identity: str, timing: Timing = TIMING,
             lease: LeaseClient | None = None) -> Candidate:
        candidate = Candidate(api_client, namespace, identity, timing, lease)
        made.append(candidate)
        return candidate

    yield make
    for candidate in made:
        candidate.stop(release=False)


def read(api_client, namespace):
    return client.CoordinationV1Api(api_client).read_namespaced_lease("bind-master-leader",
                                                                     namespace)


def test_racing_candidates_elect_exactly_one(candidates, api_client, namespace):
    racers = [candidates(f"pod-{i}") for i in range(5)]
    for racer in racers:
        racer.start()
    wait_until(lambda: any(r.elector.holds() for r in racers), 10, "a leader")
    for _ in range(40):  # 2 s of samples: never two holders
        leaders = [r for r in racers if r.elector.holds()]
        assert len(leaders) <= 1
        time.sleep(0.05)
    leaders = [r for r in racers if r.elector.holds()]
    assert len(leaders) == 1
    assert read(api_client, namespace).spec.holder_identity == leaders[0].elector.identity
    # Each follower reads, but only the leader writes: one renewal per retryPeriod.
    before = leaders[0].elector.writes
    time.sleep(1.0)
    assert leaders[0].elector.writes - before <= 1.0 / TIMING.retry_period + 1
    assert all(r.elector.writes <= 1 for r in racers if r is not leaders[0])


def test_release_is_taken_at_once_through_the_watch(candidates, api_client, namespace):
    first = candidates("pod-a").start()
    wait_until(first.elector.holds, 10, "pod-a leads")
    # A long retryPeriod: only the watch can make the standby react fast.
    slow = Timing(lease_duration=20, renew_deadline=8, retry_period=5, stop_timeout=2)
    second = candidates("pod-b", slow).start()
    wait_until(lambda: second.watcher.connected_at > 0, 10, "pod-b watching")
    time.sleep(0.3)
    assert not second.elector.holds()
    released = time.monotonic()
    first.stop(release=True)
    wait_until(second.elector.holds, 3, "pod-b takes the released Lease")
    took = time.monotonic() - released
    print(f"released Lease taken after {took * 1000:.0f} ms")
    assert took < slow.retry_period, f"took {took:.2f}s: the watch did not wake the standby"
    lease = read(api_client, namespace)
    assert lease.spec.holder_identity == "pod-b"
    assert lease.spec.lease_transitions == 1


def test_a_crashed_holder_is_replaced_after_the_lease_duration(candidates, api_client,
                                                               namespace):
    first = candidates("pod-a").start()
    wait_until(first.elector.holds, 10, "pod-a leads")
    second = candidates("pod-b").start()
    wait_until(lambda: second.watcher.connected_at > 0, 10, "pod-b watching")
    first.stop(release=False)  # a crash: no release
    stopped = time.monotonic()
    wait_until(second.elector.holds, 10, "pod-b takes the expired Lease")
    waited = time.monotonic() - stopped
    # Not before the Lease could have expired (judged from pod-b's own observation)...
    assert waited >= TIMING.lease_duration - TIMING.retry_period - 0.1, waited
    # ...and not much after (generous: an invariant, not a benchmark).
    assert waited <= TIMING.lease_duration + 2 * TIMING.retry_period + 1.0, waited


def test_holds_turns_false_at_the_renew_deadline_without_the_thread(api_client, namespace):
    """holds() is computed from the clock: a stuck elector thread cannot extend it."""
    now = [100.0]
    elector = Elector(LeaseClient(api_client, namespace, "bind-master-leader"), "pod-a",
                      TIMING, clock=lambda: now[0])
    elector._try_acquire()  # one turn by hand, no thread
    assert elector.holds()
    assert elector.valid_until() == pytest.approx(100.0 + TIMING.renew_deadline)
    now[0] += TIMING.renew_deadline - 0.01
    assert elector.holds()
    now[0] += 0.02
    assert not elector.holds()


def test_another_holder_is_not_expired_by_its_renew_time(api_client, namespace):
    """Expiry is judged from our own observation, never from the record's renewTime."""
    api = client.CoordinationV1Api(api_client)
    ancient = client.V1Lease(metadata=client.V1ObjectMeta(name="bind-master-leader"),
                             spec=client.V1LeaseSpec(
                                 holder_identity="pod-old", lease_duration_seconds=2,
                                 renew_time=datetime.datetime(2001, 1, 1, 0, 0, 0, 1,
                                                              tzinfo=datetime.UTC),
                                 acquire_time=datetime.datetime(2001, 1, 1, 0, 0, 0, 1,
                                                                tzinfo=datetime.UTC)))
    api.create_namespaced_lease(namespace, ancient)
    now = [0.0]
    elector = Elector(LeaseClient(api_client, namespace, "bind-master-leader"), "pod-new",
                      TIMING, clock=lambda: now[0])
    elector._try_acquire()
    assert not elector.holds()  # first sight: the record is fresh to us
    now[0] += 1.9
    elector._try_acquire()
    assert not elector.holds()
    now[0] += 0.2  # 2.1 s since we first saw this version: expired
    elector._try_acquire()
    assert elector.holds()
    lease = api.read_namespaced_lease("bind-master-leader", namespace)
    assert lease.spec.holder_identity == "pod-new"
    assert lease.spec.lease_transitions == 1


def test_epoch_annotation_and_foreign_annotations_survive_renewal(candidates, api_client,
                                                                  namespace):
    leader = candidates("pod-a").start()
    wait_until(leader.elector.holds, 10, "pod-a leads")
    api = client.CoordinationV1Api(api_client)
    lease = api.read_namespaced_lease("bind-master-leader", namespace)
    lease.metadata.annotations = {**(lease.metadata.annotations or {}), "ops/note": "hello"}
    api.replace_namespaced_lease("bind-master-leader", namespace, lease)  # forces a 409
    leader.elector.set_annotation("bindha.io/epoch", "7")
    wait_until(lambda: (read(api_client, namespace).metadata.annotations or {}).get(
        "bindha.io/epoch") == "7", 5, "epoch annotation published")
    annotations = read(api_client, namespace).metadata.annotations
    assert annotations["ops/note"] == "hello"
    assert leader.elector.holds()


class HeldCreates(LeaseClient):
    """A LeaseClient whose create() waits until ``go`` is set."""

    def __init__(self, api: client.ApiClient, namespace: str, go: threading.Event) -> None:
        super().__init__(api, namespace, "bind-master-leader")
        self.go = go

    def create(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        assert self.go.wait(10)
        return super().create(record, timeout)


def foreign_lease(holder: str) -> client.V1Lease:
    """A Lease another pod holds and will never renew (2 s, renewed just now)."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=1)
    return client.V1Lease(metadata=client.V1ObjectMeta(name="bind-master-leader"),
                          spec=client.V1LeaseSpec(holder_identity=holder,
                                                  lease_duration_seconds=2,
                                                  acquire_time=now, renew_time=now))


def test_a_lease_deleted_and_created_again_is_followed(candidates, api_client, namespace):
    """An operator deletes the Lease and creates it again with another holder while the
    pods watch: the leader knows at once that it lost, and a pod takes the new Lease once
    it expires as observed locally. (On one etcd the new Lease has a higher
    resourceVersion; the restore test below is the one where it goes back.)"""
    go = threading.Event()
    go.set()
    pods = [candidates(name, lease=HeldCreates(api_client, namespace, go))
            for name in ("pod-a", "pod-b")]
    for pod in pods:
        pod.start()
    wait_until(lambda: any(p.elector.holds() for p in pods), 10, "a leader")
    leader = next(p for p in pods if p.elector.holds())
    wait_until(lambda: all(p.watcher.connected_at > 0 for p in pods), 10, "both watching")
    go.clear()  # the pods' own creates wait: the operator's create below wins the race
    api = client.CoordinationV1Api(api_client)
    api.delete_namespaced_lease("bind-master-leader", namespace)
    wait_until(lambda: not leader.elector.holds(), 2, "the leader sees its Lease deleted")
    created = api.create_namespaced_lease(namespace, foreign_lease("pod-z"))
    created_at = time.monotonic()
    go.set()
    wait_until(lambda: any(p.elector.holds() for p in pods), 10,
               "a pod takes the new Lease once it expires")
    waited = time.monotonic() - created_at
    assert waited >= 2 - TIMING.retry_period - 0.1, waited  # not before it expired
    assert waited <= 2 + 2 * TIMING.retry_period + 1.0, waited
    lease = read(api_client, namespace)
    assert lease.metadata.uid == created.metadata.uid
    assert lease.spec.holder_identity in ("pod-a", "pod-b")
    assert lease.spec.lease_transitions == 1
    assert sum(p.elector.holds() for p in pods) == 1


@pytest.fixture
def private_plane(tmp_path: Path):
    """A control plane of this test's own, to stop and restore under the candidates."""
    plane = start_plane(tmp_path / "plane")
    yield plane
    plane.stop()


def test_candidates_follow_the_lease_back_after_an_etcd_restore(private_plane, tmp_path):
    """etcd restored from a snapshot: the Lease and its resourceVersion go back to what
    they were (a holder long dead, a resourceVersion lower than any the pods saw). The
    leader knows it lost, and a pod takes the Lease once it expires as observed locally.

    The snapshot is a copy of the stopped apiserver's etcd data dir, and the restore puts
    it back: what `etcdutl snapshot restore` without --bump-revision gives.
    """
    plane = private_plane
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    namespace = "restore"
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    coordination = client.CoordinationV1Api(api)
    snapped = coordination.create_namespaced_lease(namespace, foreign_lease("pod-gone"))
    etcd, snapshot = plane.workdir / "etcd", tmp_path / "snapshot"
    plane.stop()
    shutil.copytree(etcd, snapshot)
    plane.start()

    # A renewDeadline far longer than the apiserver's restart: the leader still leads
    # when it comes back, so what it sees then (not its own deadline) must end its lead.
    timing = Timing(lease_duration=20, renew_deadline=12, retry_period=0.5, stop_timeout=2)
    pods = [Candidate(api, namespace, name, timing) for name in ("pod-a", "pod-b")]
    try:
        for pod in pods:
            pod.start()
        wait_until(lambda: any(p.elector.holds() for p in pods), 15, "a leader")
        leader = next(p for p in pods if p.elector.holds())
        before = int(coordination.read_namespaced_lease("bind-master-leader", namespace)
                     .metadata.resource_version)

        down = time.monotonic()
        plane.stop()
        shutil.rmtree(etcd)
        shutil.copytree(snapshot, etcd)
        plane.start()
        restored = coordination.read_namespaced_lease("bind-master-leader", namespace)
        assert restored.spec.holder_identity == "pod-gone"  # the premise: it went back
        assert restored.metadata.resource_version == snapped.metadata.resource_version
        assert int(restored.metadata.resource_version) < before

        wait_until(lambda: not leader.elector.holds(), 2 * timing.retry_period + 2,
                   "the old leader sees that pod-gone holds the restored Lease")
        assert time.monotonic() - down < timing.renew_deadline - 2, "lost by its deadline"
        wait_until(lambda: any(p.elector.holds() for p in pods), 2 + 4 * timing.retry_period
                   + 5, "a pod takes the restored Lease once it expires")
        # Not before it could have expired: the pods may see it before start() returns.
        assert time.monotonic() - down >= 2, time.monotonic() - down
        lease = coordination.read_namespaced_lease("bind-master-leader", namespace)
        holders = [p.elector.identity for p in pods if p.elector.holds()]
        assert holders == [lease.spec.holder_identity], holders
        assert lease.spec.lease_transitions == 1
    finally:
        for pod in pods:
            pod.stop(release=False)
