"""The secondary supervisor (`bindha-rwx secondary`): follow whichever master leads.

A secondary runs named with every zone as ``type secondary``, pulling from the current
leader's pod IP with TSIG and accepting its NOTIFYs. It never writes to the shared
volume (it does not mount it) and never takes updates. Its zone copies live in its
own ``workDir/secondary`` (a per-pod PVC), and the last primary it followed is kept
in ``workDir/bindha/primary``, so a restarted secondary serves at once.

The leader's IP comes from the Lease (annotation ``bindha.io/leader-ip``, written
with the acquiring write itself), watched, so a new leader is known within one watch
event. On a change: re-render, named-checkconf, ``rndc reconfig``: that is the switch,
and it costs the same at 1 zone or 1,000. Then passes compare every zone's serial with
the leader's, concurrently (bindha_rwx.soa), and ``rndc refresh`` only the zones that
lag, on a small pool (a NOTIFY sent before our reconfig would have been refused, and
the SOA refresh timer is far too slow to wait for).

The controller thread alone writes the liveness heartbeat, between bounded steps
(every subprocess and query has a timeout, a SOA pass a deadline), and stops writing
it when a refresh worker is stuck past its timeout: a fresh heartbeat means the
controller is alive and its work moves (docs/secondaries.md).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from kubernetes import client

from bindha_rwx.bindtools import BindToolError, check_conf, ensure_key_file
from bindha_rwx.config import Config
from bindha_rwx.election import LEADER_IP_ANNOTATION, LeaseClient, LeaseRecord, LeaseWatcher
from bindha_rwx.files import atomic_write
from bindha_rwx.httpserver import HttpEndpoint, verdict_route
from bindha_rwx.kube import Publisher
from bindha_rwx.log import get_logger
from bindha_rwx.metrics import SECONDARY_DEFINITIONS, Metrics
from bindha_rwx.named import NamedError, NamedProcess, RestartPolicy, Rndc
from bindha_rwx.namedstats import named_stats
from bindha_rwx.probes import RunState, RuntimeFiles, probe_live, probe_ready, write_role_file
from bindha_rwx.reload import ConfigSource, applied, candidate
from bindha_rwx.render import RNDC_KEY_NAME, render_secondary
from bindha_rwx.scaffold import Scaffold
from bindha_rwx.soa import ask_serials, serial_lt

log = get_logger("secondary")
CONVERGE_WINDOW = 15.0  # seconds of close watch after a primary change or a reload
CONVERGE_EVERY = 0.5  # seconds between SOA passes inside that window (retryPeriod after)
CONVERGE_GRACE = 1.0  # a lag must last this long before we refresh (NOTIFY goes first)
FIRST_COPY_GRACE = 5.0  # a zone we have no copy of is named's own first transfer: wait
PASS_BUDGET = 2.0  # seconds at most per SOA pass (and at most renewDeadline / 2)
REFRESH_WORKERS = 8  # concurrent `rndc refresh` processes
REFRESH_BACKOFF_MAX = 16.0  # seconds: the longest wait between refreshes of one lagging zone
REFRESH_DEADLINE = 10.0  # a queued refresh not started by then is dropped (the next pass
#                          finds what still lags)


class Refresher:
    """``rndc refresh`` of lagging zones on a bounded pool; the controller never waits.

    Jobs belong to a generation: a new primary (drop()) cancels what has not started,
    and a job that starts after its deadline does nothing. stuck() names a job running
    well past its rndc timeout, which only a hung host can cause.
    """

    def __init__(self, workers: int = REFRESH_WORKERS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refresh")
        self._lock = threading.Lock()
        self._generation = 0
        self._queued: dict[str, Future[None]] = {}
        self._running: dict[str, float] = {}  # zone -> CLOCK_MONOTONIC of its start

    def busy(self, zone: str) -> bool:
        future = self._queued.get(zone)
        return future is not None and not future.done()

    def submit(self, rndc: Rndc, zones: list[str], deadline: float, timeout: float) -> None:
        for zone in zones:
            self._queued[zone] = self._pool.submit(self._job, rndc, zone, self._generation,
                                                   deadline, timeout)

    def reap(self) -> None:
        for zone in [z for z, f in self._queued.items() if f.done()]:
            del self._queued[zone]

    def drop(self) -> int:
        """Forget every job of the current generation; how many had not finished."""
        with self._lock:
            self._generation += 1
        pending = sum(1 for f in self._queued.values() if not f.done())
        for future in self._queued.values():
            future.cancel()
        self._queued.clear()
        return pending

    def stuck(self, now: float, limit: float) -> str | None:
        with self._lock:
            return next((z for z, t in self._running.items() if now - t > limit), None)

    def close(self) -> None:
        self.drop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _job(self, rndc: Rndc, zone: str, generation: int, deadline: float,
             timeout: float) -> None:
        with self._lock:
            if generation != self._generation or time.monotonic() > deadline:
                return
            self._running[zone] = time.monotonic()
        try:
            rndc.run("refresh", zone, timeout=timeout)
        except NamedError as exc:
            log.warning("zone.refresh_failed", zone=zone, error=str(exc)[:200])
        finally:
            with self._lock:
                self._running.pop(zone, None)


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
        self.refresher = Refresher()
        self._wake = threading.Event()
        self.metrics = Metrics(SECONDARY_DEFINITIONS, histograms={},
                               collectors=named_stats(config))
        self.http = HttpEndpoint({"/metrics": self.metrics.route,
                                  "/healthz": verdict_route(lambda: probe_live(config)),
                                  "/readyz": verdict_route(lambda: probe_ready(config))})
        self.scaffold = Scaffold(named=lambda: [self.named], event=self.publisher.event,
                                 wake=self._wake.set)
        self.shutdown = self.scaffold.shutdown
        self.finished = self.scaffold.finished
        self.wanted_primary: str | None = None
        self.primary: str | None = None
        self.named: NamedProcess | None = None
        self._restart_at: float | None = None
        self._render_needed = False  # a reloaded config waits for its re-render
        self._follow_after = 0.0  # after a failed switch, when to try again
        self._followed_at: float | None = None  # the last switch, until zones converged
        self._fresh_switch = False  # no grace for lags found by the first pass after it
        self._converge_until = 0.0
        self._next_check = 0.0
        self._next_reload = 0.0
        self._stuck_said = False
        self._refresh_after: dict[str, tuple[float, float]] = {}  # zone -> (not before, backoff)
        self._lagging_since: dict[str, float] = {}

    @property
    def primary_file(self) -> Path:
        return self.runtime.dir / "primary"

    @property
    def _rndc_timeout(self) -> float:
        """For `rndc reconfig`: named rereads every zone's config, so it gets more than
        retryPeriod, but stays well inside renewDeadline (the heartbeat waits on it)."""
        timing = self.config.timing
        return max(timing.retry_period, timing.renew_deadline / 2)

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
        if self.config.ports.metrics:  # /metrics and the kubelet's probes
            address = self.config.pod.ip or self.config.local_address
            port = self.http.serve(address, self.config.ports.metrics)
            log.info("http.listening", url=f"http://{address}:{port}/",
                     paths=sorted(self.http.routes))
        self.publisher.start()
        self.scaffold.threads.start("watcher", self.watcher.run)
        self.scaffold.threads.start("controller", self._control)
        try:
            return self.scaffold.serve("secondary.exit")
        finally:
            self.http.close()

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
        """The loop. An exception that escapes it is fail-stop (bindha_rwx.scaffold):
        ``finished`` is set only on the way out of a stop."""
        tick = min(0.1, self.config.timing.retry_period / 4)
        while not self.shutdown.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            self._beat()
            if self.shutdown.is_set():
                break
            try:
                self._step()
            except (OSError, BindToolError, NamedError) as exc:
                log.error("secondary.error", error=f"{type(exc).__name__}: {exc}"[:300])
            self._write_state()
        self.refresher.close()
        named, self.named = self.named, None
        if named is not None:
            ended = named.stop(self.config.timing.stop_timeout)
            log.info("named.stopped", reason=ended.reason, returncode=ended.returncode)
        self.watcher.stop()
        self.publisher.stop()
        self.finished.set()

    def _beat(self) -> None:
        """The liveness heartbeat, written by the controller between bounded steps.

        Never from a thread of its own: that would beat on while the controller hangs.
        A refresh worker stuck far past its rndc timeout withholds it too.
        """
        limit = self.config.timing.retry_period + self.config.timing.renew_deadline
        stuck = self.refresher.stuck(time.monotonic(), limit)
        if stuck is not None:
            if not self._stuck_said:
                self._stuck_said = True
                log.error("secondary.stuck", zone=stuck, limit=limit,
                          note="an rndc refresh outlived its timeout; liveness withheld")
            return
        self._stuck_said = False
        self.runtime.beat()

    def _step(self) -> None:
        now = time.monotonic()
        self._check_reload(now)
        wanted = self.wanted_primary
        if wanted and (wanted != self.primary or self._render_needed) \
                and now >= self._follow_after:
            self._follow(wanted)
        self._mind_named(now)
        self.refresher.reap()
        if self.named is not None and self.primary and now >= self._next_check:
            inside = now < self._converge_until
            self._next_check = now + (CONVERGE_EVERY if inside
                                      else self.config.timing.retry_period)
            self._beat()
            self._converge()

    def _follow(self, primary: str) -> None:
        """Switch named to ``primary``: render, check, reconfig. No per-zone work here,
        so a switch takes the same time whatever the zone count."""
        started = time.monotonic()
        self._follow_after = started + self.config.timing.retry_period  # if this fails
        text = render_secondary(self.config, primary)
        check_conf(text)
        self._beat()
        atomic_write(self.config.paths.named_conf, text)
        atomic_write(self.primary_file, primary + "\n")
        dropped = self.refresher.drop()  # refreshes aimed at the old primary
        if self.named is None:
            if self._restart_at is None:
                self._start_named()
        else:
            self._beat()
            Rndc(self.config).reconfig(timeout=self._rndc_timeout)
        previous, self.primary = self.primary, primary
        if previous is not None and previous != primary:
            self.metrics.inc("primary_changes_total")
        self._render_needed = False
        self._follow_after = 0.0
        now = time.monotonic()
        self._followed_at, self._fresh_switch = now, True
        self._converge_until = now + CONVERGE_WINDOW
        self._next_check = 0.0  # compare serials at once
        self._refresh_after.clear()
        self._lagging_since.clear()
        log.info("primary.following", primary=primary, previous=previous,
                 seconds=round(now - started, 3), refreshes_dropped=dropped)

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

    def _converge(self) -> None:
        """One SOA pass over every zone, at the primary and here; refresh what lags.

        NOTIFY is the normal path and takes milliseconds; refreshing on every small lag
        would race it (named then logs "refresh in progress, refresh check queued" and
        the NOTIFY waits for our refresh). So only a lag that outlives CONVERGE_GRACE is
        refreshed, except in the first pass after a switch: a zone behind then missed a
        NOTIFY that named refused before our reconfig. A zone that stays behind (or
        still loading) is refreshed again with a doubling backoff. The pass stops when
        the primary changes, stops answering, or at its deadline; the next one starts
        from scratch.
        """
        primary = self.primary
        assert primary is not None
        local = self.config.local_address
        zones = [zone.name for zone in self.config.zones]
        budget = min(PASS_BUDGET, self.config.timing.renew_deadline / 2)
        result = ask_serials(
            [primary, local], zones, port=self.config.ports.dns,
            deadline=time.monotonic() + budget, progress=self._beat,
            abandon=lambda: self.shutdown.is_set() or self.wanted_primary != primary)
        if primary in result.silent or not result.answered[primary]:
            return  # not serving yet, or gone: the Lease will name the next one
        now = time.monotonic()
        theirs, ours, heard = result.serials[primary], result.serials[local], \
            result.answered[local]
        fresh, self._fresh_switch = self._fresh_switch, False
        lagging: list[str] = []
        behind = 0
        lags: dict[str, float] = {}
        for zone in zones:
            their = theirs.get(zone)
            if their is None or zone not in heard:
                continue  # unknown this pass
            our = ours.get(zone)
            if our is not None:
                lags[zone.rstrip(".")] = (their - our) % 2**32 if serial_lt(our, their) else 0
            if our is not None and not serial_lt(our, their):
                self._lagging_since.pop(zone, None)
                self._refresh_after.pop(zone, None)
                continue
            behind += 1
            since = self._lagging_since.setdefault(zone, now)
            grace = (FIRST_COPY_GRACE if our is None  # named transfers it already
                     else 0.0 if fresh else CONVERGE_GRACE)
            if now - since < grace:
                continue
            not_before, backoff = self._refresh_after.get(zone, (0.0, CONVERGE_GRACE / 2))
            if self.refresher.busy(zone) or now < not_before:
                continue
            backoff = min(backoff * 2, REFRESH_BACKOFF_MAX)  # 1 s, 2 s, 4 s ... while it lags
            self._refresh_after[zone] = (now + backoff, backoff)
            lagging.append(zone)
        self.metrics.set("zones_lagging", behind)
        self.metrics.replace_all("zone_serial_lag", "zone", lags)
        if lagging:
            log.info("zones.refresh", count=len(lagging), zones=lagging[:10],
                     after_switch=fresh)
            self.refresher.submit(Rndc(self.config), lagging,
                                  deadline=now + REFRESH_DEADLINE,
                                  timeout=self.config.timing.retry_period)
        all_known = result.complete and len(theirs) == len(zones) and len(heard) == len(zones)
        if behind == 0 and all_known and self._followed_at is not None:
            log.info("zones.converged", zones=len(zones), primary=primary,
                     seconds_since_switch=round(now - self._followed_at, 3))
            self._followed_at = None

    def _check_reload(self, now: float) -> None:
        if self.source is None or now < self._next_reload:
            return
        self._next_reload = now + self.config.timing.retry_period
        self._beat()  # parsing and checking a large config takes a moment
        merged = candidate(self.source, self.config,
                           lambda c: render_secondary(c, self.primary or "127.0.0.1"),
                           self.publisher.event)
        if merged is None:
            return
        previous, self.config = self.config, merged
        self._render_needed = True  # _step re-renders and reconfigs with the new zone list
        self._follow_after = 0.0
        applied(self.publisher.event, previous, merged, "secondary")

    def _write_state(self) -> None:
        self.runtime.write_state(RunState(
            role="secondary", state="following" if self.primary else "waiting-for-leader",
            pid=os.getpid(), watch_connected=self.watcher.connected, epoch=None,
            updated=time.monotonic()))
