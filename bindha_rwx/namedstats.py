"""named's statistics-channels as Prometheus series, read at scrape time.

Both roles run named with ``statistics-channels`` on localAddress (bindha_rwx.render);
a scrape of the supervisor's /metrics reads named's JSON (``/json/v1/server`` and
``/json/v1/zones``, BIND 9.18's format 1.7) with a short timeout, on the scrape's own
thread, and yields the counters the secondaries' operators need: requests per opcode,
queries per type, responses per rcode, named's server counters (transfers, updates,
NOTIFYs: ``nsstats``) and each zone's serial. A named that does not answer gives
``bindha_named_up 0`` and nothing else: the scrape never waits longer than the timeout.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bindha_rwx.config import Config

TIMEOUT = 1.0  # seconds per request: Prometheus's default scrape timeout is 10 s
PREFIX = "bindha_named"


class NamedStats(Collector):
    """A collector over one named's statistics channel."""

    def __init__(self, address: str, port: int, timeout: float = TIMEOUT) -> None:
        self.address, self.port, self.timeout = address, port, timeout

    def describe(self) -> list[Metric]:
        return []  # what named reports varies: no fixed description at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_up", "1 if named's statistics channel answered")
        try:
            server = self._get("server")
            zones = self._get("zones")
        except (OSError, ValueError, http.client.HTTPException):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _counters(f"{PREFIX}_requests", "requests received, per opcode",
                             "opcode", server.get("opcodes"))
        yield from _counters(f"{PREFIX}_queries", "queries received, per type", "type",
                             server.get("qtypes"))
        yield from _counters(f"{PREFIX}_responses", "responses sent, per rcode", "rcode",
                             server.get("rcodes"))
        yield from _counters(f"{PREFIX}_server_stats", "named's server counters (nsstats: "
                             "XfrReqDone, UpdateDone, UpdateFail, QrySuccess, ...)", "counter",
                             server.get("nsstats"))
        serial = GaugeMetricFamily(f"{PREFIX}_zone_serial", "the SOA serial named serves, "
                                   "per zone", labels=["zone"])
        view = (zones.get("views") or {}).get("_default") or {}
        for zone in view.get("zones") or []:
            if isinstance(zone.get("serial"), int) and zone.get("type") != "builtin":
                serial.add_metric([str(zone.get("name", ""))], zone["serial"])
        yield serial

    def _get(self, what: str) -> dict[str, Any]:
        # From localAddress, as rndc does (-b): named's channel allows that address only.
        connection = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout,
                                                source_address=(self.address, 0))
        try:
            connection.request("GET", f"/json/v1/{what}")
            answer = connection.getresponse()
            if answer.status != 200:
                raise ValueError(f"named's /json/v1/{what} answered {answer.status}")
            data = json.loads(answer.read())
        finally:
            connection.close()
        if not isinstance(data, dict):
            raise ValueError(f"named's /json/v1/{what} is not an object")
        return data


def named_stats(config: Config) -> tuple[NamedStats, ...]:
    """The collector for this pod's named, if its statistics channel is on."""
    if not config.ports.stats:
        return ()
    return (NamedStats(config.local_address, config.ports.stats),)


def _counters(name: str, text: str, label: str, values: Any) -> Iterator[Metric]:
    family = CounterMetricFamily(name, text, labels=[label])
    if isinstance(values, dict):
        for key, value in sorted(values.items()):
            if isinstance(value, int | float):
                family.add_metric([str(key)], value)
    yield family
