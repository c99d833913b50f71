"""The failure matrix of DESIGN.md as faults a chaos round injects, each with what the
design says must follow, checked from outside.

A fault gets the lab and the current leader, injects, checks the expected reaction,
heals what it broke (a deleted pod is started again, as its StatefulSet would) and
returns an Outcome: figures for the report and the violations it saw. The
invariants common to every round (no acknowledged update lost, one writer, the
secondaries converge, no orphan) are checked by the runner, not here.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from bindha_rwx.journal import read_header
from bindha_rwx.probes import RuntimeFiles
from harness.bindlab import soa_serial
from harness.invariants import possible_writers
from harness.pods import MasterPod, configmap_update, wait_until
from harness.procstate import can_run
from harness.runbooks import repair_intact

if TYPE_CHECKING:
    from harness.chaos import ChaosLab


@dataclass
class Outcome:
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def expect(self, ok: bool, violation: str) -> bool:
        if not ok:
            self.violations.append(violation)
        return ok


Fault = Callable[["ChaosLab", MasterPod], Outcome]


def pod_tree(pod: MasterPod) -> list[psutil.Process]:
    """The pod's supervisor and every process under it (what a container holds)."""
    try:
        root = psutil.Process(pod.pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def signal_tree(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def _state(pod: MasterPod) -> str | None:
    state = RuntimeFiles(pod.work_dir).read_state()
    return state.state if state and state.pid == pod.pid else None


def _other_holder_in(c: ChaosLab, leader: MasterPod, state: str) -> MasterPod | None:
    """The pod other than ``leader`` that holds the Lease, if it reports ``state``."""
    holder = c.lab.holder()
    if holder and holder != leader.name:
        pod = c.lab.pod(holder)
        return pod if _state(pod) == state else None
    return None


# -- leader pod deleted / evicted / drained -----------------------------------------

def pod_delete(c: ChaosLab, leader: MasterPod) -> Outcome:
    """SIGTERM, as the kubelet sends on delete: a handover inside the grace period."""
    out = Outcome()
    start = time.monotonic()
    leader.signal(signal.SIGTERM)
    try:
        code = leader.wait_exit(c.grace_seconds)
    except subprocess.TimeoutExpired:
        out.expect(False, f"{leader.name} still running {c.grace_seconds:g}s after SIGTERM "
                          "(the kubelet would SIGKILL it)")
        leader.signal(signal.SIGKILL)
        code = leader.wait_exit(10)
    out.expect(code == 0, f"{leader.name} exited {code} after SIGTERM, not 0")
    out.figures["exit_s"] = time.monotonic() - start
    new = c.new_leader(leader, timeout=c.timing["leaseDuration"] * 4)
    out.figures["write_gap_s"] = c.first_ack_from(new, start, timeout=30) - start
    out.figures["new_leader"] = new.name
    return out


# -- leader supervisor SIGKILLed ------------------------------------------------------

def supervisor_kill(c: ChaosLab, leader: MasterPod) -> Outcome:
    """named dies with its supervisor; the lock frees; the Lease expires; takeover."""
    out = Outcome()
    named = leader.named_processes()
    start = time.monotonic()
    leader.signal(signal.SIGKILL)
    leader.wait_exit(10)
    gone = _wait_gone(named, 2.0)
    out.expect(gone, f"{leader.name}'s named outlived its SIGKILLed supervisor by 2 s")
    new = c.new_leader(leader, timeout=c.timing["leaseDuration"] * 4)
    out.figures["takeover_s"] = c.first_ack_from(new, start, timeout=30) - start
    out.figures["new_leader"] = new.name
    return out


# -- named crashes on the leader ------------------------------------------------------

def named_crash(c: ChaosLab, leader: MasterPod) -> Outcome:
    """SIGKILL of the leader's named: the same supervisor restarts it and keeps leading;
    at the 3rd crash within 60 s it steps down instead and another pod takes over
    (RestartPolicy's defaults). Crashes the supervisor forgot (it forgets them after
    60 s of serving or a step-down) only make a restart more likely, so the check is
    one-sided: a step-down before the 3rd crash we caused is a violation."""
    out = Outcome()
    named = leader.named_processes()
    if not out.expect(len(named) == 1, f"{leader.name} runs {len(named)} named, not 1"):
        return out
    start = time.monotonic()
    crashes = [t for t in c.crashes.get(leader.pid, []) if t > start - 60] + [start]
    c.crashes[leader.pid] = crashes
    named[0].kill()

    def reaction() -> str | None:
        if [p for p in leader.named_processes() if p.pid != named[0].pid]:
            return "restarted"
        holder = c.lab.holder()
        return "stepped-down" if holder and holder != leader.name else None

    result = wait_until(reaction, 20 + c.timing["leaseDuration"], "named restarted or "
                        "the leader stepped down")
    out.figures["reaction"] = result
    out.figures["crashes_in_60s"] = len(crashes)
    if result == "restarted":
        out.figures["restart_s"] = time.monotonic() - start
        out.figures["write_gap_s"] = c.first_ack_from(leader, start, timeout=30) - start
    else:
        out.expect(len(crashes) >= 3, f"{leader.name} stepped down after {len(crashes)} "
                                      "crash(es) in 60 s, before the 3rd")
        new = c.new_leader(leader, timeout=c.timing["leaseDuration"] * 4)
        out.figures["write_gap_s"] = c.first_ack_from(new, start, timeout=30) - start
        c.crashes.pop(leader.pid, None)
    return out


# -- leader cut off from the API server -------------------------------------------------

def api_partition(c: ChaosLab, leader: MasterPod) -> Outcome:
    """The leader's API traffic black-holed: it stops named before its Lease can expire
    (the standby may take it only then), and the standby takes over."""
    out = Outcome()
    named = leader.named_processes()
    start = time.monotonic()
    leader.proxy.blackhole()
    try:
        stopped = _wait_gone(named, c.timing["leaseDuration"] * 2)
        stopped_after = time.monotonic() - start
        out.figures["named_stopped_s"] = stopped_after
        out.expect(stopped and stopped_after < c.timing["leaseDuration"],
                   f"{leader.name}'s named ran {stopped_after:.2f}s after the partition; the "
                   f"Lease ({c.timing['leaseDuration']:g}s) could have expired under it")
        new = c.new_leader(leader, timeout=c.timing["leaseDuration"] * 4)
        out.figures["write_gap_s"] = c.first_ack_from(new, start, timeout=30) - start
        out.figures["new_leader"] = new.name
    finally:
        leader.proxy.restore()
    wait_until(lambda: _state(leader) == "standby", 30, f"{leader.name} back as a standby")
    return out


# -- API server down for all ---------------------------------------------------------

def api_down(c: ChaosLab, leader: MasterPod) -> Outcome:
    """Every pod's API traffic black-holed: the leader stops writing (no failsafe
    mode is on), no one else starts, and the secondaries go on answering reads."""
    out = Outcome()
    named = leader.named_processes()
    start = time.monotonic()
    for pod in c.lab.pods:
        pod.proxy.blackhole()
    try:
        stopped = _wait_gone(named, c.timing["leaseDuration"] * 2)
        out.figures["named_stopped_s"] = time.monotonic() - start
        out.expect(stopped, f"{leader.name}'s named still runs with the API down")
        # Stay down a whole Lease more: nobody may start a named meanwhile.
        quiet_from = time.monotonic()
        time.sleep(c.timing["leaseDuration"])
        started = c.sampler.max_writers(quiet_from)
        out.expect(started == 0, f"{started} named ran while the API was down for all")
        answering = [s.name for s in c.lab.secondaries if soa_serial(s.ip, c.zone) is not None]
        out.figures["secondaries_answering"] = len(answering)
        out.expect(len(answering) == len(c.lab.secondaries),
                   f"only {answering} of the secondaries answer with the API down")
    finally:
        for pod in c.lab.pods:
            pod.proxy.restore()
    healed = time.monotonic()
    new = c.any_leader(timeout=c.timing["leaseDuration"] * 4)
    out.figures["writes_resume_after_heal_s"] = c.first_ack_from(new, healed, timeout=30) \
        - healed
    return out


# -- leader frozen (SIGSTOP, a paused VM) while holding the lock ---------------------------

def _freeze_until_blocked(c: ChaosLab, leader: MasterPod, out: Outcome
                          ) -> tuple[list[psutil.Process], MasterPod | None]:
    tree = pod_tree(leader)
    signal_tree(tree, signal.SIGSTOP)
    started = time.monotonic()

    try:
        standby = wait_until(lambda: _other_holder_in(c, leader, "blocked-on-fence"),
                             c.timing["leaseDuration"] * 4,
                             "a standby blocked on the fence")
    except AssertionError as exc:
        out.violations.append(str(exc))
        return tree, None
    out.figures["blocked_after_s"] = time.monotonic() - started
    time.sleep(c.timing["retryPeriod"] * 2)  # it must stay blocked, not start named
    out.expect(standby.named_processes() == [],
               f"{standby.name} started named while the frozen leader held the lock")
    out.expect(_state(standby) == "blocked-on-fence", f"{standby.name} left blocked-on-fence "
               "while the frozen leader still held the lock")
    return tree, standby


def freeze_kill(c: ChaosLab, leader: MasterPod) -> Outcome:
    """SIGSTOP; the standby gets the Lease and waits on the lock; the 'operator'
    confirms the old holder is dead by killing it (a node powered off); takeover."""
    out = Outcome()
    tree, standby = _freeze_until_blocked(c, leader, out)
    start = time.monotonic()
    signal_tree(tree, signal.SIGKILL)
    leader.wait_exit(10)
    new = c.new_leader(leader, timeout=c.timing["leaseDuration"] * 4)
    out.figures["takeover_after_kill_s"] = c.first_ack_from(new, start, timeout=30) - start
    out.expect(standby is None or new is standby,
               f"{new.name} took over, not the blocked {standby.name if standby else None}")
    return out


def freeze_resume(c: ChaosLab, leader: MasterPod) -> Outcome:
    """SIGSTOP, then SIGCONT once a standby holds the Lease (a VM resumed): the old
    leader must see it lost the Lease and stop named, freeing the lock."""
    out = Outcome()
    tree, _standby = _freeze_until_blocked(c, leader, out)
    start = time.monotonic()
    signal_tree(tree, signal.SIGCONT)
    new = c.new_leader(leader, timeout=c.timing["leaseDuration"] * 4)
    out.figures["takeover_after_resume_s"] = c.first_ack_from(new, start, timeout=30) - start
    out.expect(leader.alive(), f"{leader.name} died after it was resumed")
    return out


# -- shared volume read-only / full ---------------------------------------------------

def volume_readonly(c: ChaosLab, leader: MasterPod) -> Outcome:
    return _volume_fault(c, leader, "readonly")


def volume_full(c: ChaosLab, leader: MasterPod) -> Outcome:
    return _volume_fault(c, leader, "full")


def _volume_fault(c: ChaosLab, leader: MasterPod, kind: str) -> Outcome:
    """named answers SERVFAIL and acknowledges nothing while the volume cannot be
    written; the leader reports it (its write probe), stays the leader, and once the
    volume is writable again starts named afresh (`named.restart`: a named that saw
    journal writes fail may lag its journal) which acknowledges updates again."""
    out = Outcome()
    named = leader.named_processes()
    acked_before = len(c.writer.acks)
    reported_before = _count(leader, "volume.unwritable")
    restarts_before = _count(leader, "named.restart")
    pods = [p for p in c.lab.masters if p.alive()]
    filler = c.volume.break_it(kind, pods)
    start = time.monotonic()  # once it is read-only or full (a Ceph OSD: its next tick)
    try:
        time.sleep(c.timing["leaseDuration"])
        # Read-only: not one ack. Full: the journal's last block may still have room for
        # a few updates (they are written, and must survive); then nothing.
        slack = 0.5 if kind == "readonly" else 1.5
        late = [a for a in c.writer.acks[acked_before:] if a.sent > start + slack]
        out.figures["acked_during_fault"] = len(c.writer.acks) - acked_before
        out.expect(not late, f"{len(late)} updates acknowledged {slack:g}s or more into a "
                             f"{kind} volume (first {late[0].name if late else ''})")
        out.expect(_count(leader, "volume.unwritable") > reported_before,
                   f"{leader.name} did not report the {kind} volume (volume.unwritable)")
    finally:
        c.volume.heal(kind, filler, pods)
    healed = time.monotonic()
    # The old named may acknowledge again at once; or the leader restarts it first and
    # the journal check finds the journal the full volume damaged (then no ack comes
    # until the repair below).
    if _acks_or_damaged(c, leader, healed) == "serving":
        out.figures["resume_after_heal_s"] = c.first_ack_from(leader, healed, 5) - healed
    # The write probe sees the volume writable within its interval, then the leader
    # starts named afresh.
    try:
        wait_until(lambda: _count(leader, "named.restart") > restarts_before,
                   2 * c.timing["retryPeriod"] + c.timing["stopTimeout"] + 10,
                   "named.restart")
        restarted = True
    except AssertionError:
        restarted = out.expect(False, f"{leader.name} did not start named afresh after "
                               f"the {kind} volume")
    if restarted:
        since = time.monotonic()
        if _acks_or_damaged(c, leader, since) == "journal-damaged":
            _repair_after_full(c, leader, out)
        out.figures["new_named_acks_after_s"] = c.first_ack_from(leader, since, 30) - since
    out.expect(c.lab.holder() == leader.name, f"the leader changed during a {kind} volume")
    out.expect(_count(leader, "named.restart") == restarts_before + 1,
               f"{leader.name} started named afresh more than once after the {kind} volume")
    out.expect(not [p for p in named if can_run(p)],
               f"{leader.name}'s named from before the {kind} volume still runs")
    return out


def _acks_or_damaged(c: ChaosLab, leader: MasterPod, since: float) -> str:
    """What the leader's new named came to: "serving" (it acknowledges updates) or
    "journal-damaged" (the journal check refused the volume's journal)."""
    def outcome() -> str | None:
        if any(a.server == leader.ip and a.sent >= since for a in list(c.writer.acks)):
            return "serving"
        return "journal-damaged" if _state(leader) == "journal-damaged" else None
    return wait_until(outcome, 30, f"{leader.name} serves or reports journal-damaged")


def _repair_after_full(c: ChaosLab, leader: MasterPod, out: Outcome) -> None:
    """A full CephFS can leave a journal whose header moved past a transaction that
    never committed (journal.py); the leader then keeps the fence and runs no named.
    Checked: no named on it meanwhile, and the damage has an intact part (the refused
    transaction is the only one lost); then the runbook's repair, as printed, after
    which the same leader must start named by itself and lose no acknowledged update
    (the round's checks)."""
    found = RuntimeFiles(leader.work_dir).state.read_text()
    damages = json.loads(found).get("journals_damaged") or []
    out.figures["journal_damaged"] = len(damages)
    out.figures["journal_problem"] = damages[0]["problem"][:160] if damages else None
    time.sleep(c.timing["retryPeriod"] * 2)
    out.expect(c.sampler.max_writers(time.monotonic() - c.timing["retryPeriod"]) == 0,
               "a named ran on the damaged journal")
    for damage in damages:
        if not out.expect(damage.get("served_serial") is None,
                          f"the volume lost serials named served: {damage['problem']}"):
            return
        if not out.expect(damage.get("intact_bytes") is not None,
                          f"no intact part in {damage}"):
            return
        name = Path(damage["journal"]).name.removesuffix(".jnl")
        result = repair_intact(c.lab.shared, damage["zone"], name, damage["intact_bytes"])
        out.expect(result.returncode == 0, f"the runbook repair failed: {result.stderr}")


# -- corrupted .jnl ----------------------------------------------------------------

def journal_cut(c: ChaosLab, leader: MasterPod) -> Outcome:
    """The leader crashes and its zone's journal loses its tail (a torn write): the pod
    that takes the Lease must not serve the partial replay: it keeps named stopped and
    says journal-damaged. The 'operator' then restores the journal (from a snapshot;
    here, the bytes saved before the cut) and the same pod starts named by itself."""
    out = Outcome()
    journals = sorted(c.lab.shared.glob("*.jnl"))
    if not out.expect(bool(journals), "no journal on the shared volume to damage"):
        return out
    journal = journals[0]
    named = leader.named_processes()
    signal_tree(pod_tree(leader), signal.SIGKILL)
    leader.wait_exit(10)
    # named's last write may still be on its way when it is killed (on a FUSE mount it
    # sits in the daemon's queue and lands after the process is gone, over the cut):
    # cut only once named has exited (a zombie has closed its files).
    out.expect(_wait_gone(named, 10), f"{leader.name}'s named outlived SIGKILL by 10 s")
    saved = journal.read_bytes()
    header = read_header(saved)
    if not out.expect(header is not None, f"{journal.name} has no journal header"):
        return out
    assert header is not None
    # Inside the last committed transaction: a kill between a transaction's append and
    # the header's update leaves bytes past the header's end, which every reader ignores
    # (cutting those would damage nothing; seen on CephFS, where that gap is wider).
    with journal.open("r+b") as stream:
        stream.truncate(header.end_offset - 20)
    start = time.monotonic()

    try:
        holder = wait_until(lambda: _other_holder_in(c, leader, "journal-damaged"),
                            c.timing["leaseDuration"] * 4,
                            "the new Lease holder reports journal-damaged")
        out.figures["refused_after_s"] = time.monotonic() - start
        time.sleep(c.timing["retryPeriod"] * 3)
        out.expect(c.sampler.max_writers(start) == 0,
                   "a named ran on the cut journal")
        out.expect(_state(holder) == "journal-damaged", f"{holder.name} left "
                   "journal-damaged while the journal was still cut")
    finally:
        # The snapshot goes back only while no named runs on the volume: written under a
        # running named it would corrupt the journal that named appends to.
        if not possible_writers([p.work_dir for p in c.lab.masters]):
            journal.write_bytes(saved)
        else:
            out.violations.append("a named runs on the cut journal: not restored")
    repaired = time.monotonic()
    new = c.new_leader(leader, timeout=c.timing["leaseDuration"] * 4)
    out.figures["serving_after_repair_s"] = c.first_ack_from(new, repaired, timeout=30) \
        - repaired
    out.expect(new is holder, f"{new.name} leads, not {holder.name} which held the fence")
    return out


# -- bad config pushed while running --------------------------------------------------

def bad_config(c: ChaosLab, leader: MasterPod) -> Outcome:
    """A ConfigMap update that named-checkconf refuses: refused, old config kept,
    writes go on without a gap."""
    out = Outcome()
    named = leader.named_processes()
    originals = {p.name: p.config_path.read_text() for p in c.lab.pods}
    refused_before = {p.name: _count(p, "config.refused") for p in c.lab.pods}
    start = time.monotonic()

    def break_config(data: dict[str, Any]) -> None:
        data["zones"].append({"name": "broken.example", "nameservers": [
            {"name": "ns1.broken.example", "addresses": ["192.0.2.53"]}],
            "updatePolicy": [{"key": "no-such-key", "rule": "zonesub"}]})

    c.lab.rewrite_configs(break_config)
    try:
        wait_until(lambda: all(_count(p, "config.refused") > refused_before[p.name]
                               for p in c.lab.pods if p.alive()), 30,
                   "every pod refuses the bad config")
        out.figures["refused_after_s"] = time.monotonic() - start
        time.sleep(c.timing["retryPeriod"])
    finally:
        for pod in c.lab.pods:
            configmap_update(pod.config_path, originals[pod.name])
    out.expect(leader.named_processes() == named and c.lab.holder() == leader.name,
               "the leader or its named changed on a refused config")
    out.figures["write_gap_s"] = c.writer.max_gap(after=start)
    return out


def _count(pod: MasterPod, event: str) -> int:
    return sum(1 for e in pod.events() if e.get("event") == event)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_running(p) for p in procs):
            return True
        time.sleep(0.02)
    return not any(_running(p) for p in procs)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


FAULTS: dict[str, Fault] = {
    "pod-delete": pod_delete,
    "supervisor-kill": supervisor_kill,
    "named-crash": named_crash,
    "api-partition": api_partition,
    "api-down": api_down,
    "freeze-kill": freeze_kill,
    "freeze-resume": freeze_resume,
    "volume-readonly": volume_readonly,
    "volume-full": volume_full,
    "bad-config": bad_config,
    "journal-cut": journal_cut,
}
