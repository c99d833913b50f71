"""One real node for the session: testplane apiserver on a lab bridge, controller-manager,
scheduler, and a kubelet with containerd in a netns of its own (harness/kubenode.py)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client, config

from harness.kubenode import (
    CGROUP_CLEANED,
    RECORDS,
    TEST_IMAGE,
    ControlPlaneExtras,
    KubeNode,
    build_parts,
    pack_image,
    rss_kib,
    test_image_files,
    unavailable,
)
from harness.netlab import NetLab
from harness.polling import wait_until
from harness.testplane import TestPlane, build_binary
from tests.conftest import require


@dataclass
class NodeLab:
    node: KubeNode
    plane: TestPlane
    api: client.ApiClient
    timings: dict[str, float]
    net: NetLab
    image: Path

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


def node_ready(core: client.CoreV1Api, name: str) -> bool:
    try:
        node = core.read_node(name)
    except client.ApiException as exc:
        if exc.status == 404:  # not registered yet
            return False
        raise
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


@pytest.fixture(scope="session")
def node_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeLab]:
    why = unavailable()
    require(why is None, why or "")
    try:
        parts, plane_binary = build_parts(), build_binary()
    except Exception as exc:  # the builds' own output is on stderr already
        require(False, f"the node's parts could not be built: {exc}")
        raise
    workdir = tmp_path_factory.mktemp("nodelab")
    net = NetLab()
    plane = TestPlane(binary=plane_binary, workdir=workdir / "plane", host=net.api_host,
                      service_accounts=True)
    extras: ControlPlaneExtras | None = None
    node: KubeNode | None = None
    timings: dict[str, float] = {}
    try:
        started = time.monotonic()
        plane.start()
        timings["apiserver"] = time.monotonic() - started
        ca = plane.workdir / "certs" / "apiserver.crt"
        extras = ControlPlaneExtras(plane_binary, parts["kube-scheduler"], workdir / "extras",
                                    plane.url, ca, plane.admin_token)
        extras.start()
        image = pack_image(workdir / "testbox.tar", TEST_IMAGE, test_image_files(),
                           ["/bin/sh"])
        node = KubeNode(parts, net, plane.url, ca, plane.admin_token, proxy=True)
        started = time.monotonic()
        node.start(images=[image])
        assert plane.process is not None
        node.adopt(plane.process.pid, str(plane.workdir))
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        core = client.CoreV1Api(api)

        def ready() -> bool:
            assert node is not None and node.kubelet is not None
            node.kubelet.check()
            return node_ready(core, node.name)
        wait_until(ready, 60, f"node {node.name} Ready", interval=0.1)
        timings["node-ready"] = time.monotonic() - started
        timings.update({f"node-{k}": v for k, v in node.timings.items()})
        print(f"\nnode: {node.name} at {node.ip}: "
              + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
        yield NodeLab(node, plane, api, timings, net, image)
        rss = node.rss_kib()
        assert plane.process is not None and extras is not None
        for component in (node.kube_proxy, extras.scheduler, extras.controller_manager):
            assert component is not None
            rss[component.name] = rss_kib(component.pid or 0)
        rss["apiserver+etcd"] = rss_kib(plane.process.pid)
        print("\nRSS (MiB): " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in rss.items()))
    finally:
        left: list[str] = []
        marker = str(node.workdir) if node else ""
        # The control plane first: while the node's record lives, `cleanup` stops the
        # adopted apiserver too if this run is killed in the middle of teardown.
        if extras is not None:
            extras.stop()
        plane.stop()
        if node is not None:
            left = node.stop()
        netns = [node.netns] if node is not None and node.netns else []
        net.close()
        assert not left, f"left behind by the node: {left}"
        if node is not None:
            assert not Path(marker).exists(), marker
            assert not [h for h in CGROUP_CLEANED
                        if Path(f"/sys/fs/cgroup/{h}{node.cgroup_root}").exists()]
            assert not (RECORDS / f"{node.name}.json").exists()
            assert marker not in Path("/proc/mounts").read_text()
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                    timeout=10, check=True).stdout
            assert not [n for n in netns if n in listed], listed
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
