"""Read availability: the secondaries' answer rate while the master leader fails over.

3 masters and 2 secondaries as processes, each in its own network namespace
(harness/netlab.py, as harness/demo.py runs them), real apiserver, real named, the
product's default timings. dnsperf (Debian's) sends queries for names that exist to
each secondary at a fixed offered rate and prints the answered rate every interval
(``-S``); meanwhile the leader is (i) SIGTERMed, a graceful handover, and (ii)
SIGKILLed, a crash takeover at Lease expiry. Reads never go to the masters, so the
question is whether the secondaries' answers dip while their primary changes.

    scripts/bench answers [--rate 1000 --interval 0.5 --duration 30] [--quick]
Writes benchmarks/results/answers.json and docs/img/answers-*.png. Needs root.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.scale import (
    IMG,
    RESULTS,
    ROOT,
    BeatWatch,
    control_marks,
    machine,
    supervisor_marks,
    zone_spec,
    zone_text,
)
from benchmarks.supervisor import DEFAULT_TIMING
from harness.bindlab import soa_serial
from harness.pods import TEST_TIMING, MasterLab, MasterPod, netns_lab, wait_until

ZONE = "reads.example."
NAMES = 1000
DIP_RATIO = 0.9  # an interval below this share of the steady rate counts as a dip


def read_zones(count: int) -> list[str]:
    return [ZONE] if count == 1 else [f"r{i:04d}.{ZONE}" for i in range(count)]


def write_zones(lab: MasterLab, zones: list[str]) -> int:
    """The read zones (NAMES A records spread over them, at least one each), on the
    volume before any master starts; returns the number of names."""
    per = max(1, NAMES // len(zones))
    for zone in zones:
        (lab.shared / f"{zone.rstrip('.')}.zone").write_text(zone_text(zone, per))
    lab.zones = [zone_spec(z) for z in zones]
    return per * len(zones)


def write_queries(path: Path, zones: list[str]) -> Path:
    per = max(1, NAMES // len(zones))
    path.write_text("".join(f"h{j}.{zone} A\n" for zone in zones for j in range(per)))
    return path


# -- dnsperf ------------------------------------------------------------------------


def dnsperf_binary() -> str:
    found = shutil.which("dnsperf")
    if not found:
        raise SystemExit("dnsperf not found: run BINDHA_SETUP_BENCH=1 scripts/setup.sh "
                         "(apt-get install dnsperf)")
    return found


@dataclass
class Load:
    """One dnsperf against one secondary."""

    ip: str
    process: subprocess.Popen[str]
    seconds: float

    @classmethod
    def start(cls, ip: str, queries: Path, seconds: float, rate: int,
              interval: float) -> Load:
        command = [dnsperf_binary(), "-s", ip, "-d", str(queries), "-l", f"{seconds:g}",
                   "-Q", str(rate), "-S", f"{interval:g}", "-t", "1", "-q", "200"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        return cls(ip, process, seconds)

    def result(self) -> dict[str, Any]:
        try:
            out, _ = self.process.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"dnsperf at {self.ip} ran past {self.seconds + 30:g}s") from None
        if self.process.returncode != 0:
            raise AssertionError(f"dnsperf at {self.ip} failed: {out[-800:]}")
        return parse_dnsperf(out)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


_INTERVAL = re.compile(r"^(\d+\.\d+): (\d+(?:\.\d+)?)\s*$")
_TOTALS = {"sent": r"Queries sent:\s+(\d+)", "completed": r"Queries completed:\s+(\d+)",
           "lost": r"Queries lost:\s+(\d+)", "noerror": r"NOERROR (\d+)",
           "run_time_s": r"Run time \(s\):\s+([\d.]+)"}


def parse_dnsperf(text: str) -> dict[str, Any]:
    """Interval lines ("<unix time>: <answered per second>") and the final totals."""
    intervals = [[float(m.group(1)), float(m.group(2))] for line in text.splitlines()
                 if (m := _INTERVAL.match(line.strip()))]
    totals: dict[str, Any] = {}
    for key, pattern in _TOTALS.items():
        m = re.search(pattern, text)
        totals[key] = (float(m.group(1)) if "." in m.group(1) else int(m.group(1))) \
            if m else None
    rcodes = re.search(r"Response codes:\s+(.*)", text)
    totals["response_codes"] = rcodes.group(1).strip() if rcodes else None
    return {"intervals": intervals, **totals}


# -- one failover under load --------------------------------------------------------


def new_leader(lab: MasterLab, old: MasterPod) -> MasterPod:
    return wait_until(lambda: (lambda p: p if p is not old else None)(lab.leader(60)), 90,
                      "a new leader serving")


def scenario(lab: MasterLab, kind: str, args: argparse.Namespace, queries: Path,
             beats: BeatWatch) -> dict[str, Any]:
    """Load on both secondaries; after ``before`` s the leader gets the signal."""
    leader = lab.leader(timeout=60)
    sig = signal.SIGTERM if kind == "sigterm" else signal.SIGKILL
    loads = [Load.start(s.ip, queries, args.duration, args.rate, args.interval)
             for s in lab.secondaries]
    try:
        started = time.time()
        time.sleep(args.before)
        signalled = time.time()
        leader.signal(sig)
        leader.wait_exit(60)
        new = new_leader(lab, leader)
        results = [load.result() for load in loads]
    finally:
        for load in loads:
            load.kill()
    marks = {"new_leader_lease_acquired": supervisor_marks(new, signalled, ["lease.acquired"]),
             "new_leader_named_serving": supervisor_marks(new, signalled, ["named.serving"])}
    out = summarise(kind, results, started, signalled, args)
    out.update({"old_leader": leader.name, "new_leader": new.name, "marks_s": {
        "new_leader_lease_acquired": rel(marks["new_leader_lease_acquired"], signalled),
        "new_leader_named_serving": rel(marks["new_leader_named_serving"], signalled),
        **secondary_marks(lab, signalled)}})
    # How stale the secondaries' liveness heartbeat got (`probe live` fails past
    # renewDeadline): their controller thread is busy while it switches primaries.
    out["heartbeat_max_age_s"] = {k: v for k, v in beats.worst(signalled).items()
                                  if "secondary" in k}
    print(f"{kind}: steady {out['steady_answered_per_s']:.0f}/s, lowest interval "
          f"{out['lowest_interval_answered_per_s']:.0f}/s ({out['lowest_ratio']:.2f}), "
          f"lost {out['lost']}, dipped {out['dipped']}; marks {out['marks_s']}; "
          f"secondaries' heartbeat max age {out['heartbeat_max_age_s']}", flush=True)
    leader.restart(timeout=30)
    wait_until(lambda: converged(lab), 120, "secondaries on the leader's serial")
    return out


def secondary_marks(lab: MasterLab, signalled: float) -> dict[str, list[float | None]]:
    """When each secondary's named was reconfigured to the new primary (its log), and when
    its supervisor logged primary.following: after it has `rndc refresh`ed every zone."""
    def following(pod: MasterPod) -> float | None:
        return supervisor_marks(pod, signalled, ["primary.following"]).get("primary.following")

    wait_until(lambda: all(following(s) for s in lab.secondaries), 300,
               "secondaries log primary.following", interval=0.2)
    reconfigured = [named_marks_for(s, signalled) for s in lab.secondaries]
    return {"secondaries_reconfigured": [round(r - signalled, 3) if r else None
                                         for r in reconfigured],
            "secondaries_following_new_leader": [round((following(s) or 0) - signalled, 3)
                                                 for s in lab.secondaries]}


def named_marks_for(pod: MasterPod, since: float) -> float | None:
    return control_marks(pod, since).get("named_reconfig_done")


def rel(marks: dict[str, float], t0: float) -> float | None:
    return round(next(iter(marks.values())) - t0, 3) if marks else None


def summarise(kind: str, results: list[dict[str, Any]], started: float, signalled: float,
              args: argparse.Namespace) -> dict[str, Any]:
    """Per-interval answered rates (each secondary and their sum) around the signal."""
    step = args.interval
    buckets: dict[int, list[float]] = {}
    per_secondary = []
    for result in results:
        # dnsperf's first interval is its warm-up, its last one the cut-off at -l
        intervals = result["intervals"][1:-1]
        series = [[round(t - signalled, 3), q] for t, q in intervals]
        per_secondary.append(series)
        for t, q in intervals:
            buckets.setdefault(round((t - started) / step), []).append(q)
    # Intervals where both dnsperf reported: the sum is the secondaries' answer rate.
    total = [[round(started + i * step - signalled, 3), sum(qs)]
             for i, qs in sorted(buckets.items()) if len(qs) == len(results)]
    before = [q for t, q in total if t < -step][1:] or [q for _, q in total]
    after = [q for t, q in total if t >= -step] or [q for _, q in total]
    steady = statistics.median(before)
    lowest = min(after)
    return {"kind": kind, "offered_per_s": args.rate * len(results),
            "interval_s": step, "signal_at_s": round(signalled - started, 3),
            "steady_answered_per_s": steady, "lowest_interval_answered_per_s": lowest,
            "lowest_ratio": round(lowest / steady, 3) if steady else None,
            "dipped": bool(steady) and lowest < DIP_RATIO * steady,
            "sent": sum(r["sent"] or 0 for r in results),
            "completed": sum(r["completed"] or 0 for r in results),
            "lost": sum(r["lost"] or 0 for r in results),
            "response_codes": [r["response_codes"] for r in results],
            "total_series": total, "per_secondary_series": per_secondary}


def converged(lab: MasterLab) -> bool:
    """Every secondary serves every zone at the leader's serial."""
    leader = lab.leader(timeout=30)
    for zone in lab.zones:
        theirs = soa_serial(leader.ip, zone["name"])
        if theirs is None or any(soa_serial(s.ip, zone["name"]) != theirs
                                 for s in lab.secondaries):
            return False
    return True


# -- plots ----------------------------------------------------------------------------


def plot(results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    paths = []
    titles = {"sigterm": "SIGTERM to the leader (graceful handover)",
              "sigkill": "SIGKILL of the leader (crash takeover at Lease expiry)"}
    zones = results["load"]["zones"]
    prefix = "answers" if zones == 1 else f"answers-z{zones}"
    for run in results["scenarios"]:
        fig, ax = plt.subplots(figsize=(8, 4))
        xs, ys = zip(*run["total_series"], strict=True)
        ax.step(xs, ys, where="post", label="both secondaries", linewidth=2)
        for i, series in enumerate(run["per_secondary_series"]):
            if series:
                sx, sy = zip(*series, strict=True)
                ax.step(sx, sy, where="post", linewidth=1, alpha=0.7,
                        label=f"secondary {i}")
        ax.axhline(run["offered_per_s"], color="grey", linestyle=":", label="offered")
        ax.axvline(0, color="red", linestyle="--", label=run["kind"].upper())
        serving = run["marks_s"]["new_leader_named_serving"]
        if serving is not None:
            ax.axvline(serving, color="green", linestyle="--", label="new leader serving")
        switched = [x for x in run["marks_s"].get("secondaries_reconfigured", []) if x]
        if switched:
            ax.axvline(min(switched), color="purple", linestyle=":",
                       label="secondaries reconfigured to it")
        ax.set_ylim(0, run["offered_per_s"] * 1.15)
        ax.set_xlabel("seconds since the signal")
        ax.set_ylabel(f"answered queries/s (per {run['interval_s']:g} s)")
        ax.set_title(f"{titles[run['kind']]}, {zones} zone{'s' if zones > 1 else ''}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        path = IMG / f"{prefix}-{run['kind']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path.relative_to(ROOT)))
    return paths


def report(file: dict[str, Any]) -> str:
    """Markdown tables of the results file (one per zone count), for the docs."""
    return "\n".join(report_run(run) for run in file.get("runs", [file]))


def report_run(results: dict[str, Any]) -> str:
    load, timing = results["load"], results["timing"]
    head = (f"{load.get('zones', 1)} zone(s), {load['rate_per_secondary']} queries/s offered "
            "to each of 2 secondaries, "
            f"{load['interval_s']:g} s intervals, {load['duration_s']:g} s per scenario, "
            f"leaseDuration {timing['leaseDuration']:g} s, {results['machine']['date_utc']}"
            "\n\n| leader gets | answered/s before (median) | lowest interval after | "
            "ratio | dipped | sent | lost | new leader serving | secondaries reconfigured | "
            "secondaries done refreshing | stalest secondary heartbeat |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = ""
    for run_ in results["scenarios"]:
        marks = run_["marks_s"]
        follow = ", ".join(f"{x:.2f}" for x in marks["secondaries_following_new_leader"]
                           if x is not None)
        switched = ", ".join(f"{x:.2f}" for x in marks.get("secondaries_reconfigured", [])
                             if x is not None)
        rows += (f"| {run_['kind'].upper()} | {run_['steady_answered_per_s']:.0f} | "
                 f"{run_['lowest_interval_answered_per_s']:.0f} | {run_['lowest_ratio']:.2f} | "
                 f"{'yes' if run_['dipped'] else 'no'} | {run_['sent']} | {run_['lost']} | "
                 f"+{marks['new_leader_named_serving']:.2f} s | +{switched} s | "
                 f"+{follow} s | {max(run_.get('heartbeat_max_age_s', {}).values(), default=0):.1f}"
                 " s |\n")
    return head + rows


# -- main -----------------------------------------------------------------------------

HOW = ("3 master pods and 2 secondaries (bindha-rwx run / secondary), each a process in "
       "its own network namespace, real kube-apiserver + etcd, real named. The read zone "
       f"({NAMES} A records; with --zones N spread over N zones) is on the shared volume "
       "before the first master starts. One "
       "dnsperf per secondary (run on the host, through the lab bridge) asks for those "
       "names at a fixed offered rate (-Q) with a 1 s timeout (-t 1) and prints the "
       "answered rate every interval (-S); the first and last interval of each (dnsperf's "
       "warm-up and its cut-off at -l) are dropped and the two series are summed per "
       "interval. "
       "After `before` seconds the leader's supervisor gets SIGTERM (graceful "
       "handover) or SIGKILL (its named dies with it; takeover at Lease expiry). "
       "'lost' is dnsperf's count of queries with no answer within the timeout; "
       f"'dipped' means an interval after the signal fell below {DIP_RATIO:g} x the "
       "median rate before it. Marks (new leader serving, secondaries following it) "
       "come from the supervisors' JSON logs.")


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench answers")
    parser.add_argument("--rate", type=int, default=1000, help="queries/s per secondary")
    parser.add_argument("--interval", type=float, default=0.5, help="dnsperf -S seconds")
    parser.add_argument("--duration", type=float, default=30, help="seconds per scenario")
    parser.add_argument("--before", type=float, default=5, help="seconds of load first")
    parser.add_argument("--zones", type=int, default=1,
                        help=f"spread the {NAMES} names over this many zones (a failover "
                        "then makes each secondary refresh every zone)")
    parser.add_argument("--quick", action="store_true",
                        help="test timings (3 s Lease), 15 s per scenario, 500 q/s")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--report", action="store_true",
                        help="print a markdown table of benchmarks/results/answers.json; "
                        "run nothing")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads((RESULTS / "answers.json").read_text())))
        return 0
    timing = DEFAULT_TIMING
    if args.quick:
        timing, args.duration, args.rate, args.before = TEST_TIMING, 15, 500, 4
    dnsperf_binary()
    results = run(args, timing)
    if args.no_write:
        return 0
    RESULTS.mkdir(exist_ok=True)
    results["plots"] = plot(results)
    out = RESULTS / "answers.json"
    file = merged(out, results)
    out.write_text(json.dumps(file, indent=2) + "\n")
    print(report_run(results))
    print(f"written to {out} and {', '.join(results['plots'])}")
    return 0


def merged(path: Path, results: dict[str, Any]) -> dict[str, Any]:
    """The results file with this run in place of an earlier run with as many zones."""
    runs: list[dict[str, Any]] = []
    if path.exists():
        runs = [r for r in json.loads(path.read_text()).get("runs", [])
                if r["load"].get("zones") != results["load"]["zones"]]
    runs = sorted([*runs, results], key=lambda r: r["load"]["zones"])
    return {"machine": results["machine"], "how_measured": HOW, "runs": runs}


def run(args: argparse.Namespace, timing: dict[str, float]) -> dict[str, Any]:
    beats: BeatWatch | None = None
    results: dict[str, Any] = {
        "machine": machine(), "timing": timing,
        "load": {"rate_per_secondary": args.rate, "interval_s": args.interval,
                 "duration_s": args.duration, "before_signal_s": args.before,
                 "zones": args.zones, "dnsperf": dnsperf_version()}}
    with netns_lab("answers", timing) as lab:
        try:
            zones = read_zones(args.zones)
            results["load"]["names"] = write_zones(lab, zones)
            lab.start(3)
            lab.leader(timeout=60)
            lab.start_secondaries(2)
            lab.publish_endpoints([s.ip for s in lab.secondaries])
            wait_until(lambda: converged(lab), 120, "secondaries loaded")
            queries = write_queries(lab.root / "queries.txt", zones)
            beats = BeatWatch(lab)
            results["scenarios"] = [scenario(lab, kind, args, queries, beats)
                                    for kind in ("sigterm", "sigkill")]
        finally:
            if beats is not None:
                beats.stop()
    return results


def dnsperf_version() -> str:
    out = subprocess.run([dnsperf_binary(), "-h"], capture_output=True, text=True,
                         timeout=10, check=False)
    m = re.search(r"[Vv]ersion\s+([\w.]+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
