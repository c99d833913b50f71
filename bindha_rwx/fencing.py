"""Storage fencing on the shared volume: the fcntl lock, the epoch, the owner record.

Layout under ``dynDir/.bindha/`` (DESIGN "Shared volume layout"):

- ``lock`` (generation 0) or ``lock.<N>`` (generation N): the open-file-description
  lock (bindha_rwx.storagelock), kept by the supervisor and inherited by its named,
  so it lives as long as a writer can write. Metadata lives in other files.
- ``generation``: the current lock generation (absent means 0). ``fence break`` moves
  to a new generation when an old holder's lock is stuck (a frozen VM, a dead NFS
  client); that defeats the old lock, so it is for operators only (invariant 10).
- ``epoch``: the fencing epoch, an integer bumped by every new lock holder, written
  atomically (temp file, fsync, rename, fsync of the folder). A leader that sees the
  epoch move under it has been fenced and must stop ``named`` at once.
- ``owner.json``: who holds the lock (pod, node, pod IP, pid, epoch, since).
- ``probe.<pod>``: the fence holder's write probe (bindha_rwx.volume); ``damaged/``:
  journals the runbook moved aside (docs/runbooks/journal-out-of-sync.md).

File I/O on a dead network volume can block without bound; the supervisor never
does it on the thread that renews the Lease or on the thread that kills ``named``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bindha_rwx.files import atomic_write

META_DIR = ".bindha"


class FenceError(Exception):
    """The fencing metadata is unreadable or inconsistent; the message says which file."""


@dataclass(frozen=True)
class Owner:
    pod: str
    node: str
    pod_ip: str
    pid: int
    epoch: int
    generation: int
    since: str  # ISO 8601 UTC, for people; no decision compares it with a clock
    # The holder's storage client at fence time (CephFS: "client4119", the mount's
    # ceph.client_id): what a storage fence evicts once the holder is proven gone.
    storage_client: str | None = None

    @classmethod
    def now(cls, *, pod: str, node: str, pod_ip: str, epoch: int, generation: int,
            storage_client: str | None = None) -> Owner:
        since = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return cls(pod=pod, node=node, pod_ip=pod_ip, pid=os.getpid(), epoch=epoch,
                   generation=generation, since=since, storage_client=storage_client)


class SharedVolume:
    """The fencing metadata in ``dynDir/.bindha``."""

    def __init__(self, dyn_dir: Path) -> None:
        self.dyn_dir = dyn_dir
        self.meta_dir = dyn_dir / META_DIR

    @property
    def epoch_file(self) -> Path:
        return self.meta_dir / "epoch"

    @property
    def owner_file(self) -> Path:
        return self.meta_dir / "owner.json"

    @property
    def generation_file(self) -> Path:
        return self.meta_dir / "generation"

    def ensure(self) -> None:
        """Create ``.bindha/`` when missing (the first pod ever on a new volume)."""
        if not self.dyn_dir.is_dir():
            raise FenceError(f"{self.dyn_dir} (paths.dynDir) is not a directory: mount the "
                             "shared ReadWriteMany volume there")
        if not os.access(self.dyn_dir, os.W_OK | os.X_OK):
            raise FenceError(_not_writable(self.dyn_dir))
        try:
            self.meta_dir.mkdir(mode=0o755, exist_ok=True)
        except PermissionError:
            raise FenceError(_not_writable(self.dyn_dir)) from None
        if not os.access(self.meta_dir, os.W_OK | os.X_OK):
            raise FenceError(_not_writable(self.meta_dir))

    def _read_int(self, path: Path) -> int:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            value = int(text)
        except ValueError:
            raise FenceError(f"{path} holds {text[:40]!r}, not an integer: see "
                             "docs/runbooks/fencing-metadata.md") from None
        if value < 0:
            raise FenceError(f"{path} holds a negative number {value}")
        return value

    def read_epoch(self) -> int:
        return self._read_int(self.epoch_file)

    def write_epoch(self, epoch: int) -> None:
        atomic_write(self.epoch_file, f"{epoch}\n")

    def bump_epoch(self) -> int:
        """Next epoch; only the lock holder (or `fence break`) may call this."""
        epoch = self.read_epoch() + 1
        self.write_epoch(epoch)
        return epoch

    def read_generation(self) -> int:
        return self._read_int(self.generation_file)

    def write_generation(self, generation: int) -> None:
        atomic_write(self.generation_file, f"{generation}\n")

    def lock_path(self, generation: int | None = None) -> Path:
        gen = self.read_generation() if generation is None else generation
        return self.meta_dir / ("lock" if gen == 0 else f"lock.{gen}")

    def read_owner(self) -> Owner | None:
        try:
            data = json.loads(self.owner_file.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as exc:
            raise FenceError(f"{self.owner_file} is not readable JSON: {exc}") from None
        optional = {"storage_client"}
        try:
            return Owner(**{k: data[k] for k in Owner.__dataclass_fields__
                            if k not in optional or k in data})
        except (KeyError, TypeError):
            raise FenceError(f"{self.owner_file} lacks fields of an owner record") from None

    def storage_client(self) -> str | None:
        """This mount's CephFS client id (the ``ceph.client_id`` vxattr), or None on any
        other filesystem."""
        try:
            return os.getxattr(self.dyn_dir, "ceph.client_id").decode().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def write_owner(self, owner: Owner) -> None:
        atomic_write(self.owner_file, json.dumps(asdict(owner), indent=1) + "\n")


def _not_writable(path: Path) -> str:
    """Why this pod cannot use ``path``, and the fix: fsGroup is not applied to most RWX
    volumes (hostPath, Manila NFS with fsGroupPolicy None), so a share that root owns
    stays closed to the image's uid 101 whatever the pod spec says."""
    try:
        st = path.stat()
        owner = f"owned by uid {st.st_uid} gid {st.st_gid}, mode {st.st_mode & 0o7777:04o}"
    except OSError as exc:
        owner = f"not readable ({exc.strerror})"
    return (f"{path} is {owner}: uid {os.getuid()} (this pod) cannot write there. "
            f"fsGroup is not applied to most ReadWriteMany volumes, so give the share to "
            f"the pods' user once, as root where it is mounted: chown -R {os.getuid()}:"
            f"{os.getgid()} <share> (docs/deploy.md, \"The shared volume's owner\")")
