"""The chaos cluster's shared volume: a local tmpfs, or a real CephFS (issue 12).

Both give the runner and the faults one interface:

- ``add_master(lab)``: a master pod whose ``dynDir`` is on the volume (on CephFS: a
  ceph-fuse of its own, started in the pod's network namespace, and a Node object of
  its own so the interlocks can be given proof);
- ``break_it(kind, pods)`` / ``heal(...)``: the volume read-only or full;
- ``revive(pod)``: before a dead pod starts again, give it a working volume (on
  CephFS a fresh mount when its client was evicted, crashed or frozen: what a node
  reboot or a new pod on another node gives);
- ``close()``.

Read-only is a read-only bind mount stacked on the pod's volume directory, in each
master pod's mount namespace (``ip netns exec`` gives each pod one): every open from
then on meets EROFS. (``mount -o remount,ro`` of the volume itself is refused with
EBUSY while a file on it is open for writing, and the storage lock's file always is;
the files opened before keep their mount, as on a real client that turned read-only
only for new operations.) Full: on tmpfs a filler file fallocated over the free space
(ENOSPC); on CephFS the cluster's full ratio (every OSD full: ENOSPC on every client).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Protocol

from harness.cephlab import CephLab, CephMount
from harness.netlab import NetLab
from harness.nodes import bind_to_node, set_node_ready
from harness.pods import MasterLab, MasterPod
from harness.polling import wait_until


class ChaosVolume(Protocol):
    kind: str

    def add_master(self, lab: MasterLab) -> MasterPod: ...
    def break_it(self, kind: str, pods: list[MasterPod]) -> Path | None: ...
    def heal(self, kind: str, filler: Path | None, pods: list[MasterPod]) -> None: ...
    def revive(self, pod: MasterPod) -> None: ...
    def close(self) -> None: ...


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


def _in_namespace(pid: int, argv: list[str]) -> None:
    _run(["nsenter", "-t", str(pid), "-m", "--", *argv])


def _stack_readonly(pod: MasterPod, path: Path, attempts: int = 20) -> None:
    """A read-only bind stacked on ``path`` in the pod's mount namespace. The bind and
    its remount read-only are two calls: a file opened for writing through the new bind
    in between (named opens its journal for every update) makes the remount EBUSY; then
    the bind comes off and it is tried again."""
    for attempt in range(attempts):
        _in_namespace(pod.pid, ["mount", "--bind", str(path), str(path)])
        try:
            _in_namespace(pod.pid, ["mount", "-o", "remount,bind,ro", str(path)])
            return
        except RuntimeError as exc:
            _unstack(pod, path)
            if "busy" not in str(exc) or attempt == attempts - 1:
                raise


def _unstack(pod: MasterPod, path: Path) -> None:
    _in_namespace(pod.pid, ["umount", "-l", str(path)])


class TmpfsVolume:
    """The shared directory as a tmpfs of its own, so a round can make it read-only or
    full without touching anything else on the machine (as a CephFS/NFS mount can be)."""

    kind = "tmpfs"

    def __init__(self, path: Path, size_mib: int = 256) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "bindha-chaos",
              str(path)])

    def add_master(self, lab: MasterLab) -> MasterPod:
        return lab.add_pod(dyn_dir=self.path)

    def break_it(self, kind: str, pods: list[MasterPod]) -> Path | None:
        if kind == "readonly":
            for pod in pods:
                _stack_readonly(pod, self.path)
            return None
        filler = self.path / ".chaos-filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        offset = 0
        try:
            # tmpfs undoes a whole fallocate that hits ENOSPC: fill in shrinking steps.
            for step in (64 << 20, 1 << 20, 4096):
                while True:
                    try:
                        os.posix_fallocate(fd, offset, step)
                    except OSError:
                        break
                    offset += step
        finally:
            os.close(fd)
        free = os.statvfs(self.path).f_bavail
        if free:
            raise RuntimeError(f"could not fill {self.path}: {free} blocks still free")
        return filler

    def heal(self, kind: str, filler: Path | None, pods: list[MasterPod]) -> None:
        if kind == "readonly":
            for pod in pods:
                _unstack(pod, self.path)
        elif filler is not None:
            filler.unlink(missing_ok=True)

    def revive(self, pod: MasterPod) -> None:
        """Nothing to do: a tmpfs cannot lose a pod's access."""

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30,
                       check=False)


class CephVolume:
    """The lab's CephFS: each master pod on a ceph-fuse of its own in the pod's network
    namespace (so the faults can cut one pod from Ceph, freeze its client, kill it or
    evict it), each on a Node object of its own; the runner's observer (``lab.shared``,
    what the invariants read) is one more client, in the root namespace."""

    kind = "cephfs"

    def __init__(self, ceph: CephLab, net: NetLab, lab: MasterLab,
                 storage_fencing: str) -> None:
        self.ceph = ceph
        self.net = net
        self.lab = lab
        self.mounts: dict[str, CephMount] = {}
        self.nodes: dict[str, str] = {}
        self.observer = ceph.mount(f"{lab.namespace}-observer", lab.shared)
        if storage_fencing == "ceph":
            lab.extra_config["fencing"] = {"storage": "ceph", "ceph": {
                "conf": str(ceph.conf), "keyring": str(ceph.keyring("client.fencer")),
                "id": "fencer", "mds": "cephfs:0", "timeout": "5s"}}

    def add_master(self, lab: MasterLab) -> MasterPod:
        name = f"bind-master-{len(lab.masters)}"
        pod = lab.add_pod(name, dyn_dir=lab.root / f"{name}.dyn")
        self.nodes[name] = bind_to_node(lab, name, f"node-{lab.namespace}-{name}")
        self._mount(pod)
        return pod

    def _mount(self, pod: MasterPod) -> None:
        self.mounts[pod.name] = self.ceph.mount(
            f"{self.lab.namespace}-{pod.name}", self.lab.root / f"{pod.name}.dyn",
            netns=self.net.netns(pod.ip))

    def mount_of(self, pod: MasterPod) -> CephMount:
        return self.mounts[pod.name]

    def node_of(self, pod: MasterPod) -> str:
        return self.nodes[pod.name]

    # -- the pod's client

    def freeze_client(self, pod: MasterPod, frozen: bool) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.mount_of(pod).pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def cut(self, pod: MasterPod, cut: bool) -> None:
        """Take the pod's link to Ceph down (or up again): its API link stays."""
        host = self.mount_of(pod).host
        assert host is not None
        _run(["ip", "link", "set", host.link, "down" if cut else "up"])

    def client_usable(self, pod: MasterPod, timeout: float = 5.0) -> bool:
        """Whether the pod's client still has its MDS session and its ceph-fuse runs."""
        mount = self.mount_of(pod)
        if not mount.alive:
            return False
        try:
            return mount.session(timeout=timeout) is not None
        except Exception:  # the MDS not answering: do not decide on that
            return True

    def revive(self, pod: MasterPod) -> None:
        """A fresh mount for a pod whose client is gone (killed, evicted, blocklisted, or
        timed out by the MDS), and its Node Ready again: what a node that came back, or
        a pod recreated elsewhere, has. The pod must not be running."""
        assert not pod.alive(), f"{pod.name} still runs"
        set_node_ready(self.lab, self.node_of(pod), True)
        mount = self.mount_of(pod)
        with contextlib.suppress(ProcessLookupError):
            os.kill(mount.pid, signal.SIGCONT)
        if mount.host is not None:
            _run(["ip", "link", "set", mount.host.link, "up"])
        if self.client_usable(pod) and self._writable(mount.mountpoint):
            return
        mount.unmount(timeout=3)
        self._mount(pod)

    @staticmethod
    def _writable(mountpoint: Path) -> bool:
        probe = mountpoint / ".chaos-revive"
        try:
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError:
            return False
        return True

    # -- read-only, full

    def break_it(self, kind: str, pods: list[MasterPod]) -> Path | None:
        if kind == "readonly":
            for pod in pods:
                _stack_readonly(pod, self.mount_of(pod).mountpoint)
            return None
        (self.lab.shared / ".chaos-full-probe").write_bytes(b"x" * 512)
        self.ceph.set_full(True)
        wait_until(lambda: self._write_fails(errno.ENOSPC), 60,
                   "the cluster full (ENOSPC) for the observer", interval=0.1)
        return None

    def heal(self, kind: str, filler: Path | None, pods: list[MasterPod]) -> None:
        if kind == "readonly":
            for pod in pods:
                _unstack(pod, self.mount_of(pod).mountpoint)
            return
        self.ceph.set_full(False)
        wait_until(lambda: not self._write_fails(errno.ENOSPC), 60,
                   "the cluster writable again", interval=0.1)

    def _write_fails(self, code: int) -> bool:
        """Whether a write + fsync through the observer fails with ``code``. The file is
        made while the cluster is writable and only rewritten: on a full cluster, a new
        file's create fails with EACCES, not ENOSPC."""
        probe = self.lab.shared / ".chaos-full-probe"
        try:
            fd = os.open(probe, os.O_WRONLY)
            try:
                os.pwrite(fd, b"x" * 512, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno != code:
                raise
            return True
        return False

    def close(self) -> None:
        for pod in self.lab.masters:
            with contextlib.suppress(Exception):
                self.freeze_client(pod, False)
                self.cut(pod, False)
        with contextlib.suppress(Exception):
            self.ceph.set_full(False)


def session_settings(ceph: CephLab) -> dict[str, Any]:
    """How long the MDS waits before it ends a silent client's session by itself."""
    return {"session_timeout": ceph.settings.session_timeout,
            "session_autoclose": ceph.settings.session_autoclose}


def wait_seconds_for_mds(ceph: CephLab) -> float:
    """An upper bound for the MDS to evict a silent client on its own (stale after
    session_timeout, evicted after session_autoclose, checked every few seconds)."""
    return float((ceph.settings.session_timeout or 60) + (ceph.settings.session_autoclose
                                                          or 300) + 15)

