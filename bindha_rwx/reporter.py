"""What the master tells the world about itself, in one place: metrics, the runtime
state file that the probes and `status` read, and the volume probe's news as logs and
Events. The supervisor decides; this only reports, and never blocks (Events are queued,
the state file is local)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bindha_rwx.config import Config
from bindha_rwx.journal import RUNBOOK as JOURNAL_RUNBOOK
from bindha_rwx.journal import Damage
from bindha_rwx.kube import Publisher
from bindha_rwx.log import get_logger
from bindha_rwx.metrics import Metrics
from bindha_rwx.probes import RunState, RuntimeFiles
from bindha_rwx.volume import RUNBOOK as VOLUME_RUNBOOK
from bindha_rwx.volume import VolumeHealth

log = get_logger("master")


class Reporter:
    """Metrics, state.json and the volume's Events of one master pod."""

    def __init__(self, config: Config, metrics: Metrics, runtime: RuntimeFiles,
                 publisher: Publisher, probe_path: Path) -> None:
        self.config = config
        self.metrics = metrics
        self.runtime = runtime
        self.publisher = publisher
        self.probe_path = probe_path

    def volume_changed(self, before: VolumeHealth, health: VolumeHealth) -> None:
        """volume-probe thread: say it; nothing here blocks (the Event is queued)."""
        if health.writable is None:
            self.metrics.remove("volume_writable")
            return
        self.metrics.set("volume_writable", 1 if health.writable else 0)
        if health.writable:
            log.info("volume.writable", path=str(self.probe_path),
                     write_seconds=round(health.seconds or 0.0, 4), free_bytes=health.free_bytes,
                     again=before.writable is False)
            if before.writable is False:
                self.publisher.event("VolumeWritable", "the shared volume takes writes again")
            return
        self.metrics.inc("volume_probe_failures_total")
        log.error("volume.unwritable", problem=health.problem, named="kept running: it "
                  "answers SERVFAIL to updates; the leader starts it afresh once the volume "
                  "is writable", runbook=VOLUME_RUNBOOK)
        self.publisher.event("VolumeUnwritable", f"the shared volume is {health.problem}; "
                             f"named answers updates with SERVFAIL until it is writable; see "
                             f"{VOLUME_RUNBOOK}", "Warning")

    def write_state(self, *, state: str, leading: bool, epoch: int | None,
                    blocked_for: float, notify_targets: int, watch_connected: bool,
                    damaged: list[Damage], health: VolumeHealth,
                    fence: str | None = None) -> None:
        """Every controller tick: the gauges and state.json."""
        role = "leader" if leading else "standby"
        labels = self.config.role_label
        for value in (labels.leader, labels.standby):
            self.metrics.set("role", 1 if value == getattr(labels, role) else 0, role=value)
        self.metrics.set("epoch", epoch or 0)
        self.metrics.set("fence_blocked_duration_seconds", blocked_for)
        self.metrics.set("also_notify_targets", notify_targets)
        if health.free_bytes is not None:
            self.metrics.set("volume_free_bytes", health.free_bytes)
        detail = None
        if state == "journal-damaged":
            detail = (f"named not started: {len(damaged)} damaged journal(s); see "
                      f"{JOURNAL_RUNBOOK}")
        elif health.writable is False:
            detail = f"shared volume {health.problem}; see {VOLUME_RUNBOOK}"
        elif fence:
            detail = fence
        self.runtime.write_state(RunState(
            role=role, state=state, pid=os.getpid(), watch_connected=watch_connected,
            epoch=epoch, updated=time.monotonic(), detail=detail,
            journals_damaged=[d.as_dict() for d in damaged],
            volume=health.as_dict() if health.writable is not None else None))
