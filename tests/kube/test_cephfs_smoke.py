"""The master pods on a real CephFS (issue 12 item 2, the smoke part of the default run).

Each master pod mounts the lab's CephFS with a ceph-fuse of its own (its own client key
with the pod capabilities, its own MDS session), as each pod of a StatefulSet would; the
test reads the fencing metadata through one more client of its own. Election, a graceful
handover under updates (0 acknowledged updates lost), a crash takeover, and the journal
check all run on CephFS here; the same rows on tmpfs are in test_master.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator

import psutil
import pytest

from harness.cephlab import CephLab, CephMount
from harness.pods import MasterLab, MasterPod, samples, wait_until
from harness.writer import UpdateWriter, served_names

pytestmark = [pytest.mark.cephfs, pytest.mark.kube, pytest.mark.named, pytest.mark.root]

ZONE = "ha.example."
T = {"lease": 3.0, "deadline": 1.6, "retry": 0.4, "stop": 0.8}


class OnCephFS:
    """The lab's master pods, each on its own ceph-fuse mount of one CephFS directory."""

    def __init__(self, lab: MasterLab, ceph: CephLab) -> None:
        self.lab = lab
        self.ceph = ceph
        self.mounts: list[CephMount] = []
        self.by_pod: dict[str, CephMount] = {}
        # The test's own client, where lab.shared (and so lab.volume) is: it starts empty.
        self.mounts.append(ceph.mount(f"{lab.namespace}-observer", lab.shared))
        for entry in lab.shared.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def add(self) -> MasterPod:
        name = f"bind-master-{len(self.lab.masters)}"
        mount = self.ceph.mount(f"{self.lab.namespace}-{name}", self.lab.root / f"{name}.dyn")
        self.mounts.append(mount)
        self.by_pod[name] = mount
        return self.lab.add_pod(name, dyn_dir=mount.mountpoint)

    def start(self, count: int) -> list[MasterPod]:
        pods = [self.add() for _ in range(count)]
        for pod in pods:
            pod.start()
        return pods

    def storage_fencing(self, keyring: str, ceph_id: str) -> None:
        """Every pod's config gets ``fencing.storage: ceph`` with this key (the default
        MDS target, rank 0)."""
        fencing = {"storage": "ceph", "ceph": {"conf": str(self.ceph.conf), "keyring": keyring,
                                               "id": ceph_id, "timeout": "5s"}}
        self.lab.rewrite_configs(lambda data: data.update(fencing=fencing))

    def start_fenced_pair(self, keyring: str, ceph_id: str) -> tuple[MasterPod, MasterPod]:
        """Two pods with ``fencing.storage: ceph``: (leader, standby) once one leads."""
        first, second = self.add(), self.add()
        self.storage_fencing(keyring, ceph_id)
        first.start()
        second.start()
        leader = self.lab.leader(timeout=30)
        return leader, second if leader is first else first

    def close(self) -> None:
        for mount in self.mounts:  # a frozen client must run again to be unmounted
            with contextlib.suppress(ProcessLookupError):
                os.kill(mount.pid, signal.SIGCONT)
        self.lab.stop()
        for mount in reversed(self.mounts):
            mount.unmount()


@pytest.fixture
def on_cephfs(lab: MasterLab, ceph_lab: CephLab) -> Iterator[OnCephFS]:
    made = OnCephFS(lab, ceph_lab)
    try:
        yield made
    finally:
        made.close()


def test_election_and_a_graceful_handover_lose_nothing_on_cephfs(on_cephfs: OnCephFS):
    lab = on_cephfs.lab
    on_cephfs.start(2)
    leader = lab.leader(timeout=30)
    owner = lab.volume.read_owner()
    assert owner is not None and owner.pod == leader.name  # seen by another client
    key = leader.config.keys["update-key"]
    writer = UpdateWriter(ZONE, [p.ip for p in lab.pods], key).start()
    wait_until(lambda: len(writer.acks) >= 30, 15, "updates flowing")
    leader.signal(signal.SIGTERM)
    assert leader.wait_exit(timeout=T["stop"] + 3 * T["retry"] + 10) == 0
    new = lab.leader(timeout=15)
    assert new is not leader
    wait_until(lambda: any(a.server == new.ip for a in writer.acks), 15,
               "the new leader acknowledges updates")
    writer.stop()
    served = served_names(new.ip, ZONE, new.config.keys["transfer-key"])
    lost = [a.name for a in writer.acks if a.name not in served]
    assert lost == [], f"acknowledged updates lost on CephFS: {lost[:10]}"
    assert lab.volume.read_owner().pod == new.name


def test_a_crash_takeover_on_cephfs_frees_the_dead_holders_lock(on_cephfs: OnCephFS):
    """SIGKILL of the supervisor: named dies with it (parent-death signal), the MDS
    frees the client's lock as the processes' descriptors close, and the standby takes
    over once the Lease expires."""
    lab = on_cephfs.lab
    on_cephfs.start(2)
    leader = lab.leader(timeout=30)
    named = leader.named_processes()[0]
    leader.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    named.wait(timeout=5)
    new = lab.leader(timeout=T["lease"] + 15)
    assert new is not leader
    took = time.monotonic() - killed_at
    assert took >= T["lease"] - T["retry"], took  # nobody released the Lease
    assert lab.volume.read_owner().pod == new.name


def test_a_cut_journal_on_cephfs_keeps_named_stopped(on_cephfs: OnCephFS):
    """The journal check reads the journals through the pod's ceph-fuse: a journal
    whose tail was cut is refused (journal-damaged) before named could replay it."""
    lab = on_cephfs.lab
    (first,) = on_cephfs.start(1)
    assert lab.leader(timeout=30) is first
    key = first.config.keys["update-key"]
    writer = UpdateWriter(ZONE, [first.ip], key).start()
    wait_until(lambda: len(writer.acks) >= 10, 15, "a journal with transactions")
    writer.stop()
    first.signal(signal.SIGKILL)
    first.wait_exit(timeout=10)
    journal = lab.shared / "ha.example.zone.jnl"
    data = journal.read_bytes()
    journal.write_bytes(data[:-7])  # a transaction's tail is gone
    second = on_cephfs.add()
    second.start()
    wait_until(lambda: second.has_event("journal.damaged"), T["lease"] + 20,
               "the next holder refuses the cut journal")
    assert second.named_processes() == []
    assert journal.stat().st_size == len(data) - 7  # nothing was rewritten


def lock_open_ahead(on_cephfs: OnCephFS, pod: MasterPod) -> bool:
    """Has ``pod``'s supervisor opened the lock file ahead (StorageLock.open)? Until it
    has, a freeze of the holder's client makes that open wait for the MDS to end the
    frozen session (30 s here): a standby started a moment before the freeze (seen
    under load) would report nothing in time."""
    lock = str(on_cephfs.by_pod[pod.name].mountpoint / ".bindha" / "lock")
    try:
        return any(f.path == lock for f in psutil.Process(pod.pid).open_files())
    except psutil.Error:
        return False


def _lose_the_leaders_node(on_cephfs: OnCephFS, keyring: str, ceph_id: str
                           ) -> tuple[MasterPod, MasterPod, int]:
    """Two pods with fencing.storage: ceph; the leader's supervisor, named and ceph-fuse
    frozen; returns (old leader, standby, the old client's number) once the standby is
    blocked on the fence."""
    lab = on_cephfs.lab
    leader, standby = on_cephfs.start_fenced_pair(keyring, ceph_id)
    client = on_cephfs.by_pod[leader.name]
    number = client.client_id()
    owner = lab.volume.read_owner()
    assert owner is not None and owner.storage_client == f"client{number}"
    named = leader.named_processes()[0]
    wait_until(lambda: lock_open_ahead(on_cephfs, standby), 20, "the standby's lock file open")
    leader.signal(signal.SIGSTOP)
    named.suspend()
    os.kill(client.pid, signal.SIGSTOP)  # the whole node stands still
    wait_until(lambda: standby.has_event("fence.blocked"), T["lease"] + 15,
               "the standby holds the Lease, blocked on the frozen client's lock")
    return leader, standby, number


def test_a_storage_fence_whose_key_may_not_evict_leaves_the_pod_blocked(
        on_cephfs: OnCephFS, ceph_lab: CephLab):
    keyring = ceph_lab.add_client(f"{on_cephfs.lab.namespace}-weak")  # pod caps only
    leader, standby, _ = _lose_the_leaders_node(on_cephfs, str(keyring),
                                                f"{on_cephfs.lab.namespace}-weak")
    on_cephfs.lab.core.delete_namespaced_pod(leader.name, on_cephfs.lab.namespace,
                                             grace_period_seconds=0)
    wait_until(lambda: standby.has_event("fence.storage_failed"), 20,
               "the refused eviction is reported")
    failed = next(e for e in standby.events() if e.get("event") == "fence.storage_failed")
    assert "lacks mds 'allow *'" in failed["why"] and str(keyring) in failed["why"], failed
    # The start check found it first, on a job thread: said, and nothing else changed.
    unavailable = [e for e in standby.events() if e.get("event") == "fence.storage_unavailable"]
    assert unavailable and "lacks mds 'allow *'" in unavailable[0]["why"], unavailable
    assert leader.alive() and standby.alive()
    for _ in samples(2 * T["lease"], 0.1):
        assert standby.named_processes() == [], "named although the eviction failed"


def test_storage_fencing_evicts_a_lost_nodes_client_once_its_pod_is_gone(
        on_cephfs: OnCephFS, ceph_lab: CephLab):
    """A node is lost: the leader's supervisor, named and ceph-fuse all frozen. The
    standby gets the Lease and is blocked on the lock the frozen client keeps (the MDS
    would end that session only after session_autoclose, 30 s here, 300 s by default).
    With fencing.storage: ceph it waits for proof (the pod still exists: no eviction),
    then, once the pod is deleted, evicts the old client at the MDS and leads at once."""
    lab = on_cephfs.lab
    leader, standby, client_number = _lose_the_leaders_node(
        on_cephfs, str(ceph_lab.keyring("client.fencer")), "fencer")
    for _ in samples(2 * T["lease"], 0.1):
        assert standby.named_processes() == [], "named under another client's lock"
    assert standby.has_event("fence.storage_waiting"), "no proof yet: it must wait"
    assert not standby.has_event("fence.storage_evicted")
    lab.core.delete_namespaced_pod(leader.name, lab.namespace, grace_period_seconds=0)
    deleted_at = time.monotonic()
    wait_until(lambda: standby.has_event("named.serving"), 20, "the standby leads")
    took = time.monotonic() - deleted_at
    assert took < ceph_lab.settings.session_autoclose / 2, f"{took:.1f}s: not the fence"
    # The lock frees at the eviction; the job's check of the session list and its audit
    # line may finish just after named started (seen under load): wait for its report.
    wait_until(lambda: standby.has_event("fence.storage_evicted"), 15, "the eviction's report")
    assert client_number not in [session.get("id") for session in ceph_lab.sessions()]
    audit = json.loads((lab.shared / ".bindha" / "fence.log").read_text().splitlines()[-1])
    assert (audit["action"], audit["via"], audit["pod"]) == ("storage-evict", "automatic",
                                                             leader.name)
    assert audit["outcomes"] == {f"client.{client_number}": "evicted"}, audit
    assert "owner record" in audit["basis"] and audit["proof"] == "its pod is gone"
    print(f"node loss with storage fencing: serving {took:.2f}s after the pod was deleted")


def test_a_pod_started_while_the_holders_client_is_frozen_says_it_waits_for_the_volume(
        on_cephfs: OnCephFS, ceph_lab: CephLab):
    """A lone leader's node is lost (supervisor, named and ceph-fuse frozen) and the
    other master pod starts only now (its node rebooted meanwhile). Its first look at
    the volume waits for the frozen client's capabilities, which nobody shares, until
    the MDS ends that session (session_timeout). It says so while it waits, with its
    heartbeat fresh, so the kubelet does not restart it into the same wait; then it
    starts, and the storage fence evicts the lost client once the pod is gone."""
    lab = on_cephfs.lab
    leader = on_cephfs.add()
    on_cephfs.storage_fencing(str(ceph_lab.keyring("client.fencer")), "fencer")
    leader.start()
    assert lab.leader(timeout=30) is leader
    writer = UpdateWriter(ZONE, [leader.ip], leader.config.keys["update-key"]).start()
    wait_until(lambda: len(writer.acks) >= 5, 15, "updates flowing")
    writer.stop()
    named = leader.named_processes()[0]
    leader.signal(signal.SIGSTOP)
    named.suspend()
    os.kill(on_cephfs.by_pod[leader.name].pid, signal.SIGSTOP)  # the node stands still
    late = on_cephfs.add()
    on_cephfs.storage_fencing(str(ceph_lab.keyring("client.fencer")), "fencer")
    late.start()
    started = time.monotonic()
    wait_until(lambda: late.has_event("supervisor.volume_waiting"), 3 * T["lease"],
               "the late pod says it waits for the volume")
    waiting = next(e for e in late.events() if e.get("event") == "supervisor.volume_waiting")
    assert waiting["dyn_dir"] == str(on_cephfs.by_pod[late.name].mountpoint), waiting
    assert not late.has_event("supervisor.start")
    live = late.probe("live")
    assert live.returncode == 0, f"the waiting pod fails its liveness probe: {live.stdout}"
    lab.core.delete_namespaced_pod(leader.name, lab.namespace, grace_period_seconds=0)
    bound = ceph_lab.settings.session_timeout + T["lease"] + 20
    wait_until(lambda: late.has_event("named.serving"), bound, "the late pod leads")
    assert late.has_event("supervisor.start")
    print(f"a pod started during a node loss: serving {time.monotonic() - started:.1f}s "
          f"after its start (session_timeout {ceph_lab.settings.session_timeout}s)")
    served = served_names(late.ip, ZONE, late.config.keys["transfer-key"])
    lost = [a.name for a in writer.acks if a.name not in served]
    assert lost == [], f"acknowledged updates lost: {lost}"


def test_a_leader_whose_ceph_fuse_died_releases_its_own_client(on_cephfs: OnCephFS,
                                                              ceph_lab: CephLab):
    """The leader's ceph-fuse dies (ENOTCONN on its mount). The MDS would keep the dead
    client's session, and its lock, until session_autoclose, and the standby has no
    proof (the pod lives). The old leader has: its mount answers ENOTCONN and its named
    is killed, so it evicts its own client, and the standby leads at once."""
    leader, standby = on_cephfs.start_fenced_pair(str(ceph_lab.keyring("client.fencer")),
                                                  "fencer")
    mount = on_cephfs.by_pod[leader.name]
    number = mount.client_id()
    writer = UpdateWriter(ZONE, [leader.ip, standby.ip], leader.config.keys["update-key"]).start()
    wait_until(lambda: len(writer.acks) >= 10, 15, "updates flowing")
    mount.kill()
    killed_at = time.monotonic()
    wait_until(lambda: standby.has_event("named.serving"), ceph_lab.settings.session_autoclose,
               "the standby leads")
    took = time.monotonic() - killed_at
    assert took < ceph_lab.settings.session_autoclose / 2, f"{took:.1f}s: the MDS, not us"
    wait_until(lambda: leader.has_event("fence.own_client_released"), 10, "the release")
    released = next(e for e in leader.events() if e.get("event") == "fence.own_client_released")
    assert (released["client"], released["outcome"]) == (f"client.{number}", "evicted")
    assert "ENOTCONN" in released["why"], released
    assert number not in [s.get("id") for s in ceph_lab.sessions()]
    assert leader.named_processes() == [] and leader.alive()
    wait_until(lambda: any(a.server == standby.ip for a in writer.acks), 15,
               "the new leader acknowledges")
    writer.stop()
    served = served_names(standby.ip, ZONE, standby.config.keys["transfer-key"])
    lost = [a.name for a in writer.acks if a.name not in served]
    assert lost == [], f"acknowledged updates lost: {lost[:10]}"
    print(f"ceph-fuse crash with the release: serving {took:.2f}s after the kill")
