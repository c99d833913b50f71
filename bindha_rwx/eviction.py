"""Evicting a lost lock holder's CephFS client(s) at the MDS: the one path for the
automatic storage fence (a blocked standby, bindha_rwx.autofence) and for `fence evict`
(an operator, bindha_rwx.ops).

Three steps, separate so that `fence evict` can ask the operator between them and ask
again after the answer:

- ``proof(owner)``: is the lock owner's pod proven not running (bindha_rwx.interlocks)?
- ``plan(owner)``: which MDS sessions are that pod's client (a ``Target``), or
  ``Refused``: nothing that is safe to evict;
- ``carry_out(...)``: evict them (bindha_rwx.cephfence), then one line in
  ``.bindha/fence.log``, fsynced. The lock generation is never touched: the evicted
  client's lock frees at the MDS, and the standby that holds the Lease takes it.

Which sessions (``choose``, pure logic). The owner record names the holder's client
when its mount could tell (``ceph.client_id``: ceph-fuse in the pod). With ceph-csi the
pod cannot see its client (a kernel client or a ceph-fuse of the CSI node plugin), so
the holder's sessions are found in ``session ls`` by their metadata: ``hostname`` = the
owner record's node (``same_host``) and ``root`` = ``fencing.ceph.root``, the volume's
path in the file system. Every matching session is evicted. ceph-csi mounts a volume
once per node for all its pods, so a session of the node (its hostname is the node's)
may also be the client of another master pod on that node: while such a pod is not
proven gone (this pod included), nothing is evicted.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from bindha_rwx.cephfence import (
    CephFence,
    Session,
    StorageFenceError,
    StorageFenceSetupError,
    client_number,
    same_host,
)
from bindha_rwx.config import Config
from bindha_rwx.fencing import Owner, SharedVolume
from bindha_rwx.interlocks import node_state, not_proven_gone, pod_liveness, proof_text
from bindha_rwx.kube import CoreCalls, master_selector

RUNBOOK = "docs/runbooks/stale-lock.md"


class Refused(StorageFenceError):
    """Nothing is safe to evict (no match, or a live pod may share the client): stay
    blocked; the message says why and what would change it."""


class EvictionFailed(StorageFenceError):
    """Ceph refused or did not answer part way; ``record`` says what was evicted."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class Target:
    """The sessions to evict for ``pod``; none when its recorded client is gone already."""

    pod: str
    sessions: tuple[Session, ...]
    basis: str  # how they were found, for people and the audit

    @property
    def clients(self) -> list[str]:
        return [f"client.{s.id}" for s in self.sessions]

    def describe(self) -> str:
        return "; ".join(s.describe() for s in self.sessions) or "none"


def choose(sessions: list[Session], owner: Owner, root: str | None,
           sharing: list[str]) -> Target:
    """The owner's sessions among ``sessions`` (pure logic; see the module).

    ``sharing``: the master pods other than the owner that run on the owner's node and
    are not proven gone. StorageFenceSetupError when only ``fencing.ceph.root`` could
    find them and it is not set; Refused when nothing is safe to evict."""
    if owner.storage_client:
        number = client_number(owner.storage_client)
        found = [s for s in sessions if s.id == number]
        basis = f"client {owner.storage_client} named by the owner record"
    else:
        if not owner.node:
            raise Refused(f"the owner record of {owner.pod} names neither its storage client "
                          "nor its node: find its client in `ceph tell mds.<fs>:0 session ls` "
                          f"and evict it by hand ({RUNBOOK})")
        if root is None:
            raise StorageFenceSetupError(
                f"the owner record of {owner.pod} names no storage client (with ceph-csi the "
                "pod cannot see it), and fencing.ceph.root is not set: set it to the volume's "
                "path in the file system (`kubectl get pv <pv> -o jsonpath="
                "'{.spec.csi.volumeAttributes.subvolumePath}'`, or rootPath of a static "
                "volume) so that its node's sessions can be found", "fencing.ceph.root")
        found = [s for s in sessions if same_host(s.hostname, owner.node) and s.root == root]
        basis = f"the MDS sessions of node {owner.node} with root {root}"
        if not found:
            raise Refused(_no_match(sessions, owner.node, root))
    node_clients = [s for s in found if same_host(s.hostname, owner.node)]
    if node_clients and sharing:
        clients = ", ".join(f"client.{s.id}" for s in node_clients)
        raise Refused(
            f"{', '.join(sharing)} also run(s) on node {owner.node}, and {clients} is a "
            f"client of that node (its hostname is the node's; ceph-csi mounts a volume once "
            f"per node for all its pods): evicting it could cut a live pod off the volume. "
            f"Delete or move those pods, or taint the node node.kubernetes.io/out-of-service "
            f"once it is off (then they count as gone)")
    return Target(pod=owner.pod, sessions=tuple(found), basis=basis)


def _no_match(sessions: list[Session], node: str, root: str) -> str:
    on_node = [s for s in sessions if same_host(s.hostname, node)]
    with_root = [s for s in sessions if s.root == root]
    seen = "; ".join(filter(None, (
        "that node's sessions: " + ", ".join(f"client.{s.id} root {s.root}"
                                              for s in on_node) if on_node else "",
        "sessions with that root: " + ", ".join(f"client.{s.id} host {s.hostname or '?'}"
                                                 for s in with_root) if with_root else "")))
    seen = seen or "none of that node, none with that root"
    return (f"no MDS session of node {node} has root {root} ({seen}): its client is gone "
            "already (its lock is then free), or "
            "fencing.ceph.root or the node's hostname is not what the MDS reports (compare "
            "with `ceph tell mds.<fs>:0 session ls`)")


def audit(path: os.PathLike[str] | str, record: dict[str, Any]) -> None:
    """One JSON line, fsynced: the record of an action on another pod's storage."""
    with open(path, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
        log.flush()
        os.fsync(log.fileno())


def event_message(record: dict[str, Any]) -> str:
    forced = f"; forced over: {'; '.join(record['overridden'])}" if record["overridden"] else ""
    return (f"evicted {', '.join(record['clients']) or 'nothing'} of {record['pod']} at the "
            f"MDS ({record['basis']}), by {record['by']} ({record['via']}): "
            f"{record['proof']}{forced}")[:1000]


class Eviction:
    """The storage-fence steps against one cluster's API, volume and MDS."""

    def __init__(self, config: Config, core: CoreCalls, volume: SharedVolume,
                 fence: CephFence | None = None) -> None:
        assert config.namespace
        self.config = config
        self.namespace = config.namespace
        self.core = core
        self.volume = volume
        self.fence = fence or CephFence(config.fencing)

    def proof(self, owner: Owner) -> tuple[str | None, str]:
        """(why ``owner.pod`` is not proven gone or None, the proof in words)."""
        liveness = pod_liveness(self.core, self.namespace, owner.pod)
        problem = not_proven_gone(liveness, owner.pod)
        return problem, (proof_text(liveness) if problem is None else problem)

    def sharing(self, owner: Owner) -> list[str]:
        """Master pods other than the owner on the owner's node, not proven gone."""
        me = self.config.pod.name
        found = [f"{me} (this pod)"] if me and me != owner.pod and owner.node \
            and self.config.pod.node == owner.node else []
        ready, out_of_service = node_state(self.core, owner.node)
        if ready is False or out_of_service:
            return found  # every pod on it is proven gone, but not this one: it runs
        for pod in self.core.list_pod_objects(self.namespace, master_selector(self.config)):
            name = (pod.get("metadata") or {}).get("name")
            if name and name not in (owner.pod, me) \
                    and (pod.get("spec") or {}).get("nodeName") == owner.node:
                found.append(name)
        return found

    def plan(self, owner: Owner) -> Target:
        if owner.pod == self.config.pod.name:
            raise Refused(f"the lock owner is this pod ({owner.pod}) itself: nothing to evict")
        ours = self.volume.storage_client()
        if owner.storage_client and owner.storage_client == ours:
            raise Refused(f"the owner record's client {ours} is this pod's own client: "
                          "evicting it would cut this pod off")
        sessions = [Session.parse(entry) for entry in self.fence.sessions()]
        return choose(sessions, owner, self.config.fencing.ceph_root,
                      self.sharing(owner) if owner.node else [])

    def carry_out(self, owner: Owner, target: Target, *, by: str, via: str, proof: str,
                  overridden: list[str]) -> dict[str, Any]:
        """Evict every session of ``target``; the audit record (written to fence.log once
        anything was evicted). EvictionFailed when Ceph refused or did not answer."""
        outcomes: dict[str, str] = {}
        error: StorageFenceError | None = None
        for session in target.sessions:
            try:
                outcomes[f"client.{session.id}"] = self.fence.evict(f"client.{session.id}",
                                                                    listed=True)
            except StorageFenceError as exc:
                error = exc
                break
        record = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "by": by,
                  "via": via, "action": "storage-evict", "pod": owner.pod, "node": owner.node,
                  "clients": list(outcomes), "outcomes": outcomes, "basis": target.basis,
                  "sessions": [asdict(s) for s in target.sessions], "proof": proof,
                  "forced": bool(overridden), "overridden": overridden, "epoch": owner.epoch,
                  "generation": owner.generation}
        if "evicted" in outcomes.values():
            audit(self.volume.meta_dir / "fence.log", record)
        if error is not None:
            done = ", ".join(k for k, v in outcomes.items() if v == "evicted")
            raise EvictionFailed(f"{error}" + (f" (evicted before the failure: {done})"
                                               if done else ""), record)
        return record
