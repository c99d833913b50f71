"""Chaos runner: every fault of DESIGN.md's failure matrix, N rounds each in random
order, over a local cluster under load, with the invariants checked after every round.

The cluster: the real control plane, 3 masters (`bindha-rwx run`) over one shared
tmpfs (so a round can make it read-only or full), 2 secondaries (`bindha-rwx
secondary`), every pod in a network namespace of its own (harness/netlab.py). The
load, for the whole run: a writer sending TSIG updates without pause (unique names,
every acknowledgement recorded; one every ``write_interval`` seconds at most) and
dnsperf sending queries to both secondaries.

After every round, the invariants (violations are listed, the run goes on):
  - no acknowledged update missing on the leader (AXFR), nor on either secondary once
    it serves the leader's serial (a query per name acknowledged in the round; every
    name of the run at the end);
  - the secondaries serve the leader's serial within 5 s;
  - never two masters' `named` at once (processes sampled every 25 ms), the epoch on
    the shared volume never goes back;
  - no orphan `named` (each master named's parent is a live supervisor);
plus what each fault's row of the matrix promises (harness/faults.py).

    scripts/chaos [--rounds 3] [--faults a,b] [--seed N] [--timing test|default]
                  [--volume tmpfs|cephfs [--storage-fencing ceph|none]]

With ``--volume cephfs`` the masters share the Ceph lab's CephFS (harness/cephlab.py),
each through a ceph-fuse of its own started in its network namespace and bound to a
Node object of its own, and the CephFS faults of harness/cephfaults.py join the list.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import psutil
from kubernetes import client

from bindha_rwx.master import budget_seconds
from bindha_rwx.probes import RuntimeFiles
from harness.bindlab import write_key_files
from harness.cephfaults import CEPH_FAULTS
from harness.cephlab import CephLab, LabSettings
from harness.chaosvolume import CephVolume, ChaosVolume, TmpfsVolume
from harness.faults import FAULTS, Fault, Outcome
from harness.invariants import FenceSampler, converge_seconds, missing_acks, orphans
from harness.netlab import NetLab
from harness.pods import TEST_TIMING, MasterLab, MasterPod, start_lab, wait_until
from harness.testplane import TestPlane
from harness.writer import Ack, UpdateWriter

ZONE = "ha.example."
DEFAULT_TIMING = {"leaseDuration": 10, "renewDeadline": 6, "retryPeriod": 2, "stopTimeout": 3}
CONVERGE_LIMIT = 5.0
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
_STAT = re.compile(r"^(\d+\.\d+): (\d+(?:\.\d+)?)$")


class QueryLoad:
    """dnsperf against each secondary at ``qps`` for the whole run, with its per-second
    completed-query rate kept (wall-clock stamped) to cut into rounds."""

    def __init__(self, targets: list[str], qps: int, work: Path) -> None:
        self.targets = targets
        self.work = work
        query_file = work / "queries.txt"
        query_file.write_text(f"{ZONE} SOA\nns1.{ZONE} A\n{ZONE} NS\n")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outputs: list[Path] = []
        dnsperf = shutil.which("dnsperf")
        if dnsperf is None:
            raise RuntimeError("dnsperf is missing: scripts/setup.sh installs it "
                               "(Debian package dnsperf)")
        for ip in targets:
            out = work / f"dnsperf-{ip}.log"
            self.outputs.append(out)
            with out.open("wb") as stream:
                self.procs.append(subprocess.Popen(
                    [dnsperf, "-s", ip, "-d", str(query_file), "-l", "86400", "-S", "1",
                     "-Q", str(qps), "-t", "1", "-q", "50",
                     "-O", "suppress=timeout,unexpected"],
                    stdout=stream, stderr=subprocess.STDOUT, start_new_session=True))

    def rates(self, start_wall: float, end_wall: float) -> list[list[float]]:
        """Per target, the completed-queries-per-second samples inside the window."""
        out = []
        for path in self.outputs:
            samples = []
            for line in path.read_text(errors="replace").splitlines():
                match = _STAT.match(line.strip())
                if match and start_wall <= float(match.group(1)) <= end_wall:
                    samples.append(float(match.group(2)))
            out.append(samples)
        return out

    def stop(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        for ip, proc, path in zip(self.targets, self.procs, self.outputs, strict=True):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            text = path.read_text(errors="replace")
            sent = re.search(r"Queries sent:\s+(\d+)", text)
            completed = re.search(r"Queries completed:\s+(\d+)", text)
            summary[ip] = {"sent": int(sent.group(1)) if sent else None,
                           "completed": int(completed.group(1)) if completed else None}
        return summary


@dataclass
class ChaosLab:
    """The cluster under load, and what the faults need of it."""

    lab: MasterLab
    zone: str
    writer: UpdateWriter
    sampler: FenceSampler
    volume: ChaosVolume
    timing: dict[str, float]
    grace_seconds: float
    storage_fencing: str = "none"
    queries: QueryLoad | None = None
    crashes: dict[int, list[float]] = field(default_factory=dict)  # supervisor pid: times

    def new_leader(self, old: MasterPod, timeout: float) -> MasterPod:
        def other() -> MasterPod | None:
            try:
                pod = self.lab.leader(timeout=0.2)
            except AssertionError:
                return None
            return pod if pod is not old else None
        return wait_until(other, timeout, f"a leader other than {old.name}")

    def any_leader(self, timeout: float) -> MasterPod:
        return self.lab.leader(timeout=timeout)

    def first_ack_from(self, pod: MasterPod, after: float, timeout: float) -> float:
        """Monotonic time of the first update ``pod`` acknowledged after ``after``."""
        def first() -> float | None:
            times = [a.acked for a in list(self.writer.acks)
                     if a.server == pod.ip and a.sent >= after]
            return min(times) if times else None
        return wait_until(first, timeout, f"{pod.name} acknowledges updates")

    def settle(self) -> tuple[MasterPod, float | None]:
        """Every pod up, one leader serving and acknowledging, the standbys watching;
        returns the leader and how long the secondaries took to reach its serial."""
        for pod in self.lab.pods:
            if not pod.alive():
                if pod in self.lab.masters:
                    self.volume.revive(pod)
                pod.restart()
        leader = self.lab.leader(timeout=self.timing["leaseDuration"] * 6)
        self.first_ack_from(leader, time.monotonic(), timeout=30)
        converged = converge_seconds(leader.ip, [s.ip for s in self.lab.secondaries],
                                     self.zone, CONVERGE_LIMIT)
        for pod in self.lab.masters:
            if pod is not leader:
                files = RuntimeFiles(pod.work_dir)
                wait_until(lambda f=files, p=pod: (lambda s: s is not None and s.pid == p.pid
                                                   and s.state == "standby"
                                                   and s.watch_connected)(f.read_state()),
                           60, f"{pod.name} a watching standby")
        return leader, converged


def has_name(server: str, name: str, zone: str) -> bool | None:
    """Whether ``server`` answers the TXT of ``name`` (None: no answer at all)."""
    for _ in range(3):
        try:
            answer = dns.query.udp(dns.message.make_query(f"{name}.{zone}", "TXT"), server,
                                   timeout=1)
        except (dns.exception.DNSException, OSError):
            continue
        return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)
    return None


def missing_on_secondary(ip: str, acks: list[Ack], zone: str) -> list[str]:
    return [a.name for a in acks if not has_name(ip, a.name, zone)]


@dataclass
class ChaosRun:
    root: Path
    rounds: int
    faults: list[str]
    seed: int
    timing: dict[str, float]
    qps: int = 200
    write_interval: float = 0.02
    volume: str = "tmpfs"  # or cephfs: the lab's CephFS, a ceph-fuse per pod
    storage_fencing: str = "ceph"  # with cephfs: fencing.storage of every pod
    records: list[dict[str, Any]] = field(default_factory=list)

    def run(self, api: client.ApiClient | None = None,
            kubeconfig: Path | None = None) -> dict[str, Any]:
        """The whole run; on a control plane of its own unless ``api`` and
        ``kubeconfig`` name one (the smoke test passes the session's)."""
        order = [name for name in self.faults for _ in range(self.rounds)]
        random.Random(self.seed).shuffle(order)
        net = NetLab()
        plane: TestPlane | None = None
        lab: MasterLab | None = None
        volume: ChaosVolume | None = None
        ceph: CephLab | None = None
        chaos: ChaosLab | None = None
        summary: dict[str, Any] = {}
        namespace = f"chaos-{uuid.uuid4().hex[:6]}"
        try:
            if api is None or kubeconfig is None:
                plane, lab = start_lab(self.root, namespace, net, self.timing)
            else:
                client.CoreV1Api(api).create_namespace(
                    client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
                lab = MasterLab(root=self.root, api=api, kubeconfig=kubeconfig,
                                namespace=namespace, address_pool=net,
                                key_files=write_key_files(self.root / "keys",
                                                          ["update-key", "transfer-key"]),
                                timing=dict(self.timing))
            if self.volume == "cephfs":
                ceph = CephLab(self.root / "ceph", LabSettings(standby_mds=True))
                ceph.start()
                volume = CephVolume(ceph, net, lab, self.storage_fencing)
            else:
                volume = TmpfsVolume(lab.shared)
            for pod in [volume.add_master(lab) for _ in range(3)]:
                pod.start()
            leader = lab.leader(timeout=60)
            lab.start_secondaries(2)
            lab.publish_endpoints([s.ip for s in lab.secondaries])
            key = leader.config.keys["update-key"]
            writer = UpdateWriter(ZONE, [p.ip for p in lab.masters], key,
                                  interval=self.write_interval).start()
            sampler = FenceSampler([p.work_dir for p in lab.masters], lab.volume,
                                   owner_reads=self.volume != "cephfs").start()
            config = leader.config
            chaos = ChaosLab(lab=lab, zone=ZONE, writer=writer, sampler=sampler,
                             volume=volume, timing=self.timing,
                             grace_seconds=budget_seconds(config) + 5,
                             storage_fencing=(self.storage_fencing
                                              if self.volume == "cephfs" else "none"))
            chaos.settle()
            chaos.queries = QueryLoad([s.ip for s in lab.secondaries], self.qps, self.root)
            wait_until(lambda q=chaos.queries: all(r and r[-1] > 0 for r in q.rates(
                0, time.time() + 1)), 30, "dnsperf answered by both secondaries")
            for index, name in enumerate(order, 1):
                record = self.round(chaos, index, name, ALL_FAULTS[name])
                self.records.append(record)
                state = "ok" if not record["violations"] else \
                    "VIOLATION " + "; ".join(record["violations"])
                print(f"round {index}/{len(order)} {name}: {_figures_text(record)} {state}",
                      flush=True)
            summary = self.final_check(chaos)
        finally:
            if chaos is not None:
                chaos.writer.stop()
                chaos.sampler.stop()
                if chaos.queries is not None:
                    summary["queries"] = chaos.queries.stop()
            if isinstance(volume, CephVolume):
                volume.close()  # frozen or cut clients run again: the pods can stop
            if lab is not None:
                lab.stop()
                if plane is None:
                    client.CoreV1Api(lab.api).delete_namespace(namespace)
            if isinstance(volume, TmpfsVolume):
                volume.close()
            if ceph is not None:
                ceph.stop()
            net.close()
            if plane is not None:
                plane.stop()
        return {"rounds": self.records, "final": summary,
                "violations": sum(len(r["violations"]) for r in self.records)
                + len(summary.get("violations", []))}

    def round(self, chaos: ChaosLab, index: int, name: str, fault: Fault) -> dict[str, Any]:
        leader, _ = chaos.settle()
        start, start_wall = time.monotonic(), time.time()
        acked_before = len(chaos.writer.acks)
        try:
            outcome = fault(chaos, leader)
        except (AssertionError, RuntimeError, subprocess.TimeoutExpired) as exc:
            outcome = Outcome(violations=[f"{type(exc).__name__}: {exc}"])
        violations = list(outcome.violations)
        try:
            leader, converged = chaos.settle()
        except AssertionError as exc:
            violations.append(f"no steady state after the round: {exc}")
            return self._record(index, name, outcome, violations, start, start_wall, chaos)
        end = time.monotonic()
        if converged is None:
            violations.append(f"a secondary did not reach the leader's serial in "
                              f"{CONVERGE_LIMIT:g}s")
        acks = list(chaos.writer.acks)
        transfer = leader.config.keys["transfer-key"]
        missing = missing_acks(leader.ip, ZONE, transfer, acks)
        if missing:
            violations.append(f"{len(missing)} acknowledged updates missing on the leader "
                              f"{leader.name}: {missing[:5]}")
        if converged is not None:
            for secondary in chaos.lab.secondaries:
                lost = missing_on_secondary(secondary.ip, acks[acked_before:], ZONE)
                if lost:
                    violations.append(f"{len(lost)} acknowledged updates missing on "
                                      f"{secondary.name}: {lost[:5]}")
        dual = chaos.sampler.dual_writer_seconds(start, end)
        if chaos.sampler.max_writers(start, end) > 1:
            violations.append(f"two masters' named ran at once for {dual:.3f}s")
        violations += chaos.sampler.owner_mismatches(start, end)
        regressions = chaos.sampler.epoch_regressions(start, end)
        if regressions:
            violations.append(f"the epoch went back: {regressions[:3]}")
        strays = orphans([p.work_dir for p in chaos.lab.masters],
                         {p.pid for p in chaos.lab.masters if p.alive()})
        if strays:
            violations.append(f"orphan named: pids {strays}")
        outcome.figures["converge_s"] = converged
        outcome.figures["max_write_gap_s"] = chaos.writer.max_gap(after=start)
        outcome.figures["acked_in_round"] = len(acks) - acked_before
        return self._record(index, name, outcome, violations, start, start_wall, chaos)

    def _record(self, index: int, name: str, outcome: Outcome, violations: list[str],
                start: float, start_wall: float, chaos: ChaosLab) -> dict[str, Any]:
        end_wall = time.time()
        record: dict[str, Any] = {"round": index, "fault": name, "seconds":
                                  round(time.monotonic() - start, 3),
                                  "figures": _rounded(outcome.figures),
                                  "violations": violations}
        if chaos.queries is not None:
            rates = chaos.queries.rates(start_wall, end_wall)
            record["secondary_qps_min"] = [min(r, default=None) for r in rates]
            record["secondary_qps_mean"] = [round(sum(r) / len(r), 1) if r else None
                                            for r in rates]
        return record

    def final_check(self, chaos: ChaosLab) -> dict[str, Any]:
        """Every name acknowledged in the whole run, on the leader and both secondaries."""
        leader, converged = chaos.settle()
        chaos.writer.stop()
        acks = list(chaos.writer.acks)
        violations = []
        missing = missing_acks(leader.ip, ZONE, leader.config.keys["transfer-key"], acks)
        if missing:
            violations.append(f"{len(missing)} acknowledged updates missing on the leader")
        target = converge_seconds(leader.ip, [s.ip for s in chaos.lab.secondaries], ZONE,
                                  CONVERGE_LIMIT)
        if target is None:
            violations.append("the secondaries did not converge at the end")
        else:
            for secondary in chaos.lab.secondaries:
                lost = missing_on_secondary(secondary.ip, acks, ZONE)
                if lost:
                    violations.append(f"{len(lost)} acknowledged updates missing on "
                                      f"{secondary.name} at the end: {lost[:5]}")
        return {"acknowledged": len(acks), "writer_failures": chaos.writer.failures,
                "violations": violations, "converge_s": converged}


def _rounded(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}


def _figures_text(record: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in record["figures"].items())


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    by_fault: dict[str, Any] = {}
    for record in records:
        entry = by_fault.setdefault(record["fault"], {"rounds": 0, "violations": 0,
                                                      "figures": {}})
        entry["rounds"] += 1
        entry["violations"] += len(record["violations"])
        for key, value in record["figures"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                entry["figures"].setdefault(key, []).append(value)
    for entry in by_fault.values():
        entry["figures"] = {k: {"min": min(v), "max": max(v), "mean": round(sum(v) / len(v), 3)}
                            for k, v in entry["figures"].items()}
    return by_fault


ALL_FAULTS: dict[str, Fault] = {**FAULTS, **CEPH_FAULTS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each fault")
    parser.add_argument("--faults", default=None,
                        help=f"comma-separated, of: {', '.join(FAULTS)}; with --volume "
                             f"cephfs also {', '.join(CEPH_FAULTS)} (default: all)")
    parser.add_argument("--volume", choices=("tmpfs", "cephfs"), default="tmpfs",
                        help="tmpfs: one local tmpfs; cephfs: the Ceph lab, a ceph-fuse "
                             "per pod in the pod's network namespace")
    parser.add_argument("--storage-fencing", choices=("ceph", "none"), default="ceph",
                        help="(cephfs) every pod's fencing.storage")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timing", choices=("test", "default"), default="test",
                        help="test: a 3 s Lease (fast rounds); default: the product's 10 s")
    parser.add_argument("--qps", type=int, default=200, help="dnsperf rate per secondary")
    parser.add_argument("--output", type=Path, default=None,
                        help="default benchmarks/results/chaos.json, or chaos-cephfs.json")
    parser.add_argument("--keep", action="store_true",
                        help="keep every pod's logs (the temp dir) after a passing run too")
    args = parser.parse_args(argv)
    known = FAULTS if args.volume == "tmpfs" else ALL_FAULTS
    faults = [f.strip() for f in (args.faults or ",".join(known)).split(",") if f.strip()]
    unknown = [f for f in faults if f not in known]
    if unknown:
        print(f"chaos: unknown fault {unknown} for --volume {args.volume}; choose from "
              f"{', '.join(known)}", file=sys.stderr)
        return 2
    if args.output is None:
        args.output = RESULTS / ("chaos.json" if args.volume == "tmpfs" else
                                 f"chaos-cephfs-{args.storage_fencing}.json")
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    timing = dict(TEST_TIMING if args.timing == "test" else DEFAULT_TIMING)
    root = Path(tempfile.mkdtemp(prefix="bindha-chaos-"))
    started = time.time()
    print(f"chaos: {args.rounds} rounds of {len(faults)} faults, seed {seed}, timing {timing}, "
          f"volume {args.volume}"
          + (f", storage fencing {args.storage_fencing}" if args.volume == "cephfs" else ""),
          flush=True)
    try:
        result = ChaosRun(root=root, rounds=args.rounds, faults=faults, seed=seed,
                          timing=timing, qps=args.qps, volume=args.volume,
                          storage_fencing=args.storage_fencing).run()
    except (AssertionError, RuntimeError, OSError) as exc:
        # The cluster never reached a steady state: keep every pod's log to read.
        print(f"chaos: the run stopped: {exc}\nchaos: pods' logs kept under {root}",
              file=sys.stderr)
        return 1
    if args.keep or result["violations"]:
        print(f"chaos: pods' logs kept under {root}", flush=True)
    else:
        shutil.rmtree(root, ignore_errors=True)
    report = {"machine": {"cpus": psutil.cpu_count(), "memory_gib": round(
                  psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
                  "python": platform.python_version()},
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "duration_s": round(time.time() - started, 1), "seed": seed, "timing": timing,
              "rounds_per_fault": args.rounds, "volume": args.volume,
              "storage_fencing": args.storage_fencing if args.volume == "cephfs" else None,
              "summary": summarize(result["rounds"]),
              **result}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"chaos: {len(result['rounds'])} rounds, {result['violations']} violations; "
          f"written to {args.output}", flush=True)
    try:
        from benchmarks.chaos_report import report_and_plots
    except ImportError as exc:  # matplotlib is in the bench extra only
        print(f"chaos: no plots ({exc}); BINDHA_SETUP_BENCH=1 scripts/setup.sh adds them")
    else:
        report_and_plots(args.output)
    return 0 if result["violations"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
