"""Node objects for the process pods: what a kubelet and the node controller would report.

No kubelet runs for the process pods, so harness/pods.py leaves every Pod unscheduled (no
``spec.nodeName``). The interlocks of fence break and of the storage fence
(bindha_rwx/interlocks.py) read the node's readiness and taints: to show them, a pod is
bound to a Node object of its own (the Binding subresource, as the scheduler does) whose
Ready condition the caller sets, as the node controller does once the kubelet stops
posting (``Unknown``, reason ``NodeStatusUnknown``). The Nodes are cluster-scoped: each
is deleted at the lab's stop (``MasterLab.cleanups``).
"""

from __future__ import annotations

import contextlib
from typing import Any

from kubernetes import client

READY = {True: ("True", "KubeletReady"), False: ("False", "KubeletNotReady"),
         None: ("Unknown", "NodeStatusUnknown")}
OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
                  "effect": "NoExecute"}


def bind_to_node(lab: Any, pod: str, node: str | None = None, ready: bool | None = True
                 ) -> str:
    """Create Node ``node`` (default ``node-<namespace>-<pod>``) with Ready ``ready`` and
    bind ``pod`` of ``lab`` (a MasterLab) to it; the node's name. The Pod must not be
    bound yet."""
    name = node or f"node-{lab.namespace}-{pod}"
    lab.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)),
                         _request_timeout=10)

    def delete() -> None:
        with contextlib.suppress(client.exceptions.ApiException):
            lab.core.delete_node(name, _request_timeout=10)

    lab.cleanups.append(delete)
    set_node_ready(lab, name, ready)
    lab.core.create_namespaced_pod_binding(pod, lab.namespace, client.V1Binding(
        metadata=client.V1ObjectMeta(name=pod),
        target=client.V1ObjectReference(kind="Node", name=name)), _preload_content=False,
        _request_timeout=10)
    return name


def set_node_ready(lab: Any, node: str, ready: bool | None) -> None:
    """The node's Ready condition: True, False, or None for Unknown (a node whose kubelet
    went silent: what a lost node becomes after the node monitor's grace period)."""
    status, reason = READY[ready]
    lab.core.patch_node_status(node, {"status": {"conditions": [
        {"type": "Ready", "status": status, "reason": reason}]}}, _request_timeout=10)


def taint_out_of_service(lab: Any, node: str, on: bool) -> None:
    """The operator's word that the node is off (or no longer so)."""
    lab.core.patch_node(node, {"spec": {"taints": [OUT_OF_SERVICE] if on else []}},
                        _request_timeout=10)
