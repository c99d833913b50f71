"""Prometheus metrics through prometheus_client, served by bindha_rwx.httpserver.

The supervisor's values (gauges and counters it sets from its threads) live in a small
table under a short lock and reach Prometheus through a collector of our own, because
some exist only while they mean something (``volume_writable`` only on the fence
holder: ``remove``). Latencies are prometheus_client Histograms; the registry also
holds the process and platform collectors and ``bindha_build_info``. Scrapes never
touch the supervisor's other threads. The bottom layer: it imports nothing from the
package but its version.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from bindha_rwx import __version__

PREFIX = "bindha"

# The master supervisor's values: name -> (type, help)
DEFINITIONS: dict[str, tuple[str, str]] = {
    "role": ("gauge", "1 for the role this pod has now, per role label"),
    "leader_transitions": ("gauge", "leaseTransitions of the Lease, as last seen"),
    "renewals_total": ("counter", "successful Lease renewals by this pod"),
    "renew_failures_total": ("counter", "failed Lease renewal attempts by this pod"),
    "fence_blocked_duration_seconds": ("gauge", "how long this pod has been blocked on the "
                                       "fence in the current spell (0 when not)"),
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
    "volume_free_bytes": ("gauge", "free bytes on the shared volume, as of the last probe"),
}


# The secondary supervisor's values (its named's own counters: bindha_rwx.namedstats)
SECONDARY_DEFINITIONS: dict[str, tuple[str, str]] = {
    "zones_lagging": ("gauge", "zones whose serial here is older than the primary's, as of "
                      "the last SOA pass"),
    "zone_serial_lag": ("gauge", "the primary's serial minus this secondary's, per zone "
                        "(RFC 1982; 0 when current), as of the last SOA pass"),
    "primary_changes_total": ("counter", "times this secondary switched to a new primary"),
}

# name -> (help, bucket upper bounds in seconds)
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "lease_renew_duration_seconds": (
        "duration of successful Lease renewals (one API round trip each)",
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)),
    "volume_write_duration_seconds": (
        "duration of the shared volume's write probe (write + fsync in .bindha/): the "
        "storage latency every acknowledged update also pays",
        (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)),
}


class Metrics:
    def __init__(self, definitions: dict[str, tuple[str, str]] | None = None,
                 histograms: dict[str, tuple[str, tuple[float, ...]]] | None = None,
                 collectors: tuple[Collector, ...] = ()) -> None:
        """The master's metrics by default; ``collectors``: more, such as named's."""
        self.definitions = DEFINITIONS if definitions is None else definitions
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_Table(self))
        for collector in collectors:
            self.registry.register(collector)
        chosen = HISTOGRAMS if histograms is None else histograms
        self._histograms = {name: Histogram(f"{PREFIX}_{name}", text, buckets=buckets,
                                            registry=self.registry)
                            for name, (text, buckets) in chosen.items()}

    def observe(self, name: str, seconds: float) -> None:
        self._histograms[name].observe(seconds)

    def set(self, name: str, value: float, **labels: str) -> None:
        assert name in self.definitions, name
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = float(value)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        assert name in self.definitions, name
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def remove(self, name: str, **labels: str) -> None:
        """Drop a value that means nothing now (a gauge only the fence holder sets)."""
        with self._lock:
            self._values.pop((name, tuple(sorted(labels.items()))), None)

    def replace_all(self, name: str, label: str, values: dict[str, float]) -> None:
        """Every labelled value of ``name`` at once (a per-zone gauge after a pass)."""
        assert name in self.definitions, name
        with self._lock:
            for key in [k for k in self._values if k[0] == name]:
                del self._values[key]
            for value_label, value in values.items():
                self._values[(name, ((label, value_label),))] = float(value)

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def snapshot(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with self._lock:
            return dict(self._values)

    def render(self) -> str:
        return generate_latest(self.registry).decode()

    def route(self) -> tuple[int, str, bytes]:
        """GET /metrics for bindha_rwx.httpserver."""
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)


class _Table(Collector):
    """The table's values as metric families, plus bindha_build_info."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        values = self.metrics.snapshot()
        info = GaugeMetricFamily(f"{PREFIX}_build_info", "the running version: always 1",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        for name, (kind, text) in self.metrics.definitions.items():
            mine = sorted((labels, value) for (metric, labels), value in values.items()
                          if metric == name)
            names = sorted({k for labels, _ in mine for k, _ in labels})
            family: GaugeMetricFamily | CounterMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(f"{PREFIX}_{name}", text, labels=names)
            else:
                family = GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=names)
            for labels, value in mine:
                given = dict(labels)
                family.add_metric([given.get(k, "") for k in names], value)
            yield family
