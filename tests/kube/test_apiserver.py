"""The control plane is a real kube-apiserver: compare-and-swap, watches and RBAC work."""

from __future__ import annotations

import datetime

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException


def lease(name: str, holder: str) -> client.V1Lease:
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=10,
                                acquire_time=datetime.datetime.now(datetime.UTC)))


def test_stale_resource_version_gets_409(api_client, namespace):
    api = client.CoordinationV1Api(api_client)
    created = api.create_namespaced_lease(namespace, lease("bind-master-leader", "pod-0"))
    stale = created.metadata.resource_version

    created.spec.holder_identity = "pod-1"
    updated = api.replace_namespaced_lease("bind-master-leader", namespace, created)
    assert updated.metadata.resource_version != stale

    # A second writer that read before the first one wrote: compare-and-swap refuses it.
    loser = lease("bind-master-leader", "pod-2")
    loser.metadata.resource_version = stale
    with pytest.raises(ApiException) as info:
        api.replace_namespaced_lease("bind-master-leader", namespace, loser)
    assert info.value.status == 409
    current = api.read_namespaced_lease("bind-master-leader", namespace)
    assert current.spec.holder_identity == "pod-1"


def test_creating_an_existing_lease_conflicts(api_client, namespace):
    api = client.CoordinationV1Api(api_client)
    api.create_namespaced_lease(namespace, lease("l", "pod-0"))
    with pytest.raises(ApiException) as info:
        api.create_namespaced_lease(namespace, lease("l", "pod-1"))
    assert info.value.status == 409


def test_lease_watch_sees_a_change(api_client, namespace):
    api = client.CoordinationV1Api(api_client)
    created = api.create_namespaced_lease(namespace, lease("w", "pod-0"))
    created.spec.holder_identity = ""
    api.replace_namespaced_lease("w", namespace, created)
    events = watch.Watch().stream(api.list_namespaced_lease, namespace,
                                  resource_version=created.metadata.resource_version,
                                  timeout_seconds=5)
    seen = [(e["type"], e["object"].spec.holder_identity) for e in events]
    assert ("MODIFIED", None) in seen or ("MODIFIED", "") in seen, seen


def test_rbac_is_enforced(api_client, namespace):
    """Authorization is real: a service account without a Role may not read Leases."""
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=f"system:serviceaccount:{namespace}:nobody",
        resource_attributes=client.V1ResourceAttributes(
            namespace=namespace, verb="get", group="coordination.k8s.io", resource="leases")))
    answer = client.AuthorizationV1Api(api_client).create_subject_access_review(review)
    assert answer.status.allowed is False
