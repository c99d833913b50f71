"""A real Prometheus (Debian's) scrapes the lab's pods and evaluates the shipped rules:
every pod's /metrics is up, the series the alerts and the dashboard use are there with
the right values, every rule evaluates without error, every dashboard query runs, and a
healthy cluster fires nothing. Then the leader is killed: a standby leads again within
BindhaNoLeader's `for` (30 s), so that alert does not fire for a takeover."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.pods import MasterLab, wait_until
from tests.conftest import require

pytestmark = [pytest.mark.kube, pytest.mark.named, pytest.mark.root]

MONITORING = Path(__file__).resolve().parents[2] / "manifests" / "monitoring"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, root: Path, targets: dict[str, str]) -> None:
        require(shutil.which("prometheus") is not None, "needs Debian's prometheus")
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                             "scrape_timeout": "900ms"},
                  "rule_files": [str(MONITORING / "bindha-rwx.rules.yaml")],
                  "scrape_configs": [{"job_name": "bindha", "static_configs": [
                      {"targets": [address], "labels": {"pod": pod, "namespace": "dns"}}
                      for pod, address in targets.items()]}]}
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=(root / "prometheus.log").open("w"))

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}{query}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(targets: dict[str, str]) -> Prometheus:
        started.append(Prometheus(tmp_path, targets))
        return started[-1]
    yield start
    for p in started:
        p.stop()


def ready(prom: Prometheus) -> bool:
    try:
        targets = prom.api("targets")["activeTargets"]
    except OSError:
        return False
    return bool(targets) and all(t["health"] == "up" for t in targets)


def test_prometheus_scrapes_every_pod_and_the_rules_and_dashboard_work(
        lab: MasterLab, prometheus_for):
    lab.start(2)
    leader = lab.leader()
    secondary, = lab.start_secondaries(1)
    pods = [*lab.masters, secondary]
    prom = prometheus_for({p.name: f"{p.ip}:{p.config.ports.metrics}" for p in pods})
    wait_until(lambda: ready(prom), 30, "every target up")
    wait_until(lambda: prom.value('sum(bindha_role{role="leader"})') == 1, 15,
               "Prometheus sees one leader")
    leading = prom.query('bindha_role{role="leader"} == 1')
    assert [r["metric"]["pod"] for r in leading] == [leader.name]
    wait_until(lambda: prom.value(f'bindha_named_up{{pod="{secondary.name}"}}') == 1, 15,
               "the secondary's named statistics")
    assert prom.value(f'bindha_named_up{{pod="{leader.name}"}}') == 1
    wait_until(lambda: prom.value(f'bindha_zones_lagging{{pod="{secondary.name}"}}') == 0,
               15, "the secondary reports no lag")
    assert prom.value('count(bindha_build_info)') == len(pods)

    # Every rule evaluates (health ok), and a healthy cluster fires nothing.
    wait_until(lambda: all(r.get("lastEvaluation", "").startswith("20")
                           for g in prom.api("rules")["groups"] for r in g["rules"]),
               15, "every rule evaluated")
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert len(rules) == 8
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError"))
                                                     for r in rules if r["health"] != "ok"]
    assert prom.query('ALERTS{alertstate="firing"}') == []

    # Every dashboard query runs as Grafana would send it.
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (target["expr"].replace("$__rate_interval", "1m")
                    .replace('namespace=~"$namespace"', 'namespace=~".*"'))
            prom.query(expr)  # raises unless status is success
    assert prom.query('max by (pod) (bindha_role{role="leader",namespace=~".*"})')

    # The leader crashes: a standby leads again inside BindhaNoLeader's 30 s, so the
    # alert goes pending at most and never fires.
    leader.signal(signal.SIGKILL)
    new = lab.leader(timeout=20)
    assert new is not leader
    wait_until(lambda: [r["metric"]["pod"] for r in prom.query(
        'bindha_role{role="leader"} == 1')] == [new.name], 15, "Prometheus sees the new leader")
    assert prom.query('ALERTS{alertname="BindhaNoLeader",alertstate="firing"}') == []
