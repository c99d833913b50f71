"""Side-by-side elector benchmark (issue 7): bindha-rwx against three other ways of
electing the one named that writes the shared zones.

In one run, on one test control plane, each contender runs as 3 pods over its own
shared dyn directory with the real named (config rendered by the product's own code):

- bindha-rwx: `bindha-rwx run` at its default timings (10 s / 6 s / 2 s / 3 s);
- naive: benchmarks/peers/naive.py, the HTTP calls of a `kubectl patch` loop (blind
  merge PATCH, poll 5 s, TTL 5 s judged by the local wall clock);
- client-go: benchmarks/peers/clientgo, tools/leaderelection with its documented
  defaults (15 s / 10 s / 2 s) and ReleaseOnCancel, named via exec.CommandContext;
- python-client: benchmarks/peers/pyclient.py, kubernetes.leaderelection with its
  LeaseLock at its example's timings (17 s / 15 s / 5 s).

Per contender: steady-state API requests per minute and elector RSS, graceful
handover write gap and lost acknowledged updates, crash takeover, and the time with
more than one named running under racing starts and under injected API latency.
Writes benchmarks/results/compare.json, docs/img/compare-*.png and the tables of
docs/comparison.md. Needs root (loopback aliases, port 53).

    scripts/bench compare [--quick] [--only naive,client-go] [--handovers 3] ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import dns.query
import dns.rcode
import dns.update
import psutil
from kubernetes import client
from kubernetes import config as kube_config

from benchmarks.supervisor import DEFAULT_TIMING, percentile
from bindha_rwx.bindtools import check_conf, find_tool
from bindha_rwx.config import Config, TsigKey
from bindha_rwx.files import atomic_write
from bindha_rwx.render import render_bootstrap_zone, render_primary
from harness.bindlab import NamedProcess, keyring, soa_serial, write_key_files
from harness.loopback import AddressPool
from harness.pods import MasterLab, MasterPod, all_named, wait_until
from harness.testplane import TestPlane, build_binary
from harness.writer import UpdateWriter, served_names

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"
DOC = ROOT / "docs" / "comparison.md"
DEFAULT_OUTPUT = RESULTS / "compare.json"
ZONE = "ha.example."
SAMPLE_INTERVAL = 0.01
# Pods of a rollout start one after another. Started in the same instant, the naive
# loop's pods poll in phase and each finds the others' renewTime older than its TTL
# for good (that is the racing-start figure), so the other figures start them apart.
STAGGER = 1.7
CONTENDERS = ("bindha-rwx", "naive", "client-go", "python-client")


# -- contenders ---------------------------------------------------------------------

@dataclass(frozen=True)
class Contender:
    """One way of electing the writer, with the timings it runs at."""

    name: str
    lease_duration: float
    renew_deadline: float  # naive: its TTL, the age after which others take the Lease
    retry_period: float
    elector: list[str] | None  # argv before the peer flags; None: `bindha-rwx run`
    lease_must_exist: bool = False  # kubectl patch cannot create the Lease

    @property
    def latency(self) -> float:
        """The one-way delay injected on the leader's API connection: beyond the renew
        deadline, so that a single call takes longer than the leader may go unrenewed."""
        return self.renew_deadline + 2

    @property
    def latency_hold(self) -> float:
        return self.latency + self.lease_duration + self.renew_deadline

    @property
    def takeover_timeout(self) -> float:
        return 3 * self.lease_duration + 4 * self.retry_period + 30


def contenders(clientgo_binary: Path | None) -> dict[str, Contender]:
    python = [sys.executable, "-m"]
    timing = DEFAULT_TIMING
    found = {
        "bindha-rwx": Contender("bindha-rwx", timing["leaseDuration"], timing["renewDeadline"],
                                timing["retryPeriod"], None),
        "naive": Contender("naive", 5, 5, 5, [*python, "benchmarks.peers.naive"],
                           lease_must_exist=True),
        "python-client": Contender("python-client", 17, 15, 5,
                                   [*python, "benchmarks.peers.pyclient"]),
    }
    if clientgo_binary is not None:
        found["client-go"] = Contender("client-go", 15, 10, 2, [str(clientgo_binary)])
    return found


def build_clientgo_peer() -> Path:
    result = subprocess.run([str(ROOT / "scripts" / "build-clientgo-peer.sh")],
                            stdout=subprocess.PIPE, text=True, timeout=1800, check=True)
    return Path(result.stdout.strip().splitlines()[-1])


# -- pods ------------------------------------------------------------------------------

@dataclass
class PeerPod(MasterPod):
    """A master pod whose main process is a peer elector that runs named itself.

    It runs as PID 1 of a PID namespace of its own (``unshare --pid --fork``), as in a
    container: when it exits, the kernel kills whatever it leaves behind (a named
    started with exec.CommandContext and not yet killed when os.Exit runs, say).
    ``process`` is unshare; the main process, which gets the signals, is its child.
    """

    elector: list[str] = field(default_factory=list)
    lease_name: str = ""
    named_argv: list[str] = field(default_factory=list)

    @property
    def main_pid(self) -> int:
        def child() -> int | None:
            with contextlib.suppress(psutil.Error):
                return next((c.pid for c in psutil.Process(self.pid).children()), None)
            return None
        return int(wait_until(child, 10, f"{self.name}: main process started"))

    def signal(self, sig: int) -> None:
        os.kill(self.main_pid, sig)

    def named_processes(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [c for c in psutil.Process(self.main_pid).children()
                    if c.name() == "named" and c.status() != psutil.STATUS_ZOMBIE]
        return []

    def start(self) -> None:
        argv = ["unshare", "--pid", "--fork", "--kill-child",
                *self.elector, "--identity", self.name, "--lease", self.lease_name,
                "--namespace", self.namespace, "--kubeconfig", str(self.kubeconfig),
                "--", *self.named_argv]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KUBERNETES_") and k != "KUBECONFIG"}
        env |= {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        with self.log_path.open("ab") as out, self.named_log_path.open("ab") as err:
            self.process = subprocess.Popen(self.wrap(self.ip, argv), stdout=out, stderr=err,
                                            cwd=ROOT, env=env, start_new_session=True)


@dataclass
class PeerLab(MasterLab):
    """MasterLab whose pods run a peer elector with a named.conf from render_primary."""

    elector: list[str] = field(default_factory=list)

    def add_pod(self, name: str | None = None, command: str = "run") -> MasterPod:
        pod = super().add_pod(name, command)
        base = {f.name: getattr(pod, f.name) for f in fields(MasterPod)}
        config = pod.config
        bootstrap_zones(config)
        text = render_primary(config)
        named = NamedProcess.from_text(config, text)  # also makes the rndc key it includes
        check_conf(text)
        tool = str(config.paths.named) if config.paths.named.exists() else find_tool("named")
        peer = PeerPod(**base, elector=self.elector, lease_name=self.lease_name,
                       named_argv=[tool, "-f", "-c", str(named.conf_path)])
        self.pods[-1] = peer
        return peer


def bootstrap_zones(config: Config) -> None:
    """A minimal zone file for each zone not yet on the shared volume (as the product)."""
    for zone in config.zones:
        path = config.paths.dyn_dir / zone.file_name
        if not path.exists():
            atomic_write(path, render_bootstrap_zone(zone))


def kill_tree(pod: MasterPod) -> None:
    """SIGKILL the pod's main process and every descendant at once (a node or
    container crash), then reap the main process."""
    if pod.process is None:
        return
    try:
        main = psutil.Process(pod.pid)
        procs = [main, *main.children(recursive=True)]
    except psutil.Error:
        procs = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        pod.process.wait(10)


def restart(lab: MasterLab, pod: MasterPod) -> None:
    """Start the pod again (its container restarting) and wait until it is a candidate."""
    if isinstance(pod, PeerPod):
        before = sum(e.get("event") == "candidate" for e in pod.events())
        pod.process = None
        pod.start()
        wait_until(lambda: sum(e.get("event") == "candidate" for e in pod.events()) > before,
                   30, f"{pod.name} back as a candidate")
        time.sleep(1.0)  # its first Lease read
    else:
        pod.restart(timeout=30)


def ensure_running(lab: MasterLab) -> None:
    for pod in lab.pods:
        if not pod.alive():
            kill_tree(pod)  # leftovers of a pod whose main process ended
            restart(lab, pod)


# -- observing named -------------------------------------------------------------------

def writers(lab: MasterLab) -> list[MasterPod]:
    """The pods whose named runs (orphans included: matched by their config path)."""
    found = []
    for proc in all_named(lab.root):
        with contextlib.suppress(psutil.Error):
            line = " ".join(proc.cmdline())
            found += [p for p in lab.pods if f"{p.work_dir}/" in line]
    return found


def single_writer(lab: MasterLab, timeout: float, stable: float = 1.0) -> MasterPod:
    """The one pod whose named runs and answers, once that has held for ``stable`` s."""
    since: list[Any] = [None, 0.0]

    def settled() -> MasterPod | None:
        now = writers(lab)
        pod = now[0] if len(now) == 1 else None
        if pod is None or pod is not since[0]:
            since[:] = [pod, time.monotonic()]
            return None
        if time.monotonic() - since[1] < stable:
            return None
        return pod if soa_serial(pod.ip, ZONE, timeout=0.3) is not None else None
    return wait_until(settled, timeout, f"{lab.lease_name}: exactly one named serving",
                      interval=0.05)


def running_named(root: Path) -> int:
    """How many named run with a config under ``root``: all_named's test (name named,
    not a zombie, ``root`` in the command line), at a tenth of its cost, so that a 10 ms
    sampling period is reachable on 2 cores: the kernel's comm name first, psutil only
    for the few processes called named."""
    count = 0
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/comm", "rb") as comm:
                if comm.read() != b"named\n":
                    continue
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and \
                    any(str(root) in arg for arg in proc.cmdline()):
                count += 1
        except (OSError, psutil.Error):
            continue
    return count


class NamedSampler:
    """Counts running named on one shared directory every ~10 ms and keeps the moments
    the count changed."""

    def __init__(self, root: Path, interval: float = SAMPLE_INTERVAL) -> None:
        self.root = root
        self.interval = interval
        self.changes: list[tuple[float, int]] = []
        self.samples = 0
        self.started = time.monotonic()
        self.ended = self.started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="named-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = -1
        while not self._stop.is_set():
            count = running_named(self.root)
            now = time.monotonic()
            self.samples += 1
            if count != last:
                self.changes.append((now, count))
                last = count
            self._stop.wait(self.interval)
        self.ended = time.monotonic()

    def stop(self) -> NamedSampler:
        self._stop.set()
        self._thread.join(5)
        return self

    def dual_intervals(self) -> list[float]:
        """Lengths of the spans with more than one named running."""
        spans, start = [], None
        for at, count in [*self.changes, (self.ended, 0)]:
            if count > 1 and start is None:
                start = at
            elif count <= 1 and start is not None:
                spans.append(at - start)
                start = None
        return spans

    def period(self) -> float:
        return (self.ended - self.started) / max(1, self.samples)

    def timeline(self, origin: float) -> list[tuple[float, int]]:
        return [(round(at - origin, 3), count) for at, count in self.changes]


def dual_summary(samplers: list[NamedSampler]) -> dict[str, Any]:
    spans = [s for sampler in samplers for s in sampler.dual_intervals()]
    return {"rounds": len(samplers), "intervals": len(spans),
            "sum_s": round(sum(spans), 3), "max_s": round(max(spans, default=0.0), 3),
            "max_named_at_once": max((c for s in samplers for _, c in s.changes), default=0),
            "sample_period_ms": round(1000 * max((s.period() for s in samplers),
                                                 default=0.0), 1)}


# -- updates -----------------------------------------------------------------------

def keys(lab: MasterLab) -> tuple[TsigKey, TsigKey]:
    config = lab.pods[0].config
    return config.keys["update-key"], config.keys["transfer-key"]


def clear_updates(lab: MasterLab, pod: MasterPod) -> None:
    """Delete the u<N> names of earlier rounds, so a lost update cannot hide behind an
    equal name that an earlier round wrote (UpdateWriter always counts from u0)."""
    update_key, transfer_key = keys(lab)
    names = sorted(n for n in served_names(pod.ip, ZONE, transfer_key)
                   if re.fullmatch(r"u\d+", n))
    for start in range(0, len(names), 400):
        message = dns.update.UpdateMessage(ZONE, keyring=keyring(update_key),
                                           keyname=update_key.name)
        for name in names[start:start + 400]:
            message.delete(name)
        answer = dns.query.tcp(message, pod.ip, timeout=10)
        if answer.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"clearing names at {pod.ip}: {dns.rcode.to_text(answer.rcode())}")


def start_writer(lab: MasterLab, leader: MasterPod) -> UpdateWriter:
    clear_updates(lab, leader)
    writer = UpdateWriter(ZONE, [p.ip for p in lab.pods], keys(lab)[0]).start()
    wait_until(lambda: len(writer.acks) >= 20, 30, "updates flowing")
    return writer


def first_ack_elsewhere(writer: UpdateWriter, old: MasterPod, after: float,
                        timeout: float) -> float:
    """Monotonic time of the first ack after ``after`` from a pod other than ``old``."""
    def found() -> float | None:
        return next((a.acked for a in list(writer.acks)
                     if a.server != old.ip and a.acked > after), None)
    return float(wait_until(found, timeout, "an ack from the new leader", interval=0.05))


def lost_updates(lab: MasterLab, writer: UpdateWriter, timeout: float) -> tuple[int, int, str]:
    """(acknowledged, lost, final leader): AXFR of the one named left vs every ack."""
    final = single_writer(lab, timeout)
    served = served_names(final.ip, ZONE, keys(lab)[1])
    acked = [a.name for a in writer.acks]
    return len(acked), sum(name not in served for name in acked), final.name


# -- phases ------------------------------------------------------------------------

def graceful_round(lab: MasterLab, spec: Contender) -> dict[str, Any]:
    leader = single_writer(lab, spec.takeover_timeout)
    writer = start_writer(lab, leader)
    sampler = NamedSampler(lab.root)
    sent = time.monotonic()
    leader.signal(signal.SIGTERM)
    try:
        gap = first_ack_elsewhere(writer, leader, sent, spec.takeover_timeout) - sent
    finally:
        writer.stop()
    with contextlib.suppress(subprocess.TimeoutExpired):
        leader.wait_exit(30)
    kill_tree(leader)
    acked, lost, final = lost_updates(lab, writer, spec.takeover_timeout)
    sampler.stop()
    restart(lab, leader)
    return {"gap_s": round(gap, 3), "acknowledged": acked, "lost": lost, "from": leader.name,
            "to": final, "dual_s": round(sum(sampler.dual_intervals()), 3)}


def crash_round(lab: MasterLab, spec: Contender) -> dict[str, Any]:
    leader = single_writer(lab, spec.takeover_timeout)
    writer = start_writer(lab, leader)
    sampler = NamedSampler(lab.root)
    killed = time.monotonic()
    kill_tree(leader)
    try:
        took = first_ack_elsewhere(writer, leader, killed, spec.takeover_timeout) - killed
    finally:
        writer.stop()
    acked, lost, final = lost_updates(lab, writer, spec.takeover_timeout)
    sampler.stop()
    restart(lab, leader)
    return {"takeover_s": round(took, 3), "acknowledged": acked, "lost": lost,
            "from": leader.name, "to": final, "dual_s": round(sum(sampler.dual_intervals()), 3)}


def reset_lease(lab: MasterLab, spec: Contender) -> None:
    """No holder: deleted, or (naive) an empty Lease as its manifest would create."""
    with contextlib.suppress(client.exceptions.ApiException):
        lab.coordination.delete_namespaced_lease(lab.lease_name, lab.namespace,
                                                 _request_timeout=10)
    wait_until(lambda: lab.lease() is None, 10, "Lease deleted")
    if spec.lease_must_exist:
        lab.coordination.create_namespaced_lease(lab.namespace, client.V1Lease(
            metadata=client.V1ObjectMeta(name=lab.lease_name), spec=client.V1LeaseSpec()),
            _request_timeout=10)


def race_round(lab: MasterLab, spec: Contender, window: float) -> NamedSampler:
    """All pods stopped, the Lease unheld, then 3 pods started at once."""
    for pod in lab.pods:
        kill_tree(pod)
    wait_until(lambda: not all_named(lab.root), 10, "no named left")
    reset_lease(lab, spec)
    sampler = NamedSampler(lab.root)
    for pod in lab.pods:
        pod.process = None
        pod.start()
    time.sleep(window)
    return sampler.stop()


def latency_round(lab: MasterLab, spec: Contender) -> tuple[NamedSampler, dict[str, Any]]:
    """The leader's API connection delayed by spec.latency each way for a while."""
    ensure_running(lab)
    leader = single_writer(lab, spec.takeover_timeout)
    writer = start_writer(lab, leader)
    sampler = NamedSampler(lab.root)
    origin = time.monotonic()
    leader.proxy.set_latency(spec.latency)
    time.sleep(spec.latency_hold)
    leader.proxy.set_latency(0)
    restored = time.monotonic() - origin
    settle_timeout = 2 * spec.latency + spec.takeover_timeout
    try:
        single_writer(lab, settle_timeout, stable=3.0)
        settled = True
    except AssertionError:
        settled = False  # still more than one named (or none) when the window closed
    finally:
        sampler.stop()
        writer.stop()
    detail: dict[str, Any] = {
        "latency_one_way_s": spec.latency, "held_s": round(restored, 1),
        "settled": settled, "window_s": round(sampler.ended - origin, 1),
        "acknowledged": len(writer.acks), "from": leader.name,
        "timeline": sampler.timeline(origin)}
    if settled:
        _, detail["lost"], detail["to"] = lost_updates(lab, writer, spec.takeover_timeout)
    else:
        detail["lost"] = None
        detail["lost_by_server"] = lost_by_server(lab, writer)
    return sampler, detail


def lost_by_server(lab: MasterLab, writer: UpdateWriter) -> dict[str, int]:
    """With several named still running, the acks each one's AXFR lacks."""
    acked = [a.name for a in writer.acks]
    out = {}
    for pod in writers(lab):
        with contextlib.suppress(Exception):
            served = served_names(pod.ip, ZONE, keys(lab)[1])
            out[pod.name] = sum(name not in served for name in acked)
    return out


# -- steady state ------------------------------------------------------------------

class ApiMetrics:
    """apiserver_request_total from the apiserver's /metrics (admin token)."""

    def __init__(self, plane: TestPlane) -> None:
        self.url = f"{plane.url}/metrics"
        self.token = plane.admin_token
        self.context = ssl.create_default_context(
            cafile=str(plane.workdir / "certs" / "apiserver.crt"))
        self.context.check_hostname = False

    def requests(self) -> dict[str, float]:
        """Counter value per (verb, resource, code) series."""
        request = urllib.request.Request(self.url,
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10, context=self.context) as answer:
            text = answer.read().decode()
        totals: dict[str, float] = {}
        for match in re.finditer(r"^apiserver_request_total\{(.*)\} (\S+)$", text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            key = f"{labels.get('verb')} {labels.get('resource') or labels.get('path', '')}" \
                  f"{'/' + labels['subresource'] if labels.get('subresource') else ''}"
            totals[key] = totals.get(key, 0.0) + float(match.group(2))
        return totals


def count_requests(metrics: ApiMetrics, seconds: float) -> dict[str, float]:
    """The rise of each series over ``seconds``. Core/v1 Endpoints are left out: no
    contender touches them, and the apiserver's own reconciler of the `kubernetes`
    Service writes them on a schedule of its own (seen here: a +-4/min jitter)."""
    before = metrics.requests()
    time.sleep(seconds)
    after = metrics.requests()
    return {k: after[k] - before.get(k, 0.0) for k in after
            if after[k] > before.get(k, 0.0) and k.split(" ")[1] != "endpoints"}


def steady_state(lab: MasterLab, spec: Contender, metrics: ApiMetrics, seconds: float,
                 baseline: dict[str, float]) -> dict[str, Any]:
    """Requests per minute above the idle baseline (same window length), and RSS."""
    ensure_running(lab)
    leader = single_writer(lab, spec.takeover_timeout)
    counted = count_requests(metrics, seconds)
    extra = {k: v - baseline.get(k, 0.0) for k, v in counted.items()}
    per_minute = 60 / seconds
    rss = {}
    for pod in lab.pods:
        with contextlib.suppress(psutil.Error):
            role = "leader" if pod is leader else "standby"
            main = pod.main_pid if isinstance(pod, PeerPod) else pod.pid
            rss[f"{role} {pod.name}"] = round(psutil.Process(main).memory_info().rss / 2**20, 1)
    return {"seconds": seconds,
            "requests_per_min": round(sum(extra.values()) * per_minute, 1),
            "by_call_per_min": {k: round(v * per_minute, 1)
                                for k, v in sorted(extra.items()) if abs(v) >= 1},
            "elector_rss_mib": rss,
            "leader_rss_mib": rss.get(f"leader {leader.name}"),
            "standby_rss_mib_max": max((v for k, v in rss.items() if k.startswith("standby")),
                                       default=None)}


# -- one contender ---------------------------------------------------------------------

@dataclass
class Bench:
    root: Path
    plane: TestPlane
    api: client.ApiClient
    pool: AddressPool
    key_files: dict[str, Path]
    metrics: ApiMetrics
    args: argparse.Namespace
    baseline: dict[str, float] = field(default_factory=dict)

    def lab(self, spec: Contender) -> MasterLab:
        namespace = f"cmp-{spec.name}-{uuid.uuid4().hex[:5]}"
        client.CoreV1Api(self.api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)),
            _request_timeout=10)
        common: dict[str, Any] = {
            "root": self.root / spec.name, "api": self.api, "kubeconfig": self.plane.kubeconfig,
            "namespace": namespace, "address_pool": self.pool, "key_files": self.key_files,
            "timing": dict(DEFAULT_TIMING), "lease_name": f"{spec.name}-leader"}
        if spec.elector is None:
            return MasterLab(**common)
        return PeerLab(**common, elector=spec.elector)

    def run(self, spec: Contender) -> dict[str, Any]:
        say(f"== {spec.name}")
        lab = self.lab(spec)
        try:
            if spec.lease_must_exist:
                reset_lease(lab, spec)
            for _ in range(3):
                lab.add_pod().start()
                time.sleep(STAGGER)
            return self._measure(lab, spec)
        finally:
            teardown(lab)

    def _measure(self, lab: MasterLab, spec: Contender) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {"timing": {"leaseDuration": spec.lease_duration,
                                          "renewDeadline": spec.renew_deadline,
                                          "retryPeriod": spec.retry_period}}
        out["steady"] = steady_state(lab, spec, self.metrics, a.steady_seconds, self.baseline)
        say(f"steady: {out['steady']['requests_per_min']} req/min, "
            f"RSS {out['steady']['elector_rss_mib']}")
        out["graceful"] = self._rounds("handover", a.handovers, lambda: graceful_round(lab, spec))
        out["crash"] = self._rounds("crash", a.crashes, lambda: crash_round(lab, spec))
        latency = []
        for i in range(a.latency_rounds):
            try:
                sampler, detail = latency_round(lab, spec)
            except AssertionError as exc:
                say(f"latency {i + 1}/{a.latency_rounds}: failed: {exc}")
                continue
            latency.append((sampler, detail))
            say(f"latency {i + 1}/{a.latency_rounds}: dual {sampler.dual_intervals()}, "
                f"settled {detail['settled']}, lost {detail['lost']}/{detail['acknowledged']}")
        out["latency"] = {**dual_summary([s for s, _ in latency]),
                          "rounds_detail": [d for _, d in latency]}
        # Last: a racing start can leave the naive loop with every pod leading for good.
        samplers = []
        for i in range(a.races):
            samplers.append(race_round(lab, spec, a.race_window))
            say(f"race {i + 1}/{a.races}: dual {samplers[-1].dual_intervals()}")
        out["race"] = dual_summary(samplers)
        return out

    @staticmethod
    def _rounds(what: str, count: int, one: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        rounds, failed = [], []
        for i in range(count):
            try:
                rounds.append(one())
            except AssertionError as exc:  # e.g. never a single named to start from
                failed.append(str(exc))
                say(f"{what} {i + 1}/{count}: failed: {exc}")
                continue
            say(f"{what} {i + 1}/{count}: {rounds[-1]}")
        key = "gap_s" if what == "handover" else "takeover_s"
        values = [r[key] for r in rounds]
        return {"rounds": rounds, "failed": failed,
                f"{key[:-2]}_p50_s": percentile(values, 50) if values else None,
                f"{key[:-2]}_max_s": max(values, default=None),
                "acknowledged": sum(r["acknowledged"] for r in rounds),
                "lost": sum(r["lost"] for r in rounds),
                "dual_sum_s": round(sum(r["dual_s"] for r in rounds), 3)}


def teardown(lab: MasterLab) -> None:
    """Kill every pod's tree and any named left on its directory; close the proxies."""
    for pod in lab.pods:
        kill_tree(pod)
        pod.proxy.close()
    for proc in all_named(lab.root):
        with contextlib.suppress(psutil.Error):
            proc.kill()


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- output ------------------------------------------------------------------------

HOW = {
    "pods": "3 pods per contender, each a process with its own loopback IP and API proxy, "
            "over one shared dyn directory, real named (named.conf from "
            "bindha_rwx.render.render_primary). bindha-rwx pods are harness MasterPods; "
            "peer pods run as PID 1 of their own PID namespace (unshare), so that, as in "
            "a container, whatever the elector leaves behind dies with it. Pods start "
            "1.7 s apart (a rollout); a pod that exits is restarted before the next round.",
    "steady": "Over a window with only this contender's 3 pods running (leader elected, "
              "no writer, the harness makes no API calls), the rise of every "
              "apiserver_request_total series on the apiserver's /metrics, minus the rise "
              "over an equal window before any contender ran (the apiserver's own "
              "requests), scaled to one minute; core/v1 Endpoints (the apiserver's own "
              "reconciler, used by no contender) left out. RSS: psutil memory_info().rss "
              "of each pod's elector process (not named) at the window's end.",
    "graceful": "A writer (harness/writer.py UpdateWriter) sends TSIG updates without pause, "
                "trying every pod; SIGTERM to the leader pod's main process; gap = the "
                "first acknowledged update from another pod minus the SIGTERM time. Lost = "
                "acknowledged names missing from an AXFR of the one named left once a "
                "single named has served for 1 s (names of earlier rounds are deleted "
                "first). >1 named: the sampler below, over the round.",
    "crash": "As graceful, but SIGKILL of every process in the leader pod's tree at once "
             "(elector and named); takeover = first ack from another pod minus the kill.",
    "race": "All pods killed, the Lease deleted (naive: an empty Lease, which kubectl "
            "patch needs), then the 3 pods started together; the number of running named "
            "on the shared directory (all_named's test: comm named, not a zombie, the "
            "directory in its command line; psutil) sampled every ~10 ms over the window "
            "(achieved period in sample_period_ms); dual = spans with more than one.",
    "latency": "Leader elected, writer running; the leader pod's API proxy delays every "
               "chunk by (renew deadline + 2 s) in each direction (naive: TTL + 2 s) for "
               "latency + lease duration + renew deadline seconds, then no delay until one "
               "named has served alone for 3 s (or a timeout: settled false). Same "
               "sampler; lost as in graceful.",
}


def machine() -> dict[str, Any]:
    return {"cpus": psutil.cpu_count(), "memory_gib": round(
        psutil.virtual_memory().total / 2**30, 1), "platform": platform.platform(),
        "python": platform.python_version(), "named": named_version()}


def named_version() -> str:
    result = subprocess.run([find_tool("named"), "-v"], capture_output=True, text=True,
                            timeout=10, check=False)
    return re.sub(r"\s*<id:[^>]*>", "", result.stdout.strip())


def write_plots(results: dict[str, Any]) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    data = results["contenders"]
    names = list(data)
    paths: list[Path] = []
    if not names:
        return paths

    def bars(ax: Any, values: list[list[float]], title: str, unit: str) -> None:
        for i, points in enumerate(values):
            ax.bar(i, max(points, default=0), color="#8fb3d9", width=0.6)
            ax.scatter([i] * len(points), points, color="#1f4e79", zorder=3, s=14)
        ax.set_xticks(range(len(names)), names, rotation=15)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bars(axes[0], [[r["gap_s"] for r in data[n]["graceful"]["rounds"]] for n in names],
         "graceful handover write gap (bar = max)", "seconds")
    bars(axes[1], [[r["takeover_s"] for r in data[n]["crash"]["rounds"]] for n in names],
         "crash takeover (bar = max)", "seconds")
    paths.append(_save(fig, "compare-takeover.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bars(axes[0], [[data[n]["race"]["sum_s"]] for n in names],
         "racing starts: time with >1 named (sum)", "seconds")
    bars(axes[1], [[data[n]["latency"]["sum_s"]] for n in names],
         "API latency on leader: time with >1 named (sum)", "seconds")
    paths.append(_save(fig, "compare-dual-writers.png"))

    fig, axes = plt.subplots(len(names), 1, figsize=(10, 1.6 * len(names) + 0.6), sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        detail = data[name]["latency"]["rounds_detail"]
        if detail:
            points = detail[0]["timeline"]
            # The samples record changes only: hold the last count to the window's end.
            end = max(points[-1][0] + 1 if points else 1, detail[0].get("window_s") or 0)
            xs = [t for t, _ in points] + [end]
            ys = [c for _, c in points] + [points[-1][1] if points else 0]
            ax.step(xs, ys, where="post", color="#1f4e79")
            ax.axvspan(0, detail[0]["held_s"], color="#f4c7a1", alpha=0.5)
        ax.set_ylabel(name, rotation=0, ha="right")
        ax.set_ylim(-0.2, 3.4)
        ax.set_yticks([0, 1, 2, 3])
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since latency was injected (shaded: latency on)")
    fig.suptitle("running named on the shared directory during injected API latency")
    paths.append(_save(fig, "compare-latency-timeline.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bars(axes[0], [[data[n]["steady"]["requests_per_min"]] for n in names],
         "API requests per minute, 3 pods, steady state", "requests/min")
    bars(axes[1], [[v for v in data[n]["steady"]["elector_rss_mib"].values()] for n in names],
         "elector RSS per pod (bar = max)", "MiB")
    paths.append(_save(fig, "compare-resources.png"))
    return paths


def _save(fig: Any, name: str) -> Path:
    path = IMG / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    return path


def tables(results: dict[str, Any]) -> str:
    """The Markdown tables of docs/comparison.md, from the results."""
    data = results["contenders"]
    lines = [f"Run: {results['when']}, {results['mode']} "
             f"({results['machine']['cpus']} CPUs, {results['machine']['memory_gib']} GiB, "
             f"{re.sub(r'[ ]*<id:[^>]*>', '', results['machine']['named'])}).", "",
             "| contender | timing (lease / renew / retry s) | graceful gap p50 / max (s) "
             "| lost / acked (graceful) | >1 named (graceful, s) | crash takeover p50 / max (s) "
             "| lost / acked (crash) | >1 named (crash, s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in data.items():
        t, g, c = r["timing"], r["graceful"], r["crash"]
        lines.append(f"| {name} | {t['leaseDuration']:g} / {t['renewDeadline']:g} / "
                     f"{t['retryPeriod']:g} | {_s(g['gap_p50_s'])} / {_s(g['gap_max_s'])} "
                     f"| {g['lost']} / {g['acknowledged']} | {g['dual_sum_s']:.2f} "
                     f"| {_s(c['takeover_p50_s'])} / {_s(c['takeover_max_s'])} "
                     f"| {c['lost']} / {c['acknowledged']} | {c['dual_sum_s']:.2f} |")
    lines += ["", "| contender | racing starts: >1 named sum / max (s), rounds "
              "| latency: one-way delay (s) | latency: >1 named sum / max (s) "
              "| lost / acked (latency) | most named at once |", "|---|---|---|---|---|---|"]
    for name, r in data.items():
        race, lat = r["race"], r["latency"]
        detail = lat["rounds_detail"]
        lines.append(f"| {name} | {race['sum_s']:.2f} / {race['max_s']:.2f}, {race['rounds']} "
                     f"| {detail[0]['latency_one_way_s'] if detail else '-'} "
                     f"| {lat['sum_s']:.2f} / {lat['max_s']:.2f} "
                     f"| {_lost(detail)} / {sum(d['acknowledged'] for d in detail)} "
                     f"| {max(race['max_named_at_once'], lat['max_named_at_once'])} |")
    lines += ["", "| contender | API requests / min (3 pods, above idle) | main calls / min "
              "| elector RSS leader / standby max (MiB) |", "|---|---|---|---|"]
    for name, r in data.items():
        s = r["steady"]
        calls = ", ".join(f"{k} {v:g}" for k, v in sorted(
            s["by_call_per_min"].items(), key=lambda kv: -kv[1])[:4])
        lines.append(f"| {name} | {s['requests_per_min']:g} | {calls} | "
                     f"{s['leader_rss_mib']} / {s['standby_rss_mib_max']} |")
    return "\n".join(lines)


def _lost(rounds: list[dict[str, Any]]) -> str:
    """Lost acks over latency rounds; a round that never settled to one named shows
    what each still-running named lacked."""
    if all(r["settled"] for r in rounds):
        return str(sum(r["lost"] for r in rounds))
    parts = [str(r["lost"]) if r["settled"] else
             "unsettled: " + ", ".join(f"{k} lacks {v}" for k, v in r["lost_by_server"].items())
             for r in rounds]
    return "; ".join(parts)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_doc_tables(results: dict[str, Any]) -> None:
    """Replace the text between the table markers of docs/comparison.md, if present."""
    if not DOC.exists():
        return
    text = DOC.read_text()
    begin, end = "<!-- compare:tables:begin -->", "<!-- compare:tables:end -->"
    if begin not in text or end not in text:
        return
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(f"{head}{begin}\n{tables(results)}\n{end}{tail}")


# -- main ------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench compare")
    parser.add_argument("--quick", action="store_true",
                        help="a short validation run: 1 handover, 1 crash, 2 races, "
                             "short windows (figures not for publication)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--handovers", type=int, default=3)
    parser.add_argument("--crashes", type=int, default=2)
    parser.add_argument("--races", type=int, default=3)
    parser.add_argument("--race-window", type=float, default=12.0)
    parser.add_argument("--latency-rounds", type=int, default=1)
    parser.add_argument("--steady-seconds", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="results JSON; plots and docs/comparison.md's tables are "
                             "written only for the default one")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (pod logs, named.conf, journals)")
    parser.add_argument("--from-json", type=Path,
                        help="only redraw the plots and the tables of docs/comparison.md "
                             "from an earlier run's JSON")
    args = parser.parse_args()
    if args.quick:
        args.handovers, args.crashes, args.races = 1, 1, 2
        args.race_window, args.steady_seconds = 10.0, 15.0
    return args


def start_plane(root: Path) -> tuple[TestPlane, client.ApiClient]:
    plane = TestPlane(binary=build_binary(), workdir=root / "testplane")
    plane.start()
    configuration = client.Configuration()
    kube_config.load_kube_config(config_file=str(plane.kubeconfig),
                                 client_configuration=configuration)
    return plane, client.ApiClient(configuration)


def report(results: dict[str, Any]) -> None:
    for path in write_plots(results):
        say(f"plot {path.relative_to(ROOT)}")
    write_doc_tables(results)
    print(tables(results))


def main() -> int:
    args = parse_args()
    if args.from_json:
        report(json.loads(args.from_json.read_text()))
        return 0
    wanted = args.only.split(",") if args.only else list(CONTENDERS)
    unknown = set(wanted) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"--only: unknown contender(s) {sorted(unknown)}; "
                         f"choose from {', '.join(CONTENDERS)}")
    specs = contenders(build_clientgo_peer() if "client-go" in wanted else None)
    root = Path(tempfile.mkdtemp(prefix="bindha-compare-"))
    plane, api = start_plane(root)
    started = time.monotonic()
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "mode": "quick" if args.quick else "full", "machine": machine(), "pods": 3,
        "how_measured": HOW,
        "args": {k: v for k, v in vars(args).items()
                 if k not in ("output", "from_json", "keep")},
        "contenders": {}}
    try:
        bench = Bench(root=root, plane=plane, api=api, pool=AddressPool(first=150),
                      key_files=write_key_files(root / "keys", ["update-key", "transfer-key"]),
                      metrics=ApiMetrics(plane), args=args)
        say(f"idle baseline: {args.steady_seconds:g}s with no pods")
        bench.baseline = count_requests(bench.metrics, args.steady_seconds)
        results["idle_requests_per_min"] = round(
            sum(bench.baseline.values()) * 60 / args.steady_seconds, 1)
        for name in wanted:
            try:
                results["contenders"][name] = bench.run(specs[name])
            except Exception as exc:  # one contender failing must not lose the others
                say(f"{name} failed: {exc!r}")
                results.setdefault("errors", {})[name] = repr(exc)
    finally:
        plane.stop()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    if args.output.resolve() == DEFAULT_OUTPUT.resolve():
        report(results)  # plots and doc tables follow the published results only
    else:
        print(tables(results))
    say(f"written to {args.output} in {results['seconds']}s")
    return 0


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
