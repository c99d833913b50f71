"""The invariants a chaos round must keep, observed from outside the product.

Nothing here asks the product what it believes: the writers are the `named` processes
the kernel lists, the fence is the epoch file on the shared volume, an acknowledged
update is one whose NOERROR the client saw, and a zone's content is what AXFR returns.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from bindha_rwx.config import TsigKey
from bindha_rwx.fencing import SharedVolume
from harness.bindlab import soa_serial
from harness.procstate import can_run
from harness.writer import Ack, served_names


@dataclass
class WriterSample:
    at: float  # monotonic
    writers: tuple[str, ...]  # the pods (work dir names) whose named runs
    epoch: int | None
    owner: str | None  # the pod the owner record on the volume names


@dataclass
class FenceSampler:
    """Samples the masters' running `named` and the epoch every ``interval`` seconds.

    A master's named is recognised by its config file, which lies in the pod's work
    dir; so a named whose supervisor died (an orphan) is still seen and counted.
    """

    master_dirs: list[Path]
    volume: SharedVolume
    interval: float = 0.025
    samples: list[WriterSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _latest: tuple[float, int | None, str | None] = (0.0, None, None)  # read at, epoch, owner
    # Pods whose storage client was proven fenced (evicted at the MDS and on the OSD
    # blocklist), from when until when (monotonic; set after the fact): their named can
    # run but no write of theirs reaches the volume, so it is no writer (a lost node's:
    # its named sits in a FUSE call to its frozen client, then comes back).
    # Read the owner record too (the owner check). Off on CephFS: a client that reads it
    # all along shares its capabilities, and so spares the pods the ~30 s that their
    # own first read of it blocks when its last writer's client is frozen.
    owner_reads: bool = True
    fenced: dict[str, tuple[float, float]] = field(default_factory=dict)  # pod: (from, until)

    def start(self) -> FenceSampler:
        self._thread = threading.Thread(target=self._run, name="fence-sampler", daemon=True)
        self._thread.start()
        threading.Thread(target=self._read_volume, name="fence-sampler-volume",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _read_volume(self) -> None:
        """The epoch and the owner record, on a thread of their own: on CephFS a read can
        block for as long as another client is frozen holding the file's caps, and the
        process samples (never two named) must not stop meanwhile."""
        while not self._stop.is_set():
            epoch: int | None = None
            owner: str | None = None
            with contextlib.suppress(Exception):  # a full or immutable volume: unknown
                epoch = self.volume.read_epoch()
                record = self.volume.read_owner() if self.owner_reads else None
                owner = record.pod if record else None
            self._latest = (time.monotonic(), epoch, owner)
            self._stop.wait(self.interval)

    def _run(self) -> None:
        while not self._stop.is_set():
            writers = tuple(_pod_of(p, self.master_dirs)
                            for p in possible_writers(self.master_dirs))
            read_at, epoch, owner = self._latest
            if time.monotonic() - read_at > 4 * self.interval:  # a stale read: unknown
                epoch, owner = None, None
            self.samples.append(WriterSample(time.monotonic(), writers, epoch, owner))
            self._stop.wait(self.interval)

    def since(self, start: float, end: float | None = None) -> list[WriterSample]:
        """The samples in the window, each without the pods fenced by then."""
        fenced = dict(self.fenced)

        def writes(pod: str, at: float) -> bool:
            since, until = fenced.get(pod, (at + 1, at + 1))
            return not since <= at <= until
        return [replace(s, writers=tuple(w for w in s.writers if writes(w, s.at)))
                for s in list(self.samples) if s.at >= start and (end is None or s.at <= end)]

    def dual_writer_seconds(self, start: float, end: float | None = None) -> float:
        """Time during which more than one master named ran (a sample's span each)."""
        seen = self.since(start, end)
        return sum(b.at - a.at for a, b in itertools.pairwise(seen)
                   if len(a.writers) > 1)

    def max_writers(self, start: float, end: float | None = None) -> int:
        return max((len(s.writers) for s in self.since(start, end)), default=0)

    def owner_mismatches(self, start: float, end: float | None = None) -> list[str]:
        """Runs of 3+ samples (75 ms) where the one running named is not the pod the
        owner record names: the fence and the process table disagree. (A single
        sample can fall between the owner write and named's start of a takeover.)"""
        out, run = [], 0
        for sample in self.since(start, end):
            lone = sample.writers[0] if len(sample.writers) == 1 else None
            bad = lone is not None and sample.owner is not None and lone != sample.owner
            run = run + 1 if bad else 0
            if run == 3:
                out.append(f"named of {lone} runs, the owner record names {sample.owner}")
        return out

    def epoch_regressions(self, start: float, end: float | None = None) -> list[tuple[int, int]]:
        epochs = [s.epoch for s in self.since(start, end) if s.epoch is not None]
        return [(a, b) for a, b in itertools.pairwise(epochs) if b < a]


def master_named(master_dirs: list[Path]) -> list[psutil.Process]:
    """Running (not zombie) named processes whose config lies in a master's work dir."""
    found = []
    prefixes = [str(d) + "/" for d in master_dirs]
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        info = proc.info
        if info["name"] != "named" or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(arg.startswith(prefix) for arg in info["cmdline"] or [] for prefix in prefixes):
            found.append(proc)
    return found


def possible_writers(master_dirs: list[Path]) -> list[psutil.Process]:
    """The master named processes that can still write (harness/procstate.py)."""
    return [proc for proc in master_named(master_dirs) if can_run(proc)]


def _pod_of(proc: psutil.Process, master_dirs: list[Path]) -> str:
    cmdline = " ".join(proc.info.get("cmdline") or [])
    return next((d.name for d in master_dirs if str(d) + "/" in cmdline), "?")


def orphans(master_dirs: list[Path], supervisor_pids: set[int]) -> list[int]:
    """Master named processes whose parent is not a live supervisor."""
    out = []
    for proc in master_named(master_dirs):
        with contextlib.suppress(psutil.Error):
            if proc.ppid() not in supervisor_pids:
                out.append(proc.pid)
    return out


def missing_acks(server: str, zone: str, key: TsigKey, acks: list[Ack],
                 attempts: int = 3) -> list[str]:
    """Acknowledged names that ``server`` does not hold (an AXFR signed with ``key``)."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            served = served_names(server, zone, key)
        except Exception as exc:  # a server that is just restarting: try again
            last = exc
            time.sleep(0.5)
            continue
        return [a.name for a in acks if a.name not in served]
    raise AssertionError(f"AXFR of {zone} from {server} failed {attempts} times: {last}")


def converge_seconds(leader_ip: str, secondary_ips: list[str], zone: str,
                     limit: float) -> float | None:
    """Seconds until every secondary serves at least the leader's current serial, or
    None if one does not within ``limit``."""
    target = soa_serial(leader_ip, zone)
    if target is None:
        return None
    start = time.monotonic()
    while time.monotonic() - start <= limit:
        serials = [soa_serial(ip, zone) for ip in secondary_ips]
        if all(s is not None and _serial_ge(s, target) for s in serials):
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def _serial_ge(a: int, b: int) -> bool:
    """RFC 1982 serial arithmetic: a is b or later."""
    return a == b or 0 < (a - b) % 2**32 < 2**31
