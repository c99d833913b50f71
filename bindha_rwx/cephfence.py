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
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from bindha_rwx import reaper
from bindha_rwx.config import StorageFencing

_CLIENT = re.compile(r"^client\.?(\d+)$")


class StorageFenceError(Exception):
    """The fence could not act; the message says why and what to do."""


def client_number(client: str) -> int:
    """4119 from "client4119" (the ``ceph.client_id`` vxattr) or "client.4119"."""
    match = _CLIENT.match(client.strip())
    if not match:
        raise StorageFenceError(f"{client!r} is not a CephFS client id (client.N)")
    return int(match.group(1))


class CephFence:
    """Evicts CephFS clients at the MDS with the fencer key."""

    def __init__(self, settings: StorageFencing) -> None:
        self.settings = settings

    def _ceph(self, *args: str) -> str:
        s = self.settings
        argv = ["ceph", "-c", str(s.ceph_conf), "--id", s.ceph_id, "--keyring",
                str(s.ceph_keyring), "--connect-timeout", f"{max(1, int(s.timeout))}", *args]
        try:
            result = reaper.run(argv, timeout=s.timeout + 2)
        except subprocess.TimeoutExpired:
            raise StorageFenceError(f"`ceph {' '.join(args)}` gave no answer within "
                                    f"{s.timeout + 2:g}s: is the cluster reachable?") from None
        except OSError as exc:
            raise StorageFenceError(f"cannot run ceph: {exc.strerror} (install ceph-common)"
                                    ) from None
        if result.returncode != 0:
            words = " ".join((result.stderr.strip() or result.stdout.strip() or "no output")
                             .split())[:300]
            if "EACCES" in words or "access denied" in words or result.returncode == 13:
                words += (f" (client.{s.ceph_id} needs mds 'allow *' and mon 'allow r' to "
                          "list and evict sessions)")
            raise StorageFenceError(f"`ceph {' '.join(args)}` failed (exit "
                                    f"{result.returncode}): {words}")
        return str(result.stdout)

    def sessions(self) -> list[dict[str, Any]]:
        text = self._ceph("tell", f"mds.{self.settings.ceph_mds}", "session", "ls",
                          "--format", "json")
        try:
            return list(json.loads(text))
        except ValueError:
            raise StorageFenceError(f"session ls answered no JSON: {text[:200]!r}") from None

    def evict(self, client: str) -> str:
        """Evict ``client``; "evicted" or "gone already". StorageFenceError otherwise."""
        number = client_number(client)
        if not any(s.get("id") == number for s in self.sessions()):
            return "gone already"
        self._ceph("tell", f"mds.{self.settings.ceph_mds}", "client", "evict", f"id={number}")
        if any(s.get("id") == number for s in self.sessions()):
            raise StorageFenceError(f"client.{number} is still in the MDS's session list "
                                    "after the eviction")
        return "evicted"
