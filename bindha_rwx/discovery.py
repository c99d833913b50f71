"""Discovery: the secondaries' live pod IPs, from their headless Service's EndpointSlices.

`also-notify` takes addresses, never names, and pod IPs change on every restart
(DESIGN R9), so the leader watches the EndpointSlices labelled
``kubernetes.io/service-name=<secondaries.service>`` and renders every address they
list, ready or not: a secondary that is still loading (not ready) needs the NOTIFYs
most. Runs on its own thread; the callback must not block.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from bindha_rwx.config import Timing
from bindha_rwx.election import WATCH_SECONDS
from bindha_rwx.log import get_logger

log = get_logger("discovery")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def slice_addresses(endpoint_slice: Any) -> set[str]:
    """Every address of every endpoint of one EndpointSlice (ready or not)."""
    addresses: set[str] = set()
    for endpoint in endpoint_slice.endpoints or []:
        addresses.update(endpoint.addresses or [])
    return addresses


class EndpointsWatcher:
    """Calls ``on_change(sorted IPs)`` whenever the secondaries' address set changes."""

    def __init__(self, api: client.ApiClient, namespace: str, service: str, timing: Timing,
                 on_change: Callable[[tuple[str, ...]], None]) -> None:
        self.api = client.DiscoveryV1Api(api)
        self.namespace = namespace
        self.selector = f"{SERVICE_NAME_LABEL}={service}"
        self.timing = timing
        self.on_change = on_change
        self._slices: dict[str, set[str]] = {}
        self._published: tuple[str, ...] | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def addresses(self) -> tuple[str, ...]:
        return tuple(sorted(set().union(*self._slices.values())))

    def _publish(self) -> None:
        current = self.addresses()
        if current != self._published:
            self._published = current
            self.on_change(current)

    def run(self) -> None:
        """LIST once, then WATCH, resuming from the last resourceVersion when the server
        ends a stream (no LIST per stream); LIST again only after an error."""
        stream_timeout = max(WATCH_SECONDS, 5 * self.timing.retry_period)
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listed = self.api.list_namespaced_endpoint_slice(
                        self.namespace, label_selector=self.selector,
                        _request_timeout=self.timing.retry_period)
                    self._slices = {s.metadata.name: slice_addresses(s)
                                    for s in listed.items}
                    version = listed.metadata.resource_version
                    self._publish()
                stream = watch.Watch().stream(
                    self.api.list_namespaced_endpoint_slice, self.namespace,
                    label_selector=self.selector, resource_version=version,
                    allow_watch_bookmarks=True, timeout_seconds=int(stream_timeout),
                    _request_timeout=stream_timeout + 5)
                for event in stream:
                    if self._stop.is_set():
                        return
                    obj = event["object"]
                    seen = getattr(getattr(obj, "metadata", None), "resource_version", None)
                    if seen:
                        version = seen
                    if event["type"] == "DELETED":
                        self._slices.pop(obj.metadata.name, None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._slices[obj.metadata.name] = slice_addresses(obj)
                    else:
                        continue  # BOOKMARK: only the resourceVersion moves
                    self._publish()
            except (ApiException, Urllib3Error, OSError, ValueError) as exc:
                version = None
                log.warning("endpoints.watch_error", error=f"{type(exc).__name__}: {exc}"[:200])
                self._stop.wait(self.timing.retry_period)
