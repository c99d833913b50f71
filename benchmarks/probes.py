"""The CPU cost of the kubelet's probes: exec probes against the HTTP endpoint.

The manifests used exec probes (`bindha-rwx probe live|ready`): every periodSeconds the
kubelet had the runtime start a Python process in the container. They now use
`httpGet` on the supervisor's own endpoint (/healthz, /readyz), the same verdicts.
Measured on one master leader and one standby (processes in network namespaces, real
apiserver, real named, default timings):

- exec: the probe command run N times as the kubelet would run it, CPU time of the
  children (user + system, getrusage). A lower bound for a real node: the container
  runtime's own exec work (runc exec: setns, cgroup join) comes on top.
- HTTP: N GETs of each path at the pod IP; the CPU the supervisor process spent during
  them, less what it spends idle over as long (measured right before).

    scripts/bench probes [--count 40] [--gets 400]
Writes benchmarks/results/probes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from typing import Any

import psutil

from benchmarks.scale import RESULTS, ROOT, machine
from benchmarks.supervisor import DEFAULT_TIMING
from harness.pods import MasterPod, netns_lab

PERIOD_S = 2.0  # both probes of a master, manifests/base/master-statefulset.yaml


def exec_cost(pod: MasterPod, kind: str, count: int) -> dict[str, float]:
    """CPU seconds and wall seconds per `bindha-rwx probe <kind>` process."""
    env = {"PATH": os.environ["PATH"], "POD_NAME": pod.name, "POD_IP": pod.ip}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    failed = 0
    for _ in range(count):
        done = subprocess.run([sys.executable, "-m", "bindha_rwx", "probe", kind, "--config",
                               str(pod.config_path)], capture_output=True, timeout=30,
                              env=env, cwd=ROOT, check=False)
        failed += done.returncode != 0
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_ms": round(cpu / count * 1000, 2), "wall_ms": round(wall / count * 1000, 1),
            "failed": failed}


def http_cost(pod: MasterPod, path: str, gets: int) -> dict[str, float]:
    """CPU the supervisor spends per GET of ``path``, idle CPU subtracted."""
    process = psutil.Process(pod.pid)
    url = f"http://{pod.ip}:{pod.config.ports.metrics}{path}"

    def cpu() -> float:
        times = process.cpu_times()
        return times.user + times.system

    started, idle_from = time.monotonic(), cpu()
    failed = 0
    for _ in range(gets):
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                answer.read()
        except OSError:
            failed += 1
    busy_s, busy_cpu = time.monotonic() - started, cpu() - idle_from
    # The idle rate over as long, right after (the supervisor's own loops).
    idle_start, idle_cpu = time.monotonic(), cpu()
    time.sleep(busy_s)
    idle_rate = (cpu() - idle_cpu) / (time.monotonic() - idle_start)
    net = max(0.0, busy_cpu - idle_rate * busy_s)
    return {"cpu_ms": round(net / gets * 1000, 3), "wall_ms": round(busy_s / gets * 1000, 2),
            "idle_cpu_ms_per_s": round(idle_rate * 1000, 2), "failed": failed}


def run(count: int, gets: int) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "timing": DEFAULT_TIMING,
                               "count": count, "gets": gets}
    with netns_lab("probes", DEFAULT_TIMING) as lab:
        lab.start(2)
        leader = lab.leader(timeout=60)
        standby = next(p for p in lab.pods if p is not leader)
        for role, pod in (("leader", leader), ("standby", standby)):
            results[role] = {
                "exec_live": exec_cost(pod, "live", count),
                "exec_ready": exec_cost(pod, "ready", count),
                "http_healthz": http_cost(pod, "/healthz", gets),
                "http_readyz": http_cost(pod, "/readyz", gets)}
    per_minute = 60 / PERIOD_S
    for role in ("leader", "standby"):
        r = results[role]
        exec_ms = r["exec_live"]["cpu_ms"] + r["exec_ready"]["cpu_ms"]
        http_ms = r["http_healthz"]["cpu_ms"] + r["http_readyz"]["cpu_ms"]
        r["cpu_s_per_pod_minute"] = {"exec": round(exec_ms * per_minute / 1000, 3),
                                     "http": round(http_ms * per_minute / 1000, 4)}
    return results


def report(results: dict[str, Any]) -> str:
    lines = ["| pod | probe | exec: CPU ms | exec: wall ms | HTTP: CPU ms | HTTP: wall ms |",
             "|---|---|---|---|---|---|"]
    for role in ("leader", "standby"):
        r = results[role]
        for kind, path in (("live", "healthz"), ("ready", "readyz")):
            e, h = r[f"exec_{kind}"], r[f"http_{path}"]
            lines.append(f"| {role} | {kind} | {e['cpu_ms']} | {e['wall_ms']} | "
                         f"{h['cpu_ms']} | {h['wall_ms']} |")
    for role in ("leader", "standby"):
        m = results[role]["cpu_s_per_pod_minute"]
        lines.append(f"\n{role}: both probes every {PERIOD_S:g} s cost {m['exec']} CPU-s per "
                     f"minute as exec, {m['http']} as HTTP")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench probes")
    parser.add_argument("--count", type=int, default=40, help="exec probes per kind")
    parser.add_argument("--gets", type=int, default=400, help="HTTP GETs per path")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results = run(args.count, args.gets)
    print(report(results))
    if not args.no_write:
        out = RESULTS / "probes.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
