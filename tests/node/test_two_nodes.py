"""A second node beside the session's: each kubelet with its own containerd, cgroup root
and network namespace, so required anti-affinity can hold and real controllers act."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness.kubenode import CGROUP_CLEANED, TEST_IMAGE, KubeNode
from harness.polling import wait_until
from tests.node.conftest import NodeLab, node_ready

pytestmark = pytest.mark.node


@pytest.fixture
def second_node(node_lab: NodeLab) -> Iterator[KubeNode]:
    first = node_lab.node
    node = KubeNode(first.parts, node_lab.net, first.server, first.ca, first.token, index=2)
    try:
        node.start(images=[node_lab.image])

        def ready() -> bool:
            assert node.kubelet is not None
            node.kubelet.check()
            return node_ready(node_lab.core, node.name)
        wait_until(ready, 60, f"{node.name} Ready", interval=0.1)
        yield node
    finally:
        workdir = node.workdir
        assert node.stop() == []
        with contextlib.suppress(client.ApiException):
            node_lab.core.delete_node(node.name)
        assert not workdir.exists()
        assert not [h for h in CGROUP_CLEANED
                    if Path(f"/sys/fs/cgroup/{h}{node.cgroup_root}").exists()]


def test_statefulset_spreads_over_two_nodes_and_its_slice_follows_readiness(
        node_lab: NodeLab, second_node: KubeNode, namespace: str) -> None:
    apps = client.AppsV1Api(node_lab.api)
    discovery = client.DiscoveryV1Api(node_lab.api)
    labels = {"app": "spread"}
    # Ready while /tmp/ready exists: the test takes one pod out of the slice by exec.
    template: dict[str, Any] = {"metadata": {"labels": labels}, "spec": {
        "terminationGracePeriodSeconds": 2,
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": labels},
             "topologyKey": "kubernetes.io/hostname"}]}},
        "containers": [{"name": "main", "image": TEST_IMAGE, "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", "touch /tmp/ready; trap 'exit 0' TERM; "
                                                     "while true; do sleep 0.1; done"],
                        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]},
                                           "periodSeconds": 1, "failureThreshold": 1}}]}}
    node_lab.core.create_namespaced_service(namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "spread"},
        "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 53}]}})
    started = time.monotonic()
    apps.create_namespaced_stateful_set(namespace, {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "spread"},
        "spec": {"replicas": 2, "serviceName": "spread", "selector": {"matchLabels": labels},
                 "template": template}})
    wait_until(lambda: (apps.read_namespaced_stateful_set("spread", namespace).status
                        .ready_replicas or 0) == 2, 90, "StatefulSet 'spread' 2/2 Ready",
               interval=0.1)
    print(f"\nStatefulSet 2/2 Ready on two nodes in {time.monotonic() - started:.1f}s")
    pods = node_lab.core.list_namespaced_pod(namespace, label_selector="app=spread").items
    assert {p.spec.node_name for p in pods} == {node_lab.node.name, second_node.name}

    def ready_endpoints() -> dict[str, bool]:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=spread").items
        return {e.target_ref.name: bool(e.conditions.ready)
                for s in slices for e in s.endpoints or []}
    wait_until(lambda: ready_endpoints() == {"spread-0": True, "spread-1": True}, 30,
               "the endpointslice controller lists both pods ready", interval=0.1)
    on_second = next(p.metadata.name for p in pods if p.spec.node_name == second_node.name)
    pid = second_node.task_pid(namespace, on_second, "main")
    Path(f"/proc/{pid}/root/tmp/ready").unlink()  # the readiness probe now fails
    other = "spread-1" if on_second == "spread-0" else "spread-0"
    wait_until(lambda: ready_endpoints() == {on_second: False, other: True}, 30,
               f"{on_second} not ready in the slice after its probe failed", interval=0.1)
