"""One real node for the session: testplane apiserver on a lab bridge, controller-manager,
scheduler, and a kubelet with containerd in a netns of its own (harness/kubenode.py,
started by harness/nodelab.py's node_plane)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from harness.kubenode import CGROUP_CLEANED, RECORDS, build_parts, unavailable
from harness.nodelab import NodeLab, node_plane, node_ready
from harness.polling import wait_until
from harness.testplane import build_binary
from tests.conftest import require

__all__ = ["NodeLab", "node_ready"]  # for the node tests: they import them from here


@pytest.fixture(scope="session")
def node_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeLab]:
    why = unavailable()
    require(why is None, why or "")
    try:
        parts, plane_binary = build_parts(), build_binary()
    except Exception as exc:  # the builds' own output is on stderr already
        require(False, f"the node's parts could not be built: {exc}")
        raise
    with node_plane(parts, plane_binary, tmp_path_factory.mktemp("nodelab")) as lab:
        yield lab
    node = lab.node
    print("\nRSS (MiB): " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in lab.rss.items()))
    assert not lab.left, f"left behind by the node: {lab.left}"
    assert not Path(str(node.workdir)).exists(), node.workdir
    assert not [h for h in CGROUP_CLEANED
                if Path(f"/sys/fs/cgroup/{h}{node.cgroup_root}").exists()]
    assert not (RECORDS / f"{node.name}.json").exists()
    assert str(node.workdir) not in Path("/proc/mounts").read_text()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=10, check=True).stdout
    assert not (node.netns and node.netns in listed), listed
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True,
                            timeout=10, check=True).stdout
    assert node.pod_subnet not in routes, routes


@pytest.fixture
def namespace(node_lab: NodeLab) -> Iterator[str]:
    name = f"n-{uuid.uuid4().hex[:10]}"
    node_lab.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def default_account() -> bool:
        # ServiceAccount admission is on (the kubelet mounts each pod's projected token):
        # a pod is refused until the serviceaccount controller made "default".
        try:
            node_lab.core.read_namespaced_service_account("default", name)
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True
    wait_until(default_account, 30, f"ServiceAccount {name}/default", interval=0.1)
    yield name
    node_lab.core.delete_namespace(name)
