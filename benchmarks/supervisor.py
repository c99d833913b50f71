"""Supervisor benchmark: handover write gap, crash takeover, RSS, API writes.

Runs 3 master pods as processes (real apiserver, real named) at the product's DEFAULT
timings (leaseDuration 10 s, renewDeadline 6 s, retryPeriod 2 s, stopTimeout 3 s), on one
volume: ``--volume local`` (default: one shared directory under /tmp), ``tmpfs`` (that
directory a tmpfs of its own) or ``cephfs`` (the one-host Ceph lab of harness/cephlab.py,
each pod on a ceph-fuse of its own; the pods are made by benchmarks/cephfs.py's
``masters()``). Writes JSON to benchmarks/results/supervisor.json (supervisor-<volume>.json
for another volume). Needs root (loopback aliases, port 53; mounts).

    .venv/bin/python -m benchmarks.supervisor [--handovers 20] [--crashes 3]
                                              [--volume local|tmpfs|cephfs] [--output PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import psutil
from kubernetes import client, watch

from harness.loopback import AddressPool
from harness.pods import MasterLab, wait_until
from harness.writer import UpdateWriter, served_names

ZONE = "ha.example."
DEFAULT_TIMING = {"leaseDuration": 10, "renewDeadline": 6, "retryPeriod": 2, "stopTimeout": 3}
RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def graceful_rounds(lab: MasterLab, rounds: int) -> dict[str, object]:
    gaps, lost_total, acked_total = [], 0, 0
    for i in range(rounds):
        leader = lab.leader(timeout=60)
        key = leader.config.keys["update-key"]
        writer = UpdateWriter(ZONE, [p.ip for p in lab.pods], key).start()
        wait_until(lambda w=writer: len(w.acks) >= 20, 20, "updates flowing")
        sigterm_at = time.monotonic()
        leader.signal(signal.SIGTERM)
        leader.wait_exit(60)
        new = lab.leader(timeout=60)
        wait_until(lambda w=writer, n=new, t=sigterm_at: any(
            a.server == n.ip and a.acked > t for a in w.acks), 30, "new leader acks")
        writer.stop()
        first_new = min(a.acked for a in writer.acks if a.server == new.ip
                        and a.acked > sigterm_at)
        gap = first_new - sigterm_at
        served = served_names(new.ip, ZONE, new.config.keys["transfer-key"])
        lost = [a.name for a in writer.acks if a.name not in served]
        gaps.append(gap)
        lost_total += len(lost)
        acked_total += len(writer.acks)
        print(f"handover {i + 1}/{rounds}: gap {gap * 1000:.0f} ms, "
              f"{len(writer.acks)} acked, {len(lost)} lost", flush=True)
        # New zone names each round would grow the zone; fine for these sizes.
        leader.restart(timeout=30)
    return {"rounds": rounds, "gap_p50_s": percentile(gaps, 50), "gap_p99_s": percentile(gaps, 99),
            "gap_max_s": max(gaps), "gaps_s": gaps, "acknowledged": acked_total,
            "lost": lost_total}


def crash_rounds(lab: MasterLab, rounds: int) -> dict[str, object]:
    takeovers = []
    for i in range(rounds):
        leader = lab.leader(timeout=60)
        leader.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        leader.wait_exit(10)
        new = wait_until(lambda old=leader: (lambda p: p if p is not old else None)(
            lab.leader(timeout=60)), 60, "takeover")
        took = time.monotonic() - killed_at
        takeovers.append(took)
        print(f"crash {i + 1}/{rounds}: {new.name} serving after {took:.2f}s", flush=True)
        leader.restart(timeout=30)
    return {"rounds": rounds, "takeover_s": takeovers,
            "takeover_max_s": max(takeovers, default=None)}


def steady_state(lab: MasterLab, api: client.ApiClient, seconds: float,
                 retry_period: float) -> dict[str, object]:
    """Lease writes per retryPeriod (every MODIFIED event is one write) and RSS."""
    coordination = client.CoordinationV1Api(api)
    events: list[float] = []
    stop = threading.Event()

    def count() -> None:
        w = watch.Watch()
        for _ in w.stream(coordination.list_namespaced_lease, lab.namespace,
                          timeout_seconds=int(seconds) + 2):
            events.append(time.monotonic())
            if stop.is_set():
                w.stop()

    thread = threading.Thread(target=count, daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(seconds + 5)
    writes = max(0, len(events) - 1)  # the first event is the initial ADDED
    leader = lab.leader(timeout=30)
    rss = {}
    for pod in lab.pods:
        if pod.alive():
            rss[("leader " if pod is leader else "standby ") + pod.name] = round(
                psutil.Process(pod.pid).memory_info().rss / 2**20, 1)
    return {"seconds": seconds, "lease_writes": writes,
            "lease_writes_per_retry_period_all_pods": round(writes / (seconds / retry_period), 2),
            "supervisor_rss_mib": rss}


def main() -> int:
    # benchmarks.cephfs imports this module (its rounds): import it at run time.
    from benchmarks.cephfs import masters
    from harness.cephlab import CephLab

    parser = argparse.ArgumentParser()
    parser.add_argument("--handovers", type=int, default=20)
    parser.add_argument("--crashes", type=int, default=3)
    parser.add_argument("--steady-seconds", type=float, default=40)
    parser.add_argument("--volume", choices=("local", "tmpfs", "cephfs"), default="local")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results/supervisor[-<volume>].json")
    args = parser.parse_args()
    out = args.output or RESULTS / ("supervisor.json" if args.volume == "local"
                                    else f"supervisor-{args.volume}.json")
    root = Path(tempfile.mkdtemp(prefix="bindha-bench-"))
    results: dict[str, object] = {
        "machine": {"cpus": psutil.cpu_count(), "memory_gib": round(
            psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version()},
        "timing": DEFAULT_TIMING, "pods": 3, "volume": args.volume,
    }
    try:
        with contextlib.ExitStack() as stack:
            ceph = (stack.enter_context(CephLab(root / "ceph")) if args.volume == "cephfs"
                    else None)
            lab = stack.enter_context(masters(
                root / "lab", AddressPool(first=100), DEFAULT_TIMING, ceph, count=3,
                tmpfs=args.volume == "tmpfs")).lab
            results["steady"] = steady_state(lab, lab.api, args.steady_seconds,
                                             DEFAULT_TIMING["retryPeriod"])
            results["graceful"] = graceful_rounds(lab, args.handovers)
            results["crash"] = crash_rounds(lab, args.crashes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
