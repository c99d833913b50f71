"""The CephFS rows of the failure matrix (issue 12 item 4), for `scripts/chaos --volume
cephfs`: what a real shared file system adds to the tmpfs faults of harness/faults.py.

Each fault injects, checks what the design promises, heals, and leaves the pods it
broke stopped or running; the runner restarts a stopped pod on a fresh mount
(``CephVolume.revive``), as a node reboot or a rescheduled pod would. The invariants of
every round (no acknowledged update lost, never two named, the epoch never back, the
secondaries converge, no orphan) are the runner's.

On CephFS a client that stops talking keeps its locks until the MDS ends its session
(stale after ``session_timeout``, evicted after ``session_autoclose``: 30 s each in the
lab, 60 s and 300 s by default) or until it is evicted. So every fault that leaves the
old holder's client silent waits that long for the next leader, unless the storage
fence (``fencing.storage: ceph``) has proof that the old pod is gone and evicts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from datetime import datetime
from typing import TYPE_CHECKING

from harness.chaosvolume import CephVolume, wait_seconds_for_mds
from harness.faults import Fault, Outcome, _other_holder_in, _state, pod_tree, signal_tree
from harness.nodes import set_node_ready
from harness.pods import MasterPod, wait_until
from harness.procstate import can_run

if TYPE_CHECKING:
    from harness.chaos import ChaosLab


def _volume(c: ChaosLab) -> CephVolume:
    assert isinstance(c.volume, CephVolume), "a CephFS fault needs --volume cephfs"
    return c.volume


def _fenced(c: ChaosLab) -> bool:
    return c.storage_fencing == "ceph"


def _late_acks(c: ChaosLab, pod: MasterPod, after: float) -> list[str]:
    """Updates ``pod`` acknowledged that were sent after ``after``."""
    return [a.name for a in list(c.writer.acks) if a.server == pod.ip and a.sent > after]


def _takeover(c: ChaosLab, old: MasterPod, since: float, timeout: float) -> MasterPod:
    new = c.new_leader(old, timeout=timeout)
    c.first_ack_from(new, since, timeout=timeout)
    return new


def _evicted_by_fence(c: ChaosLab, old: MasterPod, since: float, wait: bool) -> bool:
    """Whether the audit log on the volume has a storage eviction of ``old``'s client
    written after ``since`` (waited for when expected: the record, and the pod's log
    line, may follow the new named's start)."""
    log = c.lab.shared / ".bindha" / "fence.log"
    after = time.time() - (time.monotonic() - since)

    def found() -> bool:
        try:
            lines = log.read_text().splitlines()
        except FileNotFoundError:
            return False
        for line in lines:
            record = json.loads(line)
            if record.get("action") == "storage-evict" and record.get("pod") == old.name \
                    and datetime.fromisoformat(record["time"]).timestamp() >= after - 1:
                return True
        return False
    if wait:
        with contextlib.suppress(AssertionError):
            wait_until(found, 15, "the storage fence's audit record")
    return found()


def _event_monotonic(pod: MasterPod, event: str, after: float) -> float:
    """When ``pod`` logged its first ``event`` after ``after`` (monotonic), from the log
    line's wall-clock stamp (same machine, same clock)."""
    offset = time.time() - time.monotonic()
    for entry in pod.events():
        if entry.get("event") != event:
            continue
        stamp = datetime.fromisoformat(str(entry["ts"]).replace("Z", "+00:00")).timestamp()
        if stamp - offset >= after - 0.01:
            return stamp - offset
    raise AssertionError(f"{pod.name} logged no {event}")


def _stop(pod: MasterPod) -> None:
    """The pod's processes gone (a rebooted node, or the kubelet's restart): SIGKILL
    the whole tree, so nothing of it closes the lock gracefully either."""
    signal_tree(pod_tree(pod), signal.SIGKILL)
    if pod.process is not None and pod.process.poll() is None:
        pod.wait_exit(10)


# -- the node lost: supervisor, named and ceph-fuse stand still -----------------------------

def node_loss(c: ChaosLab, leader: MasterPod) -> Outcome:
    """The leader's node stops (its supervisor, named and ceph-fuse frozen together: a
    hung VM). A standby gets the Lease and waits on the lock the frozen client keeps.
    It must not start named until the old client is evicted: by the storage fence
    once the node controller says the node is lost (here at once, NodeStatusUnknown),
    or by the MDS after session_autoclose without it. Then the node comes back
    (SIGCONT): the old leader, blocklisted and without the Lease, must not acknowledge
    anything more and stops its named."""
    out = Outcome()
    vol = _volume(c)
    mount = vol.mount_of(leader)
    address = mount.address()
    tree = pod_tree(leader)
    frozen_at = time.monotonic()
    signal_tree(tree, signal.SIGSTOP)
    vol.freeze_client(leader, True)
    try:
        standby = wait_until(lambda: _other_holder_in(c, leader, "blocked-on-fence"),
                             c.timing["leaseDuration"] * 4, "a standby blocked on the fence")
        out.figures["blocked_after_s"] = time.monotonic() - frozen_at
        set_node_ready(c.lab, vol.node_of(leader), None)  # the node controller's verdict
        proved = time.monotonic()
        limit = (c.timing["leaseDuration"] * 4 if _fenced(c)
                 else wait_seconds_for_mds(vol.ceph) + c.timing["leaseDuration"] * 2)
        new = _takeover(c, leader, proved, limit)
        out.figures["takeover_after_freeze_s"] = c.first_ack_from(new, frozen_at, 5) - frozen_at
        out.figures["takeover_after_proof_s"] = c.first_ack_from(new, proved, 5) - proved
        out.expect(new is standby, f"{new.name} took over, not the blocked {standby.name}")
        evicted = _evicted_by_fence(c, leader, frozen_at, wait=_fenced(c))
        out.figures["evicted_by_fence"] = evicted
        out.expect(evicted == _fenced(c), f"storage fence {c.storage_fencing}, yet "
                   f"{new.name} {'did' if evicted else 'did not'} evict the old client")
        out.expect(not _late_acks(c, leader, frozen_at), f"{leader.name} acknowledged "
                   "updates sent while it was frozen")
        # Its client is fenced: no session at the MDS, its address on the OSD blocklist.
        # Then its named (in a call to its frozen client, so not "stopped") is no writer
        # from the moment the new holder got the lock: only the eviction freed it.
        out.expect(mount.session() is None, f"{leader.name}'s client still has a session")
        blocked = address in [entry.get("addr") for entry in vol.ceph.blocklist_ls()]
        if out.expect(blocked, f"{leader.name}'s client {address} is not on the blocklist"):
            fenced_from = _event_monotonic(new, "fence.acquired", proved)
            c.sampler.fenced[leader.name] = (fenced_from, float("inf"))
    finally:
        signal_tree(tree, signal.SIGCONT)
        vol.freeze_client(leader, False)
    resumed = time.monotonic()
    wait_until(lambda: not [p for p in leader.named_processes() if can_run(p)],
               c.timing["leaseDuration"] * 2, f"{leader.name}'s named killed after the node "
               "came back")
    out.figures["old_named_killed_s"] = time.monotonic() - resumed
    late = _late_acks(c, leader, frozen_at)
    out.expect(not late, f"{leader.name} acknowledged {len(late)} updates after it came "
               f"back without its fence: {late[:3]}")
    _stop(leader)  # its client is blocklisted: the runner gives it a new mount
    if leader.name in c.sampler.fenced:  # its named is gone: a writer again when revived
        c.sampler.fenced[leader.name] = (c.sampler.fenced[leader.name][0], time.monotonic())
    return out


# -- cut from Ceph only ---------------------------------------------------------------

def storage_partition(c: ChaosLab, leader: MasterPod) -> Outcome:
    """The leader's link to Ceph goes down; the API still works. Its volume hangs, so
    it must stop acknowledging, its guard (a stale lock) stops named and it gives the
    Lease back. The next holder must not write until the old client is evicted (its
    pod is alive on a Ready node: no proof for the storage fence, so the MDS's
    session_autoclose) or its lock gone."""
    out = Outcome()
    vol = _volume(c)
    named = leader.named_processes()
    cut_at = time.monotonic()
    vol.cut(leader, True)
    try:
        # Killed, if not gone: a named in a write to the cut client sits in uninterruptible
        # I/O with SIGKILL pending until that I/O ends (and keeps the lock meanwhile).
        wait_until(lambda: not [p for p in named if can_run(p)], c.timing["leaseDuration"] * 3,
                   f"{leader.name}'s named killed after its storage was cut")
        out.figures["named_killed_s"] = time.monotonic() - cut_at
        out.figures["supervisor_exited"] = not leader.alive()  # fail-stop: a stalled thread
        new = _takeover(c, leader, cut_at,
                        wait_seconds_for_mds(vol.ceph) + c.timing["leaseDuration"] * 2)
        out.figures["takeover_s"] = c.first_ack_from(new, cut_at, 5) - cut_at
        out.figures["new_leader"] = new.name
        slack = 0.5
        late = _late_acks(c, leader, cut_at + slack)
        out.expect(not late, f"{leader.name} acknowledged {len(late)} updates sent "
                   f"{slack:g}s or more after it was cut from Ceph: {late[:3]}")
    finally:
        vol.cut(leader, False)
    _stop(leader)
    return out


# -- the MDS hangs, or restarts ---------------------------------------------------------

def mds_hang(c: ChaosLab, leader: MasterPod) -> Outcome:
    """The MDS stands still (SIGSTOP) for two Lease durations, then goes on: every
    client's metadata and lock calls hang meanwhile. Whatever the pods decide, the
    invariants hold, and a leader serves again once the MDS answers."""
    out = Outcome()
    vol = _volume(c)
    start = time.monotonic()
    os.kill(vol.ceph.mds_pid, signal.SIGSTOP)
    try:
        time.sleep(c.timing["leaseDuration"] * 2)  # the fault's length, not a wait
    finally:
        os.kill(vol.ceph.mds_pid, signal.SIGCONT)
    resumed = time.monotonic()
    out.figures["acked_during_hang"] = len([a for a in list(c.writer.acks)
                                            if start + 0.5 < a.sent < resumed])
    new = c.any_leader(timeout=wait_seconds_for_mds(vol.ceph))
    out.figures["serving_after_resume_s"] = c.first_ack_from(new, resumed, 60) - resumed
    out.figures["leader_kept"] = new is leader
    return out


def mds_restart(c: ChaosLab, leader: MasterPod) -> Outcome:
    """The MDS crashes and starts again (SIGKILL, no standby): it replays its journal,
    the clients reconnect with their sessions and locks; writes resume."""
    out = Outcome()
    vol = _volume(c)
    start = time.monotonic()
    out.figures["mds_active_after_s"] = vol.ceph.restart_mds()
    new = c.any_leader(timeout=wait_seconds_for_mds(vol.ceph))
    out.figures["serving_after_s"] = c.first_ack_from(new, start, 60) - start
    out.figures["leader_kept"] = new is leader
    return out


def mds_failover(c: ChaosLab, leader: MasterPod) -> Outcome:
    """The active MDS dies for good (SIGKILL; its host is gone): the mon hands rank 0 to
    the standby once it misses the old one's beacons (mds_beacon_grace, Ceph's 15 s),
    the standby replays and the clients reconnect to it with their locks. The volume
    hangs meanwhile, longer than a renewDeadline: whatever the pods decide, the
    invariants hold, and a leader serves again once the new MDS is active. The dead one
    then comes back as the new standby."""
    out = Outcome()
    vol = _volume(c)
    start = time.monotonic()
    old, new_mds, took = vol.ceph.fail_over_mds()
    active_at = start + took
    out.figures["mds_active_after_s"] = took
    out.figures["mds"] = f"{old}->{new_mds}"
    new = c.any_leader(timeout=wait_seconds_for_mds(vol.ceph))
    out.figures["serving_after_mds_active_s"] = c.first_ack_from(new, active_at, 60) - active_at
    out.figures["leader_kept"] = new is leader
    return out


# -- the leader's client evicted, or its ceph-fuse dead ---------------------------------------

def client_evicted(c: ChaosLab, leader: MasterPod) -> Outcome:
    """An operator evicts the leader's client while it leads: its writes fail (EIO), so
    nothing more is acknowledged; its lock is freed by the eviction and the supervisor
    self-fences (the lock is lost) and gives the Lease back; another pod leads."""
    out = Outcome()
    vol = _volume(c)
    number = vol.mount_of(leader).client_id()
    start = time.monotonic()
    out.figures["evict_s"] = vol.ceph.evict(number)
    evicted = time.monotonic()
    new = _takeover(c, leader, start, c.timing["leaseDuration"] * 6)
    out.figures["takeover_s"] = c.first_ack_from(new, start, 5) - start
    late = _late_acks(c, leader, evicted + 0.5)
    out.expect(not late, f"{leader.name} acknowledged {len(late)} updates after its client "
               f"was evicted: {late[:3]}")
    out.expect(not [p for p in leader.named_processes() if can_run(p)],
               f"{leader.name}'s named still runs")
    _stop(leader)
    return out


def fuse_crash(c: ChaosLab, leader: MasterPod) -> Outcome:
    """The leader's ceph-fuse dies (SIGKILL: ENOTCONN on the mount). Its named fails every
    write; the supervisor loses its lock (the re-lock fails) and steps down. The MDS
    keeps the dead client's session, and so its lock, until session_autoclose. With the
    storage fence the old leader itself has the proof (its mount answers ENOTCONN) and
    evicts its own dead client, so the next leader takes the lock at once; without it
    the next leader waits for the MDS."""
    out = Outcome()
    vol = _volume(c)
    mount = vol.mount_of(leader)
    number = mount.client_id()
    start = time.monotonic()
    mount.kill()
    wait_until(lambda: not [p for p in leader.named_processes() if can_run(p)],
               c.timing["leaseDuration"] * 3, f"{leader.name}'s named killed")
    out.figures["named_killed_s"] = time.monotonic() - start
    new = _takeover(c, leader, start,
                    wait_seconds_for_mds(vol.ceph) + c.timing["leaseDuration"] * 2)
    out.figures["takeover_s"] = c.first_ack_from(new, start, 5) - start
    late = _late_acks(c, leader, start + 0.5)
    out.expect(not late, f"{leader.name} acknowledged {len(late)} updates after its "
               f"ceph-fuse died: {late[:3]}")
    if _fenced(c):
        with contextlib.suppress(AssertionError):  # its log line may follow the lock's release
            wait_until(lambda: leader.has_event("fence.own_client_released"), 10,
                       "the release's log line")
        released = leader.has_event("fence.own_client_released")
        out.figures["own_client_released"] = released
        out.expect(released, f"{leader.name} did not release its own dead client")
        out.expect(out.figures["takeover_s"] < (vol.ceph.settings.session_autoclose or 300),
                   f"takeover {out.figures['takeover_s']:.1f}s: the MDS's autoclose, not "
                   "the release")
        out.expect(number not in [s.get("id") for s in vol.ceph.sessions()],
                   f"{leader.name}'s dead client.{number} still has a session")
    out.figures["old_state"] = _state(leader)
    _stop(leader)
    return out


CEPH_FAULTS: dict[str, Fault] = {
    "node-loss": node_loss,
    "storage-partition": storage_partition,
    "mds-hang": mds_hang,
    "mds-restart": mds_restart,
    "mds-failover": mds_failover,
    "client-evicted": client_evicted,
    "fuse-crash": fuse_crash,
}
