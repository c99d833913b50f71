"""Is a pod proven not running? The interlock of `fence break` and of storage fencing.

DESIGN invariant 10: defeating another pod's lock is safe only when that pod can no
longer write. The API can prove it three ways: its Pod object is gone, its node is
NotReady (Ready False or Unknown: the node controller says so only after its grace), or
its node carries the taint ``node.kubernetes.io/out-of-service`` (an operator's word
that the node is off). A pod that is merely not Ready, on a node that is Ready or whose
readiness cannot be read, proves nothing.
"""

from __future__ import annotations

from typing import Any

from bindha_rwx.kube import CoreCalls

OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"


def _ready(obj: dict[str, Any]) -> bool:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def node_state(core: CoreCalls, name: str) -> tuple[bool | None, bool]:
    """(Ready, tainted out-of-service) of a node; Ready is None when it cannot be read."""
    node = core.get_node(name)
    if node is None:
        return None, False
    return _ready(node), any(t.get("key") == OUT_OF_SERVICE_TAINT
                             for t in (node.get("spec") or {}).get("taints") or [])


def pod_liveness(core: CoreCalls, namespace: str, name: str) -> dict[str, Any]:
    """What the API says of the pod and its node (for people and for the proof)."""
    pod = core.get_pod(namespace, name)
    if pod is None:
        return {"exists": False}
    node_name = (pod.get("spec") or {}).get("nodeName")
    node_ready, out_of_service = node_state(core, node_name) if node_name else (None, False)
    return {"exists": True, "phase": (pod.get("status") or {}).get("phase"),
            "ready": _ready(pod), "node": node_name, "node_ready": node_ready,
            "node_out_of_service": out_of_service}


def proof_text(liveness: dict[str, Any]) -> str:
    """The proof that ``not_proven_gone`` accepted, in words (for the audit)."""
    if not liveness.get("exists"):
        return "its pod is gone"
    node = liveness.get("node")
    return (f"its node {node} is tainted {OUT_OF_SERVICE_TAINT}"
            if liveness.get("node_out_of_service") else f"its node {node} is NotReady")


def not_proven_gone(liveness: dict[str, Any], pod: str) -> str | None:
    """Why ``pod`` is not proven gone, or None when it is."""
    if not liveness.get("exists") or liveness.get("node_ready") is False \
            or liveness.get("node_out_of_service"):
        return None
    node = liveness.get("node")
    if not node:
        where = "is not bound to a node"
    elif liveness.get("node_ready") is None:
        where = (f"is on node {node}, whose readiness cannot be read (is the node gone, or "
                 "may this ServiceAccount not get nodes? see the bindha-rwx-node-reader "
                 "ClusterRole)")
    else:
        where = f"is on node {node}, which is Ready"
    return (f"pod {pod} still exists ({liveness.get('phase')}, "
            f"{'Ready' if liveness.get('ready') else 'not Ready'}) and {where}: delete the "
            "pod once its node is off, or wait until the node is NotReady, or taint it "
            f"{OUT_OF_SERVICE_TAINT}")
