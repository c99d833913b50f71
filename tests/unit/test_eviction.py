"""Which MDS sessions the storage fence evicts (bindha_rwx.eviction.choose): a table
over session-ls JSON recorded from the Ceph lab (Ceph 16.2.15, ceph-fuse with
``client_metadata = hostname=...`` and ``client_mountpoint``), pure logic.

The lab's sessions are real in tests/kube/test_fence_evict.py; here every case of the
matching, including the ones the lab cannot show (a kernel client, an FQDN), is one row.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bindha_rwx.cephfence import Session, StorageFenceSetupError, same_host
from bindha_rwx.eviction import Refused, choose
from bindha_rwx.fencing import Owner

# `ceph tell mds.a session ls --format json`, as the lab answered, whole: 4129 is a
# ceph-fuse with hostname=node-a and client_mountpoint /vol1 from its [client.podx]
# section of ceph.conf, 4119 one with neither (the machine's hostname, the root).
RECORDED = json.loads((Path(__file__).parent / "data" / "ceph-session-ls.json").read_text())


def session(number: int, hostname: str, root: str | None, template: int = 0,
            kernel: bool = False) -> dict[str, Any]:
    """A recorded entry with another id, hostname and root. ``kernel``: the metadata a
    kernel client sends (hostname, kernel_version, entity_id, root; no pid, no
    mount_point)."""
    entry = copy.deepcopy(RECORDED[template])
    entry["id"] = number
    entry["inst"] = f"client.{number} 10.0.0.{number % 250}:0/12345"
    meta = entry["client_metadata"]
    if kernel:
        meta = {"hostname": hostname, "kernel_version": "6.1.0", "entity_id": "csi-node"}
        entry["client_metadata"] = meta
    meta["hostname"] = hostname
    if root is None:
        meta.pop("root", None)
    else:
        meta["root"] = root
    return entry


def owner(client: str | None = None, node: str = "node-a", pod: str = "bind-master-0"
          ) -> Owner:
    return Owner(pod=pod, node=node, pod_ip="10.1.0.5", pid=7, epoch=4, generation=0,
                 since="2026-01-01T00:00:00Z", storage_client=client)


VOL = "/volumes/csi/csi-vol-1/abc"

# (case, sessions, owner, fencing.ceph.root, pods sharing the node, ids chosen or an error)
TABLE: list[tuple[str, list[dict[str, Any]], Owner, str | None, list[str], Any]] = [
    ("the recorded client", RECORDED, owner("client4129"), None, [], [4129]),
    ("the recorded client, 'client.N' spelling", RECORDED, owner("client.4119"), None, [],
     [4119]),
    ("the recorded client gone: nothing to evict", RECORDED, owner("client4999"), None, [], []),
    ("the recorded client is a pod's own ceph-fuse: others on the node do not matter",
     RECORDED, owner("client4119", node="vmnode"), None, ["bind-master-2"], [4119]),
    ("the recorded client is the node's client, another master on the node",
     [session(11, "node-a", VOL)], owner("client11"), None, ["bind-master-2"],
     Refused("bind-master-2 also run(s) on node node-a")),
    ("by node and root", RECORDED, owner(node="node-a"), "/vol1", [], [4129]),
    ("only the node's session with the volume's root, not its other mounts nor the same "
     "root elsewhere",
     [session(1, "node-a", VOL), session(2, "node-a", "/"), session(3, "node-b", VOL),
      session(4, "node-a", VOL + "/sub")], owner(), VOL, [], [1]),
    ("every matching session (a kernel and a fuse client of the node)",
     [session(1, "node-a", VOL, kernel=True), session(2, "node-a", VOL + "/")], owner(),
     VOL, [], [1, 2]),
    ("node name and hostname differ in case and by the domain",
     [session(1, "Node-A.example.org", VOL), session(2, "node-ab", VOL),
      session(3, "node-a.other.org", VOL)], owner(node="node-a"), VOL, [], [1, 3]),
    ("an FQDN node name against a short hostname",
     [session(1, "node-a", VOL)], owner(node="node-a.example.org"), VOL, [], [1]),
    ("a client that sent no root mounted the file system's root",
     [session(1, "node-a", None)], owner(), "/", [], [1]),
    ("nothing on the node with that root: refused, and what is there is named",
     [session(1, "node-a", "/"), session(3, "node-b", VOL)], owner(), VOL, [],
     Refused("that node's sessions: client.1 root /; sessions with that root: client.3 "
             "host node-b")),
    ("no session at all", [], owner(), VOL, [], Refused("none of that node")),
    ("another live master on the node may share its client",
     [session(1, "node-a", VOL)], owner(), VOL, ["bind-master-2"],
     Refused("bind-master-2 also run(s) on node node-a")),
    ("this pod on the node", [session(1, "node-a", VOL)], owner(), VOL,
     ["bind-master-1 (this pod)"], Refused("bind-master-1 (this pod) also run(s)")),
    ("no client id and no root setting", RECORDED, owner(), None, [],
     StorageFenceSetupError("fencing.ceph.root is not set", "fencing.ceph.root")),
    ("no client id and no node", RECORDED, owner(node=""), VOL, [],
     Refused("names neither its storage client nor its node")),
]


@pytest.mark.parametrize(("sessions", "holder", "root", "sharing", "expected"),
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_choose(sessions, holder, root, sharing, expected):
    parsed = [Session.parse(entry) for entry in sessions]
    if isinstance(expected, Exception):
        with pytest.raises(type(expected)) as raised:
            choose(parsed, holder, root, sharing)
        assert str(expected) in str(raised.value), str(raised.value)
        if isinstance(expected, StorageFenceSetupError):
            assert raised.value.setting == expected.setting
        return
    target = choose(parsed, holder, root, sharing)
    assert [s.id for s in target.sessions] == expected
    assert target.pod == holder.pod
    assert target.clients == [f"client.{n}" for n in expected]


def test_a_recorded_session_parses():
    first, second = (Session.parse(entry) for entry in RECORDED)
    assert first == Session(id=4129, address="10.214.3.1:0/515515389", state="open",
                            hostname="node-a", root="/vol1", entity_id="podx",
                            mount_point="/tmp/evict-exp/m-x", pid="22082")
    assert second.root == "/" and second.hostname == "vm"
    assert "client.4129 (host node-a, root /vol1, user podx" in first.describe()


@pytest.mark.parametrize(("hostname", "node", "same"), [
    ("node-a", "node-a", True), ("NODE-A", "node-a", True), ("node-a.", "node-a", True),
    ("node-a.example.org", "node-a", True), ("node-a", "node-a.example.org", True),
    ("node-a.example.org", "node-a.other.org", False), ("node-ab", "node-a", False),
    ("", "node-a", False), ("node-a", "", False)])
def test_same_host(hostname, node, same):
    assert same_host(hostname, node) is same
