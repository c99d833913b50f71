"""CephFS against tmpfs, side by side in one run (issue 12 item 5, the parts that exist).

For each volume, 2 master pods as processes (real apiserver, real named): on tmpfs they
share one local directory; on CephFS each mounts the lab's CephFS with a ceph-fuse of its
own (harness/cephlab.py). Measured per volume:

- TSIG update latency (p50/p99) and throughput, 1 client and 4 clients at once;
- the graceful handover write gap and the crash takeover;
- the journal check at 1,000 zones (one real journal copied 1,000 times);
- the RSS of the added parts (the Ceph daemons, each ceph-fuse).

Node loss with storage fencing needs the storage fence (issue 12 item 3): not here yet.
JSON to benchmarks/results/cephfs.json; the table goes into docs/benchmarks.md.

    scripts/bench cephfs [--updates 300] [--handovers 3] [--crashes 2] [--timing test]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dns.query
import dns.rcode
import dns.update

from benchmarks.supervisor import DEFAULT_TIMING, crash_rounds, graceful_rounds, percentile
from bindha_rwx.journal import timed_check, zone_journals
from harness.bindlab import keyring
from harness.cephlab import CephLab, CephMount
from harness.loopback import AddressPool
from harness.pods import TEST_TIMING, MasterLab, start_lab, wait_until

ZONE = "ha.example."
RESULTS = Path(__file__).resolve().parent / "results"


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


@contextmanager
def masters(root: Path, pool: AddressPool, timing: dict[str, float],
            ceph: CephLab | None) -> Iterator[MasterLab]:
    plane, lab = start_lab(root, f"bench-{uuid.uuid4().hex[:6]}", pool, timing=timing)
    mounts: list[CephMount] = []
    try:
        if ceph is not None:
            mounts.append(ceph.mount(f"{lab.namespace}-observer", lab.shared))
        for i in range(2):
            name = f"bind-master-{i}"
            if ceph is None:
                pod = lab.add_pod(name)
            else:
                mount = ceph.mount(f"{lab.namespace}-{name}", root / f"{name}.dyn")
                mounts.append(mount)
                pod = lab.add_pod(name, dyn_dir=mount.mountpoint)
            pod.start()
        lab.leader(timeout=60)
        yield lab
    finally:
        lab.stop()
        for mount in reversed(mounts):
            mount.unmount()
        plane.stop()


def measure(lab: MasterLab, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    result["updates_1_client"] = update_latency(lab, 1, args.updates)
    result["updates_4_clients"] = update_latency(lab, 4, args.updates // 4 * 2)
    print(f"  updates: {result['updates_1_client']} / {result['updates_4_clients']}",
          flush=True)
    result["journal_check_1000"] = journal_check(lab.shared, 1000)
    print(f"  journal check: {result['journal_check_1000']}", flush=True)
    result["graceful"] = graceful_rounds(lab, args.handovers)
    result["crash"] = crash_rounds(lab, args.crashes)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench cephfs",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=300, help="per single client")
    parser.add_argument("--handovers", type=int, default=3)
    parser.add_argument("--crashes", type=int, default=2)
    parser.add_argument("--timing", choices=("test", "default"), default="test")
    parser.add_argument("--output", type=Path, default=RESULTS / "cephfs.json")
    args = parser.parse_args()
    timing = dict(TEST_TIMING if args.timing == "test" else DEFAULT_TIMING)
    pool = AddressPool()
    root = Path(tempfile.mkdtemp(prefix="bindha-bench-cephfs-"))
    report: dict[str, Any] = {"host": platform.node(), "cpus": platform.machine(),
                              "timing": timing, "volumes": {}}
    try:
        print("tmpfs:", flush=True)
        with masters(root / "tmpfs", pool, timing, None) as lab:
            report["volumes"]["tmpfs"] = measure(lab, args)
        print("cephfs:", flush=True)
        with CephLab(root / "ceph") as ceph, \
                masters(root / "cephfs", pool, timing, ceph) as lab:
            report["volumes"]["cephfs"] = measure(lab, args)
            report["rss_bytes"] = ceph.rss()
            report["ceph_bring_up_s"] = ceph.timings
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
