"""The master supervisor (`bindha-rwx run`): election + fencing + the named lifecycle.

States of this pod, and what moves it:

    standby ──Lease won──▶ fencing ──lock taken, epoch bumped──▶ leader
       ▲                     │ lock held by another    │ a journal   │
       │                     ▼                         ▼ is damaged  │
       │             blocked-on-fence        journal-damaged         │
       │             (keeps the Lease,       (keeps the fence, no    │
       │              retries)                named; re-checks)      │
       └── Lease lost / epoch moved / lock lost / crash loop / ◀─────┘
           an error while taking the fence (all through _relinquish)
    any state ──SIGTERM──▶ stopping: leave the Service, stop named, unlock, release

Threads, each with one job (DESIGN: "Liveness of the fence beats everything"), all
started fail-stop (bindha_rwx.scaffold, bindha_rwx.failstop):

- elector: Lease acquire/renew/release, API calls only (bindha_rwx.election);
- watcher: the Lease watch, so a released Lease is taken at once;
- guard: kills named the moment ``elector.holds()`` or ``lock_watch.fresh()`` turns
  false, and ends the process when a watched thread stalls. It does no I/O and calls
  no API, so nothing can hold it up; it is the fence's last line;
- lock-watch: re-asserts the storage lock through its own descriptor every
  retryPeriod, on a worker thread (bindha_rwx.storagelock);
- controller: the state machine below. It starts named, so it lives as long as the
  process (named's parent-death signal fires when the thread that forked it ends);
- publisher: pod labels and Events (bindha_rwx.kube);
- volume-probe: a write + fsync in ``.bindha/`` on a worker thread of its own
  (bindha_rwx.volume); it reports, gates candidacy, never stops named;
- the main thread: signals and, as PID 1, reaping orphans (bindha_rwx.scaffold).

The storage side of leadership is bindha_rwx.fenceholder, the journal check's verdict
bindha_rwx.journalgate, what the pod reports bindha_rwx.reporter.

Invariant 3: a new leader acquires the Lease, then the lock, bumps the epoch, writes
the owner record, and only then starts named. named runs only while all three hold.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from enum import Enum
from pathlib import Path

from kubernetes import client

from bindha_rwx.autofence import AutoFence
from bindha_rwx.bindtools import BindToolError, check_conf, ensure_key_file
from bindha_rwx.bounded import call_patiently, call_within
from bindha_rwx.config import Config
from bindha_rwx.discovery import EndpointsWatcher
from bindha_rwx.election import (
    EPOCH_ANNOTATION,
    LEADER_IP_ANNOTATION,
    Elector,
    LeaseClient,
    LeaseWatcher,
)
from bindha_rwx.fenceholder import FenceHolder, backoff
from bindha_rwx.fencing import FenceError, SharedVolume
from bindha_rwx.files import atomic_write
from bindha_rwx.httpserver import HttpEndpoint, verdict_route
from bindha_rwx.journal import RUNBOOK as JOURNAL_RUNBOOK
from bindha_rwx.journal import (
    check_journals,
    zone_journals,
)
from bindha_rwx.journalgate import JournalGate
from bindha_rwx.kube import Publisher
from bindha_rwx.log import get_logger
from bindha_rwx.metrics import Metrics
from bindha_rwx.named import REAP_GRACE, NamedError, NamedProcess, RestartPolicy, Rndc
from bindha_rwx.namedstats import named_stats
from bindha_rwx.probes import RuntimeFiles, probe_live, probe_ready, write_role_file
from bindha_rwx.reload import ConfigSource, applied, candidate, refused
from bindha_rwx.render import RNDC_KEY_NAME, render_bootstrap_zone, render_primary
from bindha_rwx.reporter import Reporter
from bindha_rwx.scaffold import Scaffold
from bindha_rwx.soa import ask_serials
from bindha_rwx.storagelock import LockWatch
from bindha_rwx.volume import VolumeHealth, VolumeProbe

log = get_logger("master")

GUARD_TICK = 0.02
# A gap this long between two guard ticks means the whole process was frozen.
FREEZE_GAP = 0.5
# Consecutive failures to take the fence back off up to this many leaseDurations.
FENCE_BACKOFF_CAP = 8
# Coalesce a burst of EndpointSlice changes (a rolling restart) into one reconfig.
NOTIFY_DEBOUNCE = 0.2
# While the start-up waits for the shared volume, say so this often.
VOLUME_WAIT_SAY_EVERY = 10.0


class State(Enum):
    STANDBY = "standby"
    BLOCKED = "blocked-on-fence"
    LEADER = "leader"
    DAMAGED = "journal-damaged"
    STOPPING = "stopping"


class Master:
    """One master pod's supervisor."""

    def __init__(self, config: Config, api: client.ApiClient,
                 config_path: Path | None = None) -> None:
        assert config.pod.name and config.namespace
        self.config = config
        self.source = ConfigSource(config_path) if config_path else None
        timing = config.timing
        self.volume = SharedVolume(config.paths.dyn_dir)
        self.runtime = RuntimeFiles(config.paths.work_dir)
        self.lease = LeaseClient(api, config.namespace, config.lease_name)
        self._wake = threading.Event()
        self.metrics = Metrics(collectors=named_stats(config))
        self.http = HttpEndpoint({"/metrics": self.metrics.route,
                                  "/healthz": verdict_route(lambda: probe_live(config)),
                                  "/readyz": verdict_route(lambda: probe_ready(config))})
        self.publisher = Publisher(api, config, timeout=timing.retry_period)
        self.scaffold = Scaffold(named=lambda: [self.named, *self._leftovers],
                                 event=self.publisher.event, wake=self._wake.set)
        self.shutdown = self.scaffold.shutdown
        self.finished = self.scaffold.finished
        self.threads = self.scaffold.threads
        self.elector = Elector(self.lease, config.pod.identity or config.pod.name, timing,
                               on_change=self._wake.set, heartbeat=self._beat,
                               annotations={LEADER_IP_ANNOTATION: config.pod.ip or ""},
                               metrics=self.metrics, may_acquire=self._candidate_problem,
                               watching=lambda: self.watcher.connected)
        self.watcher = LeaseWatcher(self.lease, self.elector.observe, timing)
        self.endpoints = EndpointsWatcher(api, config.namespace, config.secondaries.service,
                                          timing, self._on_secondaries)
        self.targets: tuple[str, ...] = ()
        self._targets_changed_at = 0.0
        self._rendered_targets: tuple[str, ...] | None = None
        self._next_reload_check = 0.0
        self.restarts = RestartPolicy()
        self.state = State.STANDBY
        self.named: NamedProcess | None = None
        # named processes that survived SIGKILL: polled (reaped) until they are gone.
        self._leftovers: list[NamedProcess] = []
        self.lock_watch = LockWatch(interval=timing.retry_period, budget=timing.renew_deadline,
                                    on_lost=self._on_lock_lost,
                                    progress=lambda: self.threads.progress("lock-watch"))
        self.fence = FenceHolder(self.volume, self.lock_watch, pod=config.pod.name,
                                 node=config.pod.node or "", pod_ip=config.pod.ip or "")
        self._fence_failures = 0
        self._next_role_check = 0.0
        self.autofence = (AutoFence(config, self.volume, self.publisher,
                                    self.elector.identity)
                          if config.fencing.storage == "ceph" else None)
        self._next_prepare = 0.0
        self._volume_wait_said = -VOLUME_WAIT_SAY_EVERY
        self._prepare_job: threading.Thread | None = None
        self._next_epoch_check = 0.0
        self._restart_at: float | None = None
        self._serving_since: float | None = None
        self._blocked_since: float | None = None
        self._next_state_write = 0.0
        self.journals = JournalGate()
        self._next_journal_check = 0.0
        self._volume_failed_under_named = False  # set by the probe thread, read here
        self._served_before_restart: dict[str, int] = {}  # zone -> serial, see _lead
        self.volume_probe = VolumeProbe(
            self.volume.meta_dir / f"probe.{config.pod.name}", interval=timing.retry_period,
            timeout=max(1.0, 2 * timing.retry_period), active=lambda: True,
            on_change=self._volume_changed,
            on_sample=lambda seconds: self.metrics.observe("volume_write_duration_seconds",
                                                           seconds))
        self.reporter = Reporter(config, self.metrics, self.runtime, self.publisher,
                                 self.volume_probe.path)

    # -- entry point (main thread) ---------------------------------------------

    def run(self) -> int:
        self.runtime.ensure()
        self.runtime.beat()
        try:
            call_patiently(self.volume.ensure, self.config.timing.retry_period,
                           self._waiting_for_volume)
        except FenceError as exc:  # a deployment error: say it and exit 2, no traceback
            log.error("supervisor.volume_unusable", error=str(exc), exit=2)
            print(f"bindha-rwx run: {exc}", file=sys.stderr)
            return 2
        ensure_key_file(self.config.paths.rndc_key, RNDC_KEY_NAME)
        log.info("supervisor.start", pod=self.config.pod.name, namespace=self.config.namespace,
                 lease=self.config.lease_name, dyn_dir=str(self.config.paths.dyn_dir),
                 timing=vars(self.config.timing), identity=self.elector.identity)
        if not self.config.pod.uid:
            log.warning("supervisor.no_pod_uid", fix="set POD_UID from the downward API "
                        "(fieldRef metadata.uid): without it a new pod of the same name "
                        "(after a force delete) is taken for this one (invariant 13)")
        self._set_role_standby(publish=True)
        if self.config.ports.metrics:
            address = self.config.pod.ip or self.config.local_address
            port = self.http.serve(address, self.config.ports.metrics)
            log.info("http.listening", url=f"http://{address}:{port}/",
                     paths=sorted(self.http.routes))
        self.publisher.start()
        budgets = thread_budgets(self.config)
        start = self.threads.start
        start("guard", self._guard, budgets["guard"])
        start("elector", self.elector.run, budgets["elector"])
        start("watcher", self.watcher.run)
        start("lock-watch", self.lock_watch.run, budgets["lock-watch"])
        start("controller", self._control, budgets["controller"])
        start("endpoints", self.endpoints.run)
        start("volume-probe", self.volume_probe.run)
        return self.scaffold.serve("supervisor.exit")

    def _waiting_for_volume(self, seconds: float) -> None:
        """The start-up's first look at the shared volume has not answered. On CephFS a
        stat of it waits while another client that holds its capabilities is frozen (a
        lost node), until that client is evicted or the MDS ends its session (about 5
        minutes at Ceph's defaults). Say so, and keep the heartbeat: a liveness restart
        would only start the same wait again, silently."""
        self.runtime.beat()
        now = time.monotonic()
        if now - self._volume_wait_said >= VOLUME_WAIT_SAY_EVERY:
            self._volume_wait_said = now
            log.warning("supervisor.volume_waiting", dyn_dir=str(self.config.paths.dyn_dir),
                        seconds=round(seconds, 1), why="the shared volume does not answer "
                        "(on CephFS: another client that holds its capabilities may be "
                        "frozen, until it is evicted or its MDS session ends)",
                        runbook="docs/runbooks/stale-lock.md")

    def _on_secondaries(self, addresses: tuple[str, ...]) -> None:
        """EndpointsWatcher thread: note the new set; the controller applies it."""
        self.targets = addresses
        self._targets_changed_at = time.monotonic()
        self._wake.set()

    def _candidate_problem(self) -> str | None:
        """For the elector, before it acquires: why this pod must not lead now, else
        None. A pod whose own mount takes no writes (hung, read-only, gone) would only
        hold the Lease blocked or stuck (issue 11 item 5). No I/O: the probe's last word."""
        health = self.volume_probe.health()
        if health.writable:
            return None
        return (f"the shared volume is {health.problem}" if health.writable is False
                else "the shared volume has not been probed yet")

    def _on_lock_lost(self, why: str) -> None:
        """lock-watch's worker: the guard sees fresh() turn false by itself; wake the
        controller to relinquish."""
        log.error("fence.lock_lost", why=why)
        self._wake.set()

    def _beat(self, now: float) -> None:
        """The elector's heartbeat: its own progress, written with every watched
        thread's age, so `probe live` fails when any of them stalls (invariant 12)."""
        self.threads.progress("elector")
        self.runtime.beat(now, threads=self.threads.ages())

    # -- the guard ------------------------------------------------------------

    def _guard(self) -> None:
        """Kill named the moment the Lease or the lock is not held, and end the process
        when a watched thread stalls. No I/O, no API calls, no waiting on a lock that
        slow work holds: it is the fence's last line."""
        term_sent_at: float | None = None
        while not self.finished.is_set():
            stalled = self.threads.watchdog("guard", freeze_gap=FREEZE_GAP)
            if stalled is not None:
                self.scaffold.die("guard", stalled)
            named = self.named
            fenced = named is not None and not (self.elector.holds() and self.lock_watch.fresh())
            if fenced and named is not None and named.running:
                now = time.monotonic()
                if term_sent_at is None:
                    named.signal_now(signal.SIGTERM)
                    term_sent_at = now
                    log.warning("fence.guard_kill", pid=named.pid, signal="SIGTERM",
                                lease=self.elector.holds(), lock=self.lock_watch.fresh())
                elif now - term_sent_at >= self.config.timing.stop_timeout:
                    named.signal_now(signal.SIGKILL)
            else:
                term_sent_at = None
            time.sleep(GUARD_TICK)

    # -- the controller -------------------------------------------------------

    def _control(self) -> None:
        """The state machine's loop. An exception that escapes it is fail-stop
        (bindha_rwx.failstop): ``finished`` is set only on the way out of a stop, so the
        main thread can never return 0 for a controller that died."""
        tick = min(0.25, self.config.timing.retry_period / 4)
        while not self.shutdown.is_set():
            self.threads.progress("controller")
            self._wake.wait(tick)
            self._wake.clear()
            if self.shutdown.is_set():
                break
            try:
                if self.autofence is not None:
                    self.autofence.tick()
                self._step()
                self._reconcile_role()
            except (FenceError, OSError, BindToolError, NamedError) as exc:
                log.error("controller.error", error=f"{type(exc).__name__}: {exc}"[:300],
                          state=self.state.value)
                if self._holds_anything():
                    self._relinquish("error: " + str(exc)[:200], graceful=False,
                                     cooldown=self.config.timing.lease_duration)
            self._write_state()
        self._stop_gracefully()
        self.finished.set()

    def _holds_anything(self) -> bool:
        return self.named is not None or self.fence.held or self.state is not State.STANDBY

    def _step(self) -> None:
        self._leftovers = [n for n in self._leftovers if n.running]  # reaps them
        self._check_reload()
        holds = self.elector.holds()
        if self.state in (State.LEADER, State.BLOCKED, State.DAMAGED) and not holds:
            self._relinquish("the Lease is no longer held", graceful=False, cooldown=None)
            return
        preparing = self._prepare_job is not None and self._prepare_job.is_alive()
        if not holds:
            now = time.monotonic()
            if self.state is State.STANDBY and now >= self._next_prepare and not preparing:
                # Open the lock file ahead, on a job thread: this pod's own mount may
                # hang, and the controller must not (its stall budget would end us).
                self._next_prepare = now + self.config.timing.retry_period
                self._prepare_job = threading.Thread(target=self._prepare_lock,
                                                     name="lock-prepare", daemon=True)
                self._prepare_job.start()
            return
        if preparing:
            return  # the fence's lock object is the job's until it ends
        if self.state in (State.STANDBY, State.BLOCKED):
            self._take_fence()
        elif self.state is State.DAMAGED:
            self._wait_for_journals()
        elif self.state is State.LEADER:
            self._lead()

    def _prepare_lock(self) -> None:
        """lock-prepare job: open the lock file and, for the storage fence, read the
        owner record ahead (bindha_rwx/autofence.py says why). A volume error here is
        the write probe's to report."""
        with contextlib.suppress(OSError, FenceError):
            self.fence.prepare()
        if self.autofence is not None:
            with contextlib.suppress(OSError, FenceError):
                self.autofence.owner_ahead = self.volume.read_owner()

    def _take_fence(self) -> None:
        """Lease held: take the lock, bump the epoch, write the owner, start named.

        Any failure on the way gives back everything taken (lock, Lease) and stays
        out for a backoff that doubles per consecutive failure (invariant 11)."""
        try:
            epoch = self.fence.take()
            if epoch is None:
                self._note_blocked()
                if self.autofence is not None:
                    self.autofence.step()
                return
            if self.autofence is not None:  # an eviction that just freed the lock:
                self.autofence.settle(self.config.timing.retry_period)  # its last words
            self.elector.set_annotation(EPOCH_ANNOTATION, str(epoch))
            blocked_for = (time.monotonic() - self._blocked_since) if self._blocked_since \
                else 0.0
            self._blocked_since = None
            self.metrics.inc("fence_blocked_seconds_total", blocked_for)
            log.info("fence.acquired", epoch=epoch, generation=self.fence.lock.generation
                     if self.fence.lock else None, blocked_seconds=round(blocked_for, 3))
            self._next_epoch_check = time.monotonic() + self.config.timing.retry_period
            self._bootstrap_zones()
            if self._journals_damaged():
                return
            self._begin_serving()
        except (FenceError, OSError, BindToolError, NamedError) as exc:
            self._fence_failures += 1
            timing = self.config.timing
            cooldown = backoff(self._fence_failures, timing.lease_duration,
                               FENCE_BACKOFF_CAP * timing.lease_duration)
            log.error("fence.take_failed", error=f"{type(exc).__name__}: {exc}"[:300],
                      failures=self._fence_failures, retry_in=cooldown)
            self.publisher.event("FenceFailed", f"taking the fence failed ({exc}); lock and "
                                 f"Lease given back, retrying in {cooldown:g}s"[:1000],
                                 "Warning")
            self._relinquish(f"taking the fence failed: {exc}"[:200], graceful=False,
                             cooldown=cooldown)

    def _note_blocked(self) -> None:
        if self.state is State.BLOCKED:
            return
        self._blocked_since = time.monotonic()
        self.state = State.BLOCKED
        if self.autofence is not None:
            self.autofence.new_episode()
        lock = self.fence.lock
        owner = self._owner_text()
        log.warning("fence.blocked", lock=str(lock.path) if lock else None, owner=owner)
        self.publisher.event("BlockedOnFence", f"holds the Lease but the storage lock "
                             f"{lock.path.name if lock else ''} is held by {owner}; see "
                             "docs/runbooks/stale-lock.md", "Warning")

    def _begin_serving(self) -> None:
        """Fence held and journals sound: named.conf, named, the leader's label."""
        self._write_named_conf()
        self.state = State.LEADER
        self._start_named()
        self._fence_failures = 0
        write_role_file(self.config.paths.role_file, "leader")
        self.publisher.publish_role("leader")
        self.publisher.event("LeaderAcquired",
                             f"{self.config.pod.name} leads with epoch {self.fence.epoch}")

    def _journals_damaged(self) -> bool:
        """Check every zone's journal before named may open it (DESIGN: corrupted .jnl).

        A damaged one keeps named stopped and the fence held (state journal-damaged):
        every master sees the same volume, so stepping down would only pass the same
        refusal round the pods, and a held fence lets the operator repair the files
        with no named running on them anywhere. Re-checked every retryPeriod, so the
        runbook's repair is picked up without a restart.
        """
        verdict = self.journals.check(self.config.paths.dyn_dir,
                                      [(z.name, z.file_name) for z in self.config.zones],
                                      served=self._served_before_restart)
        self.metrics.set("journal_check_seconds", verdict.seconds)
        self.metrics.set("journals_damaged", len(verdict.damaged))
        self._next_journal_check = time.monotonic() + self.config.timing.retry_period
        if verdict.sound:
            if verdict.repaired:
                log.info("journal.repaired", zones=[d.zone for d in verdict.repaired],
                         seconds=round(verdict.seconds, 4))
                self.publisher.event("JournalRepaired", "every journal checks out: starting "
                                     "named")
            else:
                log.info("journal.checked", journals=verdict.checked,
                         seconds=round(verdict.seconds, 4))
            return False
        if self.state is State.LEADER:  # a restart after a crash: leave the Service
            write_role_file(self.config.paths.role_file, "standby")
            self.publisher.publish_role("standby")
        self.state = State.DAMAGED
        if verdict.news:
            for damage in verdict.damaged:
                log.error("journal.damaged", **damage.as_dict(), named="not started",
                          runbook=JOURNAL_RUNBOOK)
            self.publisher.event("JournalDamaged", JournalGate.summary(
                verdict.damaged, JOURNAL_RUNBOOK)[:1000], "Warning")
        return True

    def _wait_for_journals(self) -> None:
        """journal-damaged: keep the fence honest, then re-check the journals."""
        if self._handing_over() or self._fenced():
            return
        if time.monotonic() >= self._next_journal_check and not self._journals_damaged():
            self._begin_serving()

    def _owner_text(self) -> str:
        """Who holds the lock, for the blocked-on-fence report. Read with a deadline: on
        CephFS a reader of a file whose caps a frozen client holds waits until that
        client is evicted (seen with the epoch file), and this is the controller."""
        try:
            owner = call_within(self.volume.read_owner, self.config.timing.retry_period,
                                "reading the owner record")
        except (FenceError, OSError, TimeoutError) as exc:
            return str(exc)
        return f"{owner.pod} on {owner.node} (pid {owner.pid}, epoch {owner.epoch})" \
            if owner else "an unknown process"

    def _start_named(self) -> None:
        named = NamedProcess(self.config, self.config.paths.named_conf)
        fd = self.fence.fd
        if fd is None or not self.fence.held:
            raise NamedError("refusing to start named without the storage lock")
        named.start(keep_fds=(fd,))
        self.named = named
        self._serving_since = None
        log.info("named.started", pid=named.pid, epoch=self.fence.epoch)

    def _handing_over(self) -> bool:
        """A switchover to another pod is asked for on the Lease: hand over to it."""
        target = self.elector.switchover_target()  # None once stale (issue 11 item 7)
        if target and target != self.elector.pod:
            log.info("switchover.start", to=target)
            self.publisher.event("SwitchoverStarted", f"handing over to {target}")
            # Stay out until the target has it; _yields() would also stop us re-acquiring.
            self._relinquish(f"switchover to {target}", graceful=True,
                             cooldown=2 * self.config.timing.lease_duration)
            return True
        return False

    def _fenced(self) -> bool:
        """Self-fence when the lock is lost or (every retryPeriod) the epoch moved."""
        lost = self.lock_watch.lost()
        if lost is None:
            now = time.monotonic()
            if now < self._next_epoch_check:
                return False
            self._next_epoch_check = now + self.config.timing.retry_period
            moved = self.fence.moved()
            if moved is None:
                return False
            why = moved
        else:
            why = f"the storage lock is lost: {lost}"
        log.error("fence.self_fence", our_epoch=self.fence.epoch, why=why)
        self.publisher.event("SelfFenced", f"{why}: named stopped"[:1000], "Warning")
        self._relinquish(why, graceful=False, cooldown=self.config.timing.lease_duration)
        return True

    def _lead(self) -> None:
        now = time.monotonic()
        if self._handing_over() or self._fenced():
            return
        if (self.targets != self._rendered_targets and self.named is not None
                and now - self._targets_changed_at >= NOTIFY_DEBOUNCE):
            before = self._rendered_targets
            self._write_named_conf()
            self._reconfig()
            log.info("also_notify.changed", before=before, after=self.targets)
        named = self.named
        if named is None:
            if self._restart_at is not None and now >= self._restart_at:
                self._restart_at = None
                if not self._journals_damaged():
                    self._start_named()
            return
        ended = named.poll()
        if ended is None and self._volume_failed_under_named \
                and self.volume_probe.health().writable:
            self._restart_named_after_volume_failure(named)
            return
        if ended is None:
            if self._serving_since is None and named.serving(timeout=0.2):
                self._serving_since = now
                self._served_before_restart = {}
                log.info("named.serving", pid=named.pid, zones=len(self.config.zones))
            elif self._serving_since is not None and now - self._serving_since > 60:
                self.restarts.reset()
            return
        self.named = None
        self.metrics.inc("named_restarts_total")
        delay = self.restarts.record_crash()
        log.error("named.crashed", returncode=ended.returncode, restart_in=delay)
        self.publisher.event("NamedCrashed", f"named exited with {ended.returncode}", "Warning")
        if delay is None:
            self.restarts.reset()
            self._relinquish("named keeps crashing", graceful=False,
                             cooldown=self.config.timing.lease_duration)
        else:
            self._restart_at = now + delay

    def _volume_changed(self, before: VolumeHealth, now: VolumeHealth) -> None:
        """The write probe's news (its thread: no blocking): report it, and note a
        failure while named runs as leader, for _lead to act on once writable again."""
        self.reporter.volume_changed(before, now)
        if now.writable is False and self.state is State.LEADER:
            self._volume_failed_under_named = True

    def _restart_named_after_volume_failure(self, named: NamedProcess) -> None:
        """The volume failed under named (full, read-only, hung) and is writable again:
        start named afresh from the zone file and journal. A journal write that named
        saw fail may have reached the volume anyway (seen on a full CephFS: the update
        was refused, yet the journal's header moved past named's zone); named then
        refuses every later update ("malformed transaction: last serial N != transaction
        first serial N-1") until it re-reads both. A new named serves what the volume
        holds: every acknowledged update and at most a refused one. SIGTERM, not rndc
        stop: a dump of the zone from named's memory would be the stale copy."""
        self._volume_failed_under_named = False
        self._served_before_restart = self._served_serials()
        log.warning("named.restart", reason="the volume is writable again after it failed "
                    "under named: named re-reads the zone and its journal", pid=named.pid,
                    served_serials_known=len(self._served_before_restart))
        ended = named.kill(self.config.timing.stop_timeout)
        if named.running:  # no second named next to it: step down, the lock stays its
            self._relinquish("named could not be stopped to re-read the volume",
                             graceful=False, cooldown=self.config.timing.lease_duration)
            return
        log.info("named.stopped", reason=ended.reason, returncode=ended.returncode)
        self.named = None
        self._serving_since = None
        self._restart_at = time.monotonic()  # the next step: journal check, a new named

    def _served_serials(self) -> dict[str, int]:
        """The serial of each zone named serves now, asked within a retryPeriod at most:
        the floor the volume must hold when named re-reads it (JournalGate.check). A
        zone that does not answer gets no floor."""
        config = self.config
        budget = min(1.0, config.timing.retry_period)
        result = ask_serials([config.local_address], [z.name for z in config.zones],
                             port=config.ports.dns, deadline=time.monotonic() + budget)
        return next(iter(result.serials.values()), {})

    def _relinquish(self, reason: str, *, graceful: bool, cooldown: float | None) -> None:
        """The one way leadership ends: switchover, Lease lost, self-fence, crash loop,
        an error while taking the fence, termination.

        Leave the Service (label and role file), then end named: gracefully (`rndc stop`
        flushes zones) only when ``graceful`` and the fence is still ours (lock fresh,
        epoch ours, read with a deadline: item 10 of issue 11), else killed. Then close
        our copy of the lock: a named that survived SIGKILL keeps the lock through its
        own descriptor until it is gone (invariant 11), so nobody can take over while
        it may still write. ``cooldown``: step down from the Lease and stay out that
        long; None when the Lease is already lost (or the caller releases it).
        """
        timing = self.config.timing
        was = self.state
        held_as = self.fence.owner
        labelled = self._set_role_standby(publish=True)
        named, self.named = self.named, None
        if named is not None:
            if graceful and was is State.LEADER and labelled is not None:
                labelled.wait(timing.retry_period)  # leave the leader-only Service first
            if graceful and self.fence.still_owns(timeout=timing.retry_period):
                ended = named.stop(timing.stop_timeout)
                log.info("named.stopped", reason=ended.reason, returncode=ended.returncode)
            else:
                ended = named.kill(timing.stop_timeout)
                log.warning("named.killed", reason=reason, returncode=ended.returncode,
                            graceful_refused=graceful)
            if named.running:
                self._leftovers.append(named)
                log.error("named.unkillable", pid=named.pid, lock="kept by named's own "
                          "descriptor until it is gone")
        self.fence.release()
        if held_as is not None and self.autofence is not None:
            self.autofence.release_dead_client(held_as)  # a job: only if the mount is dead
        self._restart_at = None
        self._volume_failed_under_named = False
        self._served_before_restart = {}
        self.journals.forget()
        self._blocked_since = None
        if was in (State.LEADER, State.DAMAGED) and not self.shutdown.is_set():
            self.publisher.event("LeaderLost", reason[:1000], "Warning")
        log.warning("leader.dropped", reason=reason, was=was.value,
                    step_down_seconds=cooldown)
        if cooldown is not None:
            self.elector.step_down(cooldown=cooldown)

    def _set_role_standby(self, publish: bool) -> threading.Event | None:
        self.state = State.STANDBY if not self.shutdown.is_set() else State.STOPPING
        write_role_file(self.config.paths.role_file, "standby")
        return self.publisher.publish_role("standby") if publish else None

    def _stop_gracefully(self) -> None:
        """SIGTERM: leave the Service, stop named, unlock, release the Lease."""
        started = time.monotonic()
        timing = self.config.timing
        was_leader = self.state is State.LEADER
        self._write_state()
        self._relinquish("terminating", graceful=True, cooldown=None)
        self._write_state()
        self.elector.request_release()
        self.elector.released.wait(2 * timing.retry_period)
        self.elector.stop()
        self.watcher.stop()
        self.endpoints.stop()
        self.volume_probe.stop()
        self.lock_watch.stop()
        if was_leader:
            self.publisher.event("LeaderReleased", "graceful handover on termination")
        self.publisher.stop()
        self.http.close()
        log.info("supervisor.stopped", seconds=round(time.monotonic() - started, 3),
                 was_leader=was_leader)

    # -- files ----------------------------------------------------------------

    def _bootstrap_zones(self) -> None:
        """A zone with no file on the volume gets a minimal one; nothing is ever rewritten."""
        for zone in self.config.zones:
            path = self.config.paths.dyn_dir / zone.file_name
            journal = Path(f"{path}.jnl")
            if path.exists():
                continue
            if journal.exists():
                log.error("zone.journal_without_file", zone=zone.name, journal=str(journal),
                          fix="docs/runbooks/journal-out-of-sync.md")
                continue
            atomic_write(path, render_bootstrap_zone(zone))
            log.info("zone.bootstrapped", zone=zone.name, file=str(path))

    def _write_named_conf(self, config: Config | None = None) -> None:
        """Render, let named-checkconf judge, then replace named.conf atomically."""
        config = config or self.config
        targets = self.targets
        text = render_primary(config, also_notify=targets)
        check_conf(text)
        path = config.paths.named_conf
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
        self._rendered_targets = targets

    def _reconfig(self) -> None:
        if self.named is not None and self.named.running:
            Rndc(self.config).reconfig(timeout=self.config.timing.retry_period)

    def _check_reload(self) -> None:
        """Every retryPeriod: apply a changed config file, or refuse it and say why."""
        now = time.monotonic()
        if self.source is None or now < self._next_reload_check:
            return
        self._next_reload_check = now + self.config.timing.retry_period
        merged = candidate(self.source, self.config,
                           lambda c: render_primary(c, also_notify=self.targets),
                           self._event)
        if merged is None:
            return
        previous = self.config
        if self.state is State.LEADER:
            # named loads an added zone at reconfig: its journal is checked first too.
            known = {zone.name for zone in previous.zones}
            added = [(z.name, z.file_name) for z in merged.zones if z.name not in known]
            damaged = check_journals(zone_journals(merged.paths.dyn_dir, added))
            if damaged:
                refused(self._event, f"a new zone's journal is damaged: repair it "
                        f"({JOURNAL_RUNBOOK}), then apply the config again",
                        ValueError(damaged[0].summary()))
                return
        self.config = merged
        if self.state is State.LEADER:
            try:
                self._bootstrap_zones()
                self._write_named_conf()
                self._reconfig()
            except (BindToolError, NamedError, OSError) as exc:
                self.config = previous
                refused(self._event, "applying the new config failed", exc)
                self._write_named_conf()
                return
        applied(self._event, previous, merged, self.state.value)

    def _event(self, reason: str, message: str, type_: str) -> None:
        """Publish an Event; config outcomes also count in the metrics."""
        if reason in ("ConfigApplied", "ConfigRefused"):
            ok = reason == "ConfigApplied"
            self.metrics.set("config_reload_success", 1 if ok else 0)
            self.metrics.inc("config_reloads_total", result="applied" if ok else "refused")
        self.publisher.event(reason, message, type_)

    def _reconcile_role(self) -> None:
        """Every retryPeriod: the role file and the pod label say what this pod is
        (issue 11 item 8); a label PATCH that failed is sent again."""
        now = time.monotonic()
        if now < self._next_role_check:
            return
        self._next_role_check = now + self.config.timing.retry_period
        role = "leader" if self.state is State.LEADER else "standby"
        path = self.config.paths.role_file
        try:
            current = path.read_text().strip()
        except OSError:
            current = None
        if current != role:
            write_role_file(path, role)
        self.publisher.reconcile_role(role)

    def _write_state(self) -> None:
        now = time.monotonic()
        self.reporter.write_state(
            state=self.state.value, leading=self.state is State.LEADER, epoch=self.fence.epoch,
            blocked_for=now - self._blocked_since if self._blocked_since else 0.0,
            notify_targets=len(self._rendered_targets or ()),
            watch_connected=self.watcher.connected, damaged=self.journals.damaged,
            health=self.volume_probe.health(), fence=self._fence_detail())

    def _fence_detail(self) -> str | None:
        """The storage fence's word for the state detail: while blocked, its last outcome;
        otherwise why it could not act, if it could not."""
        if self.autofence is None:
            return None
        if self.state is State.BLOCKED and self.autofence.last:
            return self.autofence.last
        return self.autofence.problem()


def budget_seconds(config: Config) -> float:
    """Worst-case graceful shutdown: label, stop named, release; see docs/supervisor.md."""
    timing = config.timing
    return timing.retry_period + timing.stop_timeout + 2 * timing.retry_period


def thread_budgets(config: Config) -> dict[str, float]:
    """Seconds each fence thread may go without progress before it counts as stalled.

    The controller's is the longest legitimate step: a graceful stop of named (label,
    stop, a named that needs REAP_GRACE after SIGKILL) or a journal check; a hung
    volume holds it past this, and the process then ends (issue 11 item 5).
    """
    timing = config.timing
    return {"guard": max(1.0, timing.retry_period),
            "elector": timing.lease_duration,
            "lock-watch": timing.lease_duration,
            "controller": max(timing.lease_duration,
                              3 * timing.retry_period + timing.stop_timeout + REAP_GRACE)}
