"""The master supervisor (`bindha-rwx run`): election + fencing + the named lifecycle.

States of this pod, and what moves it:

    standby ──Lease won──▶ fencing ──lock taken, epoch bumped──▶ leader
       ▲                     │ lock held by another    │ a journal   │
       │                     ▼                         ▼ is damaged  │
       │             blocked-on-fence        journal-damaged         │
       │             (keeps the Lease,       (keeps the fence, no    │
       │              retries)                named; re-checks)      │
       └──── Lease lost / epoch moved / named crash-looping ◀────────┘
    any state ──SIGTERM──▶ stopping: leave the Service, stop named, unlock, release

Threads, each with one job (DESIGN: "Liveness of the fence beats everything"):

- elector: Lease acquire/renew/release, API calls only (bindha_rwx.election);
- watcher: the Lease watch, so a released Lease is taken at once;
- guard: kills named the moment ``elector.holds()`` turns false. It does no I/O and
  calls no API, so nothing can hold it up; it is the fence's last line;
- controller: the state machine below. It starts named, so it lives as long as the
  process (named's parent-death signal fires when the thread that forked it ends);
- publisher: pod labels and Events (bindha_rwx.kube);
- volume-probe: while this pod holds the fence, a write + fsync in ``.bindha/`` on a
  worker thread of its own (bindha_rwx.volume); it reports, it never stops named;
- the main thread: signals and, as PID 1, reaping orphans.

Invariant 3: a new leader acquires the Lease, then the lock, bumps the epoch, writes
the owner record, and only then starts named. named runs only while all three hold.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from enum import Enum
from pathlib import Path

from kubernetes import client

from bindha_rwx.bindtools import BindToolError, check_conf, ensure_key_file
from bindha_rwx.config import Config
from bindha_rwx.discovery import EndpointsWatcher
from bindha_rwx.election import (
    EPOCH_ANNOTATION,
    LEADER_IP_ANNOTATION,
    SWITCHOVER_ANNOTATION,
    Elector,
    LeaseClient,
    LeaseWatcher,
)
from bindha_rwx.fencing import FenceError, Owner, SharedVolume, StorageLock
from bindha_rwx.files import atomic_write
from bindha_rwx.journal import RUNBOOK as JOURNAL_RUNBOOK
from bindha_rwx.journal import (
    Damage,
    check_journals,
    explain_all,
    same_damage,
    timed_check,
    zone_journals,
)
from bindha_rwx.kube import Publisher
from bindha_rwx.log import get_logger
from bindha_rwx.metrics import Metrics
from bindha_rwx.named import NamedError, NamedProcess, RestartPolicy, Rndc
from bindha_rwx.probes import RunState, RuntimeFiles, write_role_file
from bindha_rwx.reaper import reap_orphans
from bindha_rwx.reload import ConfigSource, applied, candidate, refused
from bindha_rwx.render import RNDC_KEY_NAME, render_bootstrap_zone, render_primary
from bindha_rwx.volume import RUNBOOK as VOLUME_RUNBOOK
from bindha_rwx.volume import VolumeHealth, VolumeProbe

log = get_logger("master")

EXIT_OK = 0
EXIT_FAILURE = 1
# Coalesce a burst of EndpointSlice changes (a rolling restart) into one reconfig.
NOTIFY_DEBOUNCE = 0.2


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
        self.metrics = Metrics()
        self.elector = Elector(self.lease, config.pod.name, timing,
                               on_change=self._wake.set, heartbeat=self.runtime.beat,
                               annotations={LEADER_IP_ANNOTATION: config.pod.ip or ""},
                               metrics=self.metrics)
        self.watcher = LeaseWatcher(self.lease, self.elector.observe, timing)
        self.publisher = Publisher(api, config, timeout=timing.retry_period)
        self.endpoints = EndpointsWatcher(api, config.namespace, config.secondaries.service,
                                          timing, self._on_secondaries)
        self.targets: tuple[str, ...] = ()
        self._targets_changed_at = 0.0
        self._rendered_targets: tuple[str, ...] | None = None
        self._next_reload_check = 0.0
        self.restarts = RestartPolicy()
        self.shutdown = threading.Event()
        self.finished = threading.Event()
        self.state = State.STANDBY
        self.named: NamedProcess | None = None
        self._stuck: NamedProcess | None = None
        self.lock: StorageLock | None = None
        self.epoch: int | None = None
        self._next_epoch_check = 0.0
        self._restart_at: float | None = None
        self._serving_since: float | None = None
        self._blocked_since: float | None = None
        self._next_state_write = 0.0
        self.damaged: list[Damage] = []
        self._next_journal_check = 0.0
        self.volume_probe = VolumeProbe(
            self.volume.meta_dir / f"probe.{config.pod.name}", interval=timing.retry_period,
            timeout=max(1.0, 2 * timing.retry_period), active=self._holds_fence,
            on_change=self._on_volume_change)

    # -- entry point (main thread) ---------------------------------------------

    def run(self) -> int:
        self.runtime.ensure()
        self.runtime.beat()
        self.volume.ensure()
        ensure_key_file(self.config.paths.rndc_key, RNDC_KEY_NAME)
        log.info("supervisor.start", pod=self.config.pod.name, namespace=self.config.namespace,
                 lease=self.config.lease_name, dyn_dir=str(self.config.paths.dyn_dir),
                 timing=vars(self.config.timing))
        self._set_role_standby(publish=True)
        if self.config.ports.metrics:
            address = self.config.pod.ip or self.config.local_address
            port = self.metrics.serve(address, self.config.ports.metrics)
            log.info("metrics.listening", url=f"http://{address}:{port}/metrics")
        threads = [
            threading.Thread(target=self.elector.run, name="elector", daemon=True),
            threading.Thread(target=self.watcher.run, name="watcher", daemon=True),
            threading.Thread(target=self._guard, name="guard", daemon=True),
            threading.Thread(target=self._control, name="controller", daemon=True),
            threading.Thread(target=self.endpoints.run, name="endpoints", daemon=True),
            threading.Thread(target=self.volume_probe.run, name="volume-probe", daemon=True),
        ]
        self.publisher.start()
        for thread in threads:
            thread.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        is_pid1 = os.getpid() == 1
        while not self.finished.wait(0.2):
            if is_pid1:
                reap_orphans(self._managed_pids())
        log.info("supervisor.exit", code=EXIT_OK)
        return EXIT_OK

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.shutdown.is_set():
            log.info("supervisor.signal", signal=signal.Signals(signum).name)
        self.shutdown.set()
        self._wake.set()

    def _on_secondaries(self, addresses: tuple[str, ...]) -> None:
        """EndpointsWatcher thread: note the new set; the controller applies it."""
        self.targets = addresses
        self._targets_changed_at = time.monotonic()
        self._wake.set()

    def _holds_fence(self) -> bool:
        """For the volume probe's thread: no I/O, reads two fields."""
        lock = self.lock
        return self.state in (State.LEADER, State.DAMAGED) and lock is not None and lock.held

    def _on_volume_change(self, before: VolumeHealth, health: VolumeHealth) -> None:
        """volume-probe thread: say it; nothing here blocks (the Event is queued)."""
        if health.writable is None:
            self.metrics.remove("volume_writable")
            return
        self.metrics.set("volume_writable", 1 if health.writable else 0)
        if health.writable:
            log.info("volume.writable", path=str(self.volume_probe.path),
                     write_seconds=round(health.seconds or 0.0, 4), free_bytes=health.free_bytes,
                     again=before.writable is False)
            if before.writable is False:
                self.publisher.event("VolumeWritable", "the shared volume takes writes again")
            return
        self.metrics.inc("volume_probe_failures_total")
        log.error("volume.unwritable", problem=health.problem, named="kept running: it "
                  "answers SERVFAIL to updates and resumes by itself", runbook=VOLUME_RUNBOOK)
        self.publisher.event("VolumeUnwritable", f"the shared volume is {health.problem}; "
                             f"named answers updates with SERVFAIL until it is writable; see "
                             f"{VOLUME_RUNBOOK}", "Warning")

    def _managed_pids(self) -> set[int]:
        named = self.named
        return {named.pid} if named is not None and named.pid else set()

    # -- the guard ------------------------------------------------------------

    def _guard(self) -> None:
        """Kill named the moment the Lease is not held; no I/O, no API calls here."""
        term_sent_at: float | None = None
        while not self.finished.is_set():
            named = self.named
            if named is not None and named.running and not self.elector.holds():
                now = time.monotonic()
                if term_sent_at is None:
                    named.signal_now(signal.SIGTERM)
                    term_sent_at = now
                    log.warning("fence.guard_kill", pid=named.pid, signal="SIGTERM")
                elif now - term_sent_at >= self.config.timing.stop_timeout:
                    named.signal_now(signal.SIGKILL)
            else:
                term_sent_at = None
            time.sleep(0.02)

    # -- the controller -------------------------------------------------------

    def _control(self) -> None:
        tick = min(0.25, self.config.timing.retry_period / 4)
        try:
            while not self.shutdown.is_set():
                self._wake.wait(tick)
                self._wake.clear()
                if self.shutdown.is_set():
                    break
                try:
                    self._step()
                except (FenceError, OSError, BindToolError, NamedError) as exc:
                    log.error("controller.error", error=f"{type(exc).__name__}: {exc}"[:300],
                              state=self.state.value)
                    if self.state is not State.STANDBY:
                        self._drop_leadership("error: " + str(exc)[:200], step_down=True)
                self._write_state()
            self._stop_gracefully()
        finally:
            self.finished.set()

    def _reap_stuck(self) -> bool:
        """True while a named that survived SIGKILL still runs (we then keep the lock)."""
        stuck = self._stuck
        if stuck is None:
            return False
        if stuck.running:
            stuck.signal_now(signal.SIGKILL)
            return True
        self._stuck = None
        if self.lock is not None:
            self.lock.release()
        log.info("named.gone", note="the stuck named ended; lock released")
        return False

    def _step(self) -> None:
        if self._reap_stuck():
            return
        self._check_reload()
        holds = self.elector.holds()
        if self.state in (State.LEADER, State.BLOCKED, State.DAMAGED) and not holds:
            self._drop_leadership("the Lease is no longer held", step_down=False)
            return
        if not holds:
            return
        if self.state in (State.STANDBY, State.BLOCKED):
            self._take_fence()
        elif self.state is State.DAMAGED:
            self._wait_for_journals()
        elif self.state is State.LEADER:
            self._lead()

    def _take_fence(self) -> None:
        """Lease held: take the lock, bump the epoch, write the owner, start named."""
        generation = self.volume.read_generation()
        if self.lock is None or self.lock.generation != generation:
            self.lock = StorageLock(self.volume.lock_path(generation), generation)
        if not self.lock.try_acquire():
            now = time.monotonic()
            if self.state is not State.BLOCKED:
                self._blocked_since = now
                self.state = State.BLOCKED
                owner = self._owner_text()
                log.warning("fence.blocked", lock=str(self.lock.path), owner=owner)
                self.publisher.event("BlockedOnFence", f"holds the Lease but the storage lock "
                                     f"{self.lock.path.name} is held by {owner}; see "
                                     "docs/runbooks/stale-lock.md", "Warning")
            return
        epoch = self.volume.bump_epoch()
        self.volume.write_owner(Owner.now(pod=self.config.pod.name or "",
                                          node=self.config.pod.node or "",
                                          pod_ip=self.config.pod.ip or "", epoch=epoch,
                                          generation=generation))
        self.epoch = epoch
        self.elector.set_annotation(EPOCH_ANNOTATION, str(epoch))
        blocked_for = (time.monotonic() - self._blocked_since) if self._blocked_since else 0.0
        self._blocked_since = None
        self.metrics.inc("fence_blocked_seconds_total", blocked_for)
        log.info("fence.acquired", epoch=epoch, generation=generation,
                 blocked_seconds=round(blocked_for, 3))
        self._next_epoch_check = time.monotonic() + self.config.timing.retry_period
        self._bootstrap_zones()
        if self._journals_damaged():
            return
        self._begin_serving()

    def _begin_serving(self) -> None:
        """Fence held and journals sound: named.conf, named, the leader's label."""
        self._write_named_conf()
        self.state = State.LEADER
        self._start_named()
        write_role_file(self.config.paths.role_file, "leader")
        self.publisher.publish_role("leader")
        self.publisher.event("LeaderAcquired",
                             f"{self.config.pod.name} leads with epoch {self.epoch}")

    def _journals_damaged(self) -> bool:
        """Check every zone's journal before named may open it (DESIGN: corrupted .jnl).

        A damaged one keeps named stopped and the fence held (state journal-damaged):
        every master sees the same volume, so stepping down would only pass the same
        refusal round the pods, and a held fence lets the operator repair the files
        with no named running on them anywhere. Re-checked every retryPeriod, so the
        runbook's repair is picked up without a restart.
        """
        journals = zone_journals(self.config.paths.dyn_dir,
                                 [(z.name, z.file_name) for z in self.config.zones])
        damaged, took = timed_check(journals)
        self.metrics.set("journal_check_seconds", took)
        self.metrics.set("journals_damaged", len(damaged))
        self._next_journal_check = time.monotonic() + self.config.timing.retry_period
        if not damaged:
            if self.damaged:
                log.info("journal.repaired", zones=[d.zone for d in self.damaged],
                         seconds=round(took, 4))
                self.publisher.event("JournalRepaired", "every journal checks out: starting "
                                     "named")
            else:
                log.info("journal.checked", journals=len(journals), seconds=round(took, 4))
            self.damaged = []
            return False
        first_time = self.state is not State.DAMAGED or not same_damage(damaged, self.damaged)
        if first_time:
            self.damaged = explain_all(damaged)  # BIND's words, for the first few
        if self.state is State.LEADER:  # a restart after a crash: leave the Service
            write_role_file(self.config.paths.role_file, "standby")
            self.publisher.publish_role("standby")
        self.state = State.DAMAGED
        if first_time:
            for damage in self.damaged:
                log.error("journal.damaged", **damage.as_dict(), named="not started",
                          runbook=JOURNAL_RUNBOOK)
            names = ", ".join(d.zone for d in damaged[:5]) + (
                f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
            message = (f"named not started: damaged journal of {names}: "
                       f"{self.damaged[0].summary()}; this pod keeps the fence; see "
                       f"{JOURNAL_RUNBOOK}")
            self.publisher.event("JournalDamaged", message[:1000], "Warning")
        return True

    def _wait_for_journals(self) -> None:
        """journal-damaged: keep the fence honest, then re-check the journals."""
        if self._handing_over() or self._fence_moved():
            return
        if time.monotonic() >= self._next_journal_check and not self._journals_damaged():
            self._begin_serving()

    def _owner_text(self) -> str:
        try:
            owner = self.volume.read_owner()
        except FenceError as exc:
            return str(exc)
        return f"{owner.pod} on {owner.node} (pid {owner.pid}, epoch {owner.epoch})" \
            if owner else "an unknown process"

    def _start_named(self) -> None:
        named = NamedProcess(self.config, self.config.paths.named_conf)
        named.start()
        self.named = named
        self._serving_since = None
        log.info("named.started", pid=named.pid, epoch=self.epoch)

    def _handing_over(self) -> bool:
        """A switchover to another pod is asked for on the Lease: hand over to it."""
        record, _ = self.elector.observed()
        target = record.annotations.get(SWITCHOVER_ANNOTATION) if record else None
        if target and target != self.config.pod.name:
            self._hand_over(target)
            return True
        return False

    def _lead(self) -> None:
        now = time.monotonic()
        if self._handing_over() or self._fence_moved():
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
        if ended is None:
            if self._serving_since is None and named.serving(timeout=0.2):
                self._serving_since = now
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
            self._drop_leadership("named keeps crashing", step_down=True)
        else:
            self._restart_at = now + delay

    def _fence_moved(self) -> bool:
        """Every retryPeriod: self-fence if the epoch or lock generation moved."""
        now = time.monotonic()
        if now < self._next_epoch_check:
            return False
        self._next_epoch_check = now + self.config.timing.retry_period
        epoch = self.volume.read_epoch()
        generation = self.volume.read_generation()
        if epoch == self.epoch and not (self.lock and generation != self.lock.generation):
            return False
        log.error("fence.self_fence", our_epoch=self.epoch, epoch_on_disk=epoch,
                  generation=generation)
        self.publisher.event("SelfFenced", f"the epoch on the volume moved from "
                             f"{self.epoch} to {epoch}: named stopped", "Warning")
        self._drop_leadership("the epoch moved", step_down=True)
        return True

    def _hand_over(self, target: str) -> None:
        """A switchover: leave the Service, stop named gracefully, unlock, release."""
        timing = self.config.timing
        log.info("switchover.start", to=target)
        self.publisher.event("SwitchoverStarted", f"handing over to {target}")
        labelled = self._set_role_standby(publish=True)
        if labelled is not None:
            labelled.wait(timing.retry_period)
        named, self.named = self.named, None
        if named is not None:
            ended = named.stop(timing.stop_timeout)
            log.info("named.stopped", reason=ended.reason, returncode=ended.returncode)
            if named.running:
                self._stuck = named
        if self.lock is not None and self._stuck is None:
            self.lock.release()
        self.epoch = None
        self._restart_at = None
        self.damaged = []
        # Stay out until the target has it; _yields() would also stop us re-acquiring.
        self.elector.step_down(cooldown=2 * timing.lease_duration)

    def _drop_leadership(self, reason: str, step_down: bool) -> None:
        """Lost the Lease, self-fenced or stepping down: named dies before the lock goes."""
        named, self.named = self.named, None
        if named is not None:
            ended = named.kill(self.config.timing.stop_timeout)
            log.warning("named.killed", reason=reason, returncode=ended.returncode)
            if named.running:
                # Survived SIGKILL (stuck in I/O on a dead volume): it may still write, so
                # the lock stays ours until it is gone (checked every tick, _reap_stuck).
                self._stuck = named
                log.error("named.unkillable", pid=named.pid, lock="kept until it is gone")
        if self.lock is not None and self._stuck is None:
            self.lock.release()
        was = self.state
        self.epoch = None
        self._restart_at = None
        self.damaged = []
        self._set_role_standby(publish=True)
        if was in (State.LEADER, State.DAMAGED):
            self.publisher.event("LeaderLost", reason, "Warning")
        log.warning("leader.dropped", reason=reason, was=was.value, step_down=step_down)
        if step_down:
            self.restarts.reset()
            self.elector.step_down(cooldown=self.config.timing.lease_duration)

    def _set_role_standby(self, publish: bool) -> threading.Event | None:
        self.state = State.STANDBY if not self.shutdown.is_set() else State.STOPPING
        write_role_file(self.config.paths.role_file, "standby")
        return self.publisher.publish_role("standby") if publish else None

    def _stop_gracefully(self) -> None:
        """SIGTERM: leave the Service, stop named, unlock, release the Lease."""
        started = time.monotonic()
        timing = self.config.timing
        was_leader = self.state is State.LEADER
        self.state = State.STOPPING
        self._write_state()
        labelled = self._set_role_standby(publish=True)
        if was_leader and labelled is not None:
            labelled.wait(timing.retry_period)  # leave the leader-only Service first
        named, self.named = self.named, None
        if named is not None:
            ended = named.stop(timing.stop_timeout)
            log.info("named.stopped", reason=ended.reason, returncode=ended.returncode)
        if self.lock is not None:
            self.lock.release()
        self.elector.request_release()
        self.elector.released.wait(2 * timing.retry_period)
        self.elector.stop()
        self.watcher.stop()
        self.endpoints.stop()
        self.volume_probe.stop()
        if was_leader:
            self.publisher.event("LeaderReleased", "graceful handover on termination")
        self.publisher.stop()
        self.metrics.close()
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

    def _write_state(self) -> None:
        now = time.monotonic()
        role = "leader" if self.state is State.LEADER else "standby"
        for value in (self.config.role_label.leader, self.config.role_label.standby):
            self.metrics.set("role", 1 if value == getattr(self.config.role_label, role) else 0,
                             role=value)
        self.metrics.set("epoch", self.epoch or 0)
        self.metrics.set("fence_blocked_seconds",
                         now - self._blocked_since if self._blocked_since else 0)
        self.metrics.set("also_notify_targets", len(self._rendered_targets or ()))
        health = self.volume_probe.health()
        if health.seconds is not None:
            self.metrics.set("volume_write_seconds", health.seconds)
        if health.free_bytes is not None:
            self.metrics.set("volume_free_bytes", health.free_bytes)
        detail = None
        if self.state is State.DAMAGED:
            detail = (f"named not started: {len(self.damaged)} damaged journal(s); see "
                      f"{JOURNAL_RUNBOOK}")
        elif health.writable is False:
            detail = f"shared volume {health.problem}; see {VOLUME_RUNBOOK}"
        self.runtime.write_state(RunState(
            role="leader" if self.state is State.LEADER else "standby",
            state=self.state.value, pid=os.getpid(),
            watch_connected=self.watcher.connected, epoch=self.epoch, updated=now,
            detail=detail, journals_damaged=[d.as_dict() for d in self.damaged],
            volume=health.as_dict() if health.writable is not None else None))


def budget_seconds(config: Config) -> float:
    """Worst-case graceful shutdown: label, stop named, release; see docs/supervisor.md."""
    timing = config.timing
    return timing.retry_period + timing.stop_timeout + 2 * timing.retry_period
