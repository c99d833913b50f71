"""Prometheus metrics: a few named values and the text exposition format, served by
bindha_rwx.httpserver. Scrapes never touch the supervisor's other threads: they read
numbers under a short lock. The bottom layer: it imports nothing from the package.
"""

from __future__ import annotations

import threading

PREFIX = "bindha"

# name -> (type, help)
DEFINITIONS: dict[str, tuple[str, str]] = {
    "role": ("gauge", "1 for the role this pod has now, per role label"),
    "leader_transitions": ("gauge", "leaseTransitions of the Lease, as last seen"),
    "renewals_total": ("counter", "successful Lease renewals by this pod"),
    "renew_failures_total": ("counter", "failed Lease renewal attempts by this pod"),
    "renew_latency_seconds": ("gauge", "duration of the last successful Lease renewal"),
    "fence_blocked_seconds": ("gauge", "seconds this pod has been blocked on the fence now"),
    "fence_blocked_seconds_total": ("counter", "seconds spent blocked on the fence, ended"),
    "named_restarts_total": ("counter", "named crashes that led to a restart or step-down"),
    "config_reload_success": ("gauge", "1 if the last config change was applied, 0 refused"),
    "config_reloads_total": ("counter", "config changes seen, per result"),
    "also_notify_targets": ("gauge", "addresses in also-notify (the secondaries' IPs)"),
    "epoch": ("gauge", "fencing epoch this pod holds (0 when not leading)"),
    "journals_damaged": ("gauge", "zone journals found damaged by the last check (named "
                         "is not started while > 0)"),
    "journal_check_seconds": ("gauge", "duration of the last journal check of every zone"),
    "volume_writable": ("gauge", "1 if the last write probe of the shared volume succeeded, "
                        "0 if not (set while this pod holds the fence)"),
    "volume_probe_failures_total": ("counter", "times the shared volume turned unwritable"),
    "volume_write_seconds": ("gauge", "duration of the last write + fsync in .bindha/"),
    "volume_free_bytes": ("gauge", "free bytes on the shared volume, as of the last probe"),
}


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def set(self, name: str, value: float, **labels: str) -> None:
        assert name in DEFINITIONS, name
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = float(value)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        assert name in DEFINITIONS, name
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def remove(self, name: str, **labels: str) -> None:
        """Drop a value that means nothing now (a gauge only the fence holder sets)."""
        with self._lock:
            self._values.pop((name, tuple(sorted(labels.items()))), None)

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        with self._lock:
            values = dict(self._values)
        lines = []
        for name, (kind, text) in DEFINITIONS.items():
            full = f"{PREFIX}_{name}"
            lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
            for (metric, labels), value in sorted(values.items()):
                if metric != name:
                    continue
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{full}{{{label_text}}} {value:g}" if label_text
                             else f"{full} {value:g}")
        return "\n".join(lines) + "\n"

    def route(self) -> tuple[int, str, bytes]:
        """GET /metrics for bindha_rwx.httpserver."""
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.render().encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
