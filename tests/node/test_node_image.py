"""The product image (scripts/build-node-image.sh: scripts/build-image.sh, cached by the
hash of what the Dockerfile copies) imported into the node and run as a pod, as the
manifests run it: uid 101, read-only root, no capabilities. In the default run."""

from __future__ import annotations

import time

import pytest

import bindha_rwx
from harness.kubenode import node_image_archive
from harness.polling import wait_until
from tests.conftest import require
from tests.node.conftest import NodeLab

pytestmark = pytest.mark.node
TAG = f"bindha-rwx:{bindha_rwx.__version__}"  # = the kustomizations' images: newTag


def test_product_image_runs_as_a_pod(node_lab: NodeLab, namespace: str) -> None:
    started = time.monotonic()
    try:
        archive = node_image_archive()
    except Exception as exc:  # the build's own output is on stderr already
        require(False, f"the product image could not be built: {exc}")
        raise
    built = time.monotonic() - started
    node_lab.node.import_image(archive)
    print(f"\nimage {TAG}: {archive.stat().st_size / 2**20:.0f} MiB archive, cache lookup "
          f"or build {built:.1f}s, imported in {time.monotonic() - started - built:.1f}s")
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
