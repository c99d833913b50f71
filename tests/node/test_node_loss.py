"""A lost node on the 2-node lab: the standby takes the Lease, the fence keeps it out
while the lost node's frozen process holds the lock, and what Kubernetes does meanwhile.

The leader's node is lost as a hung, partitioned machine is: its kubelet, containerd,
kube-proxy and shims SIGSTOPped, every pod process frozen in the v1 freezer, its veth
off the lab bridge (``KubeNode.freeze``, ``KubeNode.cut``). The share is a local
directory with ``fencing.storage: none`` (the overlay's default): nothing but the death
of the frozen process frees its OFD lock. The test records what the node lifecycle
controller does and when, takes the steps of docs/runbooks/stale-lock.md (first the
out-of-service taint, Kubernetes' non-graceful node shutdown, which force-deletes the
pod but cannot free the lock; then the power-off, which does), and proves that no two
named ever run, the epoch never goes back and no acknowledged update is lost.

Long (a few minutes): marker node_e2e, outside the default run (scripts/test-node).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from bindha_rwx.fencing import SharedVolume
from harness.kubenode import CGROUP_CLEANED, KubeNode
from harness.polling import samples, wait_until
from tests.node.conftest import NodeLab
from tests.node.productlab import (
    NS,
    SHARE,
    Lab,
    UpdateClient,
    bring_up,
    masters_ready,
    names_on,
    product_lab,
    send_update,
    serves,
)

pytestmark = [pytest.mark.node, pytest.mark.node_e2e]
LEASE = "bind-master-leader"
OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
                  "effect": "NoExecute"}


@pytest.fixture(scope="module")
def lab(node_lab: NodeLab) -> Iterator[Lab]:
    # Node index 3: test_node_lab's module claimed index 2 for the whole run.
    yield from product_lab(node_lab, index=3)


@pytest.fixture(scope="module")
def running(lab: Lab) -> Lab:
    return bring_up(lab)


def ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def condition(obj: Any, kind: str) -> Any | None:
    return next((c for c in obj.status.conditions or [] if c.type == kind), None)


def ofd_locked(path: Path) -> bool:
    """An open-file-description lock on ``path`` in /proc/locks (its pid shows as -1)."""
    st = path.stat()
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "OFDLCK" and fields[5] == wanted:
            return True
    return False


def _frozen(freezer_cgroup: str) -> bool:
    """Whether a v1 freezer cgroup or one of its parents is frozen."""
    base = Path("/sys/fs/cgroup/freezer")
    path = base / freezer_cgroup.lstrip("/")
    try:
        return (path / "freezer.state").read_text().strip() != "THAWED" or (
            path / "freezer.parent_freezing").read_text().strip() == "1"
    except OSError:
        return False


def named_processes(uids: set[str]) -> dict[int, tuple[str, bool]]:
    """pid -> (pod UID, frozen) of every `named` in those pods' cgroups (the kubelet's
    cgroupfs driver names a pod's cgroup pod<UID>)."""
    found: dict[int, tuple[str, bool]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "named":
                continue
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        uid = next((u for u in uids if f"pod{u}" in cgroups), None)
        if uid is None:
            continue
        freezer = next((line.split(":", 2)[2] for line in cgroups.splitlines()
                        if line.split(":")[1] == "freezer"), "")
        found[int(entry.name)] = (uid, _frozen(freezer))
    return found


class Invariants:
    """Every 50 ms from /proc and the share, on a thread of its own: at most one master
    pod with a named that is not frozen (never two writing), the epoch never lower."""

    def __init__(self, uids: set[str]) -> None:
        self.uids = set(uids)
        self.volume = SharedVolume(SHARE)
        self.violations: list[str] = []
        self.epochs: list[int] = []
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                active = {uid for uid, frozen in named_processes(self.uids).values()
                          if not frozen}
                if len(active) > 1:
                    self.violations.append(f"named running in two pods: {sorted(active)}")
                epoch = self.volume.read_epoch()
                if self.epochs and epoch < self.epochs[-1]:
                    self.violations.append(f"epoch went back {self.epochs[-1]} -> {epoch}")
                if not self.epochs or epoch != self.epochs[-1]:
                    self.epochs.append(epoch)
                self.samples += 1
            except Exception as exc:  # reported: a check that cannot run is a failure
                self.violations.append(f"check failed: {exc!r}")
            self.stop.wait(0.05)

    def __enter__(self) -> Invariants:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


@contextlib.contextmanager
def no_frozen_node_left(node: KubeNode, updates: UpdateClient) -> Iterator[None]:
    """A failed run powers the lost node off and stops the writer: the lab's teardown
    could not delete the namespace while the frozen kubelet holds its pods."""
    try:
        yield
    finally:
        updates.stop.set()
        if node.frozen:
            node.power_off()


def since(t0: float) -> float:
    return round(time.monotonic() - t0, 1)


def api_age(stamp: datetime | None, wall0: datetime) -> str:
    """A timestamp the API wrote (seconds resolution), as seconds after the freeze."""
    return "-" if stamp is None else f"{(stamp - wall0).total_seconds():.0f}s"


def patch_node(core: client.CoreV1Api, name: str, unschedulable: bool) -> None:
    core.patch_node(name, {"spec": {"unschedulable": unschedulable}})


def settled(lab: Lab) -> bool:
    """Two master pods, none terminating, both Ready, one of them labelled leader."""
    pods = lab.pods("bind-master")
    return (len(pods) == 2 and all(p.metadata.deletion_timestamp is None and ready(p)
                                   for p in pods) and masters_ready(lab))


def arrange(lab: Lab, lost: KubeNode, kept: KubeNode) -> None:
    """The leader on the node to lose and the secondary on the node kept: the session's
    node (kept) serves later tests, and a secondary on the lost node could follow no one.
    A graceful handover (delete the leader, proven in test_node_lab) and, for the
    secondary, cordon + delete + uncordon."""
    core = lab.core
    wait_until(lambda: settled(lab), 90, "both masters Ready, a leader", interval=0.2)
    leader = lab.leader()
    if leader.spec.node_name != lost.name:
        core.delete_namespaced_pod(leader.metadata.name, NS)
        wait_until(lambda: (p := lab.leader()) is not None
                   and p.metadata.uid != leader.metadata.uid, 60, "a new leader",
                   interval=0.1)
        wait_until(lambda: settled(lab), 90, "both masters Ready again", interval=0.2)
    secondary = lab.pods("bind-secondary")[0]
    if secondary.spec.node_name != kept.name:
        patch_node(core, lost.name, True)
        try:
            core.delete_namespaced_pod(secondary.metadata.name, NS)
            wait_until(lambda: [p for p in lab.pods("bind-secondary")
                                if p.metadata.uid != secondary.metadata.uid
                                and p.spec.node_name == kept.name and ready(p)], 120,
                       f"the secondary Ready on {kept.name}", interval=0.2)
        finally:
            patch_node(core, lost.name, False)

    def arranged() -> bool:
        leader = lab.leader() if settled(lab) else None
        return (leader is not None and leader.spec.node_name == lost.name
                and all(ready(p) and p.spec.node_name == kept.name
                        for p in lab.pods("bind-secondary")))
    wait_until(arranged, 90, f"the leader on {lost.name}, every pod Ready", interval=0.2)


@pytest.mark.timeout(900)
def test_a_lost_leader_node_blocks_the_standby_on_the_fence_until_it_is_powered_off(
        running: Lab) -> None:
    lab = running
    core = lab.core
    coordination = client.CoordinationV1Api(lab.node_lab.api)
    apps = client.AppsV1Api(lab.node_lab.api)
    kept = lab.node_lab.node
    lost = next(n for n in lab.nodes.values() if n is not kept)
    arrange(lab, lost, kept)
    leader = lab.leader()
    standby = next(p for p in lab.pods("bind-master")
                   if p.metadata.uid != leader.metadata.uid)
    secondary = lab.pods("bind-secondary")[0]
    assert (leader.spec.node_name, standby.spec.node_name) == (lost.name, kept.name)
    standby_identity = f"{standby.metadata.name}_{standby.metadata.uid}"
    volume = SharedVolume(SHARE)
    epoch0 = volume.read_epoch()
    owner0 = volume.read_owner()
    lock = volume.lock_path()
    assert owner0 is not None and owner0.pod == leader.metadata.name, owner0
    assert ofd_locked(lock), f"the leader holds no OFD lock on {lock}"
    uids = {leader.metadata.uid, standby.metadata.uid}
    named0 = named_processes(uids)
    assert [u for u, frozen in named0.values() if not frozen] == [leader.metadata.uid], \
        f"before the loss exactly the leader runs named: {named0}"

    def blocked_events() -> int:
        return sum(1 for e in core.list_namespaced_event(
            NS, field_selector=f"involvedObject.name={standby.metadata.name}").items
            if e.reason == "BlockedOnFence")
    blocked_before = blocked_events()
    socket.create_connection((lost.ip, 10250), timeout=5).close()  # reachable until cut
    updates = UpdateClient(lab, "loss")
    updates.start()
    wait_until(lambda: len(updates.acked) >= 20, 30,
               "20 updates acknowledged before the loss", interval=0.1)
    t: dict[str, float] = {}
    facts: dict[str, Any] = {}
    with no_frozen_node_left(lost, updates), Invariants(uids) as invariants:
        # -- 2. the node is lost ---------------------------------------------------
        wall0 = datetime.now(UTC).replace(microsecond=0)
        t0 = time.monotonic()
        lost.freeze()
        lost.cut()
        acked_at_loss = len(updates.acked)
        t["frozen and cut"] = since(t0)
        with pytest.raises(OSError):  # its kubelet's port (the kernel would still answer)
            socket.create_connection((lost.ip, 10250), timeout=1).close()

        # -- 3. the standby takes the Lease and is blocked on the fence -------------
        def standby_holds() -> bool:
            lease = coordination.read_namespaced_lease(LEASE, NS)
            return lease.spec.holder_identity == standby_identity
        try:
            wait_until(standby_holds, 30, "the standby holds the Lease", interval=0.1)
        except AssertionError as exc:
            holder = coordination.read_namespaced_lease(LEASE, NS).spec.holder_identity
            raise AssertionError(f"{exc}: held by {holder}, not {standby_identity}") from None
        t["standby holds the Lease"] = since(t0)
        wait_until(lambda: blocked_events() > blocked_before, 30,
                   "the standby's BlockedOnFence event", interval=0.2)
        t["standby BlockedOnFence"] = since(t0)

        def node_unknown() -> Any | None:
            node = core.read_node(lost.name)
            ready_condition = condition(node, "Ready")
            return node if ready_condition is not None and ready_condition.status != "True" \
                else None
        node = wait_until(node_unknown, 90, f"{lost.name} not Ready", interval=0.2)
        t["node Ready -> Unknown"] = since(t0)
        ready_condition = condition(node, "Ready")
        facts["node Ready"] = (ready_condition.status, ready_condition.reason,
                               ready_condition.message)

        def unreachable_taints() -> list[Any] | None:
            taints = core.read_node(lost.name).spec.taints or []
            found = [x for x in taints if x.key == "node.kubernetes.io/unreachable"]
            return found if {x.effect for x in found} == {"NoSchedule", "NoExecute"} \
                else None
        taints = wait_until(unreachable_taints, 30, "the unreachable taints", interval=0.2)
        t["unreachable taints seen"] = since(t0)
        facts["taints"] = [(x.effect, api_age(x.time_added, wall0)) for x in taints]

        def old_not_ready() -> Any | None:
            pod = core.read_namespaced_pod(leader.metadata.name, NS)
            return pod if not ready(pod) else None
        old = wait_until(old_not_ready, 30, f"{leader.metadata.name} not Ready",
                         interval=0.2)
        t["old leader pod Ready=False"] = since(t0)
        pod_ready = condition(old, "Ready")
        facts["old pod Ready"] = (pod_ready.status, pod_ready.reason,
                                  api_age(pod_ready.last_transition_time, wall0))
        facts["old pod tolerations"] = [(x.key, x.effect, x.toleration_seconds)
                                        for x in old.spec.tolerations or []
                                        if x.toleration_seconds is not None]
        wait_until(lambda: not [a for a, r in lab.slice_endpoints("bind-master").values()
                                if r], 30, "no ready endpoint in bind-master's slice",
                   interval=0.2)
        t["leader slice empty"] = since(t0)
        # Kubernetes keeps the pod: the pod object is the same, not being deleted, and
        # the StatefulSet makes no other (its name is taken).
        assert old.metadata.uid == leader.metadata.uid
        assert old.metadata.deletion_timestamp is None
        assert [p.metadata.uid for p in lab.pods("bind-master")
                if p.metadata.name == leader.metadata.name] == [leader.metadata.uid]
        statefulset = apps.read_namespaced_stateful_set("bind-master", NS).status
        facts["StatefulSet while lost"] = (statefulset.replicas, statefulset.ready_replicas)
        assert statefulset.replicas == 2
        # The fence: the frozen process still holds the lock; nothing moved.
        assert ofd_locked(lock)
        assert volume.read_epoch() == epoch0
        assert volume.read_owner().pod == leader.metadata.name
        assert standby_holds()
        assert lab.leader() is not None and lab.leader().metadata.uid == leader.metadata.uid

        # -- 4. the operator: out-of-service first (too early: the node is not off) ----
        core.patch_node(lost.name, {"spec": {"taints": [
            *[{"key": x.key, "value": x.value, "effect": x.effect}
              for x in core.read_node(lost.name).spec.taints or []], OUT_OF_SERVICE]}})
        t_taint = time.monotonic()
        t["out-of-service taint"] = since(t0)

        def old_gone() -> bool:
            return not [p for p in lab.pods("bind-master")
                        if p.metadata.uid == leader.metadata.uid]
        wait_until(old_gone, 90, f"{leader.metadata.name} deleted by Kubernetes",
                   interval=0.2)
        t["old pod object gone (force-deleted)"] = since(t0)
        facts["taint to pod gone"] = round(time.monotonic() - t_taint, 1)

        def replacement() -> Any | None:
            pods = [p for p in lab.pods("bind-master")
                    if p.metadata.name == leader.metadata.name]
            return pods[0] if pods and condition(pods[0], "PodScheduled") is not None \
                else None
        new_pod = wait_until(replacement, 30, "the StatefulSet's replacement pod",
                             interval=0.2)
        scheduled = condition(new_pod, "PodScheduled")
        facts["replacement"] = (new_pod.spec.node_name, scheduled.status, scheduled.reason,
                                scheduled.message)
        assert new_pod.spec.node_name is None and scheduled.status == "False", facts
        invariants.uids.add(new_pod.metadata.uid)
        # The pod object is gone; the frozen process is not: the standby stays blocked.
        # Watched for 5 retryPeriods (1 s each), every check at every step.
        for _ in samples(5.0, 0.25):
            assert ofd_locked(lock)
            assert volume.read_epoch() == epoch0
            assert volume.read_owner().pod == leader.metadata.name
            assert lab.leader() is None
            assert standby_holds()
        t["still blocked after the pod's deletion (5 s watched)"] = since(t0)
        named_while = named_processes(invariants.uids)
        assert [u for u, frozen in named_while.values() if not frozen] == [], named_while
        assert [u for u, frozen in named_while.values() if frozen] == [leader.metadata.uid]

        # -- the power-off: the lock goes with the process ------------------------
        t_off = time.monotonic()
        lost.power_off()
        t["powered off"] = since(t0)

        def new_leader() -> Any | None:
            pod = lab.leader()
            return pod if pod is not None and pod.metadata.uid == standby.metadata.uid \
                and ready(pod) else None
        leads = wait_until(new_leader, 60, "the standby leads", interval=0.1)
        t["standby leads (labelled, Ready)"] = since(t0)
        facts["power-off to leader"] = round(time.monotonic() - t_off, 1)
        wait_until(lambda: len(updates.acked) > acked_at_loss, 30,
                   "the first update acknowledged after the loss", interval=0.05)
        t["first update acknowledged"] = since(t0)
        acked, failures = updates.finish(leads)
        epoch1 = volume.read_epoch()
        owner1 = volume.read_owner()
        assert epoch1 == epoch0 + 1, (epoch0, epoch1)
        assert owner1 is not None and owner1.pod == standby.metadata.name
        assert owner1.node == kept.name
        lost_updates = [n for n in acked if n not in names_on(lab, leads.status.pod_ip)]
        name = f"after-loss-{int(time.time())}.example.com."
        assert send_update(lab, leads.status.pod_ip, name, timeout=3)
        t_sent = time.monotonic()
        wait_until(lambda: serves(secondary.status.pod_ip, name), 60,
                   f"the secondary serves {name} from the new leader", interval=0.2)
        facts["update to secondary"] = round(time.monotonic() - t_sent, 2)
    events = [e for e in core.list_namespaced_event(NS).items + core.list_namespaced_event(
        "default").items if e.involved_object.name in (lost.name, leader.metadata.name)
        and (e.last_timestamp or e.event_time or wall0) >= wall0]
    print(f"\nnode {lost.name} lost (leader {leader.metadata.name}, standby "
          f"{standby.metadata.name} on {kept.name}), seconds after the freeze:")
    for what, when in t.items():
        print(f"  {when:6.1f}  {what}")
    for what, value in facts.items():
        print(f"  {what}: {value}")
    for e in sorted(events, key=lambda e: e.last_timestamp or e.event_time or wall0):
        print(f"  event {api_age(e.last_timestamp or e.event_time, wall0)}: "
              f"{e.involved_object.kind} {e.involved_object.name} {e.reason} "
              f"({(e.source.component if e.source else None) or e.reporting_component}): "
              f"{e.message}")
    print(f"  updates: {len(acked)} acknowledged ({acked_at_loss} before the loss), "
          f"{failures} unanswered, {len(lost_updates)} lost; epochs {invariants.epochs}; "
          f"{invariants.samples} invariant samples")
    assert invariants.violations == [], invariants.violations[:5]
    assert invariants.samples > 100
    assert invariants.epochs == [epoch0, epoch0 + 1]
    assert lost_updates == []
    # Generous bounds (a loaded 2-core machine); the figures are in docs/testplane.md.
    assert t["standby holds the Lease"] < 20
    assert facts["power-off to leader"] < 15

    # -- 5. the lost node is removed ------------------------------------------------
    workdir, netns = lost.workdir, lost.netns
    assert lost.stop() == []
    core.delete_node(lost.name)

    def node_gone() -> bool:
        try:
            core.read_node(lost.name)
        except client.ApiException as exc:
            return exc.status == 404
        return False
    wait_until(node_gone, 30, f"node {lost.name} deleted", interval=0.2)
    assert not workdir.exists()
    assert not [h for h in CGROUP_CLEANED
                if Path(f"/sys/fs/cgroup/{h}{lost.cgroup_root}").exists()]
    assert str(workdir) not in Path("/proc/mounts").read_text()
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                       text=True, timeout=10, check=True).stdout
    assert lost.pod_subnet not in subprocess.run(["ip", "route"], capture_output=True,
                                                 text=True, timeout=10, check=True).stdout
    assert not lost.daemons()
    assert subprocess.run(["ip", "link", "show", lost.net.link(lost.ip)], capture_output=True,
                          timeout=10, check=False).returncode != 0, "the node's veth is left"
    # One master left: the replacement stays Pending (required anti-affinity).
    pending = [p for p in lab.pods("bind-master") if p.metadata.name == leader.metadata.name]
    with contextlib.suppress(IndexError):
        print(f"  replacement after the node's removal: {pending[0].status.phase}")
