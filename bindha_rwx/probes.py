"""The supervisor's runtime state on local disk, and the exec probes that read it.

`probe live` is the watchdog (DESIGN invariant 9): the renew loop writes a heartbeat
(the system-wide CLOCK_MONOTONIC, comparable between processes of one host), and the
probe fails once it is older than renewDeadline, so the kubelet kills a hung or frozen
supervisor's container and `named` with it. `probe ready` gates Service endpoints:
a leader is ready when `named` answers every zone, a standby when its Lease watch is
connected and the shared volume is readable. Each probe finishes in under a second.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from bindha_rwx.config import Config
from bindha_rwx.files import atomic_write

PROBE_BUDGET = 0.8  # seconds: exec probes must answer well inside the kubelet's 1 s


@dataclass
class RunState:
    """What the supervisor tells its probes and `status` (written atomically)."""

    role: str  # leader | standby | secondary
    state: str  # standby | blocked-on-fence | journal-damaged | leader | stopping
    pid: int
    watch_connected: bool
    epoch: int | None
    updated: float  # CLOCK_MONOTONIC of the write
    detail: str | None = None  # why this state, for people (status, probe ready)
    journals_damaged: list[dict[str, Any]] = field(default_factory=list)
    volume: dict[str, Any] | None = None  # the write probe's last word, while leading


class RuntimeFiles:
    """``workDir/bindha/``: heartbeat and state.json, local to the pod."""

    def __init__(self, work_dir: Path) -> None:
        self.dir = work_dir / "bindha"
        self.heartbeat = self.dir / "heartbeat"
        self.state = self.dir / "state.json"

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def beat(self, now: float | None = None,
             threads: dict[str, tuple[float, float | None]] | None = None) -> None:
        """The heartbeat: a monotonic time, and the master's watched threads' ages and
        budgets (bindha_rwx.failstop) so that `probe live` sees a stall of any."""
        at = time.monotonic() if now is None else now
        if threads is None:
            _replace(self.heartbeat, f"{at:.6f}\n")
            return
        _replace(self.heartbeat, json.dumps({"at": at, "threads": {
            name: [round(age, 3), budget] for name, (age, budget) in threads.items()}}) + "\n")

    def read_heartbeat(self) -> tuple[float, dict[str, tuple[float, float | None]]] | None:
        """(age of the heartbeat, {thread: (its age when the beat was written, budget)});
        None if unreadable. A frozen process shows in the first, a stalled thread in
        the second."""
        try:
            text = self.heartbeat.read_text()
        except OSError:
            return None
        try:
            if text.lstrip().startswith("{"):
                data = json.loads(text)
                age = time.monotonic() - float(data["at"])
                threads = {name: (float(v[0]), None if v[1] is None else float(v[1]))
                           for name, v in data.get("threads", {}).items()}
                return age, threads
            return time.monotonic() - float(text), {}
        except (ValueError, KeyError, TypeError, IndexError):
            return None

    def write_state(self, state: RunState) -> None:
        _replace(self.state, json.dumps(asdict(state)) + "\n")

    def read_state(self) -> RunState | None:
        try:
            return RunState(**json.loads(self.state.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def heartbeat_age(self) -> float | None:
        beat = self.read_heartbeat()
        return None if beat is None else beat[0]


def write_role_file(path: Path, role: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(path, role + "\n")


def _replace(path: Path, text: str) -> None:
    atomic_write(path, text, durable=False)  # local state, rewritten every tick


# ---------------------------------------------------------------------------
# the probes: (ok, reason)


def probe_live(config: Config) -> tuple[bool, str]:
    beat = RuntimeFiles(config.paths.work_dir).read_heartbeat()
    if beat is None:
        return False, "no heartbeat yet: the supervisor has not started its renew loop"
    age, threads = beat
    if age > config.timing.renew_deadline:
        return False, (f"heartbeat is {age:.1f}s old (renewDeadline "
                       f"{config.timing.renew_deadline:g}s): the supervisor is hung or frozen")
    for name, (thread_age, budget) in sorted(threads.items()):
        if budget is not None and thread_age > budget:
            return False, (f"thread {name} made no progress for {thread_age:.1f}s (budget "
                           f"{budget:g}s): the supervisor is hung (a hung volume?)")
    return True, f"heartbeat {age:.2f}s old"


def probe_ready(config: Config) -> tuple[bool, str]:
    deadline = time.monotonic() + PROBE_BUDGET
    state = RuntimeFiles(config.paths.work_dir).read_state()
    if state is None:
        return False, "no supervisor state yet"
    if state.role in ("leader", "secondary"):
        if state.role == "secondary" and state.state != "following":
            return False, "secondary: no leader known yet"
        return _named_answers(config, deadline, state.role)
    if state.state == "journal-damaged":
        return False, f"journal damaged: {state.detail}"
    said = f"; {state.detail}" if state.detail else ""
    if state.state == "blocked-on-fence":
        return False, f"blocked on fence: holds the Lease, waits for the storage lock{said}"
    if not state.watch_connected:
        return False, "the Lease watch is not connected"
    if not _readable(config.paths.dyn_dir, deadline - time.monotonic()):
        return False, f"the shared volume {config.paths.dyn_dir} is not readable"
    return True, f"standby: Lease watch connected, shared volume readable{said}"


def _named_answers(config: Config, deadline: float, role: str) -> tuple[bool, str]:
    for zone in config.zones:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, "named did not answer every zone within the probe budget"
        query = dns.message.make_query(zone.name, dns.rdatatype.SOA)
        try:
            answer = dns.query.udp(query, config.local_address, port=config.ports.dns,
                                   timeout=left)
        except (dns.exception.Timeout, OSError) as exc:
            return False, f"named does not answer SOA {zone.name}: {type(exc).__name__}"
        if answer.rcode() != dns.rcode.NOERROR or not answer.answer:
            return False, f"named answers {dns.rcode.to_text(answer.rcode())} for {zone.name}"
    return True, f"{role}: named answers all {len(config.zones)} zones"


def _readable(path: Path, timeout: float) -> bool:
    """List ``path`` in a thread: a dead network volume blocks, the probe must not."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            os.listdir(path)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(max(0.05, timeout))
    return bool(result and result[0])
