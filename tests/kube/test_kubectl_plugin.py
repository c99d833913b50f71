"""`kubectl bindha` from a "workstation": a kubeconfig and nothing else. The config comes
from the namespace's ConfigMap, whose key files do not exist here (the plugin must
open none), and status, pause, resume and switchover act through the API alone.
(`status --in-pod` and `fence` exec into a pod: tests/node, where pods are real.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from bindha_rwx.election import PAUSED_ANNOTATION
from harness.pods import ROOT, MasterLab, wait_until

pytestmark = [pytest.mark.kube, pytest.mark.named, pytest.mark.root]


def plugin(kubeconfig: Path, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent"}  # no pod env, no ~/.kube
    return subprocess.run([sys.executable, "-m", "bindha_rwx.kubectlplugin", "--kubeconfig",
                           str(kubeconfig), "-n", namespace, *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=ROOT)


def test_status_pause_resume_and_switchover_with_only_a_kubeconfig(
        lab: MasterLab, kubeconfig: Path):
    lab.start(2)
    leader = lab.leader()
    standby = next(p for p in lab.pods if p is not leader)
    data = yaml.safe_load(leader.config_path.read_text())
    for key in data["keys"]:
        key["file"] = f"/etc/bindha/keys/{key['name']}.key"  # as in a pod: not here
    data["paths"]["dynDir"] = "/var/lib/named/dyn"  # the pods' mount, not on a laptop
    assert not Path(data["keys"][0]["file"]).exists()
    assert not Path(data["paths"]["dynDir"]).exists()
    core = client.CoreV1Api(lab.api)

    missing = plugin(kubeconfig, lab.namespace, "status")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"cannot read ConfigMap {lab.namespace}/bind-config" in missing.stderr

    core.create_namespaced_config_map(lab.namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="bind-config"),
        data={"config.yaml": yaml.safe_dump(data)}))
    status = plugin(kubeconfig, lab.namespace, "status", "--json")
    assert status.returncode == 0, status.stderr
    found = json.loads(status.stdout)
    assert found["lease"]["holder"] == leader.name
    assert found["lease"]["paused"] is False
    assert found["zones"] == []  # no SOA queries from a workstation
    assert "run this in a master pod" in found["volume"]["note"]

    def annotations() -> dict[str, str]:
        lease = lab.lease()
        return dict(lease.metadata.annotations or {}) if lease else {}

    paused = plugin(kubeconfig, lab.namespace, "pause")
    assert paused.returncode == 0, paused.stderr
    assert annotations().get(PAUSED_ANNOTATION) == "true"
    assert plugin(kubeconfig, lab.namespace, "resume").returncode == 0
    assert PAUSED_ANNOTATION not in annotations()

    moved = plugin(kubeconfig, lab.namespace, "switchover", "--to", standby.name)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f"{standby.name} leads now" in moved.stdout
    assert wait_until(lambda: lab.leader(timeout=5), 15, "a leader") is standby


def test_kubectl_get_shows_the_state_with_the_documented_columns(lab: MasterLab,
                                                                  kubeconfig: Path):
    """docs/operations.md's `kubectl get lease -o custom-columns=...`, run by kubectl."""
    import re
    import shutil

    from tests.conftest import require
    require(shutil.which("kubectl") is not None, "needs kubectl (Debian's kubernetes-client)")
    lab.start(1)
    leader = lab.leader()
    text = (ROOT / "docs/operations.md").read_text()
    block = re.search(r"<!-- test: lease-columns -->\s*```sh\n(.*?)```", text, re.S)
    assert block
    command = block.group(1).strip().replace("-n dns", f"--kubeconfig {kubeconfig} "
                                             f"-n {lab.namespace}")

    def columns() -> tuple[str, list[str]] | None:
        """The epoch is published with the renewal that follows the fence (the elector
        never waits for the volume), so a serving leader may show none for a moment."""
        shown = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                               timeout=30)
        assert shown.returncode == 0, shown.stderr
        header, row = shown.stdout.splitlines()[:2]
        return (header, row.split()) if row.split()[1] != "<none>" else None

    header, row = wait_until(columns, 10, "the epoch column")
    assert header.split() == ["HOLDER", "EPOCH", "LEADER-IP", "PAUSED", "SWITCHOVER-TO",
                              "RENEWED"]
    holder, epoch, ip, paused = row[:4]
    assert holder.startswith(f"{leader.name}_") and epoch == str(lab.volume.read_epoch())
    assert ip == leader.ip and paused == "<none>"
