"""The storage fence's settings when they cannot work (issue 12, item 6): bad input is
refused naming the file (exit 2, no traceback, nothing written); a Ceph cluster that does
not answer leaves a pod that runs on, says why, and still leads when its turn comes.

No Ceph cluster here: the fencer's ceph.conf names a monitor on 192.0.2.1 (TEST-NET-1,
never routed), so Ceph's own CLI tries and gives up at its --connect-timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.pods import ROOT, MasterLab, MasterPod, configmap_update, samples, wait_until
from tests.conftest import require
from tests.kube.test_ops import cli

pytestmark = [pytest.mark.kube, pytest.mark.named, pytest.mark.root]

T = {"lease": 3.0, "deadline": 1.6, "retry": 0.4, "stop": 0.8}


def fencer_files(where: Path) -> tuple[Path, Path]:
    """A ceph.conf whose monitor never answers, and a real keyring for client.fencer."""
    require(shutil.which("ceph") is not None and shutil.which("ceph-authtool") is not None,
            "needs Ceph's CLI (ceph-common)")
    conf = where / "ceph.conf"
    conf.write_text("[global]\nmon_host = [v2:192.0.2.1:3300]\n")
    keyring = where / "fencer.keyring"
    subprocess.run(["ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n",
                    "client.fencer"], check=True, capture_output=True, timeout=30)
    return conf, keyring


def bindha(pod: MasterPod, *args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "POD_NAME": pod.name, "POD_NAMESPACE": pod.namespace,
           "POD_IP": pod.ip, "KUBECONFIG": str(pod.kubeconfig)}
    return subprocess.run([sys.executable, "-m", "bindha_rwx", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def _fencing(conf: Path, keyring: Path) -> dict:
    return {"storage": "ceph", "ceph": {"conf": str(conf), "keyring": str(keyring),
                                        "id": "fencer", "mds": "cephfs:0", "timeout": "2s"}}


def test_a_ceph_cluster_that_does_not_answer_leaves_a_standby_that_says_why(
        lab: MasterLab, tmp_path: Path):
    conf, keyring = fencer_files(tmp_path)
    first, second = lab.add_pod(), lab.add_pod()
    data = yaml.safe_load(second.config_path.read_text())
    data["fencing"] = _fencing(conf, keyring)
    configmap_update(second.config_path, yaml.safe_dump(data))
    first.start()
    assert lab.leader() is first
    second.start()
    wait_until(lambda: second.has_event("fence.storage_unavailable"), 20,
               "the standby's start check reports the silent cluster")
    said = next(e for e in second.events() if e.get("event") == "fence.storage_unavailable")
    assert f"no monitor of {conf} answered within 2s" in said["why"], said
    # It runs on as a healthy standby and says why the fence could not act; the renewal
    # path never waited for Ceph (first keeps the Lease, second's heartbeat is fresh).
    for _ in samples(2 * T["lease"], 0.2):
        assert second.alive() and lab.holder() == first.name
    ready = cli(second, "probe", "ready")
    assert ready.returncode == 0, ready.stdout
    assert "standby" in ready.stdout and "storage fence unavailable" in ready.stdout
    assert cli(second, "probe", "live").returncode == 0
    status = json.loads(cli(second, "status", "--json").stdout)
    assert "no monitor of" in status["this_pod"]["detail"], status["this_pod"]
    assert [e for e in lab.core.list_namespaced_event(lab.namespace).items
            if e.reason == "StorageFenceUnavailable"]
    # The fencer is not needed to lead on a free lock: the standby takes over as usual.
    first.signal(signal.SIGTERM)
    assert first.wait_exit(timeout=15) == 0
    wait_until(lambda: second.has_event("named.serving"), 15, "the standby leads")
    assert lab.holder() == second.name
    for text in (second.log_path.read_text(), second.named_log_path.read_text()):
        assert "Traceback" not in text


def test_fencer_files_that_cannot_work_are_refused_naming_them(lab: MasterLab,
                                                                tmp_path: Path):
    """`fence evict` and `run` with a keyring that is missing or holds another key, or a
    ceph.conf without monitors: exit 2 naming the file and the fix, no traceback, and
    nothing on the shared volume changed."""
    conf, keyring = fencer_files(tmp_path)
    pod = lab.add_pod()
    data = yaml.safe_load(pod.config_path.read_text())
    other = tmp_path / "other.keyring"
    other.write_text(keyring.read_text().replace("[client.fencer]", "[client.admin]"))
    nomon = tmp_path / "nomon.conf"
    nomon.write_text("[global]\nfsid = 00000000-0000-0000-0000-000000000000\n")
    cases = [({"keyring": str(tmp_path / "absent")}, "fencing.ceph.keyring",
              [str(tmp_path / "absent"), "cannot be read", "allow *"]),
             ({"keyring": str(other)}, "fencing.ceph.keyring",
              [str(other), "no key for client.fencer", "client.admin"]),
             ({"conf": str(nomon)}, "fencing.ceph.conf", [str(nomon), "mon_host"])]
    before = sorted(p.name for p in lab.shared.rglob("*"))
    for change, setting, words in cases:
        fencing = _fencing(conf, keyring)
        fencing["ceph"].update(change)
        path = tmp_path / f"{setting}-{len(words)}.yaml"
        path.write_text(yaml.safe_dump({**data, "fencing": fencing}))
        for args in (("fence", "evict", "--confirm-dead", "bind-master-9", "--yes"),
                     ("run",)):
            result = bindha(pod, *args, config=path)
            assert result.returncode == 2, (args, result.stderr)
            assert setting in result.stderr and "Traceback" not in result.stderr
            assert all(w in result.stderr for w in words), (words, result.stderr)
    assert sorted(p.name for p in lab.shared.rglob("*")) == before

