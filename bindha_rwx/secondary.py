"""The secondary supervisor (`bindha-rwx secondary`): follow whichever master leads.

A secondary runs named with every zone as ``type secondary``, pulling from the current
leader's pod IP with TSIG and accepting its NOTIFYs. It never writes to the shared
volume (it does not mount it) and never takes updates. Its zone copies live in its
own ``workDir/secondary`` (a per-pod PVC), and the last primary it followed is kept
in ``workDir/bindha/primary``, so a restarted secondary serves at once.

The leader's IP comes from the Lease (annotation ``bindha.io/leader-ip``, written
with the acquiring write itself), watched, so a new leader is known within one watch
event. On a change: re-render, named-checkconf, ``rndc reconfig``, ``rndc refresh``
each zone; then, until converged, compare each zone's serial with the leader's and
refresh again where it lags (a NOTIFY sent before our reconfig would have been
refused, and the SOA refresh timer is far too slow to wait for).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from kubernetes import client

from bindha_rwx.bindtools import BindToolError, check_conf, ensure_key_file
from bindha_rwx.config import Config
from bindha_rwx.election import LEADER_IP_ANNOTATION, LeaseClient, LeaseRecord, LeaseWatcher
from bindha_rwx.files import atomic_write
from bindha_rwx.kube import Publisher
from bindha_rwx.log import get_logger
from bindha_rwx.named import NamedError, NamedProcess, RestartPolicy, Rndc
from bindha_rwx.probes import RunState, RuntimeFiles, write_role_file
from bindha_rwx.reaper import reap_orphans
from bindha_rwx.reload import ConfigSource, applied, candidate
from bindha_rwx.render import RNDC_KEY_NAME, render_secondary

log = get_logger("secondary")
CONVERGE_WINDOW = 15.0  # seconds of close watch after a primary change or a reload
CONVERGE_GRACE = 1.0  # a lag must last this long before we refresh (NOTIFY goes first)


class Secondary:
    def __init__(self, config: Config, api: client.ApiClient,
                 config_path: Path | None = None) -> None:
        assert config.namespace
        self.config = config
        self.source = ConfigSource(config_path) if config_path else None
        self.runtime = RuntimeFiles(config.paths.work_dir)
        self.lease = LeaseClient(api, config.namespace, config.lease_name)
        self.watcher = LeaseWatcher(self.lease, self._observe, config.timing)
        self.publisher = Publisher(api, config, timeout=config.timing.retry_period)
        self.restarts = RestartPolicy(max_crashes=10**9, max_delay=config.timing.lease_duration)
        self.shutdown = threading.Event()
        self.finished = threading.Event()
        self._wake = threading.Event()
        self.wanted_primary: str | None = None
        self.primary: str | None = None
        self.named: NamedProcess | None = None
        self._restart_at: float | None = None
        self._converge_until = 0.0
        self._next_check = 0.0
        self._next_reload = 0.0
        self._refreshed_at: dict[str, float] = {}
        self._lagging_since: dict[str, float] = {}

    @property
    def primary_file(self) -> Path:
        return self.runtime.dir / "primary"

    # -- main thread ------------------------------------------------------------

    def run(self) -> int:
        self.runtime.ensure()
        self.runtime.beat()
        self.config.paths.secondary_dir.mkdir(parents=True, exist_ok=True)
        ensure_key_file(self.config.paths.rndc_key, RNDC_KEY_NAME)
        write_role_file(self.config.paths.role_file, "secondary")
        try:
            last = self.primary_file.read_text().strip()
        except OSError:
            last = ""
        if last:
            # Serve the copies we have at once, from the primary we last followed.
            self.wanted_primary = last
        log.info("secondary.start", pod=self.config.pod.name, lease=self.config.lease_name,
                 last_primary=last or None)
        self.publisher.start()
        for target, name in ((self.watcher.run, "watcher"), (self._control, "controller")):
            threading.Thread(target=target, name=name, daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        is_pid1 = os.getpid() == 1
        while not self.finished.wait(0.2):
            if is_pid1:
                named = self.named
                reap_orphans({named.pid} if named is not None and named.pid else set())
        log.info("secondary.exit", code=0)
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("secondary.signal", signal=signal.Signals(signum).name)
        self.shutdown.set()
        self._wake.set()

    def _observe(self, record: LeaseRecord | None) -> None:
        """Watcher thread: a Lease with a holder names our primary."""
        if record is None or not record.holder:
            return
        ip = record.annotations.get(LEADER_IP_ANNOTATION)
        if ip and ip != self.wanted_primary:
            log.info("primary.seen", leader=record.holder, ip=ip)
            self.wanted_primary = ip
            self._wake.set()

    # -- controller thread ------------------------------------------------------

    def _control(self) -> None:
        tick = min(0.1, self.config.timing.retry_period / 4)
        try:
            while not self.shutdown.is_set():
                self._wake.wait(tick)
                self._wake.clear()
                self.runtime.beat()
                if self.shutdown.is_set():
                    break
                try:
                    self._step()
                except (OSError, BindToolError, NamedError) as exc:
                    log.error("secondary.error", error=f"{type(exc).__name__}: {exc}"[:300])
                self._write_state()
            named, self.named = self.named, None
            if named is not None:
                ended = named.stop(self.config.timing.stop_timeout)
                log.info("named.stopped", reason=ended.reason, returncode=ended.returncode)
            self.watcher.stop()
            self.publisher.stop()
        finally:
            self.finished.set()

    def _step(self) -> None:
        now = time.monotonic()
        self._check_reload(now)
        wanted = self.wanted_primary
        if wanted and wanted != self.primary:
            self._follow(wanted)
        self._mind_named(now)
        if self.named is not None and self.primary and (
                now < self._converge_until or now >= self._next_check):
            self._next_check = now + self.config.timing.retry_period
            self._converge(now)

    def _follow(self, primary: str) -> None:
        text = render_secondary(self.config, primary)
        check_conf(text)
        atomic_write(self.config.paths.named_conf, text)
        atomic_write(self.primary_file, primary + "\n")
        previous, self.primary = self.primary, primary
        self._converge_until = time.monotonic() + CONVERGE_WINDOW
        self._refreshed_at.clear()
        self._lagging_since.clear()
        if self.named is None:
            if self._restart_at is None:
                self._start_named()
        else:
            rndc = Rndc(self.config)
            rndc.reconfig(timeout=self.config.timing.retry_period)
            for zone in self.config.zones:
                rndc.run("refresh", zone.name, timeout=self.config.timing.retry_period)
        log.info("primary.following", primary=primary, previous=previous)

    def _start_named(self) -> None:
        named = NamedProcess(self.config, self.config.paths.named_conf)
        named.start()
        self.named = named
        log.info("named.started", pid=named.pid, primary=self.primary)

    def _mind_named(self, now: float) -> None:
        if self.named is None:
            if self._restart_at is not None and now >= self._restart_at and self.primary:
                self._restart_at = None
                self._start_named()
            return
        ended = self.named.poll()
        if ended is None:
            return
        self.named = None
        delay = self.restarts.record_crash() or self.config.timing.lease_duration
        self._restart_at = now + delay
        log.error("named.crashed", returncode=ended.returncode, restart_in=delay)
        self.publisher.event("NamedCrashed", f"named exited with {ended.returncode}", "Warning")

    def _converge(self, now: float) -> None:
        """Refresh a zone whose serial has lagged the leader's for CONVERGE_GRACE.

        NOTIFY is the normal path and takes milliseconds; refreshing on every small lag
        would race it (named then logs "refresh in progress, refresh check queued" and
        the NOTIFY waits for our refresh). So only a lag that outlives the grace, such
        as a NOTIFY refused before our reconfig, is refreshed here.
        """
        assert self.primary is not None
        rndc = Rndc(self.config)
        for zone in self.config.zones:
            theirs = _serial(self.primary, self.config.ports.dns, zone.name)
            ours = _serial(self.config.local_address, self.config.ports.dns, zone.name)
            if theirs is None or (ours is not None and not _serial_lt(ours, theirs)):
                self._lagging_since.pop(zone.name, None)
                continue
            since = self._lagging_since.setdefault(zone.name, now)
            if now - since < CONVERGE_GRACE:
                continue
            if now - self._refreshed_at.get(zone.name, -1e9) < CONVERGE_GRACE:
                continue
            self._refreshed_at[zone.name] = now
            log.info("zone.refresh", zone=zone.name, ours=ours, leader=theirs,
                     lagging_seconds=round(now - since, 2))
            try:
                rndc.run("refresh", zone.name, timeout=self.config.timing.retry_period)
            except NamedError as exc:
                log.warning("zone.refresh_failed", zone=zone.name, error=str(exc)[:200])

    def _check_reload(self, now: float) -> None:
        if self.source is None or now < self._next_reload:
            return
        self._next_reload = now + self.config.timing.retry_period
        merged = candidate(self.source, self.config,
                           lambda c: render_secondary(c, self.primary or "127.0.0.1"),
                           self.publisher.event)
        if merged is None:
            return
        previous, self.config = self.config, merged
        if self.primary:
            self.primary, wanted = None, self.primary
            self._follow(wanted)  # re-render and reconfig with the new zone list
        applied(self.publisher.event, previous, merged, "secondary")

    def _write_state(self) -> None:
        self.runtime.write_state(RunState(
            role="secondary", state="following" if self.primary else "waiting-for-leader",
            pid=os.getpid(), watch_connected=self.watcher.connected, epoch=None,
            updated=time.monotonic()))


def _serial(server: str, port: int, zone: str) -> int | None:
    try:
        answer = dns.query.udp(dns.message.make_query(zone, dns.rdatatype.SOA), server,
                               port=port, timeout=0.3)
    except (dns.exception.DNSException, OSError):
        return None
    if answer.rcode() != dns.rcode.NOERROR or not answer.answer:
        return None
    return int(answer.answer[0][0].serial)


def _serial_lt(a: int, b: int) -> bool:
    """RFC 1982 serial arithmetic: is ``a`` older than ``b``?"""
    return a != b and ((b - a) % 2**32) < 2**31
