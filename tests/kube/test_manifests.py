"""The manifests: every kustomization builds, every object is accepted by the real
apiserver (server-side dry run), and the Roles grant what the supervisors use and
nothing on the deny list (SubjectAccessReview)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

import bindha_rwx

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
OVERLAYS = ["base", "overlays/cephfs", "overlays/manila", "overlays/lab", "overlays/node-lab"]


def build(kustomize: str, path: str) -> list[dict]:
    out = subprocess.run([kustomize, "build", str(MANIFESTS / path)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("path", OVERLAYS)
def test_every_object_is_accepted_by_the_apiserver(kustomize, api_client, namespace, path):
    objects = build(kustomize, path)
    kinds = {o["kind"] for o in objects}
    assert {"StatefulSet", "Role", "RoleBinding", "Service", "PodDisruptionBudget",
            "NetworkPolicy", "ConfigMap", "PersistentVolumeClaim"} <= kinds
    dry_run(api_client, namespace, objects, path)
    if path not in ("base", "overlays/lab", "overlays/node-lab"):
        lb = next(o for o in objects if o["kind"] == "Service"
                  and o["metadata"]["name"] == "bind-dns")
        assert lb["spec"]["type"] == "LoadBalancer"
        assert {p["protocol"] for p in lb["spec"]["ports"]} == {"UDP", "TCP"}
        pvc = next(o for o in objects if o["kind"] == "PersistentVolumeClaim")
        assert pvc["spec"]["storageClassName"] in ("cephfs", "csi-manila-nfs")


def dry_run(api_client, namespace: str, objects: list[dict], where: str) -> None:
    """Server-side dry run of every object: the apiserver's validation and admission."""
    dyn = dynamic.DynamicClient(api_client)
    for obj in objects:
        if obj["kind"] == "Namespace":  # an overlay's own (node-lab): into the test's
            continue
        obj["metadata"].pop("namespace", None)
        resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        try:
            resource.create(body=obj, namespace=namespace, dry_run="All")
        except ApiException as exc:
            pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']} refused: "
                        f"{exc.status} {exc.body}")


def can(api_client, namespace: str, account: str, verb: str, resource: str, group: str = "",
        in_namespace: str | None = None) -> bool:
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=f"system:serviceaccount:{namespace}:{account}",
        groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
        resource_attributes=client.V1ResourceAttributes(
            namespace=namespace if in_namespace is None else in_namespace, verb=verb,
            group=group, resource=resource)))
    return bool(client.AuthorizationV1Api(api_client).create_subject_access_review(
        review).status.allowed)


def test_roles_grant_what_the_supervisors_use_and_nothing_else(kustomize, api_client,
                                                               namespace):
    dyn = dynamic.DynamicClient(api_client)
    cluster_wide = []
    for obj in build(kustomize, "base"):
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            # As an overlay's `namespace:` would, and under names of this test's own.
            obj["metadata"]["name"] += f"-{namespace}"
            if obj["kind"] == "ClusterRoleBinding":
                obj["roleRef"]["name"] += f"-{namespace}"
                for subject in obj["subjects"]:
                    subject["namespace"] = namespace
            cluster_wide.append(obj)
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                           "ClusterRoleBinding"):
            dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"]).create(
                body=obj, namespace=namespace)
    try:
        _check_roles(api_client, namespace)
    finally:
        for obj in cluster_wide:
            dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"]).delete(
                name=obj["metadata"]["name"])


def _check_roles(api_client, namespace: str) -> None:
    master = [("get", "leases", "coordination.k8s.io"), ("list", "leases", "coordination.k8s.io"),
              ("watch", "leases", "coordination.k8s.io"),
              ("create", "leases", "coordination.k8s.io"),
              ("update", "leases", "coordination.k8s.io"), ("get", "pods", ""),
              ("list", "pods", ""), ("patch", "pods", ""),
              ("list", "endpointslices", "discovery.k8s.io"),
              ("watch", "endpointslices", "discovery.k8s.io"), ("create", "events", "")]
    for verb, resource, group in master:
        assert can(api_client, namespace, "bind-master", verb, resource, group), (verb, resource)
    # fence break reads the old holder's Node (cluster-scoped), and nothing else there.
    assert can(api_client, namespace, "bind-master", "get", "nodes", "", "")
    assert not can(api_client, namespace, "bind-master", "list", "nodes", "", "")
    assert not can(api_client, namespace, "bind-master", "patch", "nodes", "", "")
    assert not can(api_client, namespace, "bind-secondary", "get", "nodes", "", "")
    secondary = [("get", "leases", "coordination.k8s.io"),
                 ("watch", "leases", "coordination.k8s.io"), ("create", "events", "")]
    for verb, resource, group in secondary:
        assert can(api_client, namespace, "bind-secondary", verb, resource, group)
    denied = [("bind-master", "get", "secrets", "", None),
              ("bind-master", "list", "secrets", "", None),
              ("bind-master", "delete", "pods", "", None),
              ("bind-master", "delete", "leases", "coordination.k8s.io", None),
              ("bind-master", "update", "configmaps", "", None),
              ("bind-master", "get", "leases", "coordination.k8s.io", "kube-system"),
              ("bind-master", "patch", "pods", "", "default"),
              ("bind-secondary", "update", "leases", "coordination.k8s.io", None),
              ("bind-secondary", "patch", "pods", "", None),
              ("bind-secondary", "get", "secrets", "", None)]
    for account, verb, resource, group, other in denied:
        assert not can(api_client, namespace, account, verb, resource, group, other), \
            (account, verb, resource, other)


@pytest.mark.parametrize("path", OVERLAYS)
def test_pods_pass_pod_security_restricted(kustomize, api_client, namespace, path):
    """Pod Security "restricted" is enforced on pods, not on StatefulSets: a pod from
    each StatefulSet's template, dry-run into a namespace that enforces it, must be
    admitted (the real PodSecurity admission plugin of the test apiserver)."""
    core = client.CoreV1Api(api_client)
    core.patch_namespace(namespace, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"}}})
    sets = [o for o in build(kustomize, path) if o["kind"] == "StatefulSet"]
    assert len(sets) == 2
    for sts in sets:
        template, name = sts["spec"]["template"], f"{sts['metadata']['name']}-0"
        spec = json.loads(json.dumps(template["spec"]))
        for claim in sts["spec"].get("volumeClaimTemplates", []):  # as the controller does
            claim_name = claim["metadata"]["name"]
            spec.setdefault("volumes", []).append(
                {"name": claim_name, "persistentVolumeClaim": {"claimName":
                                                               f"{claim_name}-{name}"}})
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "labels": template["metadata"]["labels"]},
               "spec": spec}
        try:
            core.create_namespaced_pod(namespace, pod, dry_run="All")
        except ApiException as exc:
            pytest.fail(f"{path}: a pod of {sts['metadata']['name']} is refused under "
                        f"restricted: {exc.status} {exc.body}")
    # The check has teeth: the same pod without runAsNonRoot is refused.
    bad = json.loads(json.dumps(pod))
    del bad["spec"]["securityContext"]["runAsNonRoot"]
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, bad, dry_run="All")
    assert refused.value.status == 403 and "runAsNonRoot" in refused.value.body


@pytest.mark.parametrize("path", OVERLAYS)
def test_what_a_user_applies_is_safe_to_reapply(kustomize, path):
    """No Secret (an example key re-applied over the user's own would be public and
    silently break every client's TSIG); a versioned image, never pulled for :latest;
    PDBs that let a drain evict a pod that is not Ready."""
    objects = build(kustomize, path)
    assert not [o for o in objects if o["kind"] == "Secret"]
    for sts in (o for o in objects if o["kind"] == "StatefulSet"):
        for container in sts["spec"]["template"]["spec"]["containers"]:
            image = container["image"]
            assert image == f"bindha-rwx:{bindha_rwx.__version__}", image
            assert container.get("imagePullPolicy") == "IfNotPresent"
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert len(pdbs) == 2
    assert all(p["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow" for p in pdbs)


def test_the_octavia_service_and_a_pinned_vip_are_accepted(kustomize, api_client, namespace):
    """The component's health monitor (timeout below delay, required with
    externalTrafficPolicy Local), and docs/deploy.md's patch for a stable VIP and
    source ranges, dry-run through the apiserver."""
    objects = build(kustomize, "overlays/cephfs")
    lb = next(o for o in objects if o["kind"] == "Service"
              and o["metadata"]["name"] == "bind-dns")
    notes = lb["metadata"]["annotations"]
    assert notes["loadbalancer.openstack.org/enable-health-monitor"] == "true"
    assert int(notes["loadbalancer.openstack.org/health-monitor-timeout"]) < \
        int(notes["loadbalancer.openstack.org/health-monitor-delay"])
    assert lb["spec"]["externalTrafficPolicy"] == "Local"
    notes["loadbalancer.openstack.org/port-id"] = "3f1c5a52-0d6e-4c7b-9b8e-6c1a2b3c4d5e"
    lb["spec"]["loadBalancerSourceRanges"] = ["192.0.2.0/24"]
    client.CoreV1Api(api_client).create_namespaced_service(namespace, lb, dry_run="All")
    lb["spec"]["loadBalancerSourceRanges"] = ["not-a-cidr"]
    with pytest.raises(ApiException) as refused:  # the check has teeth
        client.CoreV1Api(api_client).create_namespaced_service(namespace, lb, dry_run="All")
    assert refused.value.status == 422


RECOMMENDED = {"app.kubernetes.io/name": "bindha-rwx", "app.kubernetes.io/instance": "bind",
               "app.kubernetes.io/part-of": "bindha-rwx",
               "app.kubernetes.io/version": bindha_rwx.__version__,
               "app.kubernetes.io/managed-by": "kustomize"}
SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                 "app.kubernetes.io/component"}


def selectors(obj: dict) -> list[dict[str, str]]:
    """Every label selector an object carries, as matchLabels."""
    spec = obj.get("spec", {})
    found: list[dict[str, str]] = []
    if obj["kind"] == "Service":
        found.append(spec["selector"])
    if obj["kind"] in ("StatefulSet", "PodDisruptionBudget"):
        found.append(spec["selector"]["matchLabels"])
    if obj["kind"] == "NetworkPolicy":
        found.append(spec["podSelector"]["matchLabels"])
        found += [peer["podSelector"]["matchLabels"] for rule in spec.get("ingress", [])
                  for peer in rule.get("from", []) if peer.get("podSelector", {})
                  .get("matchLabels", {}).get("app.kubernetes.io/name")]
    pod = spec.get("template", {}).get("spec", {})
    found += [t["labelSelector"]["matchLabels"] for t in pod.get("topologySpreadConstraints", [])]
    affinity = pod.get("affinity", {}).get("podAntiAffinity", {})
    for term in affinity.get("requiredDuringSchedulingIgnoredDuringExecution", []):
        found.append(term["labelSelector"]["matchLabels"])
    for term in affinity.get("preferredDuringSchedulingIgnoredDuringExecution", []):
        found.append(term["podAffinityTerm"]["labelSelector"]["matchLabels"])
    return found


@pytest.mark.parametrize("path", OVERLAYS)
def test_recommended_labels_everywhere_and_selectors_that_never_change(kustomize, path):
    """Kubernetes' recommended labels on every object and pod; selectors (immutable on a
    StatefulSet) only name + instance + component (+ bindha.io/role for the leader-only
    Service), so a version bump changes no selector; each selector picks exactly the pods
    of one component."""
    objects = build(kustomize, path)
    pods = {o["metadata"]["labels"]["app.kubernetes.io/component"]:
            o["spec"]["template"]["metadata"]["labels"]
            for o in objects if o["kind"] == "StatefulSet"}
    assert set(pods) == {"master", "secondary"}
    assert pods["master"]["bindha.io/role"] == pods["master"]["role"] == "standby"
    product = {(o["kind"], o["metadata"]["name"]) for o in build(kustomize, "base")}
    for obj in objects:
        if (obj["kind"], obj["metadata"]["name"]) not in product:
            continue  # an overlay's own lab object (node-lab's Namespace and hostPath PV)
        where = f"{path}: {obj['kind']}/{obj['metadata']['name']}"
        labels = obj["metadata"].get("labels", {})
        assert RECOMMENDED.items() <= labels.items(), where
        for selector in selectors(obj):
            keys = set(selector) - {"bindha.io/role"}
            assert keys == SELECTOR_KEYS, (where, selector)
            matched = [c for c, template in pods.items()
                       if {k: v for k, v in selector.items() if k != "bindha.io/role"}.items()
                       <= template.items()]
            assert matched == [selector["app.kubernetes.io/component"]], (where, selector)
    for component, template in pods.items():
        assert RECOMMENDED.items() <= template.items(), component
    for sts in (o for o in objects if o["kind"] == "StatefulSet"):
        # Immutable: a label here (a version) would make the next release unappliable.
        assert not [t for t in sts["spec"].get("volumeClaimTemplates", [])
                    if t["metadata"].get("labels")], sts["metadata"]["name"]
    leader = next(o for o in objects if o["kind"] == "Service"
                  and o["metadata"]["name"] == "bind-master")
    assert leader["spec"]["selector"]["bindha.io/role"] == "leader"
