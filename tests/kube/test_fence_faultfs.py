"""The fence on a volume that fails like a network mount (harness.faultfs): each master
pod has its own FUSE mount of one shared directory, and one pod's mount can return
errors, hang, or lose its locks while the others go on (issue 11 items 1, 2, 3, 5).

Real named, real apiserver, supervisors as processes; short timings from the product's
config. Bounds are generous and prove invariants; speed is for benchmarks/.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import dns.exception
import dns.message
import dns.query
import dns.update
import psutil
import pytest

from bindha_rwx.master import thread_budgets
from bindha_rwx.scaffold import EXIT_THREAD_DIED
from harness.bindlab import keyring
from harness.faultfs import FaultVolume, PodMount, unavailable
from harness.pods import MasterLab, MasterPod, http_probe, samples, wait_until
from tests.conftest import require

pytestmark = [pytest.mark.faultfs, pytest.mark.kube, pytest.mark.named, pytest.mark.root]

ZONE = "ha.example."
T = {"lease": 3.0, "deadline": 1.6, "retry": 0.4, "stop": 0.8}


class Mounted:
    """The lab's master pods, each on its own faultfs mount of ``lab.shared``."""

    def __init__(self, lab: MasterLab) -> None:
        self.lab = lab
        self.volume = FaultVolume(lab.shared)
        self.mounts: dict[str, PodMount] = {}

    def add(self) -> MasterPod:
        name = f"bind-master-{len(self.lab.masters)}"
        mount = self.volume.mount(name, self.lab.root / f"{name}.dyn")
        pod = self.lab.add_pod(name, dyn_dir=mount.path)
        self.mounts[name] = mount
        return pod

    def start(self, count: int) -> list[MasterPod]:
        pods = [self.add() for _ in range(count)]
        for pod in pods:
            pod.start()
        return pods

    def close(self) -> None:
        for mount in self.mounts.values():
            if mount.alive:
                mount.heal()
        self.lab.stop()
        self.volume.close()


@pytest.fixture
def mounted(lab: MasterLab) -> Iterator[Mounted]:
    why = unavailable()
    require(why is None, why or "")
    made = Mounted(lab)
    try:
        yield made
    finally:
        made.close()


def _in_disk_sleep(pid: int) -> bool:
    """A thread of ``pid`` is in uninterruptible sleep. After SIGKILL the main thread of
    a multi-threaded process is a zombie while another waits in the kernel, so the
    process's own state says 'Z': look at every thread."""
    try:
        tasks = psutil.Process(pid).threads()
    except psutil.Error:
        return False
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task.id}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "D":
                    return True
        except OSError:
            continue
    return False


def _probe_live(pod: MasterPod) -> subprocess.CompletedProcess[str]:
    return pod.probe("live")


@pytest.mark.parametrize(("kind", "ops", "paths"), [
    ("EIO", "mutating", ".bindha/owner.json*"), ("ESTALE", "mutating", ".bindha/owner.json*"),
    ("ENOSPC", "mutating", ".bindha/owner.json*"), ("EROFS", "mutating", ".bindha/owner.json*"),
    ("EIO", "mutating", ".bindha/epoch*"),
    ("EIO", "lock", ".bindha/lock*"),  # the lock call itself fails (fasteners: ThreadError)
])
def test_an_io_error_while_taking_the_fence_lets_a_healthy_pod_lead(mounted: Mounted,
                                                                      kind: str, ops: str,
                                                                      paths: str):
    lab = mounted.lab
    broken = mounted.add()
    mounted.mounts[broken.name].fault(kind, ops=ops, paths=paths)
    broken.start()
    wait_until(lambda: lab.holder() == broken.name or broken.has_event("fence.take_failed"),
               15, f"the first pod takes the Lease and fails to write its owner ({kind})")
    healthy = mounted.add()
    healthy.start()
    leader = lab.leader(timeout=8 * T["lease"] + 10)
    assert leader is healthy, "the pod that failed kept the Lease or the lock"
    assert broken.named_processes() == []
    owner = lab.volume.read_owner()
    assert owner is not None and owner.pod == healthy.name
    assert owner.epoch == lab.volume.read_epoch()


def test_the_lock_lives_as_long_as_a_named_stuck_in_io(mounted: Mounted):
    """The supervisor dies while its named is stuck in a journal write on a hung mount:
    that named survives SIGKILL, so its lock must hold until it is gone (invariant 11)."""
    lab = mounted.lab
    old, standby = mounted.start(2)
    leader = lab.leader()
    if leader is standby:
        old, standby = standby, old
    named = old.named_processes()[0]
    mount = mounted.mounts[old.name]
    key = old.config.keys["update-key"]

    def update(name: str, timeout: float) -> dns.message.Message:
        message = dns.update.UpdateMessage(ZONE, keyring=keyring(key), keyname=key.name)
        message.add(name, 300, "TXT", '"x"')
        return dns.query.tcp(message, old.ip, timeout=timeout)

    update("before", 5)  # the journal exists: the hung write is a transaction's
    mount.fault("hang", ops="write", paths="*.jnl")
    with pytest.raises(dns.exception.Timeout):
        update("stuck", 1.0)  # named's journal write hangs
    mount.wait_held(1, timeout=5)
    old.signal(signal.SIGKILL)
    old.wait_exit(timeout=5)
    # The parent-death SIGKILL reached named, which cannot end inside the write.
    wait_until(lambda: _in_disk_sleep(named.pid), 5,
               "the old named is stuck in the kernel (a thread in D state)")
    wait_until(lambda: lab.holder() == standby.name, T["lease"] + 10,
               "the standby takes the Lease")
    wait_until(lambda: standby.has_event("fence.blocked"), 5, "and is blocked on the fence")
    for _ in samples(2 * T["lease"], 0.1):
        assert _in_disk_sleep(named.pid)
        assert standby.named_processes() == [], "a second named while the first may write"
    mount.heal()
    named.wait(timeout=10)
    assert lab.leader(timeout=15) is standby


def test_a_lost_lock_is_noticed_and_the_leader_self_fences(mounted: Mounted):
    """The leader's client loses its lock (an eviction): its next touch fails, named is
    killed within a retryPeriod or two, and the standby takes over (invariant 14)."""
    lab = mounted.lab
    pods = mounted.start(2)
    leader = lab.leader()
    standby = next(p for p in pods if p is not leader)
    named = leader.named_processes()[0]
    dropped_at = time.monotonic()
    assert mounted.mounts[leader.name].drop_locks() == 1
    named.wait(timeout=T["retry"] + T["deadline"] + T["stop"] + 5)
    dead_after = time.monotonic() - dropped_at
    assert dead_after <= 2 * T["retry"] + T["stop"] + 1.0, dead_after
    wait_until(lambda: leader.has_event("fence.lock_lost"), 5, "the loss is logged")
    assert lab.leader(timeout=2 * T["lease"] + 10) is standby


def test_a_hung_volume_under_the_leader_ends_its_supervisor(mounted: Mounted):
    """Every request of the leader's mount hangs. Its lock is not fresh any more, so
    named dies; the controller, stuck reading the epoch, passes its budget; probe live
    fails and the process ends, so the standby gets the Lease. The old process keeps
    the lock until its stuck thread can return, so the standby writes only after heal."""
    lab = mounted.lab
    pods = mounted.start(2)
    leader = lab.leader()
    standby = next(p for p in pods if p is not leader)
    named = leader.named_processes()[0]
    budget = thread_budgets(leader.config)["controller"]
    mount = mounted.mounts[leader.name]
    mount.fault("hang")
    hung_at = time.monotonic()
    # named may itself be stuck on the mount and outlive SIGKILL: what counts is that
    # the guard signalled it once no touch of the lock succeeded within renewDeadline.
    wait_until(lambda: leader.has_event("fence.guard_kill"), T["deadline"] + T["retry"] + 3,
               "the guard kills named: the lock is not fresh")
    assert time.monotonic() - hung_at <= T["deadline"] + T["retry"] + 1.5
    wait_until(lambda: _probe_live(leader).returncode == 1, budget + 5, "probe live fails")
    answer = http_probe(leader, "/healthz")  # its HTTP thread answers: 503, and why
    assert answer is not None and answer[0] == 503 and "made no progress" in answer[1], \
        answer
    wait_until(lambda: lab.holder() == standby.name, budget + T["lease"] + 10,
               "the standby gets the Lease once the hung supervisor ended")
    for _ in samples(T["lease"], 0.1):
        assert standby.named_processes() == [], "named on the standby under a held lock"
    mount.heal()
    assert leader.wait_exit(timeout=10) == EXIT_THREAD_DIED
    named.wait(timeout=10)
    assert lab.leader(timeout=15) is standby


def test_a_candidate_whose_volume_hangs_does_not_acquire(mounted: Mounted):
    """A standby whose own mount hangs would only hold the Lease stuck or blocked: it
    stays out (its write probe says why), and leads once its mount answers again."""
    lab = mounted.lab
    pods = mounted.start(2)
    leader = lab.leader()
    standby = next(p for p in pods if p is not leader)
    mount = mounted.mounts[standby.name]
    mount.fault("hang")
    wait_until(lambda: standby.has_event("volume.unwritable"), 5 * T["retry"] + 5,
               "the standby's write probe reports its hung volume")
    leader.signal(signal.SIGTERM)  # a graceful handover: the Lease is released at once
    assert leader.wait_exit(timeout=15) == 0
    for _ in samples(2 * T["lease"], 0.1):
        assert lab.holder() is None, "a candidate with a hung volume took the Lease"
    assert standby.has_event("lease.not_acquiring")
    mount.heal()
    assert lab.leader(timeout=5 * T["retry"] + T["lease"] + 10) is standby


def test_named_rereads_the_volume_after_it_failed_under_the_leader(mounted: Mounted):
    """The leader's volume refuses every write (ENOSPC) for a while, then heals. named
    may have seen a journal write fail that reached the volume anyway (seen on a full
    CephFS: its zone then lags its journal and it refuses every update for good), so
    the supervisor starts named afresh once the volume is writable again: same leader,
    same Lease, a new named that serves every acknowledged update."""
    from harness.writer import UpdateWriter, served_names

    lab = mounted.lab
    mounted.start(1)
    leader = lab.leader()
    old = leader.named_processes()[0]
    key = leader.config.keys["update-key"]
    writer = UpdateWriter(ZONE, [leader.ip], key, interval=0.02).start()
    try:
        wait_until(lambda: len(writer.acks) > 20, 15, "updates acknowledged")
        mount = mounted.mounts[leader.name]
        mount.fault("ENOSPC", ops="mutating")
        wait_until(lambda: leader.has_event("volume.unwritable"), 10, "the probe sees it")
        mount.heal()
        wait_until(lambda: leader.has_event("named.restart"), 10, "named restarted")
        healed = time.monotonic()
        wait_until(lambda: [p for p in leader.named_processes() if p.pid != old.pid], 15,
                   "a new named")
        wait_until(lambda: any(a.sent > healed for a in writer.acks), 20,
                   "updates acknowledged again")
    finally:
        writer.stop()
    assert lab.holder() == leader.name and not old.is_running()
    served = served_names(leader.ip, ZONE, leader.config.keys["transfer-key"])
    lost = [a.name for a in writer.acks if a.name not in served]
    assert lost == [], f"acknowledged updates lost: {lost[:5]}"
