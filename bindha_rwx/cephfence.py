"""The Ceph storage fence: evict (and so blocklist) a dead holder's CephFS client.

On CephFS a lost node's client keeps its locks until the MDS ends its session
(``session_autoclose``, 300 s by default). Evicting it at the MDS frees them within a
second and blocklists the client at the OSDs, so it can never write again (its writes
fail with EIO; docs/cephfs.md). Ceph's own CLI does the work (``ceph tell mds.<fs>:<rank>
client evict id=N``), every call with a timeout: ours on the process, and the CLI's own
``--connect-timeout``. The key needs mds 'allow *' and mon 'allow r'.

Evicting an id that is not there succeeds silently (seen here), so ``evict`` reads the
session list before and after: it says "gone already" or "evicted", and fails when the
session is still there afterwards.

Errors come in two kinds: ``StorageFenceSetupError`` when the settings or the key are
wrong (the cluster refused the key, no such MDS: an operator must fix the config, exit 2
for a command), and plain ``StorageFenceError`` for the rest (no answer in time, a
session that survived its eviction: worth trying again).

``Session`` and ``same_host`` read the MDS's ``session ls`` (pure logic): finding the
sessions of a node when the holder could not record its own client id is
bindha_rwx.eviction's job.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

from bindha_rwx import reaper
from bindha_rwx.config import StorageFencing
from bindha_rwx.config import normalize_ceph_root as normalize_root

_CLIENT = re.compile(r"^client\.?(\d+)$")


class StorageFenceError(Exception):
    """The fence could not act; the message says why and what to do."""


class StorageFenceSetupError(StorageFenceError):
    """The fencer's settings or key are wrong; ``setting`` names what to fix."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


def client_number(client: str) -> int:
    """4119 from "client4119" (the ``ceph.client_id`` vxattr) or "client.4119"."""
    match = _CLIENT.match(client.strip())
    if not match:
        raise StorageFenceError(f"{client!r} is not a CephFS client id (client.N)")
    return int(match.group(1))


def same_host(hostname: str, node: str) -> bool:
    """Is a session's ``hostname`` metadata this Kubernetes node? Equal names (any
    case), or a short name against its FQDN ("worker-1" and "worker-1.example.org"):
    the kubelet's node name and the host's uname may differ by the domain only."""
    a, b = hostname.strip().lower().rstrip("."), node.strip().lower().rstrip(".")
    if not a or not b:
        return False
    if a == b:
        return True
    return ("." in a) != ("." in b) and a.split(".")[0] == b.split(".")[0]


@dataclass(frozen=True)
class Session:
    """One entry of ``session ls``: what the MDS knows of a client."""

    id: int
    address: str  # "10.214.1.3:0/2120321832", from "inst"
    state: str
    hostname: str
    root: str  # the mount's root in the file system; "/" when the client sent none
    entity_id: str  # the cephx user without "client."
    mount_point: str
    pid: str

    @classmethod
    def parse(cls, entry: dict[str, Any]) -> Session:
        meta = entry.get("client_metadata") or {}
        inst = str(entry.get("inst") or "")
        address = inst.split()[-1] if inst else ""
        for kind in ("v1:", "v2:", "any:"):
            address = address.removeprefix(kind)
        return cls(id=int(entry["id"]), address=address, state=str(entry.get("state", "")),
                   hostname=str(meta.get("hostname", "")),
                   root=normalize_root(str(meta.get("root") or "/")),
                   entity_id=str(meta.get("entity_id", "")),
                   mount_point=str(meta.get("mount_point", "")), pid=str(meta.get("pid", "")))

    def describe(self) -> str:
        return (f"client.{self.id} (host {self.hostname or '?'}, root {self.root}, "
                f"user {self.entity_id or '?'}, {self.address or 'no address'})")


class CephFence:
    """Lists and evicts CephFS clients at the MDS with the fencer key."""

    def __init__(self, settings: StorageFencing) -> None:
        self.settings = settings

    def _ceph(self, *args: str) -> str:
        s = self.settings
        argv = ["ceph", "-c", str(s.ceph_conf), "--id", s.ceph_id, "--keyring",
                str(s.ceph_keyring), "--connect-timeout", f"{max(1, int(s.timeout))}", *args]
        command = f"`ceph {' '.join(args)}`"
        try:
            result = reaper.run(argv, timeout=s.timeout + 2)
        except subprocess.TimeoutExpired:
            raise StorageFenceError(f"{command} gave no answer within {s.timeout + 2:g}s: "
                                    f"is the cluster of {s.ceph_conf} reachable?") from None
        except OSError as exc:
            raise StorageFenceError(f"cannot run ceph: {exc.strerror} (install ceph-common)"
                                    ) from None
        if result.returncode == 0:
            return str(result.stdout)
        words = " ".join((result.stderr.strip() or result.stdout.strip() or "no output")
                         .split())
        tail = words[-300:]
        if "error connecting to the cluster" in words and result.returncode == 13:
            raise StorageFenceSetupError(
                f"the monitors refused client.{s.ceph_id} with the key in {s.ceph_keyring}: "
                "a wrong key, or it lacks mon 'allow r' (fencing.ceph.keyring, "
                f"fencing.ceph.id; check with `ceph auth get client.{s.ceph_id}`)",
                "fencing.ceph.keyring")
        if result.returncode == 13 or "EACCES" in words or "access denied" in words:
            raise StorageFenceSetupError(
                f"{command} refused: client.{s.ceph_id} (key in {s.ceph_keyring}) lacks mds "
                "'allow *', which listing and evicting sessions need (mon 'allow r' too): "
                f"`ceph auth caps client.{s.ceph_id} mds 'allow *' mon 'allow r'` [{tail}]",
                "fencing.ceph.keyring")
        if "problem getting command descriptions from mds" in words \
                or "no MDS daemons found" in words:
            raise StorageFenceSetupError(
                f"there is no MDS {s.ceph_mds!r} (fencing.ceph.mds): give `<fs name>:0` or "
                f"an MDS name from `ceph fs status` [{tail}]", "fencing.ceph.mds")
        if words.endswith("timed out") or "RADOS timed out" in words:
            raise StorageFenceError(f"no monitor of {s.ceph_conf} answered within "
                                    f"{max(1, int(s.timeout))}s ({command}): is the cluster "
                                    "reachable from this pod?")
        raise StorageFenceError(f"{command} failed (exit {result.returncode}): {tail}")

    def sessions(self) -> list[dict[str, Any]]:
        text = self._ceph("tell", f"mds.{self.settings.ceph_mds}", "session", "ls",
                          "--format", "json")
        try:
            return list(json.loads(text))
        except ValueError:
            raise StorageFenceError(f"session ls answered no JSON: {text[:200]!r}") from None

    def evict(self, client: str, listed: bool = False) -> str:
        """Evict ``client``; "evicted" or "gone already". StorageFenceError otherwise.
        ``listed``: the caller saw its session a moment ago (no list before)."""
        number = client_number(client)
        if not listed and not any(s.get("id") == number for s in self.sessions()):
            return "gone already"
        self._ceph("tell", f"mds.{self.settings.ceph_mds}", "client", "evict", f"id={number}")
        if any(s.get("id") == number for s in self.sessions()):
            raise StorageFenceError(f"client.{number} is still in the MDS's session list "
                                    "after the eviction")
        return "evicted"
