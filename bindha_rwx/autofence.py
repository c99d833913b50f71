"""The master's side of the storage fence (``fencing.storage: ceph``), on job threads.

- The check: at start (and every RECHECK seconds while it fails), one bounded
  ``session ls`` with the fencer key says whether the fence could act: the cluster
  answers, the key has its capabilities, the MDS exists. A failure is reported (log
  ``fence.storage_unavailable``, Event ``StorageFenceUnavailable``, the pod's state
  detail that `probe ready` and `status` show) and changes nothing else: the pod stays
  a standby or leads as before, since leading on a free lock needs no fencer.
- The owner record read ahead: a standby reads it every retryPeriod (the master's
  lock-prepare job hands it over). On CephFS the first read of a file by a client that
  holds no capabilities on it waits for the file's last writer to give them up; when
  that writer's client is frozen (a lost node), that is until the MDS ends its session,
  about ``session_timeout``, which would be the whole takeover. A standby that read it
  all along shares the capabilities and reads at once; and when a read does not answer
  within a retryPeriod the fence uses the copy read ahead (its pod must still be proven
  gone; a stale copy can only name an earlier holder, whose eviction frees nothing).
- The fence: in blocked-on-fence, every retryPeriod, the eviction of the lock owner's
  client once its pod is proven gone (bindha_rwx.eviction, the same steps as `fence
  evict`). ``fencing.ceph.auto: false`` leaves that to an operator.
- The release of this pod's own dead client: a leader whose ceph-fuse died (the mount
  answers ENOTCONN) has stepped down, but the MDS keeps the dead client's session, and
  with it the lock, until ``session_autoclose`` (300 s by default): no other pod has
  proof, since this one lives. This pod has it: nothing of it can write through a
  FUSE connection that is gone, and its named was killed before. So it evicts its own
  client (the id it recorded when it took the fence) and the next holder takes the
  lock at once. Its audit is the log line and the Event: the volume's fence.log is out
  of this pod's reach. A mount that hangs (cut from Ceph) or answers proves nothing
  and is left to the MDS.

The controller only starts jobs and reads their last word (``report``); every API,
volume and Ceph call runs on the job's thread, each with a timeout, so nothing here
sits on the renewal or guard path (DESIGN: liveness of the fence beats everything).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

from bindha_rwx.cephfence import StorageFenceError, client_number
from bindha_rwx.config import Config
from bindha_rwx.eviction import RUNBOOK, Eviction, EvictionFailed, Refused, event_message
from bindha_rwx.fencing import FenceError, Owner, SharedVolume
from bindha_rwx.kube import Publisher
from bindha_rwx.log import get_logger

log = get_logger("master")

RECHECK = 30.0  # seconds between start checks while the fencer cannot reach its MDS


class AutoFence:
    """The start check and the blocked standby's eviction jobs of one master pod."""

    def __init__(self, config: Config, volume: SharedVolume, publisher: Publisher,
                 identity: str) -> None:
        self.settings = config.fencing
        self.retry = config.timing.retry_period
        self.eviction = Eviction(config, publisher.core, volume)
        self.volume = volume
        self.publisher = publisher
        self.identity = identity
        self._job: threading.Thread | None = None
        self._result: tuple[str, Any] | None = None
        self._said: tuple[str, Any] | None = None
        self._next_try = 0.0
        self._check_job: threading.Thread | None = None
        self._check: str | None = None  # "ok", or why the fence cannot act
        self._check_said: str | None = None
        self._next_check = 0.0
        self.last: str | None = None  # the fence job's last word, for the state detail
        self.owner_ahead: Owner | None = None  # read by the standby's lock-prepare job
        self._owner_read: threading.Thread | None = None
        self._release_job: threading.Thread | None = None

    # -- from the controller (no I/O) ---------------------------------------------

    def tick(self) -> None:
        """Every controller step: start the check when due, say any news."""
        now = time.monotonic()
        if now >= self._next_check and not _alive(self._check_job):
            self._next_check = now + RECHECK
            if self._check != "ok":
                self._check_job = threading.Thread(target=self._run_check,
                                                   name="storage-check", daemon=True)
                self._check_job.start()
        self.report()

    def problem(self) -> str | None:
        """Why the storage fence could not act now, for the state detail; else None."""
        check = self._check
        return None if check in (None, "ok") else f"storage fence unavailable: {check}"

    def step(self) -> None:
        """blocked-on-fence: start an eviction job when due (at most one at a time)."""
        self.report()
        now = time.monotonic()
        if _alive(self._job) or now < self._next_try:
            return
        self._next_try = now + self.retry
        if not self.settings.auto:
            self._result = ("waiting", "automatic eviction is off (fencing.ceph.auto: "
                            "false): an operator runs `bindha-rwx fence evict --confirm-dead "
                            f"<pod>` ({RUNBOOK})")
            return
        self._job = threading.Thread(target=self._run_fence, name="storage-fence",
                                     daemon=True)
        self._job.start()

    def release_dead_client(self, owner: Owner) -> None:
        """This pod just gave up the fence it held as ``owner``: if its own mount is dead,
        evict its client so that its lock frees now (a job; at most one at a time)."""
        if not self.settings.auto or _alive(self._release_job):
            return
        self._release_job = threading.Thread(target=self._run_release, args=(owner,),
                                             name="storage-release", daemon=True)
        self._release_job.start()

    def new_episode(self) -> None:
        """Blocked again: say the fence's news afresh (the same words included)."""
        self._said = None
        self.last = None

    def settle(self, timeout: float) -> None:
        """The lock was just taken: let an eviction job that freed it say its last word."""
        if self._job is not None:
            self._job.join(timeout)
        self.report()

    def report(self) -> None:
        """Say the jobs' news once each (log, Event)."""
        check = self._check
        if check is not None and check != self._check_said:
            before, self._check_said = self._check_said, check
            if check == "ok":
                log.info("fence.storage_ready", mds=self.settings.ceph_mds,
                         id=self.settings.ceph_id, again=before is not None)
            else:
                log.error("fence.storage_unavailable", why=check, conf=str(
                    self.settings.ceph_conf), keyring=str(self.settings.ceph_keyring),
                    effect="this pod cannot evict a lost holder's client; it stays a "
                    "standby or leads as before")
                self.publisher.event("StorageFenceUnavailable", f"the storage fence cannot "
                                     f"act: {check}"[:1000], "Warning")
        result, self._result = self._result, None
        if result is None or result == self._said:
            return
        self._said = result
        outcome, why = result
        if outcome == "released":
            log.warning("fence.own_client_released", **why)
            self.publisher.event("StorageClientReleased", (
                f"evicted this pod's own dead client {why['client']} at the MDS "
                f"({why['outcome']}): {why['why']}; the next holder takes the lock now. "
                "Delete this pod to give it a new mount")[:1000], "Warning")
            return
        if outcome == "evicted":
            self.last = f"evicted {', '.join(why['clients'])} of {why['pod']}"
            log.warning("fence.storage_evicted", **why)
            self.publisher.event("StorageFenced", event_message(why), "Warning")
            return
        self.last = f"storage fence {outcome}: {why}"[:300]
        if outcome == "waiting":
            log.info("fence.storage_waiting", why=why)
        elif outcome == "refused":
            log.warning("fence.storage_refused", why=why, runbook=RUNBOOK)
            self.publisher.event("StorageFenceRefused", f"{why}"[:1000], "Warning")
        else:
            log.error("fence.storage_failed", why=why, runbook=RUNBOOK)
            self.publisher.event("StorageFenceFailed", f"{why}"[:1000], "Warning")

    # -- the jobs (their own threads; they never raise) ---------------------------

    def _owner(self) -> Owner | None:
        """The owner record read now, within a retryPeriod, else the copy read ahead.
        At most one read is outstanding: a read stuck behind a frozen client's
        capabilities is not joined by another each retry."""
        if not _alive(self._owner_read):
            box: dict[str, Any] = {}

            def read() -> None:
                try:
                    box["owner"] = self.volume.read_owner()
                except Exception as exc:  # handed to the fence job below
                    box["error"] = exc

            self._owner_read = threading.Thread(target=read, name="owner-read", daemon=True)
            self._owner_read.start()
            self._owner_read.join(self.retry)
            if "error" in box:
                raise box["error"]
            if "owner" in box:
                self.owner_ahead = box["owner"] or self.owner_ahead
                return box["owner"]
        if self.owner_ahead is None:
            raise FenceError(f"the owner record did not answer within {self.retry:g}s "
                             "and none was read ahead")
        log.info("fence.owner_read_ahead", pod=self.owner_ahead.pod,
                 epoch=self.owner_ahead.epoch, why="the owner record does not answer "
                 "(its last writer's client may be frozen)")
        return self.owner_ahead

    def _run_check(self) -> None:
        try:
            self.eviction.fence.sessions()
            self._check = "ok"
        except StorageFenceError as exc:
            self._check = str(exc)[:500]
        except Exception as exc:  # never a traceback: the check only reports
            self._check = f"{type(exc).__name__}: {exc}"[:500]

    def _run_release(self, owner: Owner) -> None:
        """Evict this pod's own client if its mount answers ENOTCONN (its FUSE daemon
        is gone for good); anything else proves nothing and changes nothing."""
        try:
            try:
                os.stat(self.volume.dyn_dir)
                return  # the mount answers: its client lives, and frees its lock itself
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:
                    return
            why = (f"its mount {self.volume.dyn_dir} answers ENOTCONN (the ceph-fuse "
                   "behind it is gone) and its named was killed")
            if not owner.storage_client:
                self._result = ("waiting", f"{why}, but no client id was recorded for it "
                                "(ceph-csi): the MDS frees its lock after session_autoclose, "
                                f"or an operator runs `bindha-rwx fence evict` ({RUNBOOK})")
                return
            number = client_number(owner.storage_client)
            outcome = self.eviction.fence.evict(f"client.{number}")  # or "gone already"
            self._result = ("released", {"client": f"client.{number}", "outcome": outcome,
                                         "why": why, "pod": owner.pod, "epoch": owner.epoch})
        except (StorageFenceError, OSError) as exc:
            self._result = ("failed", f"releasing this pod's own dead client: {exc}"[:700])
        except Exception as exc:  # never a traceback: the MDS frees it after autoclose
            self._result = ("failed", f"releasing this pod's own dead client: "
                            f"{type(exc).__name__}: {exc}"[:700])

    def _run_fence(self) -> None:
        """Prove the owner gone, find its client, evict; the outcome for the controller."""
        try:
            owner = self._owner()
            if owner is None:
                self._result = ("waiting", "no owner record: nobody to evict")
                return
            problem, proof = self.eviction.proof(owner)
            if problem is not None:
                self._result = ("waiting", problem)
                return
            target = self.eviction.plan(owner)
            if not target.sessions:
                self._result = ("waiting", f"{target.basis} has no MDS session any more "
                                "(gone already): its lock is free at the MDS")
                return
            self._check = "ok"  # the MDS answered with this key just now
            self._result = ("evicted", self.eviction.carry_out(
                owner, target, by=self.identity, via="automatic", proof=proof,
                overridden=[]))
        except Refused as exc:
            self._result = ("refused", str(exc)[:700])
        except EvictionFailed as exc:
            self._result = ("failed", str(exc)[:700])
        except (StorageFenceError, FenceError, OSError) as exc:
            self._result = ("failed", str(exc)[:700])
        except Exception as exc:  # API errors: stay blocked, say why, never a traceback
            self._result = ("failed", f"{type(exc).__name__}: {exc}"[:700])


def _alive(job: threading.Thread | None) -> bool:
    return job is not None and job.is_alive()
