"""Propagation benchmark: acknowledged update on the leader -> every secondary serves it.

1 master and 2 secondaries as processes, each in its own network namespace (as in
tests/kube/test_secondaries.py), real apiserver, real named. Per secondary a monitor
thread polls its SOA serial as fast as it answers and records when each serial first
appears. The writer sends TSIG updates to the leader; after an update's ack it reads
the leader's serial, and that update's lag is when the last secondary first served
that serial minus the ack time.

- idle: one update every --idle-interval seconds (default 1 s);
- stream: --writers clients sending updates without pause, each over its own TCP
  connection (the rate is reported);
- failover: SIGTERM to the leader with a second master ready; time from the new
  leader's first acknowledged update until every secondary serves its serial.

    .venv/bin/python -m benchmarks.propagation [--idle 100] [--stream-seconds 10]
Writes benchmarks/results/propagation.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.update
import psutil

from harness.bindlab import keyring
from harness.bindlab import soa_serial as soa_serial_at
from harness.netlab import NetLab
from harness.pods import MasterLab, MasterPod, start_lab, wait_until

ZONE = "ha.example."
RESULTS = Path(__file__).resolve().parent / "results"


def soa_serial(ip: str, timeout: float = 0.5) -> int | None:
    return soa_serial_at(ip, ZONE, timeout=timeout)


class SerialMonitor:
    """Records (time, serial) each time a secondary's serial changes."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.times: list[float] = []
        self.serials: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            serial = soa_serial(self.ip, 0.2)
            if serial is not None and (not self.serials or serial != self.serials[-1]):
                self.times.append(time.monotonic())
                self.serials.append(serial)

    def first_at_least(self, serial: int) -> float | None:
        for at, seen in zip(self.times, self.serials, strict=True):
            if seen >= serial:
                return at
        return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class Writer:
    """TSIG updates to the leader over one TCP connection."""

    def __init__(self, leader: MasterPod) -> None:
        self.ip = leader.ip
        self.key = leader.config.keys["update-key"]
        self.ring = keyring(self.key)
        self.sock = socket.create_connection((self.ip, 53), timeout=5)
        self.n = 0

    def send(self) -> float:
        self.n += 1
        update = dns.update.UpdateMessage(ZONE, keyring=self.ring, keyname=self.key.name)
        update.add(f"p{uuid.uuid4().hex[:8]}", 300, "TXT", '"x"')
        answer = dns.query.tcp(update, self.ip, timeout=5, sock=self.sock)
        assert answer.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(answer.rcode())
        return time.monotonic()

    def close(self) -> None:
        self.sock.close()


def lags(samples: list[tuple[float, int]], monitors: list[SerialMonitor]) -> list[float]:
    out = []
    for acked, serial in samples:
        firsts = [m.first_at_least(serial) for m in monitors]
        if None in firsts:
            continue
        out.append(max(0.0, max(firsts) - acked))  # type: ignore[type-var]
    return out


def summary(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))], 4)

    return {"n": len(ordered), "p50_s": pct(50), "p90_s": pct(90), "p99_s": pct(99),
            "max_s": round(ordered[-1], 4)}


def run_idle(leader: MasterPod, monitors: list[SerialMonitor], count: int,
             interval: float) -> dict[str, object]:
    writer = Writer(leader)
    samples = []
    for _ in range(count):
        acked = writer.send()
        samples.append((acked, soa_serial(leader.ip) or 0))
        time.sleep(interval)
    writer.close()
    time.sleep(1)
    return summary(lags(samples, monitors))


def run_stream(leader: MasterPod, monitors: list[SerialMonitor], seconds: float,
               writers: int, every: int = 10) -> dict[str, object]:
    """``writers`` clients, each on its own TCP connection, sending without pause."""
    samples: list[tuple[float, int]] = []
    counts = [0] * writers
    stop = threading.Event()

    def work(index: int) -> None:
        writer = Writer(leader)
        while not stop.is_set():
            acked = writer.send()
            counts[index] += 1
            if index == 0 and writer.n % every == 0:
                samples.append((acked, soa_serial(leader.ip) or 0))
        writer.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(writers)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(10)
    rate = sum(counts) / (time.monotonic() - start)
    time.sleep(2)
    return {**summary(lags(samples, monitors)), "updates_per_s": round(rate),
            "writers": writers}


def run_failover(lab: MasterLab, secondaries: list[MasterPod], rounds: int) -> dict[str, object]:
    results = []
    for _ in range(rounds):
        leader = lab.leader(timeout=60)
        leader.signal(signal.SIGTERM)
        leader.wait_exit(30)
        new = lab.leader(timeout=60)
        writer = Writer(new)
        acked = writer.send()
        serial = soa_serial(new.ip) or 0
        writer.close()
        wait_until(lambda s=serial: all((soa_serial(x.ip) or 0) >= s for x in secondaries),
                   30, "secondaries on the new leader's serial")
        results.append(time.monotonic() - acked)
        leader.process = None
        leader.start()
        wait_until(lambda p=leader: p.has_event("lease.holder_seen"), 30, "old leader back")
        time.sleep(1)
    return summary(results)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=int, default=100)
    parser.add_argument("--idle-interval", type=float, default=1.0,
                        help="seconds between idle updates")
    parser.add_argument("--stream-seconds", type=float, default=10)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--writers", type=int, default=4,
                        help="concurrent update clients in the stream phase")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bindha-prop-"))
    net = NetLab()
    plane, lab = start_lab(root, f"prop-{uuid.uuid4().hex[:6]}", net)
    results: dict[str, object] = {"machine": {
        "cpus": psutil.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version()}}
    monitors: list[SerialMonitor] = []
    try:
        lab.start(2)
        leader = lab.leader(timeout=60)
        secondaries = lab.start_secondaries(2)
        lab.publish_endpoints([s.ip for s in secondaries])
        wait_until(lambda: all(soa_serial(s.ip) == soa_serial(leader.ip) for s in secondaries),
                   30, "secondaries loaded")
        monitors = [SerialMonitor(s.ip) for s in secondaries]
        results["idle"] = run_idle(leader, monitors, args.idle, args.idle_interval)
        results["idle"]["interval_s"] = args.idle_interval  # type: ignore[index]
        print("idle", results["idle"], flush=True)
        results["stream"] = run_stream(leader, monitors, args.stream_seconds, args.writers)
        print("stream", results["stream"], flush=True)
        for monitor in monitors:
            monitor.stop()
        monitors = []
        results["failover"] = run_failover(lab, secondaries, args.failovers)
        print("failover", results["failover"], flush=True)
    finally:
        for monitor in monitors:
            monitor.stop()
        lab.stop()
        net.close()
        plane.stop()
        shutil.rmtree(root, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "propagation.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
