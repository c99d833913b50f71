"""Scale benchmark: start, takeover and add-a-zone with 1,000 zones / 1,000,000 records.

The zone files are written straight into the shared dyn directory before any master
starts, named as the product names them (``dynDir/<zone>.zone``) and listed in every
pod's config; the leader's bootstrap skips a zone that already has a file, which this
benchmark checks (no file changed, no ``zone.bootstrapped`` event). Then, at the
product's default timings, with pods as processes in network namespaces (harness/netlab):

- start: one fresh master's ``bindha-rwx run`` started until every zone answers SOA
  at its pod IP, split into the supervisor's part and named's own load time (named's
  log: "starting BIND" to "all zones loaded");
- secondary sync: a secondary started until it serves every zone (AXFR of all);
- add a zone: one zone appended to every pod's config by a ConfigMap-style symlink
  swap, until the leader and the secondary answer its SOA;
- takeover: kill -9 of the leader's supervisor until a standby serves every zone;
- RSS of named and of the supervisors at that size.

    scripts/bench scale [--zones 1000 --records 1000000] [--quick]
Writes benchmarks/results/scale.json and docs/img/scale-*.png. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dns.message
import dns.rdatatype
import psutil
import yaml

from benchmarks.supervisor import DEFAULT_TIMING
from bindha_rwx.probes import RuntimeFiles
from harness.pods import MasterLab, MasterPod, configmap_update, netns_lab, wait_until
from harness.process import log_tail

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"
SUFFIX = "scale.example."
NEW_ZONE = f"added.{SUFFIX}"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


# -- machine ------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on; the 2 cores are shared, so the load too."""
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    return {"cpus": psutil.cpu_count(), "cpu_model": model,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# -- zone files ---------------------------------------------------------------------


def zone_names(count: int) -> list[str]:
    return [f"z{i:04d}.{SUFFIX}" for i in range(count)]


def zone_spec(name: str) -> dict[str, Any]:
    """The config entry of a zone, shaped like harness.pods.default_zones()."""
    return {"name": name,
            "nameservers": [{"name": f"ns1.{name}", "addresses": ["192.0.2.53"]}],
            "updatePolicy": [{"key": "update-key", "rule": "zonesub"}]}


def zone_text(name: str, records: int) -> str:
    """SOA, NS, glue and ``records`` A records h0..h<n-1>, as plain master-file text."""
    head = (f"$ORIGIN {name}\n$TTL 300\n"
            f"@ IN SOA ns1.{name} hostmaster.{name} ( 1 3600 600 1209600 300 )\n"
            f"@ IN NS ns1.{name}\nns1 IN A 192.0.2.53\n")
    body = "".join(f"h{j} IN A 10.{(j >> 16) & 255}.{(j >> 8) & 255}.{j & 255}\n"
                   for j in range(records))
    return head + body


def write_zones(dyn: Path, names: list[str], total_records: int) -> dict[str, Any]:
    """Write every zone file (records spread evenly); return count, bytes and seconds."""
    started = time.monotonic()
    per, extra = divmod(total_records, len(names))
    size = 0
    for i, name in enumerate(names):
        text = zone_text(name, per + (1 if i < extra else 0))
        (dyn / f"{name.rstrip('.')}.zone").write_text(text)
        size += len(text)
    return {"zones": len(names), "records": total_records, "bytes": size,
            "seconds": round(time.monotonic() - started, 2)}


def file_stats(dyn: Path, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of each zone file: a rewrite would change them."""
    out = {}
    for name in names:
        stat = (dyn / f"{name.rstrip('.')}.zone").stat()
        out[name] = (stat.st_size, stat.st_mtime_ns)
    return out


# -- the SOA poller -----------------------------------------------------------------


@dataclass
class SoaPoller:
    """When each zone first answers SOA at ``ip``.

    Zones do not unload, so a zone is asked until it answers once. Queries go in
    batches over one unconnected UDP socket (a not yet listening named costs only an
    ICMP error nobody reads); an answer counts when it is NOERROR with an answer
    section, read from the header alone so 1,000 zones cost little CPU.
    """

    ip: str
    zones: list[str]
    port: int = 53
    batch: int = 200
    wait: float = 0.25
    alive: Callable[[], bool] = lambda: True  # e.g. the pod's process: fail fast if it died
    first: dict[str, float] = field(default_factory=dict)

    def run(self, timeout: float) -> dict[str, float]:
        """Monotonic first-answer time per zone; AssertionError past ``timeout``."""
        wires = {z: dns.message.make_query(z, dns.rdatatype.SOA).to_wire() for z in self.zones}
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            while len(self.first) < len(self.zones):
                if not self.alive():
                    raise AssertionError(f"the pod at {self.ip} exited before its zones "
                                         "answered")
                if time.monotonic() > deadline:
                    missing = len(self.zones) - len(self.first)
                    raise AssertionError(f"not within {timeout:g}s: {missing} zones of "
                                         f"{len(self.zones)} answering at {self.ip}")
                pending = [z for z in self.zones if z not in self.first][:self.batch]
                if not self._round(sock, pending, wires):
                    time.sleep(0.05)
        return dict(self.first)

    def _round(self, sock: socket.socket, pending: list[str], wires: dict[str, bytes]) -> int:
        ids: dict[int, str] = {}
        for zone in pending:
            qid = random.getrandbits(16)
            while qid in ids:
                qid = random.getrandbits(16)
            ids[qid] = zone
            with contextlib.suppress(OSError):
                sock.sendto(struct.pack("!H", qid) + wires[zone][2:], (self.ip, self.port))
        answered = 0
        end = time.monotonic() + self.wait
        while ids and (left := end - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            with contextlib.suppress(OSError):
                while True:
                    data = sock.recv(4096)
                    if len(data) < 12:
                        continue
                    qid, flags, _qd, ancount = struct.unpack("!HHHH", data[:8])
                    zone = ids.pop(qid, None)
                    if zone and flags & 0x000F == 0 and ancount > 0:
                        self.first[zone] = time.monotonic()
                        answered += 1
        return answered


def served_curve(first: dict[str, float], t0: float, points: int = 200) -> list[list[float]]:
    """[seconds since t0, zones answering] at most ``points`` steps, for the plots."""
    times = sorted(t - t0 for t in first.values())
    step = max(1, len(times) // points)
    curve = [[round(t, 3), i + 1] for i, t in enumerate(times) if i % step == 0]
    if times and curve[-1][1] != len(times):
        curve.append([round(times[-1], 3), len(times)])
    return curve


# -- logs ---------------------------------------------------------------------------

NAMED_MARKS = {"starting BIND": "named_exec", "loading configuration from": "named_config",
               "all zones loaded": "named_all_loaded", "running": "named_running"}
_ISO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)\s+(.*)$")
_CLASSIC = re.compile(r"^(\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d)\.(\d+)\s+(.*)$")
_PREFIX = re.compile(r"^[\w-]+: [\w-]+: ")  # print-category, print-severity


def named_line(line: str) -> tuple[float, str] | None:
    """(wall-clock seconds, message) of a named log line, in either of its formats."""
    if m := _ISO.match(line):
        at = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        return at, _PREFIX.sub("", m.group(2))
    if m := _CLASSIC.match(line):  # named's -L format, before it read its logging block
        at = time.mktime(time.strptime(m.group(1), "%d-%b-%Y %H:%M:%S"))
        return at + float("0." + m.group(2)), _PREFIX.sub("", m.group(3))
    return None


def named_log(pod: MasterPod, since: float) -> Iterator[tuple[float, str]]:
    """(wall time, message) of each line of the pod's named log from ``since`` on."""
    try:
        lines = pod.named_log_path.read_text(errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        parsed = named_line(line)
        if parsed is not None and parsed[0] >= since:
            yield parsed


def named_marks(pod: MasterPod, since: float) -> dict[str, float]:
    """Wall times of named's milestones in its log after ``since``: first of each."""
    marks: dict[str, float] = {}
    for at, message in named_log(pod, since):
        for phrase, mark in NAMED_MARKS.items():
            if mark not in marks and (message == phrase or (phrase != "running"
                                      and message.startswith(phrase))):
                marks[mark] = at
    return marks


def supervisor_marks(pod: MasterPod, since: float, names: Iterable[str]) -> dict[str, float]:
    """Wall times of the supervisor's events after ``since``: first of each name."""
    wanted = set(names)
    marks: dict[str, float] = {}
    for event in pod.events():
        name = event.get("event")
        if name in wanted and name not in marks:
            with contextlib.suppress(ValueError, KeyError):
                at = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
                if at >= since:
                    marks[str(name)] = at
    return marks


def phases(t0_wall: float, marks: dict[str, float]) -> dict[str, float]:
    return {k: round(v - t0_wall, 3) for k, v in sorted(marks.items(), key=lambda kv: kv[1])}


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except psutil.Error:
        return None


def named_pid(pod: MasterPod) -> int | None:
    procs = pod.named_processes()
    return procs[0].pid if procs else None


class BeatWatch:
    """Samples every pod's heartbeat age (what `probe live` judges) in the background,
    so a measurement can say how stale the liveness heartbeat got while it ran."""

    def __init__(self, lab: MasterLab, every: float = 0.25) -> None:
        self.lab = lab
        self.every = every
        self.samples: list[tuple[float, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beats", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for pod in list(self.lab.pods):
                age = self._age(pod)
                if age is not None:
                    self.samples.append((time.time(), pod.name, age))

    @staticmethod
    def _age(pod: MasterPod) -> float | None:
        """The heartbeat's age, once the running process has written one (a restarted
        pod's file is its predecessor's until then)."""
        files = RuntimeFiles(pod.work_dir)
        try:
            started = psutil.Process(pod.pid).create_time() if pod.alive() else None
            written = files.heartbeat.stat().st_mtime
        except (psutil.Error, OSError):
            return None
        if started is None or written < started:
            return None
        return files.heartbeat_age()

    def worst(self, since: float, until: float | None = None) -> dict[str, float]:
        """Largest heartbeat age per pod seen between two wall times."""
        out: dict[str, float] = {}
        for at, name, age in self.samples:
            if at >= since and (until is None or at <= until):
                out[name] = round(max(out.get(name, 0.0), age), 2)
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- the measurements ---------------------------------------------------------------

SUPERVISOR_EVENTS = ("supervisor.start", "lease.acquired", "fence.acquired", "named.started",
                     "named.serving", "config.applied", "zone.bootstrapped",
                     "primary.following")


def measure_start(lab: MasterLab, zones: list[str], timeout: float) -> dict[str, Any]:
    """A fresh master started alone until all zones answer, and where the time went."""
    before = file_stats(lab.shared, zones)
    pod = lab.add_pod()
    t0_wall, t0 = time.time(), time.monotonic()
    pod.start()
    first = SoaPoller(pod.ip, zones, alive=pod.alive).run(timeout)
    total = max(first.values()) - t0
    wait_until(lambda: pod.has_event("named.serving"), 60, "named.serving logged")
    marks = {**supervisor_marks(pod, t0_wall, SUPERVISOR_EVENTS), **named_marks(pod, t0_wall)}
    after = file_stats(lab.shared, zones)
    out = {"pod": pod.name, "all_zones_answering_s": round(total, 3),
           "first_zone_answering_s": round(min(first.values()) - t0, 3),
           "marks_s": phases(t0_wall, marks), "curve": served_curve(first, t0),
           "bootstrap_check": {
               "zone_files_changed": sum(before[z] != after[z] for z in zones),
               "zone_bootstrapped_events": sum(e.get("event") == "zone.bootstrapped"
                                               for e in pod.events())}}
    out["split_s"] = split(out["marks_s"], total, started_process=True)
    print(f"start: {len(zones)} zones answering after {total:.2f}s; split {out['split_s']}; "
          f"bootstrap check {out['bootstrap_check']}", flush=True)
    return out


PARTS = (("process_start_s", "supervisor process start (Python, config)", "#c7c7c7"),
         ("lease_s", "Lease: acquire (start) / expiry wait (takeover)", "#7f7f7f"),
         ("fence_and_conf_s", "lock + epoch + bootstrap check + named.conf", "#9467bd"),
         ("named_load_s", "named loads all zones (its own log)", "#1f77b4"),
         ("until_answering_s", "until every zone answers (poller)", "#ff7f0e"))


def split(marks: dict[str, float], total: float, started_process: bool) -> dict[str, Any]:
    """Consecutive parts of ``total``: whose time it was, from the logs' wall clocks.

    named's part is its own log from "starting BIND" to "all zones loaded"; the rest
    is the supervisor's (and for a takeover, mostly the Lease expiry it must wait out).
    """
    keys = ["supervisor.start", "lease.acquired", "named_exec", "named_all_loaded"]
    if any(k not in marks for k in keys[1:]) or (started_process and keys[0] not in marks):
        return {}
    edges = [0.0, marks["supervisor.start"] if started_process else 0.0,
             marks["lease.acquired"], marks["named_exec"], marks["named_all_loaded"], total]
    out: dict[str, Any] = {key: round(b - a, 3) for (key, _, _), a, b in
                           zip(PARTS, edges[:-1], edges[1:], strict=True)}
    out["outside_named_s"] = round(total - out["named_load_s"], 3)
    return out


def measure_secondary(lab: MasterLab, zones: list[str],
                      timeout: float) -> tuple[MasterPod, dict[str, Any]]:
    """A secondary started until it serves every zone (all transferred from the leader)."""
    t0_wall, t0 = time.time(), time.monotonic()
    (pod,) = lab.start_secondaries(1)
    lab.publish_endpoints([pod.ip])
    first = SoaPoller(pod.ip, zones, alive=pod.alive).run(timeout)
    total = max(first.values()) - t0
    out = {"pod": pod.name, "all_zones_answering_s": round(total, 3),
           "marks_s": phases(t0_wall, {**supervisor_marks(pod, t0_wall, SUPERVISOR_EVENTS),
                                       **named_marks(pod, t0_wall)}),
           "curve": served_curve(first, t0)}
    print(f"secondary: {len(zones)} zones transferred and answering after {total:.2f}s",
          flush=True)
    return pod, out


def swap_configs(lab: MasterLab, change: Callable[[dict[str, Any]], None]) -> float:
    """lab.rewrite_configs, but every new text rendered first and then all swapped at
    once: YAML of 1,000 zones takes a while per pod. Returns the wall time of the swap."""
    texts = []
    for pod in lab.pods:
        data = yaml.load(pod.config_path.read_text(), Loader=_LOADER)
        change(data)
        texts.append((pod, yaml.dump(data, Dumper=_DUMPER, sort_keys=False)))
    swapped = time.time()
    for pod, text in texts:
        configmap_update(pod.config_path, text)
    return swapped


def poll_in_parallel(targets: dict[str, str], zones: list[str],
                     timeout: float) -> dict[str, dict[str, float]]:
    """One SoaPoller per (role -> IP), all at once: the first answers per role."""
    pollers = {role: SoaPoller(ip, zones) for role, ip in targets.items()}
    errors: list[BaseException] = []

    def run(poller: SoaPoller) -> None:
        try:
            poller.run(timeout)
        except AssertionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,), daemon=True) for p in pollers.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    if errors:
        raise errors[0]
    return {role: p.first for role, p in pollers.items()}


CONTROL = {"received control channel command 'reconfig'": "named_reconfig_received",
           "reloading configuration succeeded": "named_reconfig_done",
           "any newly configured zones are now loaded": "named_new_zones_loaded"}


def control_marks(pod: MasterPod, since: float) -> dict[str, Any]:
    """named's reconfig milestones, and the rndc refreshes the supervisor sent."""
    marks: dict[str, Any] = {}
    refreshes = []
    for at, message in named_log(pod, since):
        if message.startswith("received control channel command 'refresh"):
            refreshes.append(at)
        for phrase, mark in CONTROL.items():
            if mark not in marks and message.startswith(phrase):
                marks[mark] = at
    if refreshes:
        marks["rndc_refresh_first"], marks["rndc_refresh_last"] = refreshes[0], refreshes[-1]
    return {"count_rndc_refresh": len(refreshes), **marks}


def measure_add_zone(lab: MasterLab, leader: MasterPod, secondary: MasterPod,
                     timeout: float) -> dict[str, Any]:
    """One zone appended to every pod's config (symlink swap) until both answer it."""
    t0_wall = swap_configs(lab, lambda data: data["zones"].append(zone_spec(NEW_ZONE)))
    t0 = time.monotonic() - (time.time() - t0_wall)
    first = poll_in_parallel({"leader": leader.ip, "secondary": secondary.ip}, [NEW_ZONE],
                             timeout)
    out: dict[str, Any] = {f"{role}_answers_s": round(f[NEW_ZONE] - t0, 3)
                           for role, f in first.items()}
    events = ("config.applied", "zone.bootstrapped", "primary.following")
    for role, pod in (("leader", leader), ("secondary", secondary)):
        wait_until(lambda p=pod: "config.applied" in supervisor_marks(p, t0_wall, events),
                   timeout, f"{pod.name} logs config.applied", interval=0.2)
        control = control_marks(pod, t0_wall)
        count = control.pop("count_rndc_refresh")
        out[f"{role}_marks_s"] = phases(t0_wall, {**supervisor_marks(pod, t0_wall, events),
                                                  **control})
        out[f"{role}_rndc_refreshes"] = count
    print(f"add a zone: leader answers after {out['leader_answers_s']:.2f}s, secondary "
          f"after {out['secondary_answers_s']:.2f}s; leader {out['leader_marks_s']}; "
          f"secondary {out['secondary_marks_s']}, {out['secondary_rndc_refreshes']} "
          "rndc refreshes", flush=True)
    return out


def measure_takeover(lab: MasterLab, zones: list[str], timeout: float) -> dict[str, Any]:
    """kill -9 of the leader's supervisor until a standby serves every zone."""
    leader = lab.leader(timeout=60)
    t0_wall, t0 = time.time(), time.monotonic()
    leader.signal(signal.SIGKILL)
    leader.wait_exit(10)

    def new_holder() -> MasterPod | None:
        holder = lab.holder()
        return lab.pod(holder) if holder and holder != leader.name else None

    new = wait_until(new_holder, timeout, "a standby takes the Lease", interval=0.1)
    first = SoaPoller(new.ip, zones, alive=new.alive).run(timeout)
    total = max(first.values()) - t0
    wait_until(lambda: "named.serving" in supervisor_marks(new, t0_wall, ["named.serving"]),
               60, "named.serving logged", interval=0.2)
    marks = {**supervisor_marks(new, t0_wall, SUPERVISOR_EVENTS), **named_marks(new, t0_wall)}
    out = {"killed": leader.name, "new_leader": new.name, "all_zones_answering_s": round(
        total, 3), "marks_s": phases(t0_wall, marks), "curve": served_curve(first, t0)}
    out["split_s"] = split(out["marks_s"], total, started_process=False)
    print(f"takeover: {new.name} serves {len(zones)} zones {total:.2f}s after the kill; "
          f"split {out['split_s']}", flush=True)
    leader.restart(timeout=30)
    return out


def memory(lab: MasterLab, secondary: MasterPod | None) -> dict[str, Any]:
    leader = lab.leader(timeout=60)
    out: dict[str, Any] = {"named_leader_rss_mib": rss_mib(named_pid(leader)),
                           "supervisor_leader_rss_mib": rss_mib(leader.pid),
                           "supervisor_standby_rss_mib": [rss_mib(p.pid) for p in lab.masters
                                                          if p is not leader and p.alive()]}
    if secondary is not None and secondary.alive():
        out["named_secondary_rss_mib"] = rss_mib(named_pid(secondary))
        out["supervisor_secondary_rss_mib"] = rss_mib(secondary.pid)
    print(f"memory: {out}", flush=True)
    return out


# -- plots ----------------------------------------------------------------------------


def plot(results: dict[str, Any], prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    size = f"{results['size']['zones']} zones, {results['size']['records']:,} records"
    fig, ax = plt.subplots(figsize=(8, 4.5))
    runs = [("start (fresh leader)", results["start"]),
            ("secondary initial sync", results["secondary"])]
    runs += [(f"takeover {i + 1} (kill -9)", t) for i, t in enumerate(results["takeover"])]
    for label, run in runs:
        xs, ys = zip(*run["curve"], strict=True)
        ax.step([0, *xs], [0, *ys], where="post", label=label)
    ax.set_xlabel("seconds since start / kill")
    ax.set_ylabel("zones answering SOA")
    ax.set_title(f"Zones served over time ({size})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths = [IMG / f"{prefix}-served.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    paths.append(plot_split(plt, results, size, IMG / f"{prefix}-split.png"))
    return [str(p.relative_to(ROOT)) for p in paths]


def plot_split(plt: Any, results: dict[str, Any], size: str, path: Path) -> Path:
    """Stacked bars: the consecutive parts of start and takeover time."""
    rows = [("start", results["start"]["split_s"])]
    rows += [(f"takeover {i + 1}", t["split_s"]) for i, t in enumerate(results["takeover"])]
    rows = [(n, s) for n, s in rows if s]
    fig, ax = plt.subplots(figsize=(8, 2.2 + 0.5 * len(rows)))
    for i, (_name, s) in enumerate(rows):
        left = 0.0
        for key, label, colour in PARTS:
            ax.barh(i, s[key], left=left, color=colour, label=label if i == 0 else None)
            left += s[key]
    ax.set_yticks(range(len(rows)), [n for n, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the supervisor's start (start) / the kill (takeover)")
    ax.set_title(f"Where start and takeover time goes ({size})")
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(results: dict[str, Any]) -> str:
    """Markdown tables of a results file, for docs/scale-and-reads.md."""
    size, start, add = results["size"], results["start"], results["add_zone"]
    mem, sec = results["memory"], results["secondary"]
    takeovers = ", ".join(f"{t['all_zones_answering_s']:.2f}" for t in results["takeover"])
    loads = ", ".join(f"{t['split_s'].get('named_load_s', 0):.2f}" for t in results["takeover"])
    marks = add["secondary_marks_s"]
    loop = (marks.get("rndc_refresh_last", 0) - marks.get("rndc_refresh_first", 0))
    rows = [
        ("start: `bindha-rwx run` to every zone answering",
         f"{start['all_zones_answering_s']:.2f} s"),
        ("&nbsp; of which named's load (its log)", f"{start['split_s']['named_load_s']:.2f} s"),
        ("&nbsp; of which outside named", f"{start['split_s']['outside_named_s']:.2f} s"),
        ("takeover (kill -9) to every zone answering", f"{takeovers} s"),
        ("&nbsp; of which named's load", f"{loads} s"),
        ("secondary start to every zone transferred and answering",
         f"{sec['all_zones_answering_s']:.2f} s"),
        ("add a zone: leader answers it", f"{add['leader_answers_s']:.2f} s"),
        ("add a zone: secondary answers it", f"{add['secondary_answers_s']:.2f} s"),
        ("add a zone: secondary's `rndc refresh` of every zone",
         f"{add['secondary_rndc_refreshes']} calls over {loop:.1f} s"),
        ("add a zone: stalest secondary liveness heartbeat "
         f"(`probe live` limit {results['timing']['renewDeadline']:g} s)",
         f"{max(v for k, v in add['heartbeat_max_age_s'].items() if 'secondary' in k):.1f} s"),
        ("named RSS, leader / secondary",
         f"{mem['named_leader_rss_mib']} / {mem.get('named_secondary_rss_mib')} MiB"),
        ("supervisor RSS, leader / standbys / secondary",
         f"{mem['supervisor_leader_rss_mib']} / "
         f"{', '.join(str(x) for x in mem['supervisor_standby_rss_mib'])} / "
         f"{mem.get('supervisor_secondary_rss_mib')} MiB"),
        ("zone files rewritten by the leader's bootstrap",
         f"{start['bootstrap_check']['zone_files_changed']} of {size['zones']} "
         f"({start['bootstrap_check']['zone_bootstrapped_events']} `zone.bootstrapped`)"),
    ]
    head = (f"{size['zones']} zones, {size['records']:,} records "
            f"({size['bytes'] / 2**20:.1f} MiB of zone files), "
            f"{results['machine']['date_utc']}\n\n| figure | measured |\n|---|---|\n")
    table = head + "".join(f"| {a} | {b} |\n" for a, b in rows)
    parts = "\n| run | " + " | ".join(label for _, label, _ in PARTS) + " |\n|---" + \
        "|---" * len(PARTS) + "|\n"
    runs = [("start", start)] + [(f"takeover {i + 1}", t)
                                 for i, t in enumerate(results["takeover"])]
    for name, run_ in runs:
        if run_["split_s"]:
            parts += f"| {name} | " + " | ".join(f"{run_['split_s'][k]:.2f}"
                                                 for k, _, _ in PARTS) + " |\n"
    return table + parts


# -- main -----------------------------------------------------------------------------

HOW = {
    "start": "One master pod (bindha-rwx run, default timings) started alone on a volume "
             "already holding every zone file; t0 = Popen of the supervisor; a poller sends "
             "SOA queries for every zone not yet answered, in batches over UDP, to the pod "
             "IP, and records when each zone first answers NOERROR with an answer. The split "
             "comes from named's own log ('starting BIND' to 'all zones loaded') and the "
             "supervisor's JSON events, all wall-clock with ms.",
    "secondary": "One bindha-rwx secondary started after the leader serves; same poller at "
                 "its IP: every zone transferred (AXFR) and answering.",
    "add_zone": "One zone appended to every pod's config.yaml by a ConfigMap-style symlink "
                "swap (harness.pods.configmap_update; all new texts rendered first, then "
                "swapped within ms); t0 = the swap; two pollers at once ask the new zone's "
                "SOA at the leader and at the secondary. The supervisors re-read their "
                "config every retryPeriod (2 s), so up to 2 s of each figure is that poll. "
                "Marks from the supervisors' events and named's log (reconfig, rndc "
                "refresh commands received).",
    "takeover": "kill -9 of the leader's supervisor (named dies by its parent-death "
                "signal); t0 = the kill; the poller asks every zone at the pod that took "
                "the Lease. The secondary is stopped first, so the figure is the masters' "
                "alone. The killed pod is restarted as a standby afterwards.",
    "heartbeat_max_age_s": "A background sampler reads every pod's heartbeat file (what "
                           "`bindha-rwx probe live` judges; it fails past renewDeadline) "
                           "every 0.25 s; the largest age per pod during the measurement.",
    "memory": "psutil RSS after start, add-a-zone and the secondary's sync: named and the "
              "supervisor (Python) of the leader, the standbys and the secondary.",
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench scale")
    parser.add_argument("--zones", type=int, default=1000)
    parser.add_argument("--records", type=int, default=1_000_000, help="in all zones")
    parser.add_argument("--takeovers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300, help="per measurement")
    parser.add_argument("--quick", action="store_true",
                        help="100 zones / 100,000 records, 1 takeover")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--report", action="store_true",
                        help="print markdown tables of benchmarks/results/scale.json; run nothing")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads((RESULTS / "scale.json").read_text())))
        return 0
    if args.quick:
        args.zones, args.records, args.takeovers = 100, 100_000, 1
    results = run(args.zones, args.records, args.takeovers, args.timeout)
    if args.no_write:
        return 0
    RESULTS.mkdir(exist_ok=True)
    results["plots"] = plot(results, "scale")
    out = RESULTS / "scale.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"written to {out} and {', '.join(results['plots'])}")
    return 0


def show_logs(lab: MasterLab, lines: int = 15) -> None:
    """On a failed measurement, what each pod and its named said last."""
    for pod in lab.pods:
        for path in (pod.log_path, pod.named_log_path):
            print(f"--- {path}\n{log_tail(path, lines)}", flush=True)


def with_beats(beats: BeatWatch, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement and add the stalest liveness heartbeat per pod during it."""
    since = time.time()
    out = measure()
    out["heartbeat_max_age_s"] = beats.worst(since)
    print(f"   heartbeat max age (probe live fails past renewDeadline "
          f"{DEFAULT_TIMING['renewDeadline']:g}s): {out['heartbeat_max_age_s']}", flush=True)
    return out


def run(zone_count: int, records: int, takeovers: int, timeout: float) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "timing": DEFAULT_TIMING,
                               "how_measured": HOW}
    beats: BeatWatch | None = None
    with netns_lab("scale", DEFAULT_TIMING) as lab:
        try:
            beats = BeatWatch(lab)
            zones = zone_names(zone_count)
            lab.zones = [zone_spec(z) for z in zones]
            results["size"] = write_zones(lab.shared, zones, records)
            print(f"wrote {results['size']}", flush=True)
            results["start"] = with_beats(beats, lambda: measure_start(lab, zones, timeout))
            leader = lab.leader(timeout=60)
            for standby in [lab.add_pod() for _ in range(2)]:
                standby.start()
            since = time.time()
            pod, results["secondary"] = measure_secondary(lab, zones, timeout)
            results["secondary"]["heartbeat_max_age_s"] = beats.worst(since)
            results["add_zone"] = with_beats(
                beats, lambda: measure_add_zone(lab, leader, pod, timeout))
            results["memory"] = memory(lab, pod)
            pod.stop()
            zones.append(NEW_ZONE)
            results["takeover"] = [with_beats(beats, lambda: measure_takeover(lab, zones,
                                                                               timeout))
                                   for _ in range(takeovers)]
        except AssertionError:
            show_logs(lab)
            raise
        finally:
            if beats is not None:
                beats.stop()
    return results


if __name__ == "__main__":
    raise SystemExit(main())
