"""CephFS against tmpfs, side by side in one run (issue 12 item 5).

For each volume, 2 master pods as processes (real apiserver, real named), each bound to a
Node object of its own (harness/nodes.py): on tmpfs they share one tmpfs directory; on
CephFS each mounts the lab's CephFS with a ceph-fuse of its own (harness/cephlab.py).
Measured per volume:

- TSIG update latency (p50/p99) and throughput, 1 client and 4 clients at once;
- the graceful handover write gap and the crash takeover;
- the journal check at 1,000 zones (one real journal copied 1,000 times);
- node loss: the leader's supervisor, named and (CephFS) ceph-fuse frozen, a writer
  running; the time from the freeze, and from the proof that the node is gone (its Node
  NotReady), to the first update the new leader acknowledges, and the acknowledged updates
  lost. On CephFS with ``fencing.storage: ceph`` (the lab's fencer key), the proof given at
  the freeze and later, and once without the owner record read ahead by another client
  (see node_loss_rounds: as the product stands, the standby's controller then blocks on
  it); without a storage fence (the standby waits for the MDS's session_autoclose); on
  tmpfs the frozen holder keeps its lock, so the standby stays blocked until those
  processes die (killed after a window: the "proof"). A standby that exits is restarted
  as the kubelet would;
- the RSS of the added parts (the Ceph daemons, each ceph-fuse), the machine's load.

JSON to benchmarks/results/cephfs.json and a plot to docs/img/cephfs.png (a scratch
``--output`` elsewhere gets its plot next to it); the table goes into docs/benchmarks.md.

    scripts/bench cephfs [--updates 300] [--handovers 3] [--crashes 2] [--node-losses 3]
                         [--timing test|default] [--output PATH] [--replot PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dns.query
import dns.rcode
import dns.update
import psutil

from benchmarks.supervisor import DEFAULT_TIMING, crash_rounds, graceful_rounds, percentile
from bindha_rwx.journal import timed_check, zone_journals
from harness.bindlab import keyring
from harness.cephlab import CephLab, CephMount
from harness.loopback import AddressPool
from harness.nodes import bind_to_node, set_node_ready
from harness.pods import TEST_TIMING, MasterLab, MasterPod, samples, start_lab, wait_until
from harness.writer import UpdateWriter, served_names

ZONE = "ha.example."
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"
TMPFS_SIZE = "512m"


@dataclass
class Masters:
    """The master pods of one volume: the lab, each pod's ceph-fuse (CephFS) and Node."""

    lab: MasterLab
    ceph: CephLab | None
    root: Path
    mounts: dict[str, CephMount] = field(default_factory=dict)  # by pod name
    nodes: dict[str, str] = field(default_factory=dict)  # pod name -> Node name

    def remount(self, pod: MasterPod) -> None:
        """A new ceph-fuse for ``pod`` at its old mountpoint (the old one is dead)."""
        old = self.mounts.get(pod.name)
        if old is None or self.ceph is None:
            return
        old.unmount()
        self.mounts[pod.name] = self.ceph.mount(old.pod, old.mountpoint)

    def reconfigure(self, fencing: dict[str, Any]) -> None:
        """Every pod's ``fencing`` rewritten, every pod restarted (the supervisor reads it
        at start), then a leader again."""
        self.lab.rewrite_configs(lambda data: data.update(fencing=fencing))
        for pod in self.lab.masters:
            pod.stop()
        for pod in self.lab.masters:
            pod.restart(timeout=60)
        self.lab.leader(timeout=60)


@contextmanager
def masters(root: Path, pool: AddressPool, timing: dict[str, float], ceph: CephLab | None,
            count: int = 2, tmpfs: bool = True, fencing: dict[str, Any] | None = None
            ) -> Iterator[Masters]:
    """``count`` master pods on one volume, started, with a leader: on CephFS (``ceph``)
    each on a ceph-fuse of its own (the benchmark reads the volume through one more, the
    observer), else on one local directory, a tmpfs of its own if ``tmpfs``. Each pod is
    bound to a Node object of its own. Everything is stopped, unmounted and removed on
    the way out, failures included (frozen processes and clients are resumed first)."""
    plane, lab = start_lab(root, f"bench-{uuid.uuid4().hex[:6]}", pool, timing=timing)
    made = Masters(lab, ceph, root)
    local_tmpfs = False
    observer: CephMount | None = None
    try:
        if ceph is not None:
            observer = ceph.mount(f"{lab.namespace}-observer", lab.shared)
        elif tmpfs:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755",
                            "tmpfs", str(lab.shared)], check=True, timeout=10)
            local_tmpfs = True
        pods = []
        for i in range(count):
            name = f"bind-master-{i}"
            if ceph is None:
                pod = lab.add_pod(name)
            else:
                mount = ceph.mount(f"{lab.namespace}-{name}", root / f"{name}.dyn")
                made.mounts[name] = mount
                pod = lab.add_pod(name, dyn_dir=mount.mountpoint)
            made.nodes[name] = bind_to_node(lab, name)
            pods.append(pod)
        if fencing is not None:
            lab.rewrite_configs(lambda data: data.update(fencing=fencing))
        for pod in pods:
            pod.start()
        lab.leader(timeout=60)
        yield made
    finally:
        steps: list[Any] = [  # each runs, whatever the one before it raised
            *[mount.kill for mount in made.mounts.values() if _stopped(mount.pid)],
            lab.stop, *[mount.unmount for mount in made.mounts.values()],
            *([observer.unmount] if observer is not None else []),
            *([lambda: subprocess.run(["umount", "-l", str(lab.shared)], check=False,
                                      timeout=10)] if local_tmpfs else []),
            plane.stop]
        failed: list[BaseException] = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # clean up the rest, then say what went wrong
                failed.append(exc)
        if failed:
            print(f"clean-up: {len(failed)} step(s) failed, first: {failed[0]!r}", flush=True)


def _stopped(pid: int) -> bool:
    """A SIGSTOPped (frozen) process: a frozen node's ceph-fuse is killed, not resumed
    (an evicted client may take long to answer the FLUSHes of the processes' exits)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return False


def ceph_fencing(ceph: CephLab) -> dict[str, Any]:
    """``fencing:`` for the lab: evict with its fencer key (mds 'allow *', mon 'allow r')."""
    return {"storage": "ceph", "ceph": {"conf": str(ceph.conf),
                                        "keyring": str(ceph.keyring("client.fencer")),
                                        "id": "fencer", "mds": "cephfs:0", "timeout": "5s"}}


def update_latency(lab: MasterLab, clients: int, per_client: int) -> dict[str, float]:
    """``clients`` threads, each sending ``per_client`` signed updates one after another
    to the leader over TCP: latency of each acknowledged update, and the total rate."""
    leader = lab.leader(timeout=60)
    key = leader.config.keys["update-key"]
    ring = keyring(key)
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def run(c: int) -> None:
        for n in range(per_client):
            update = dns.update.UpdateMessage(ZONE, keyring=ring, keyname=key.name)
            update.add(f"lat-{clients}-{c}-{n}-{uuid.uuid4().hex[:6]}", 300, "TXT", '"x"')
            sent = time.monotonic()
            try:
                answer = dns.query.tcp(update, leader.ip, timeout=5)
            except Exception:  # a benchmark counts failures, it does not stop
                with lock:
                    failures[0] += 1
                continue
            took = time.monotonic() - sent
            with lock:
                if answer.rcode() == dns.rcode.NOERROR:
                    latencies.append(took)
                else:
                    failures[0] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    return {"clients": clients, "acked": len(latencies), "failures": failures[0],
            "p50_ms": round(1000 * percentile(latencies, 50), 3),
            "p99_ms": round(1000 * percentile(latencies, 99), 3),
            "updates_per_s": round(len(latencies) / wall, 1)}


def journal_check(shared: Path, zones: int) -> dict[str, float]:
    """The leader's journal, copied ``zones`` times under the volume: the check's time."""
    journal = shared / "ha.example.zone.jnl"
    wait_until(journal.exists, 30, "a journal on the volume")
    data = journal.read_bytes()
    folder = shared / "bench-journals"
    folder.mkdir(exist_ok=True)
    names = []
    for n in range(zones):
        (folder / f"z{n}.zone.jnl").write_bytes(data)
        names.append((f"z{n}.example.", f"bench-journals/z{n}.zone"))
    damaged, took = timed_check(zone_journals(shared, names))
    shutil.rmtree(folder)
    return {"zones": zones, "seconds": round(took, 4), "damaged": len(damaged)}


# -- node loss ------------------------------------------------------------------------

# How a round proves the lost node gone, or what it waits for instead:
#   proof-at-freeze: its Node goes NotReady at the freeze (a node controller as quick as
#     the Lease, or an operator's out-of-service taint): the product's own latency;
#   proof-late: its Node goes NotReady only after the standby has been blocked on the
#     fence for 2 retryPeriods (and has not served meanwhile): the reaction to the proof;
#   no-fence: no proof, no storage fence: the MDS ends the session (session_autoclose);
#   frozen-holder (tmpfs): the standby stays blocked for a leaseDuration, then the frozen
#     processes are killed (the node's death) and their lock goes with them.
MODES = ("proof-at-freeze", "proof-late", "no-fence", "frozen-holder")
BACKOFF = (0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0)  # the kubelet's restart delays


class Kubelet:
    """Restarts a pod's supervisor when it exits, as the kubelet does for a container
    with restartPolicy Always: at once the first time, then after 10 s, 20 s, ... (the
    CrashLoopBackOff); each exit is recorded (code, seconds since ``since``)."""

    def __init__(self, pod: MasterPod, since: float) -> None:
        self.pod = pod
        self.since = since
        self.exits: list[tuple[int | None, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)

    def start(self) -> Kubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            process = self.pod.process
            if process is None or process.poll() is None:
                continue
            self.exits.append((process.returncode, round(time.monotonic() - self.since, 3)))
            delay = BACKOFF[min(len(self.exits) - 1, len(BACKOFF) - 1)]
            if self._stop.wait(delay):
                return
            self.pod.process = None
            self.pod.start()


def _event_times(pod: MasterPod, name: str) -> list[float]:
    """Wall-clock times of ``pod``'s log events ``name``."""
    out = []
    for event in pod.events():
        if event.get("event") == name and isinstance(event.get("ts"), str):
            with contextlib.suppress(ValueError):
                out.append(datetime.fromisoformat(event["ts"]).timestamp())
    return out


def _first_since(pod: MasterPod, name: str, wall: float) -> float | None:
    times = [t for t in _event_times(pod, name) if t >= wall - 0.01]
    return min(times) if times else None


def _evictions(lab: MasterLab) -> int:
    """Storage evictions in the fence's audit log (.bindha/fence.log). Not the
    fence.storage_evicted event: the controller reports the eviction job's outcome only
    if the job has ended within a retryPeriod of the lock freeing, and the job's last
    `session ls` can take longer (seen at the test timings: the event never came)."""
    try:
        lines = (lab.volume.meta_dir / "fence.log").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum('"action": "storage-evict"' in line for line in lines)


def freeze_node(m: Masters, pod: MasterPod) -> list[psutil.Process]:
    """The node stands still: its supervisor, named and ceph-fuse SIGSTOPped."""
    named = pod.named_processes()
    pod.signal(signal.SIGSTOP)
    for proc in named:
        proc.suspend()
    mount = m.mounts.get(pod.name)
    if mount is not None:
        os.kill(mount.pid, signal.SIGSTOP)
    return named


def kill_node(m: Masters, pod: MasterPod, named: list[psutil.Process]) -> None:
    """The frozen node dies: its ceph-fuse first (so that the processes' exits, which
    close their descriptors on that mount, need no answer from it), then named and the
    supervisor."""
    mount = m.mounts.get(pod.name)
    if mount is not None:
        mount.kill()
    for proc in named:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if pod.alive():
        pod.signal(signal.SIGKILL)
    pod.wait_exit(10)
    for proc in named:
        with contextlib.suppress(psutil.Error):
            proc.wait(10)


def node_loss_rounds(m: Masters, rounds: int, mode: str, read_ahead: bool = True
                     ) -> dict[str, Any]:
    """Lose the leader's node ``rounds`` times (see MODES), a writer running; the
    standby's supervisor is restarted whenever it exits (Kubelet). ``read_ahead``: the
    benchmark's observer client reads the owner record before the freeze. On CephFS an
    open of a file the frozen client last wrote (owner.json) blocks until the MDS ends
    that client's caps (session_timeout); the standby's controller reads the owner record
    once blocked, so without the read ahead its stall budget ends it (exit 70) first.
    Each lost pod is brought back (a new ceph-fuse, its Node Ready, the process
    restarted) before the next round."""
    assert mode in MODES, mode
    lab = m.lab
    lease, retry = float(lab.timing["leaseDuration"]), float(lab.timing["retryPeriod"])
    ceph = m.ceph
    autoclose = (ceph.settings.session_autoclose or 300) if ceph else 0
    timeout = (ceph.settings.session_timeout or 60) if ceph else 0
    records = []
    for i in range(rounds):
        leader = lab.leader(timeout=60)
        standby = next(p for p in lab.masters if p is not leader)
        node = m.nodes[leader.name]
        key = leader.config.keys["update-key"]
        writer = UpdateWriter(ZONE, [p.ip for p in lab.masters], key, timeout=0.25).start()
        named: list[psutil.Process] = []
        kubelet: Kubelet | None = None
        killed = False
        try:
            wait_until(lambda w=writer: len(w.acks) >= 20, 20, "updates flowing")
            if read_ahead:
                lab.volume.read_owner()
            evictions_before = _evictions(lab)
            frozen_wall, frozen_at = time.time(), time.monotonic()
            named = freeze_node(m, leader)
            kubelet = Kubelet(standby, frozen_at).start()
            proof_at: float | None = None
            if mode == "proof-at-freeze":
                set_node_ready(lab, node, None)
                proof_at = time.monotonic()
            elif mode in ("proof-late", "frozen-holder"):
                wait_until(lambda s=standby, w=frozen_wall: _first_since(
                    s, "fence.blocked", w), 3 * lease + 15,
                    "the standby holds the Lease and is blocked on the fence")
                window = 2 * retry if mode == "proof-late" else lease
                for _ in samples(window, 0.1):
                    assert standby.named_processes() == [], "named under another's lock"
                proof_at = time.monotonic()
                if mode == "proof-late":
                    set_node_ready(lab, node, None)
                else:
                    kill_node(m, leader, named)
                    killed = True
            limit = lease * 3 + 60 + timeout + (autoclose if mode == "no-fence" else 0)
            wait_until(lambda w=writer, s=standby, t=frozen_at: any(
                a.server == s.ip and a.acked > t for a in w.acks), limit,
                "the new leader acknowledges updates")
            writer.stop()
            kubelet.stop()
            first = min(a.acked for a in writer.acks
                        if a.server == standby.ip and a.acked > frozen_at)
            served = served_names(standby.ip, ZONE, standby.config.keys["transfer-key"])
            lost = [a.name for a in writer.acks if a.name not in served]
            blocked = _first_since(standby, "fence.blocked", frozen_wall)
            acquired = _first_since(standby, "lease.acquired", frozen_wall)
            record = {
                "freeze_to_lease_s": round(acquired - frozen_wall, 3) if acquired else None,
                "freeze_to_blocked_s": round(blocked - frozen_wall, 3) if blocked else None,
                "freeze_to_ack_s": round(first - frozen_at, 3),
                "proof_to_ack_s": round(first - proof_at, 3) if proof_at else None,
                "acknowledged": len(writer.acks), "lost": len(lost),
                "evictions": _evictions(lab) - evictions_before,
                "standby_exits": kubelet.exits}
            records.append(record)
            print(f"node loss {mode}{'' if read_ahead else ' (no read ahead)'} "
                  f"{i + 1}/{rounds}: {record}", flush=True)
        finally:
            writer.stop()
            if kubelet is not None:
                kubelet.stop()
            if not killed:
                kill_node(m, leader, named)
        m.remount(leader)
        set_node_ready(lab, node, True)
        leader.restart(timeout=60)

    def spread(key: str) -> dict[str, float | None]:
        values = [r[key] for r in records if r[key] is not None]
        return {"min": min(values, default=None), "max": max(values, default=None),
                "p50": percentile(values, 50) if values else None}

    return {"mode": mode, "read_ahead": read_ahead, "rounds": rounds, "records": records,
            "freeze_to_ack_s": spread("freeze_to_ack_s"),
            "proof_to_ack_s": spread("proof_to_ack_s"),
            "freeze_to_lease_s": spread("freeze_to_lease_s"),
            "freeze_to_blocked_s": spread("freeze_to_blocked_s"),
            "lost": sum(r["lost"] for r in records),
            "acknowledged": sum(r["acknowledged"] for r in records),
            "standby_exits": sum(len(r["standby_exits"]) for r in records)}


# -- the run --------------------------------------------------------------------------


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(m: Masters, args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    lab = m.lab
    result: dict[str, Any] = {"load_at_start": load()}
    result["updates_1_client"] = update_latency(lab, 1, args.updates)
    result["updates_4_clients"] = update_latency(lab, 4, args.updates // 4 * 2)
    print(f"  updates: {result['updates_1_client']} / {result['updates_4_clients']}",
          flush=True)
    result["journal_check_1000"] = journal_check(lab.shared, 1000)
    print(f"  journal check: {result['journal_check_1000']}", flush=True)
    result["graceful"] = graceful_rounds(lab, args.handovers)
    result["crash"] = crash_rounds(lab, args.crashes)
    losses = max(1, args.node_losses)
    if m.ceph is None:
        result["node_loss_frozen_holder"] = node_loss_rounds(m, min(2, losses),
                                                             "frozen-holder")
    else:
        result["node_loss_no_fence"] = node_loss_rounds(m, min(2, losses), "no-fence")
        report["rss_bytes"] = m.ceph.rss()  # before the restarts below
        m.reconfigure(ceph_fencing(m.ceph))
        result["node_loss_fence_proof_at_freeze"] = node_loss_rounds(m, losses,
                                                                     "proof-at-freeze")
        result["node_loss_fence_proof_late"] = node_loss_rounds(m, min(2, losses),
                                                                "proof-late")
        result["node_loss_fence_no_read_ahead"] = node_loss_rounds(
            m, min(2, losses), "proof-at-freeze", read_ahead=False)
    result["load_at_end"] = load()
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    timing = dict(TEST_TIMING if args.timing == "test" else DEFAULT_TIMING)
    pool = AddressPool()
    root = Path(tempfile.mkdtemp(prefix="bindha-bench-cephfs-"))
    report: dict[str, Any] = {
        "host": platform.node(), "cpus": psutil.cpu_count(), "arch": platform.machine(),
        "timing": timing, "target_node_loss_s": timing["leaseDuration"] + 5,
        "load_before": load(), "volumes": {}}
    try:
        print("tmpfs:", flush=True)
        with masters(root / "tmpfs", pool, timing, None) as m:
            report["volumes"]["tmpfs"] = measure(m, args, report)
        print("cephfs:", flush=True)
        with CephLab(root / "ceph") as ceph, \
                masters(root / "cephfs", pool, timing, ceph) as m:
            report["ceph_settings"] = {"session_timeout": ceph.settings.session_timeout,
                                       "session_autoclose": ceph.settings.session_autoclose}
            report["volumes"]["cephfs"] = measure(m, args, report)
            report["ceph_bring_up_s"] = ceph.timings
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["load_after"] = load()
    return report


# -- the plot -------------------------------------------------------------------------


def plot(report: dict[str, Any], path: Path) -> Path:
    """Three panels, tmpfs and CephFS side by side: update latency, throughput, and the
    takeovers (handover gap, crash, node loss in each mode, against the target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volumes = report["volumes"]
    colours = {"tmpfs": "tab:blue", "cephfs": "tab:orange"}
    fig, (lat, rate, take) = plt.subplots(1, 3, figsize=(14, 4.8),
                                          gridspec_kw={"width_ratios": [1.2, 0.8, 2.2]})
    width = 0.38
    labels = ["1 client p50", "1 client p99", "4 clients p50", "4 clients p99"]
    for k, (name, figures) in enumerate(volumes.items()):
        one, four = figures["updates_1_client"], figures["updates_4_clients"]
        values = [one["p50_ms"], one["p99_ms"], four["p50_ms"], four["p99_ms"]]
        lat.bar([x + (k - 0.5) * width for x in range(4)], values, width, label=name,
                color=colours[name])
        rate.bar([x + (k - 0.5) * width for x in range(2)],
                 [one["updates_per_s"], four["updates_per_s"]], width, color=colours[name])
    lat.set_xticks(range(4), labels, rotation=20, fontsize=8)
    lat.set_ylabel("ms")
    lat.set_title("TSIG update latency", fontsize=9)
    lat.legend(fontsize=8)
    rate.set_xticks(range(2), ["1 client", "4 clients"], fontsize=8)
    rate.set_ylabel("acknowledged updates/s")
    rate.set_title("Update throughput", fontsize=9)

    rows: list[tuple[str, str, list[float]]] = []  # (label, volume, values)
    for name, figures in volumes.items():
        rows.append(("graceful\nhandover gap", name, figures["graceful"]["gaps_s"]))
        rows.append(("crash\ntakeover", name, figures["crash"]["takeover_s"]))
    for name, key, label in (
            ("tmpfs", "node_loss_frozen_holder", "node loss\nfrozen holder\n(kill -> ack)"),
            ("cephfs", "node_loss_no_fence", "node loss\nno storage fence"),
            ("cephfs", "node_loss_fence_proof_at_freeze", "node loss\nfence, proof\nat freeze"),
            ("cephfs", "node_loss_fence_proof_late", "node loss\nfence, proof\nlate (proof->ack)"),
            ("cephfs", "node_loss_fence_no_read_ahead",
             "node loss\nfence, owner\nnot read ahead")):
        found = volumes.get(name, {}).get(key)
        if not found:
            continue
        field_name = "proof_to_ack_s" if key in ("node_loss_frozen_holder",
                                                 "node_loss_fence_proof_late") \
            else "freeze_to_ack_s"
        rows.append((label, name, [r[field_name] for r in found["records"]]))
    groups = list(dict.fromkeys(label for label, _, _ in rows))
    for label, name, values in rows:
        x = groups.index(label) + (-0.18 if name == "tmpfs" else 0.18)
        take.scatter([x] * len(values), values, color=colours[name], alpha=0.8, s=22)
    take.axhline(report["target_node_loss_s"], color="tab:red", linestyle="--", linewidth=1)
    take.text(len(groups) - 0.5, report["target_node_loss_s"],
              f"target: leaseDuration + 5 s = {report['target_node_loss_s']:g} s",
              color="tab:red", fontsize=7, ha="right", va="bottom")
    take.set_xticks(range(len(groups)), groups, fontsize=7)
    take.set_ylabel("seconds to the new leader's first acknowledged update")
    take.set_yscale("log")
    take.grid(axis="y", alpha=0.3, which="both")
    take.set_title("Takeovers (blue tmpfs, orange CephFS)", fontsize=9)
    timing = report["timing"]
    fig.suptitle(f"CephFS (ceph-fuse, one-host lab) against tmpfs: timing lease "
                 f"{timing['leaseDuration']:g} / renew {timing['renewDeadline']:g} / retry "
                 f"{timing['retryPeriod']:g} s; {report['cpus']} CPUs, load "
                 f"{report['load_before'][0]:.1f} -> {report['load_after'][0]:.1f}",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_path(output: Path) -> Path:
    """Results kept in the repository plot into docs/img; a scratch run's next to it."""
    folder = IMG if output.resolve().parent == RESULTS else output.parent
    return folder / f"{output.stem}.png"


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench cephfs",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--updates", type=int, default=300, help="per single client")
    parser.add_argument("--handovers", type=int, default=3)
    parser.add_argument("--crashes", type=int, default=2)
    parser.add_argument("--node-losses", type=int, default=3,
                        help="rounds with the storage fence, proof at the freeze (the other "
                        "node-loss modes run min(2, this))")
    parser.add_argument("--timing", choices=("test", "default"), default="test")
    parser.add_argument("--output", type=Path, default=RESULTS / "cephfs.json")
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="only draw the plot of an earlier run's JSON")
    args = parser.parse_args()
    if args.replot is not None:
        print(f"plot: {plot(json.loads(args.replot.read_text()), plot_path(args.replot))}")
        return 0
    report = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    print(f"written to {args.output}; plot: {plot(report, plot_path(args.output))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
