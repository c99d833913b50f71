"""Smoke test of the real node: the kubelet runs pods, probes and graceful deletes.

Every wait polls the API (harness.polling); nothing sleeps to synchronise.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness.kubenode import PAUSE_IMAGE, TEST_IMAGE
from harness.polling import wait_until
from tests.node.conftest import NodeLab

pytestmark = pytest.mark.node


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main", "image": TEST_IMAGE, "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script]}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 30, "containers": [container], **spec}}


def ready(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    found = core.read_namespaced_pod(name, namespace)
    conditions = found.status.conditions or []
    if any(c.type == "Ready" and c.status == "True" for c in conditions):
        return found
    return None


def test_node_is_ready_with_its_internal_ip_and_images(node_lab: NodeLab) -> None:
    node = node_lab.core.read_node(node_lab.node.name)
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == node_lab.node.ip
    assert not node_lab.node.ip.startswith("127.")
    # The node lifecycle controller lifts the not-ready taint the node registered with.
    wait_until(lambda: not node_lab.core.read_node(node_lab.node.name).spec.taints, 30,
               "the node's taints removed by the node lifecycle controller")
    assert {PAUSE_IMAGE, TEST_IMAGE} <= set(node_lab.node.images())


def test_pod_on_node_name_restarted_by_liveness_then_ready(node_lab: NodeLab,
                                                          namespace: str) -> None:
    """Exec probes run: the first container has no /tmp/alive, so its liveness probe
    fails and the kubelet restarts it; the second (marked in the emptyDir) passes both."""
    script = ("if [ -e /data/started ]; then touch /tmp/alive; else touch /data/started; fi; "
              "touch /tmp/ready; echo started; trap 'exit 0' TERM; "
              "while true; do sleep 0.1; done")
    probe = {"periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 2}
    manifest = pod("probed", script, nodeName=node_lab.node.name,
                   volumes=[{"name": "data", "emptyDir": {}}],
                   container={
                       "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                       "livenessProbe": {"exec": {"command": ["cat", "/tmp/alive"]}, **probe},
                       "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, **probe}})
    manifest["spec"]["terminationGracePeriodSeconds"] = 2
    node_lab.core.create_namespaced_pod(namespace, manifest)

    def restarted_and_ready() -> client.V1Pod | None:
        found = ready(node_lab.core, namespace, "probed")
        if found and found.status.container_statuses[0].restart_count >= 1:
            return found
        return None
    found = wait_until(restarted_and_ready, 60, "pod 'probed' Ready after a liveness restart",
                       interval=0.1)
    status = found.status.container_statuses[0]
    assert status.restart_count == 1, status
    assert status.last_state.terminated is not None, status
    assert found.status.phase == "Running"
    assert found.spec.node_name == node_lab.node.name
    # The log comes through the apiserver, which dials the kubelet by InternalIP.
    assert "started" in node_lab.core.read_namespaced_pod_log("probed", namespace)


def test_pod_through_the_scheduler_becomes_ready(node_lab: NodeLab, namespace: str) -> None:
    manifest = pod("scheduled", "touch /tmp/ready; trap 'exit 0' TERM; "
                                "while true; do sleep 0.1; done",
                   container={"readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]},
                                                 "periodSeconds": 1}})
    node_lab.core.create_namespaced_pod(namespace, manifest)
    found = wait_until(lambda: ready(node_lab.core, namespace, "scheduled"), 60,
                       "pod 'scheduled' bound by kube-scheduler and Ready", interval=0.1)
    assert found.spec.node_name == node_lab.node.name
    assert found.status.pod_ip and not found.status.pod_ip.startswith("127.")


def test_delete_sends_sigterm_and_the_pod_goes_within_its_grace(
        node_lab: NodeLab, namespace: str, tmp_path: Path) -> None:
    out = tmp_path / "term"
    out.mkdir()
    grace = 30
    script = ("trap 'echo TERM >/out/signal; exit 0' TERM; touch /tmp/ready; "
              "while true; do sleep 0.1; done")
    manifest = pod("graceful", script, nodeName=node_lab.node.name,
                   terminationGracePeriodSeconds=grace,
                   volumes=[{"name": "out", "hostPath": {"path": str(out),
                                                          "type": "Directory"}}],
                   container={
                       "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                       "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]},
                                          "periodSeconds": 1}})
    node_lab.core.create_namespaced_pod(namespace, manifest)
    wait_until(lambda: ready(node_lab.core, namespace, "graceful"), 60,
               "pod 'graceful' Ready", interval=0.1)
    started = time.monotonic()
    node_lab.core.delete_namespaced_pod("graceful", namespace)

    def gone() -> bool:
        try:
            node_lab.core.read_namespaced_pod("graceful", namespace)
        except client.ApiException as exc:
            return exc.status == 404
        return False
    wait_until(gone, grace + 15, "pod 'graceful' deleted", interval=0.1)
    took = time.monotonic() - started
    assert (out / "signal").read_text().strip() == "TERM"
    # The trap ends the container at once: far inside the grace, no SIGKILL needed.
    assert took < grace / 2, f"deletion took {took:.1f}s"


def test_nothing_on_the_node_routes_off_the_machine(node_lab: NodeLab, namespace: str) -> None:
    """Neither the node's netns nor a pod's has a route to the machine's nameserver (or
    anywhere off the machine): asked by `ip route get`, which sends nothing."""
    nameservers = [line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
                   if line.startswith("nameserver") and len(line.split()) > 1]
    # ... nor to the Ceph lab (10.214/16) or just past the pods' range (10.220.0.0/14).
    targets = [*nameservers, "1.1.1.1", "10.214.0.1", "10.224.0.1"]
    manifest = pod("isolated", "touch /tmp/ready; trap 'exit 0' TERM; "
                               "while true; do sleep 0.1; done",
                   nodeName=node_lab.node.name, terminationGracePeriodSeconds=2,
                   container={"readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]},
                                                 "periodSeconds": 1}})
    node_lab.core.create_namespaced_pod(namespace, manifest)
    wait_until(lambda: ready(node_lab.core, namespace, "isolated"), 60, "pod 'isolated' Ready",
               interval=0.1)
    pid = node_lab.node.task_pid(namespace, "isolated", "main")
    for where in (["ip", "netns", "exec", node_lab.node.netns],
                  ["nsenter", f"--net=/proc/{pid}/ns/net"]):
        for target in targets:
            route = subprocess.run([*where, "ip", "route", "get", target], capture_output=True,
                                   text=True, timeout=10, check=False)
            assert route.returncode != 0, f"{where}: {route.stdout}"
            assert "unreachable" in route.stderr, route.stderr
    assert Path(f"/proc/{pid}/root/etc/resolv.conf").read_text().strip() == ""


REACH_API = """
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[1])
request = urllib.request.Request("https://10.0.0.1/readyz",
                                 headers={"Authorization": "Bearer " + sys.argv[2]})
print(urllib.request.urlopen(request, timeout=3, context=context).read().decode())
"""


def test_a_pod_reaches_the_api_through_the_kubernetes_service(node_lab: NodeLab,
                                                              namespace: str) -> None:
    """kube-proxy (iptables, in the node's netns) takes the pod's connection to the
    `kubernetes` Service's ClusterIP to the apiserver on the lab bridge; the apiserver's
    certificate names the ClusterIP. Run from the pod's netns with this Python."""
    manifest = pod("client", "trap 'exit 0' TERM; while true; do sleep 0.1; done",
                   nodeName=node_lab.node.name, terminationGracePeriodSeconds=2)
    node_lab.core.create_namespaced_pod(namespace, manifest)
    wait_until(lambda: node_lab.core.read_namespaced_pod("client", namespace).status.phase
               == "Running", 60, "pod 'client' Running", interval=0.1)
    pid = node_lab.node.task_pid(namespace, "client", "main")
    ca = node_lab.plane.workdir / "certs" / "apiserver.crt"

    def answered() -> str:
        # Until kube-proxy has written the Service's rules the connection times out.
        result = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c",
                                 REACH_API, str(ca), node_lab.plane.admin_token],
                                capture_output=True, text=True, timeout=15, check=False)
        return result.stdout.strip()
    assert wait_until(answered, 60, "/readyz through 10.0.0.1 from the pod", interval=0.5) \
        == "ok"
