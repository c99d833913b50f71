"""The product image (scripts/build-image.sh) imported into the node and run as a pod.

Opt-in: BINDHA_NODE_IMAGE=<tag of a build-image.sh build>, since that build takes minutes
and reaches Debian's mirror and PyPI.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness.kubenode import export_image
from harness.polling import wait_until
from tests.node.conftest import NodeLab

pytestmark = pytest.mark.node
TAG = os.environ.get("BINDHA_NODE_IMAGE", "")


@pytest.mark.skipif(not TAG, reason="opt-in: BINDHA_NODE_IMAGE=<scripts/build-image.sh tag>")
def test_product_image_runs_as_a_pod(node_lab: NodeLab, namespace: str,
                                     tmp_path: Path) -> None:
    started = time.monotonic()
    archive = export_image(TAG, tmp_path / "image.tar")
    exported = time.monotonic() - started
    node_lab.node.import_image(archive)
    print(f"\nimage {TAG}: {archive.stat().st_size / 2**20:.0f} MiB archive, exported in "
          f"{exported:.1f}s, imported in {time.monotonic() - started - exported:.1f}s")
    assert f"docker.io/library/{TAG}" in node_lab.node.images()
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "product"}, "spec": {
        "nodeName": node_lab.node.name, "restartPolicy": "Never",
        "containers": [{"name": "main", "image": TAG, "imagePullPolicy": "Never",
                        "securityContext": {"runAsUser": 101, "runAsGroup": 101,
                                            "runAsNonRoot": True,
                                            "readOnlyRootFilesystem": True,
                                            "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}}]}}
    node_lab.core.create_namespaced_pod(namespace, manifest)

    def finished() -> str | None:
        phase = node_lab.core.read_namespaced_pod("product", namespace).status.phase
        return phase if phase in ("Succeeded", "Failed") else None
    phase = wait_until(finished, 120, "the product pod's --help finished", interval=0.2)
    log = node_lab.core.read_namespaced_pod_log("product", namespace)
    assert phase == "Succeeded", log
    assert "usage: bindha-rwx" in log
