"""The storage fence by hand (`fence evict`) and the holder's client found by its node
(issue 12, items 3 and 6), on the real Ceph lab with master pods.

With ceph-csi a pod cannot see its CephFS client: the client is the node's (a kernel
client, or a ceph-fuse of the CSI node plugin), its ``hostname`` metadata is the node's,
its ``root`` is the volume's path. Here every pod's ceph-fuse is made to look like that
with Ceph's own settings, in a ``[client.<name>]`` section of the lab's ceph.conf:
``client_metadata = hostname=<node>`` (the MDS shows it as the session's hostname) and
``client_mountpoint = <volume root>`` (the session's root). The pods run with NODE_NAME
= that node and are bound to Node objects of that name. The owner record is rewritten
without ``storage_client``, as a holder whose mount cannot tell its client id writes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from bindha_rwx.fencing import SharedVolume
from harness.cephlab import CephLab, CephMount
from harness.pods import ROOT, MasterLab, MasterPod, samples, wait_until
from tests.kube.test_cephfs_smoke import OnCephFS, lock_open_ahead

pytestmark = [pytest.mark.cephfs, pytest.mark.kube, pytest.mark.named, pytest.mark.root]

T = {"lease": 3.0, "deadline": 1.6, "retry": 0.4, "stop": 0.8}


def cli(pod: MasterPod, node: str, *args: str, config: Path | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """bindha-rwx as an operator runs it in ``pod`` (kubectl exec: the pod's env)."""
    env = {"PATH": os.environ["PATH"], "POD_NAME": pod.name, "POD_NAMESPACE": pod.namespace,
           "POD_IP": pod.ip, "NODE_NAME": node, "KUBECONFIG": str(pod.kubeconfig)}
    return subprocess.run([sys.executable, "-m", "bindha_rwx", *args, "--config",
                           str(config or pod.config_path)], capture_output=True, text=True,
                          timeout=90, env=env, input=stdin, cwd=ROOT)


class CsiLike:
    """Master pods on nodes whose CephFS clients look like ceph-csi's (see the module)."""

    def __init__(self, on_cephfs: OnCephFS) -> None:
        self.on_cephfs = on_cephfs
        self.lab: MasterLab = on_cephfs.lab
        self.ceph: CephLab = on_cephfs.ceph
        self.root = f"/volumes/csi/csi-vol-{self.lab.namespace}"
        (self.lab.shared / self.root.lstrip("/")).mkdir(parents=True)
        self.volume = SharedVolume(self.lab.shared / self.root.lstrip("/"))
        self.node_of: dict[str, str] = {}
        self.nodes: set[str] = set()

    def node(self, short: str) -> str:
        """A Ready Node object named for this test (Nodes are cluster-wide)."""
        name = f"{self.lab.namespace}-{short}"
        if name not in self.nodes:
            self.lab.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
            self.lab.cleanups.append(lambda: self.lab.core.delete_node(name))
            self.lab.core.patch_node_status(name, {"status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "Test"}]}})
            self.nodes.add(name)
        return name

    def _section(self, entity: str, node: str, root: str | None) -> None:
        with self.ceph.conf.open("a", encoding="utf-8") as conf:
            conf.write(f"\n[client.{entity}]\nclient_metadata = hostname={node}\n"
                       + (f"client_mountpoint = {root}\n" if root else ""))

    def add(self, short: str) -> MasterPod:
        """A master pod on node ``short``: its client sends the node's hostname and
        mounts the volume's root; NODE_NAME and the Pod's binding name the node."""
        node = self.node(short)
        name = f"bind-master-{len(self.lab.masters)}"
        self._section(f"{self.lab.namespace}-{name}", node, self.root)
        pod = self.on_cephfs.add()
        assert pod.name == name
        self.lab.core.create_namespaced_pod_binding(name, self.lab.namespace, client.V1Binding(
            metadata=client.V1ObjectMeta(name=name),
            target=client.V1ObjectReference(kind="Node", name=node)), _preload_content=False)
        wrap = pod.wrap
        pod.wrap = lambda ip, argv: ["env", f"NODE_NAME={node}", *wrap(ip, argv)]
        self.node_of[name] = node
        return pod

    def other_mount(self, short: str, label: str) -> CephMount:
        """Another client of node ``short``, of the file system's root: not the volume's,
        so never the fence's to evict."""
        entity = f"{self.lab.namespace}-{label}"
        self._section(entity, self.node(short), None)
        mount = self.ceph.mount(entity, self.lab.root / label)
        self.on_cephfs.mounts.append(mount)
        return mount

    def configure(self, auto: bool, keyring: Path, ceph_id: str) -> dict:
        fencing = {"storage": "ceph", "ceph": {
            "conf": str(self.ceph.conf), "keyring": str(keyring), "id": ceph_id, "mds": "cephfs:0",
            "timeout": "5s", "root": self.root, "auto": auto}}
        self.lab.rewrite_configs(lambda data: data.update(fencing=fencing))
        return fencing

    def hide_client_id(self) -> None:
        """The owner record as a holder that cannot see its client id writes it."""
        owner = self.volume.read_owner()
        assert owner is not None and owner.storage_client, owner
        self.volume.write_owner(replace(owner, storage_client=None))

    def freeze(self, pod: MasterPod) -> None:
        """The node stands still: the supervisor, its named and its CephFS client (once
        every other pod has the lock file open ahead: see lock_open_ahead)."""
        for other in self.lab.masters:
            if other is not pod and other.alive():
                wait_until(lambda other=other: lock_open_ahead(self.on_cephfs, other), 20,
                           f"{other.name}'s lock file open")
        named = pod.named_processes()[0]
        pod.signal(signal.SIGSTOP)
        named.suspend()
        os.kill(self.on_cephfs.by_pod[pod.name].pid, signal.SIGSTOP)

    def session_ids(self) -> set[int]:
        return {int(s["id"]) for s in self.ceph.sessions()}

    def events(self, reason: str) -> list[client.CoreV1Event]:
        return [e for e in self.lab.core.list_namespaced_event(self.lab.namespace).items
                if e.reason == reason]


@pytest.fixture
def csi(lab: MasterLab, ceph_lab: CephLab) -> Iterator[CsiLike]:
    """The pods of CsiLike. The MDS ends a frozen client's session after Ceph's default
    300 s here, not the lab's 30 s: the operator's commands (each a new process) must
    not race the MDS's own eviction."""
    ceph_lab.ceph("fs", "set", "cephfs", "session_autoclose", "300")
    on_cephfs = OnCephFS(lab, ceph_lab)
    try:
        yield CsiLike(on_cephfs)
    finally:
        on_cephfs.close()
        ceph_lab.ceph("fs", "set", "cephfs", "session_autoclose",
                      str(ceph_lab.settings.session_autoclose or 300))


def _config_copy(pod: MasterPod, path: Path, change: Callable[[dict], None]) -> Path:
    data = yaml.safe_load(pod.config_path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_runbook_fence_evict_by_hand(csi: CsiLike, ceph_lab: CephLab, tmp_path: Path):
    """docs/runbooks/stale-lock.md on CephFS, command by command: `fence status` names
    the old holder's client (found by node and root), `fence evict` refuses while the pod
    may be alive and changes nothing, then evicts once the pod is gone; the lock frees by
    itself and the blocked standby leads. ``fencing.ceph.auto: false``: nobody but the
    operator evicts here."""
    lab, on_cephfs = csi.lab, csi.on_cephfs
    first, second = csi.add("node-a"), csi.add("node-b")
    other = csi.other_mount("node-a", "backup")  # node a's client of another path
    csi.configure(auto=False, keyring=ceph_lab.keyring("client.fencer"), ceph_id="fencer")
    first.start()
    assert lab.leader(timeout=30) is first
    second.start()
    wait_until(lambda: second.has_event("fence.storage_ready"), 20,
               "the standby's start check reaches the MDS")
    csi.hide_client_id()
    old_client = on_cephfs.by_pod[first.name].client_id()
    standby_client = on_cephfs.by_pod[second.name].client_id()
    node_b = csi.node_of[second.name]
    # Wrong settings: exit 2 naming the setting or file, and not even --force gets past
    # them (the leader is alive here: a good config with --force would evict it).
    run = lambda *args, **kw: cli(second, node_b, *args, **kw)  # noqa: E731
    weak = ceph_lab.add_client(f"{lab.namespace}-weak")  # a pod's caps: no mds 'allow *'
    weak_config = _config_copy(second, tmp_path / "weak.yaml", lambda d: d["fencing"][
        "ceph"].update(keyring=str(weak), id=f"{lab.namespace}-weak"))
    denied = run("fence", "evict", "--confirm-dead", first.name, "--yes", "--force",
                 config=weak_config)
    assert denied.returncode == 2, denied.stderr
    assert "lacks mds 'allow *'" in denied.stderr and str(weak) in denied.stderr
    off = _config_copy(second, tmp_path / "off.yaml",
                       lambda d: d["fencing"].update(storage="none"))
    unset = run("fence", "evict", "--confirm-dead", first.name, "--yes", config=off)
    assert unset.returncode == 2 and "fencing.storage is none" in unset.stderr
    no_root = _config_copy(second, tmp_path / "noroot.yaml",
                           lambda d: d["fencing"]["ceph"].pop("root"))
    unset = run("fence", "evict", "--confirm-dead", first.name, "--yes", "--force",
                config=no_root)
    assert unset.returncode == 2 and "fencing.ceph.root is not set" in unset.stderr
    assert old_client in csi.session_ids() and lab.holder() == first.name
    # Read now: once the holder's client is frozen, the epoch file's reader waits for it.
    epoch = csi.volume.read_epoch()

    csi.freeze(first)
    wait_until(lambda: second.has_event("fence.blocked"), T["lease"] + 15,
               "the standby holds the Lease, blocked on the frozen client's lock")
    wait_until(lambda: any("fencing.ceph.auto: false" in str(e.get("why")) for e in
                           second.events() if e.get("event") == "fence.storage_waiting"),
               10, "the standby says that it leaves the eviction to an operator")

    status = run("fence", "status", "--json")
    assert status.returncode == 0, status.stderr
    found = json.loads(status.stdout)
    assert found["lease_holder"] == second.name and found["lock_owner"] == first.name
    storage = found["owner_storage"]
    assert storage["clients"] == [f"client.{old_client}"], storage
    assert csi.node_of[first.name] in storage["basis"] and csi.root in storage["basis"]
    ready = run("probe", "ready")
    assert ready.returncode == 1 and "fencing.ceph.auto: false" in ready.stdout, ready.stdout

    # The pod still exists on a node that is Ready: refused, nothing evicted.
    refused = run("fence", "evict", "--confirm-dead", first.name, "--yes")
    assert refused.returncode == 1, refused.stderr
    assert f"pod {first.name} still exists" in refused.stderr and "--force" in refused.stderr
    assert "Nothing was evicted" in refused.stderr
    assert old_client in csi.session_ids()
    assert not (csi.volume.meta_dir / "fence.log").exists()

    # The old pod is gone (deleted once its node was off).
    lab.core.delete_namespaced_pod(first.name, lab.namespace, grace_period_seconds=0)
    unasked = run("fence", "evict", "--confirm-dead", first.name, stdin="")
    assert unasked.returncode == 1 and "add --yes" in unasked.stderr
    assert old_client in csi.session_ids() and lab.holder() == second.name
    assert not (csi.volume.meta_dir / "fence.log").exists()
    assert second.named_processes() == []

    evicted_at = time.monotonic()
    done = run("fence", "evict", "--confirm-dead", first.name, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"evicted client.{old_client} of {first.name}" in done.stdout, done.stdout
    assert f"{second.name}, which holds the Lease, takes it" in done.stdout
    wait_until(lambda: second.has_event("named.serving"), 20, "the blocked standby leads")
    took = time.monotonic() - evicted_at
    assert lab.holder() == second.name  # the frozen named is still a process
    assert csi.volume.read_generation() == 0, "fence evict must not break the lock"
    assert csi.volume.read_epoch() == epoch + 1  # the new leader's bump only
    assert csi.volume.read_owner().pod == second.name
    sessions = csi.session_ids()
    assert old_client not in sessions
    assert {standby_client, other.client_id()} <= sessions, "evicted more than the holder"
    record = json.loads((csi.volume.meta_dir / "fence.log").read_text().splitlines()[-1])
    assert (record["via"], record["pod"], record["forced"]) == ("fence evict", first.name,
                                                                 False)
    assert record["outcomes"] == {f"client.{old_client}": "evicted"}
    assert record["proof"] == "its pod is gone" and csi.root in record["basis"]
    events = csi.events("StorageFenced")
    assert events and events[0].involved_object.name == first.name, events
    assert f"client.{old_client}" in events[0].message
    after = json.loads(run("fence", "status", "--json").stdout)
    assert after["lock_owner"] == second.name
    print(f"fence evict by hand: the standby serves {took:.2f}s after the command started")


def test_the_automatic_fence_finds_the_holders_node_client_and_spares_a_live_neighbour(
        csi: CsiLike, ceph_lab: CephLab):
    """Three pods, two on node a. The leader (node a) is lost and its pod deleted; its
    client is found by node and root, but another master still runs on node a and may
    share that node's client: refused, nobody evicts, nobody writes. Once that pod is
    gone too, the blocked standby evicts every session of node a with the volume's root
    (not node a's other mount) and leads."""
    lab, on_cephfs = csi.lab, csi.on_cephfs
    first, second, third = csi.add("node-a"), csi.add("node-b"), csi.add("node-a")
    other = csi.other_mount("node-a", "backup")
    csi.configure(auto=True, keyring=ceph_lab.keyring("client.fencer"), ceph_id="fencer")
    first.start()
    assert lab.leader(timeout=30) is first
    second.start()
    third.start()
    for pod in (second, third):
        wait_until(lambda pod=pod: pod.has_event("fence.storage_ready"), 20,
                   f"{pod.name}'s start check")
    csi.hide_client_id()
    clients = {pod.name: on_cephfs.by_pod[pod.name].client_id()
               for pod in (first, second, third)}
    csi.freeze(first)
    lab.core.delete_namespaced_pod(first.name, lab.namespace, grace_period_seconds=0)

    def refused() -> list[dict]:
        return [e for pod in (second, third) for e in pod.events()
                if e.get("event") == "fence.storage_refused"]
    wait_until(refused, T["lease"] + 20, "the Lease holder refuses to evict node a's client")
    why = refused()[0]["why"]
    assert f"also run(s) on node {csi.node_of[first.name]}" in why, why
    assert third.name in why, why
    for _ in samples(2 * T["lease"], 0.1):
        assert second.named_processes() == [] and third.named_processes() == []
    assert set(clients.values()) <= csi.session_ids()
    assert csi.events("StorageFenceRefused")

    # The neighbour goes (its supervisor stops, its Pod is deleted; its node's client
    # stays mounted, as ceph-csi's would until the node unstages the volume).
    third.signal(signal.SIGTERM)
    assert third.wait_exit(timeout=15) == 0
    lab.core.delete_namespaced_pod(third.name, lab.namespace, grace_period_seconds=0)
    gone_at = time.monotonic()
    wait_until(lambda: second.has_event("named.serving"), T["lease"] + 20,
               "the standby evicts node a's clients and leads")
    took = time.monotonic() - gone_at
    assert lab.holder() == second.name  # the frozen named is still a process
    # The lock frees at the eviction; the job's audit line may follow named's start.
    wait_until(lambda: second.has_event("fence.storage_evicted"), 15, "the eviction's report")
    sessions = csi.session_ids()
    assert clients[first.name] not in sessions and clients[third.name] not in sessions
    assert {clients[second.name], other.client_id()} <= sessions
    record = json.loads((csi.volume.meta_dir / "fence.log").read_text().splitlines()[-1])
    assert record["via"] == "automatic" and record["proof"] == "its pod is gone"
    assert record["outcomes"] == {f"client.{clients[first.name]}": "evicted",
                                  f"client.{clients[third.name]}": "evicted"}, record
    assert csi.events("StorageFenced")
    print(f"node client found by metadata: serving {took:.2f}s after the neighbour left")
