"""The exposition parses as Prometheus text (prometheus_client's own parser) and the
names follow Prometheus's conventions: a prefix, counters ending in _total, base units
(seconds, bytes), one build_info."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

import bindha_rwx
from bindha_rwx.metrics import DEFINITIONS, HISTOGRAMS, Metrics


def families(metrics: Metrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(metrics.render())}


def test_every_metric_parses_with_its_type_and_conventional_name():
    metrics = Metrics()
    metrics.inc("renewals_total")
    metrics.set("role", 1, role="leader")
    metrics.set("role", 0, role="standby")
    metrics.observe("lease_renew_duration_seconds", 0.02)
    found = families(metrics)
    for name, (kind, _text) in DEFINITIONS.items():
        full = f"bindha_{name}"
        if kind == "counter":
            assert name.endswith("_total"), name
            full = full.removesuffix("_total")  # the family's name; samples add _total
        family = found[full]
        assert family.type == kind, (name, family.type)
        assert not any(unit in name for unit in ("_ms", "_millis", "_kb", "_mb")), name
    for name in HISTOGRAMS:
        assert found[f"bindha_{name}"].type == "histogram"
        assert name.endswith("_seconds")
    roles = {s.labels["role"]: s.value for s in found["bindha_role"].samples}
    assert roles == {"leader": 1.0, "standby": 0.0}
    [info] = found["bindha_build_info"].samples
    assert info.labels["version"] == bindha_rwx.__version__ and info.value == 1
    assert "process_resident_memory_bytes" in found or "process_resident_memory" in found


def test_a_removed_gauge_disappears_and_counters_add_up():
    metrics = Metrics()
    metrics.set("volume_writable", 1)
    assert [s.value for s in families(metrics)["bindha_volume_writable"].samples] == [1.0]
    metrics.remove("volume_writable")
    assert families(metrics)["bindha_volume_writable"].samples == []
    metrics.inc("config_reloads_total", result="applied")
    metrics.inc("config_reloads_total", result="applied")
    metrics.inc("config_reloads_total", result="refused")
    samples = {s.labels["result"]: s.value
               for s in families(metrics)["bindha_config_reloads"].samples
               if s.name.endswith("_total")}
    assert samples == {"applied": 2.0, "refused": 1.0}
