"""Node objects for the master pods: what a kubelet and the node controller would report.

No kubelet runs in the test plane, so harness/pods.py leaves every Pod unscheduled (no
``spec.nodeName``). The storage fence's proof that a pod is gone (bindha_rwx/interlocks.py)
may be its node going NotReady: to show that, a pod is bound to a Node object of its own
(the Binding subresource, as the scheduler does) whose Ready condition the caller sets, as
the node controller does once the kubelet stops posting (``Unknown``, reason
``NodeStatusUnknown``). The Nodes are cluster-scoped: each is deleted at ``lab.stop()``.
"""

from __future__ import annotations

import contextlib

from kubernetes import client

from harness.pods import MasterLab

READY = {True: ("True", "KubeletReady"), False: ("False", "KubeletNotReady"),
         None: ("Unknown", "NodeStatusUnknown")}


def bind_to_node(lab: MasterLab, pod: str, node: str | None = None) -> str:
    """Create a Ready Node (``node-<namespace>-<pod>`` unless named) and bind ``pod`` to it;
    returns the node's name. The Pod must not be bound yet."""
    name = node or f"node-{lab.namespace}-{pod}"
    lab.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)),
                         _request_timeout=10)

    def delete() -> None:
        with contextlib.suppress(client.exceptions.ApiException):
            lab.core.delete_node(name, _request_timeout=10)

    lab.cleanups.append(delete)
    set_node_ready(lab, name, True)
    lab.core.create_namespaced_pod_binding(pod, lab.namespace, client.V1Binding(
        metadata=client.V1ObjectMeta(name=pod),
        target=client.V1ObjectReference(kind="Node", name=name)), _preload_content=False,
        _request_timeout=10)
    return name


def set_node_ready(lab: MasterLab, node: str, ready: bool | None) -> None:
    """The node's Ready condition: True, False, or None for Unknown (a node whose kubelet
    went silent: what a lost node becomes after the node monitor's grace period)."""
    status, reason = READY[ready]
    lab.core.patch_node_status(node, {"status": {"conditions": [
        {"type": "Ready", "status": status, "reason": reason}]}}, _request_timeout=10)
