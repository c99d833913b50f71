"""The shipped alerts and dashboard, checked by Prometheus's own promtool: the rule file
is valid, its unit tests (each alert fires on trouble, none on a healthy cluster) pass,
the PrometheusRule carries the same groups, every runbook an alert names exists, and
every dashboard query names only metrics the product exports. That the queries run and
the rules evaluate against real scrapes is tests/kube/test_monitoring.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from bindha_rwx.metrics import DEFINITIONS, HISTOGRAMS, SECONDARY_DEFINITIONS
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
RULES = MONITORING / "bindha-rwx.rules.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    require(shutil.which("promtool") is not None, "needs promtool (Debian's prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          cwd=MONITORING, check=False)


def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    tested = promtool("test", "rules", "bindha-rwx.rules.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_prometheusrule_carries_the_rule_file():
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_every_alert_names_a_runbook_that_exists():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"]]
    names = {a["alert"] for a in alerts}
    assert {"BindhaNoLeader", "BindhaBlockedOnFence", "BindhaJournalDamaged",
            "BindhaVolumeUnwritable", "BindhaSecondaryLagging", "BindhaNamedCrashLoop",
            "BindhaPodCrashLoop"} <= names
    for alert in alerts:
        assert (ROOT / alert["annotations"]["runbook_url"]).is_file(), alert["alert"]


OURS = re.compile(r"\b(bindha_[a-z_]+)")


def test_the_dashboard_queries_only_metrics_that_exist():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exported = {f"bindha_{n}" for n in [*DEFINITIONS, *SECONDARY_DEFINITIONS, *HISTOGRAMS,
                                        "build_info"]}
    exported |= {n.removesuffix("_total") for n in exported}
    named = {"bindha_named_up", "bindha_named_requests_total", "bindha_named_queries_total",
             "bindha_named_responses_total", "bindha_named_server_stats_total",
             "bindha_named_zone_serial"}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    for expr in exprs:
        for name in OURS.findall(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in exported | named or base in exported, (name, expr)
