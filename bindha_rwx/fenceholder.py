"""What this pod holds on the shared volume while it leads: the lock and its epoch.

The master's storage side of leadership, in one place, so that taking and giving up
the fence cannot disagree between code paths (invariant 11):

- ``take()`` locks the current generation, bumps the epoch and writes the owner
  record (invariant 3). Any failure after the lock was taken gives the lock back
  before it raises, so an I/O error can never leave a lock held by a pod that then
  calls itself a standby.
- ``moved()``: the epoch or generation on disk is not ours any more (fenced).
- ``still_owns()``: the last check before a command that writes zone files
  (`rndc stop` dumps them): lock fresh and the epoch ours, read with a deadline.
- ``release()`` closes our copy of the lock's descriptor; a named still running keeps
  the lock through its inherited copy until it ends (bindha_rwx.storagelock).
"""

from __future__ import annotations

from bindha_rwx.bounded import call_within
from bindha_rwx.fencing import FenceError, Owner, SharedVolume
from bindha_rwx.storagelock import LockWatch, StorageLock


class FenceHolder:
    """The lock, the epoch and the lock's liveness watch of one master pod."""

    def __init__(self, volume: SharedVolume, watch: LockWatch, *, pod: str, node: str,
                 pod_ip: str) -> None:
        self.volume = volume
        self.watch = watch
        self._who = {"pod": pod, "node": node, "pod_ip": pod_ip}
        self.lock: StorageLock | None = None
        self.epoch: int | None = None
        self.owner: Owner | None = None  # the record this pod wrote when it took the fence

    @property
    def held(self) -> bool:
        """The lock is ours and the epoch bumped (named may run)."""
        return self.epoch is not None and self.lock is not None and self.lock.held

    @property
    def fd(self) -> int | None:
        return self.lock.fd if self.lock is not None else None

    def prepare(self) -> None:
        """Standby: keep the current generation's lock file open (StorageLock.open)."""
        generation = self.volume.read_generation()
        if self.lock is None or self.lock.generation != generation:
            self.release()
            self.lock = StorageLock(self.volume.lock_path(generation), generation)
        self.lock.open()

    def take(self) -> int | None:
        """Lock, bump, record; the new epoch, or None if another description holds the
        lock. OSError/FenceError from the volume, with nothing left taken."""
        generation = self.volume.read_generation()
        if self.lock is None or self.lock.generation != generation:
            self.release()
            self.lock = StorageLock(self.volume.lock_path(generation), generation)
        if not self.lock.try_acquire():
            return None
        try:
            epoch = self.volume.bump_epoch()
            owner = Owner.now(epoch=epoch, generation=generation,
                              storage_client=self.volume.storage_client(), **self._who)
            self.volume.write_owner(owner)
        except BaseException:
            self.release()
            raise
        self.epoch = epoch
        self.owner = owner
        self.watch.watch(self.lock)
        return epoch

    def moved(self) -> str | None:
        """Why the fence is no longer ours (epoch or generation moved), else None.

        Reads two small files: blocks on a hung volume (the controller's risk, watched
        by its stall budget; never the guard's)."""
        epoch = self.volume.read_epoch()
        generation = self.volume.read_generation()
        if epoch != self.epoch:
            return f"the epoch on the volume moved from {self.epoch} to {epoch}"
        if self.lock is not None and generation != self.lock.generation:
            return (f"the lock generation moved from {self.lock.generation} to "
                    f"{generation} (fence break)")
        return None

    def still_owns(self, timeout: float) -> bool:
        """Lock fresh and epoch ours, read within ``timeout``: may named write zone files?"""
        if not self.held or not self.watch.fresh():
            return False
        try:
            return call_within(self.moved, timeout, "epoch check") is None
        except (OSError, TimeoutError, FenceError):
            return False

    def release(self) -> None:
        """Stop watching and close our descriptor; the epoch is no longer ours."""
        self.watch.forget()
        if self.lock is not None:
            self.lock.close()
        self.lock = None
        self.epoch = None
        self.owner = None


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds to stay out after ``failures`` consecutive failures to take the fence."""
    return min(cap, base * 2 ** max(0, failures - 1))
