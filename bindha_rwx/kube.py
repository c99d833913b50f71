"""The Kubernetes API: client set-up, pod role labels and Events.

Label and Event writes are slow work from the fence's point of view: they go through
a Publisher thread, so no caller (least of all the Lease renewal) waits for them.
Every call carries a timeout, and the client never retries on its own (a retried
write after a read timeout could outlive the deadline it was meant to meet).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from bindha_rwx.config import Config
from bindha_rwx.log import get_logger

CLUSTER_LABEL = "bindha.io/cluster"
COMPONENT_LABEL = "bindha.io/component"
COMPONENT = "bindha-rwx"
# The role under the project's prefix, always written; roleLabel.key (default ``role``)
# carries the same value beside it, for selectors written before the prefix existed.
ROLE_LABEL = "bindha.io/role"
log = get_logger("kube")


class KubeConfigError(Exception):
    """No usable API credentials; the message says where we looked."""


def api_client() -> client.ApiClient:
    """In-cluster credentials in a pod, else KUBECONFIG (or ~/.kube/config)."""
    configuration = client.Configuration()
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            # Read KUBECONFIG now: the client's default was fixed when it was imported.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                    client_configuration=configuration)
    except (config.ConfigException, OSError, TypeError) as exc:
        raise KubeConfigError(f"no Kubernetes credentials: {exc}. In a pod, mount the "
                              "ServiceAccount token; elsewhere set KUBECONFIG") from None
    configuration.retries = False
    return client.ApiClient(configuration)


def master_selector(cfg: Config) -> str:
    return f"{CLUSTER_LABEL}={cfg.cluster},{COMPONENT_LABEL}=master"


@dataclass
class _RoleRequest:
    role: str
    done: threading.Event


@dataclass
class _EventRequest:
    reason: str
    message: str
    type: str


class CoreCalls:
    """The three core/v1 calls the supervisor makes, sent through the ApiClient.

    Not ``client.CoreV1Api``: importing that generated module costs about 20 MiB of
    resident memory (its code and docstrings), a third of the supervisor's budget,
    for three plain REST calls. Auth, TLS and timeouts are the ApiClient's own.
    """

    def __init__(self, api: client.ApiClient, timeout: float) -> None:
        self.api = api
        self.timeout = timeout

    def request(self, method: str, path: str, path_params: dict[str, str],
                query: list[tuple[str, str]] | None = None, body: Any = None,
                content_type: str = "application/json") -> Any:
        serialized = self.api.param_serialize(
            method=method, resource_path=path, path_params=path_params,
            query_params=query or [], body=body, auth_settings=["BearerToken"],
            header_params={"Content-Type": content_type, "Accept": "application/json"})
        method_, url, headers, payload, post = serialized
        response = self.api.call_api(method_, url, header_params=headers, body=payload,
                                     post_params=post, _request_timeout=self.timeout)
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=response.reason)
        return json.loads(response.data or b"null")

    def list_pods(self, namespace: str, selector: str) -> list[str]:
        return [item["metadata"]["name"] for item in self.list_pod_objects(namespace, selector)]

    def list_pod_objects(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        answer = self.request("GET", "/api/v1/namespaces/{namespace}/pods",
                              {"namespace": namespace}, query=[("labelSelector", selector)])
        return list(answer.get("items", []))

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.request("GET", "/api/v1/namespaces/{namespace}/pods/{name}",
                                     {"namespace": namespace, "name": name}))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_node(self, name: str) -> dict[str, Any] | None:
        """The Node, or None if it does not exist (or we may not read Nodes: 403)."""
        try:
            return dict(self.request("GET", "/api/v1/nodes/{name}", {"name": name}))
        except ApiException as exc:
            if exc.status in (403, 404):
                return None
            raise

    def delete_pod(self, namespace: str, name: str, grace_seconds: int) -> None:
        self.request("DELETE", "/api/v1/namespaces/{namespace}/pods/{name}",
                     {"namespace": namespace, "name": name},
                     body={"gracePeriodSeconds": grace_seconds})

    def patch_pod_labels(self, namespace: str, name: str, labels: dict[str, str],
                         uid: str | None = None) -> None:
        meta: dict[str, Any] = {"labels": labels}
        if uid:
            meta["uid"] = uid  # the apiserver refuses the patch (409) for another UID
        self.request("PATCH", "/api/v1/namespaces/{namespace}/pods/{name}",
                     {"namespace": namespace, "name": name}, body={"metadata": meta},
                     content_type="application/merge-patch+json")

    def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        self.request("POST", "/api/v1/namespaces/{namespace}/events",
                     {"namespace": namespace}, body=event)


class Publisher:
    """Pod role labels and Events, written by one background thread."""

    def __init__(self, api: client.ApiClient, cfg: Config, timeout: float) -> None:
        self.core = CoreCalls(api, timeout)
        self.cfg = cfg
        self.timeout = timeout
        self._queue: queue.Queue[_RoleRequest | _EventRequest | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        # The role of the last label PATCH that succeeded, and how many role requests
        # are queued or in flight: reconcile_role() retries a failed one.
        self.role_published: str | None = None
        # Our Pod object was replaced by another incarnation of the name (a 409 on the
        # UID precondition): never label it again.
        self.replaced = False
        self._roles_pending = 0
        self._pending_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2 * self.timeout)

    def publish_role(self, role: str) -> threading.Event:
        """Label this pod leader/standby; the Event returned is set once done or given up."""
        done = threading.Event()
        with self._pending_lock:
            self._roles_pending += 1
        self._queue.put(_RoleRequest(role, done))
        return done

    def reconcile_role(self, role: str) -> bool:
        """Label again if the last PATCH for ``role`` failed (a failover's PATCH lost to
        an API error would leave the leader-only Service without endpoints); True if a
        request was queued. Nothing is queued while one is pending."""
        with self._pending_lock:
            if self._roles_pending or self.role_published == role or self.replaced:
                return False
        log.info("role.reconcile", role=role, published=self.role_published)
        self.publish_role(role)
        return True

    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        self._queue.put(_EventRequest(reason, message, type_))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if isinstance(item, _RoleRequest):
                    self._label(item.role)
                else:
                    self._emit(item)
            except (ApiException, Urllib3Error, OSError, ValueError) as exc:
                log.warning("kube.write_failed", what=type(item).__name__.strip("_"),
                            error=_short(exc))
            finally:
                if isinstance(item, _RoleRequest):
                    with self._pending_lock:
                        self._roles_pending -= 1
                    item.done.set()

    def _label(self, role: str) -> None:
        pod = self.cfg.pod.name
        namespace = self.cfg.namespace
        if not pod or not namespace:
            return
        key = self.cfg.role_label.key
        value = self.cfg.role_label.leader if role == "leader" else self.cfg.role_label.standby
        if role == "leader":
            # A new leader relabels any other master still marked leader (a crashed one).
            stale = self.core.list_pods(namespace, f"{master_selector(self.cfg)},{key}={value}")
            for other in stale:
                if other != pod:
                    self._patch(other, self.cfg.role_label.standby)
                    log.info("role.relabelled", pod=other, role=self.cfg.role_label.standby)
        if self.replaced:
            return
        try:
            self._patch(pod, value, uid=self.cfg.pod.uid)
        except ApiException as exc:
            if exc.status == 409 and self.cfg.pod.uid:
                self.replaced = True
                log.error("kube.pod_replaced", pod=pod, uid=self.cfg.pod.uid,
                          note="the Pod object is another incarnation now (force delete?): "
                          "this process no longer labels it")
                return
            raise
        self.role_published = role
        log.info("role.labelled", pod=pod, label=f"{key}={value}")

    def _patch(self, pod: str, value: str, uid: str | None = None) -> None:
        """``uid``: a precondition (409 if the pod is another incarnation of that name:
        an old one, back after a force delete, must not relabel the new one)."""
        labels = {ROLE_LABEL: value, self.cfg.role_label.key: value,
                  CLUSTER_LABEL: self.cfg.cluster, COMPONENT_LABEL: "master"}
        assert self.cfg.namespace
        self.core.patch_pod_labels(self.cfg.namespace, pod, labels, uid=uid)

    def _emit(self, item: _EventRequest) -> None:
        pod = self.cfg.pod.name
        namespace = self.cfg.namespace
        if not pod or not namespace:
            return
        self.core.create_event(namespace, event_body(namespace, pod, item.reason, item.message,
                                                     item.type, self.cfg.pod.node, pod))

def event_body(namespace: str, pod: str, reason: str, message: str, type_: str,
               host: str | None, reporter: str) -> dict[str, Any]:
    """A core/v1 Event about ``pod``."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{pod}.", "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod,
                           "namespace": namespace},
        "reason": reason, "message": message, "type": type_,
        "source": {"component": COMPONENT, "host": host},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": COMPONENT, "reportingInstance": reporter,
    }


def _short(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"[:200]

