"""Node objects for the process pods: what a kubelet and the node controller would report.

No kubelet runs for the process pods, so a test that needs a pod bound to a node (the
interlocks of fence break and of the storage fence read the node's readiness and taints)
makes the Node object itself and plays the node controller: Ready True, then False or
Unknown once the node is "lost". The Nodes are cluster-scoped: each is removed at the
lab's stop (``MasterLab.cleanups``).
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
                  "effect": "NoExecute"}


def bind_to_node(lab: Any, pod: str, node: str | None = None, ready: bool = True) -> str:
    """Schedule ``pod`` (of ``lab``, a MasterLab) onto Node ``node`` (default
    ``node-<namespace>``), made here with Ready ``ready``; the node's name."""
    name = node or f"node-{lab.namespace}"
    lab.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    lab.cleanups.append(lambda: lab.core.delete_node(name, _request_timeout=10))
    set_node_ready(lab, name, ready)
    lab.core.create_namespaced_pod_binding(pod, lab.namespace, client.V1Binding(
        metadata=client.V1ObjectMeta(name=pod),
        target=client.V1ObjectReference(kind="Node", name=name)), _preload_content=False)
    return name


def set_node_ready(lab: Any, node: str, ready: bool | None) -> None:
    """The node controller's verdict: True, False, or None for Unknown (its heartbeats
    stopped: what it says of a lost node after node-monitor-grace-period)."""
    status = {True: "True", False: "False", None: "Unknown"}[ready]
    reason = {True: "KubeletReady", False: "KubeletNotReady", None: "NodeStatusUnknown"}[ready]
    lab.core.patch_node_status(node, {"status": {"conditions": [
        {"type": "Ready", "status": status, "reason": reason}]}}, _request_timeout=10)


def taint_out_of_service(lab: Any, node: str, on: bool) -> None:
    """The operator's word that the node is off (or no longer so)."""
    lab.core.patch_node(node, {"spec": {"taints": [OUT_OF_SERVICE] if on else []}},
                        _request_timeout=10)
