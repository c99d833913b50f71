"""A share that root owns (issue 13): fsGroup is not applied to hostPath volumes nor to
most RWX CSI volumes (Manila's NFS driver ships fsGroupPolicy None), so the image's uid
101 cannot create ``.bindha/`` there. The supervisor must stop at once with the owner,
the mode and the fix (exit 2, no traceback, nothing written), and the fix must work.
Run as uid 101 for real (setpriv), on a real directory.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.pods import ROOT, MasterLab

pytestmark = [pytest.mark.kube, pytest.mark.root]

UID = GID = 101


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory uid 101 can reach (pytest's tmp_path is root's, mode 0700)."""
    base = Path(tempfile.mkdtemp(prefix="bindha-owner-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base)


def as_uid(argv: list[str], env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups",
                           *argv], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=env)


def inline_files(kubeconfig: dict) -> dict:
    """The kubeconfig with its certificate files inlined (they are root's)."""
    for section, keys in (("clusters", ("certificate-authority",)),
                          ("users", ("client-certificate", "client-key"))):
        for entry in kubeconfig.get(section, []):
            body = entry.get("cluster") or entry.get("user") or {}
            for key in keys:
                if key in body:
                    body[f"{key}-data"] = base64.b64encode(
                        Path(body.pop(key)).read_bytes()).decode()
    return kubeconfig


def test_a_share_root_owns_stops_the_supervisor_with_the_fix(lab: MasterLab, place: Path):
    pod = lab.add_pod()
    share = place / "share"
    share.mkdir(mode=0o755)  # what a fresh share looks like: root's, 0755
    work = place / "work"
    work.mkdir()
    os.chown(work, UID, GID)
    data = yaml.safe_load(pod.config_path.read_text())
    data["paths"] = {"workDir": str(work), "dynDir": str(share),
                     "namedConf": str(work / "named.conf"), "roleFile": str(work / "role"),
                     "rndcKey": str(work / "rndc.key")}
    for key in data["keys"]:  # readable by the pod's user, as the Secret's files are
        copy = place / Path(key["file"]).name
        shutil.copy(key["file"], copy)
        os.chmod(copy, 0o644)
        key["file"] = str(copy)
    config = place / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    kubeconfig = place / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(inline_files(yaml.safe_load(
        Path(pod.kubeconfig).read_text()))))
    os.chmod(kubeconfig, 0o644)
    env = {"PATH": os.environ["PATH"], "POD_NAME": pod.name, "POD_NAMESPACE": pod.namespace,
           "POD_IP": pod.ip, "KUBECONFIG": str(kubeconfig), "HOME": str(place)}

    ran = as_uid([sys.executable, "-m", "bindha_rwx", "run", "--config", str(config)], env)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "Traceback" not in ran.stderr + ran.stdout
    assert f"{share} is owned by uid 0 gid 0, mode 0755: uid {UID}" in ran.stderr
    assert f"chown -R {UID}:{GID} <share>" in ran.stderr
    assert '"event":"supervisor.volume_unusable"' in ran.stdout  # the JSON log says it too
    assert list(share.iterdir()) == []  # nothing written

    os.chown(share, UID, GID)  # the documented fix, then the same start-up step passes
    check = as_uid([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from bindha_rwx.fencing import SharedVolume; "
                    "SharedVolume(Path(sys.argv[1])).ensure()", str(share)])
    assert check.returncode == 0, check.stderr
    assert (share / ".bindha").stat().st_uid == UID
