"""The product on real kubelet nodes: the plane, the applied manifests, a client.

Shared by tests/node (the e2e suite, its fixtures) and the demo's ``--kubelet`` mode
(harness/nodedemo.py), so both run the same lab:

- ``node_plane(workdir)``: the testplane apiserver on a lab bridge, the controller-manager
  and the scheduler (``ControlPlaneExtras``) and node 1 (harness/kubenode.py), yielding a
  ``NodeLab``; on exit everything is stopped and ``NodeLab.left`` lists what was not.
- ``product_lab(node_lab)``: node 2, the product image imported into both nodes'
  containerd, a fresh root-owned share, the user's TSIG Secret from tsig-keygen and
  ``kustomize build manifests/overlays/node-lab`` server-side applied into bindha-lab;
  on exit the namespace, the cluster-scoped objects and node 2 are removed.
- ``UpdateClient``: TSIG updates to whatever the leader-only Service's EndpointSlice
  lists as ready, as a client behind that Service would send them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.tsigkeyring
import dns.update
import yaml
from kubernetes import client, config, dynamic

from harness.kubenode import (
    LAB_SHARE,
    TEST_IMAGE,
    ControlPlaneExtras,
    KubeNode,
    pack_image,
    rss_kib,
    test_image_files,
)
from harness.netlab import NetLab
from harness.polling import wait_until
from harness.testplane import TestPlane

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "manifests" / "overlays" / "node-lab"
NS = "bindha-lab"
SHARE = LAB_SHARE / "dyn"  # the overlay's hostPath PV
ZONE = "example.com."


@dataclass
class NodeLab:
    node: KubeNode
    plane: TestPlane
    api: client.ApiClient
    timings: dict[str, float]
    net: NetLab
    image: Path
    rss: dict[str, int] = field(default_factory=dict)  # KiB, read at the end
    left: list[str] = field(default_factory=list)  # what the node's stop() left behind

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


@contextlib.contextmanager
def node_plane(parts: dict[str, Path], plane_binary: Path, workdir: Path,
               verbose: bool = True) -> Iterator[NodeLab]:
    """Control plane + node 1, all stopped on exit (also when the body raises)."""
    net = NetLab()
    plane = TestPlane(binary=plane_binary, workdir=workdir / "plane", host=net.api_host,
                      service_accounts=True)
    extras: ControlPlaneExtras | None = None
    node: KubeNode | None = None
    lab: NodeLab | None = None
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
        if verbose:
            print(f"\nnode: {node.name} at {node.ip}: "
                  + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
        lab = NodeLab(node, plane, api, timings, net, image)
        yield lab
        rss = node.rss_kib()
        assert plane.process is not None and extras is not None
        for component in (node.kube_proxy, extras.scheduler, extras.controller_manager):
            assert component is not None
            rss[component.name] = rss_kib(component.pid or 0)
        rss["apiserver+etcd"] = rss_kib(plane.process.pid)
        lab.rss = rss
    finally:
        # The control plane first: while the node's record lives, `cleanup` stops the
        # adopted apiserver too if this run is killed in the middle of teardown.
        if extras is not None:
            extras.stop()
        plane.stop()
        left = node.stop() if node is not None else []
        if lab is not None:
            lab.left = left
        net.close()


@dataclass
class Lab:
    """The product applied on two nodes (bindha-lab)."""

    node_lab: NodeLab
    nodes: dict[str, KubeNode]
    keys: dict[str, tuple[str, str]]  # name -> (algorithm, secret)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def core(self) -> client.CoreV1Api:
        return self.node_lab.core

    def pods(self, name: str) -> list[Any]:
        return self.core.list_namespaced_pod(
            NS, label_selector="app.kubernetes.io/name=bindha-rwx,"
            f"app.kubernetes.io/component={name.removeprefix('bind-')}").items

    def leader(self) -> Any | None:
        leaders = self.core.list_namespaced_pod(
            NS, label_selector="app.kubernetes.io/component=master,bindha.io/role=leader,"
            "role=leader").items
        return leaders[0] if len(leaders) == 1 else None

    def slice_endpoints(self, service: str) -> dict[str, tuple[str, bool]]:
        """pod name -> (address, ready) from the controller's EndpointSlices."""
        slices = client.DiscoveryV1Api(self.node_lab.api).list_namespaced_endpoint_slice(
            NS, label_selector=f"kubernetes.io/service-name={service}").items
        return {e.target_ref.name: (e.addresses[0], bool(e.conditions.ready))
                for s in slices for e in s.endpoints or [] if e.target_ref}

    def task_pid(self, pod: Any) -> int:
        return self.nodes[pod.spec.node_name].task_pid(NS, pod.metadata.name, "bind")

    def keyring(self, name: str) -> Any:
        algorithm, secret = self.keys[name]
        return dns.tsigkeyring.from_text({name: (algorithm, secret)})


def tsig_key(name: str) -> tuple[str, str, str]:
    """(algorithm, secret, the key file's text) from BIND's own tsig-keygen."""
    text = subprocess.run(["tsig-keygen", "-a", "hmac-sha256", name], capture_output=True,
                          text=True, timeout=30, check=True).stdout
    secret = text.split('secret "', 1)[1].split('"', 1)[0]
    return "hmac-sha256", secret, text


def apply(api: client.ApiClient, objects: list[dict]) -> None:
    """`kubectl apply --server-side` of each object, as the field manager kubectl."""
    dyn = dynamic.DynamicClient(api)
    for obj in objects:
        resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        resource.server_side_apply(body=obj, name=obj["metadata"]["name"],
                                   namespace=obj["metadata"].get("namespace"),
                                   field_manager="kubectl", force_conflicts=True)


def kustomize_build() -> list[dict]:
    binary = os.environ.get("BINDHA_KUSTOMIZE_BIN") or subprocess.run(
        [str(ROOT / "scripts" / "build-kustomize.sh")], capture_output=True, text=True,
        timeout=1800, check=True).stdout.strip()
    out = subprocess.run([binary, "build", str(OVERLAY)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def fresh_share() -> None:
    """A share as a fresh RWX volume comes: empty, owned by root, mode 0755."""
    if SHARE.parent.exists():
        shutil.rmtree(SHARE.parent)
    SHARE.mkdir(parents=True)
    os.chown(SHARE, 0, 0)
    SHARE.chmod(0o755)


def terminated(pod: Any) -> Any | None:
    for status in pod.status.container_statuses or []:
        for state in (status.state, status.last_state):
            if state is not None and state.terminated is not None:
                return state.terminated
    return None


def is_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


@contextlib.contextmanager
def product_lab(node_lab: NodeLab, archive: Path, share_owner: int = 0,
                index: int = 2) -> Iterator[Lab]:
    """Node 2 beside node 1 and the product applied; ``archive``: the product image
    (harness.kubenode.node_image_archive). The caller holds the "node-lab-share" claim:
    the overlay names a fixed host directory. ``share_owner``: the share's uid and gid
    before the pods start (0: root's, as a fresh share comes; 101: after the fix).
    ``index``: the second node's (each test module may take its own)."""
    first = node_lab.node
    second = KubeNode(first.parts, node_lab.net, first.server, first.ca, first.token,
                      index=index, proxy=True)
    timings: dict[str, float] = {}
    core = node_lab.core
    cluster_scoped: list[dict] = []
    try:
        started = time.monotonic()
        second.start(images=[node_lab.image])

        def ready() -> bool:
            assert second.kubelet is not None
            second.kubelet.check()
            return node_ready(core, second.name)
        wait_until(ready, 60, f"{second.name} Ready", interval=0.1)
        timings["second node Ready"] = time.monotonic() - started
        first.connect(second)
        for node in (first, second):
            started = time.monotonic()
            node.import_image(archive)
            timings[f"image import {node.name}"] = time.monotonic() - started
        fresh_share()
        os.chown(SHARE, share_owner, share_owner)
        objects = kustomize_build()
        namespace = [o for o in objects if o["kind"] == "Namespace"]
        cluster_scoped = [o for o in objects if o["kind"] != "Namespace"
                          and "namespace" not in o["metadata"]]
        started = time.monotonic()
        apply(node_lab.api, namespace)
        keys: dict[str, tuple[str, str]] = {}
        data: dict[str, str] = {}
        for name in ("update-key", "transfer-key"):
            algorithm, secret, text = tsig_key(name)
            keys[name] = (algorithm, secret)
            data[f"{name}.key"] = text
        # docs/deploy.md step 2: the user's own Secret, made from tsig-keygen.
        core.create_namespaced_secret(NS, {"apiVersion": "v1", "kind": "Secret",
                                           "metadata": {"name": "bind-tsig"},
                                           "stringData": data})
        apply(node_lab.api, [o for o in objects if o["kind"] != "Namespace"])
        timings["apply"] = time.monotonic() - started
        yield Lab(node_lab, {first.name: first, second.name: second}, keys, timings)
    finally:
        print("\nnode lab timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(NS, grace_period_seconds=0)

        def gone() -> bool:
            try:
                core.read_namespace(NS)
            except client.ApiException as exc:
                return exc.status == 404
            return False
        ns_gone = True
        try:
            wait_until(gone, 90, f"namespace {NS} deleted", interval=0.5)
        except (AssertionError, client.ApiException):
            ns_gone = False
        dyn = dynamic.DynamicClient(node_lab.api)
        for obj in cluster_scoped:  # the PV, the ClusterRole and its binding
            with contextlib.suppress(client.ApiException):
                dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"]).delete(
                    name=obj["metadata"]["name"])
        left = second.stop()
        with contextlib.suppress(client.ApiException):
            core.delete_node(second.name)
        if SHARE.parent.exists():
            shutil.rmtree(SHARE.parent)
        assert left == [], left
        assert ns_gone, f"namespace {NS} not deleted within 90 s"


def wait_all_ready(lab: Lab, timeout: float = 180) -> None:
    def all_ready() -> bool:
        pods = lab.pods("bind-master") + lab.pods("bind-secondary")
        return len(pods) == 3 and all(is_ready(p) for p in pods)
    wait_until(all_ready, timeout, "every pod Ready", interval=0.5)


def masters_ready(lab: Lab) -> bool:
    pods = lab.pods("bind-master")
    return len(pods) == 2 and all(is_ready(p) for p in pods) and lab.leader() is not None


def send_update(lab: Lab, address: str, name: str, timeout: float = 1.0) -> bool:
    update = dns.update.UpdateMessage(ZONE, keyring=lab.keyring("update-key"),
                                      keyalgorithm="hmac-sha256")
    update.replace(name, 300, "TXT", f'"{name}"')
    try:
        answer = dns.query.tcp(update, address, timeout=timeout)
    except (OSError, EOFError, dns.exception.DNSException):
        return False
    return answer.rcode() == dns.rcode.NOERROR


def names_on(lab: Lab, address: str) -> set[str]:
    """Every owner name in the zone, by AXFR with the transfer key."""
    names: set[str] = set()
    for message in dns.query.xfr(address, ZONE, keyring=lab.keyring("transfer-key"),
                                 keyname="transfer-key", keyalgorithm="hmac-sha256",
                                 lifetime=10, relativize=False):
        for rrset in message.answer:
            names.add(rrset.name.to_text())
    return names


class UpdateClient:
    """A client behind the leader-only Service: TSIG updates, one every 50 ms, to
    whatever address the controller's slice lists as ready (bounded: 5000 at most).
    ``acked`` holds the names, ``acked_at`` when each was acknowledged (monotonic)."""

    def __init__(self, lab: Lab, prefix: str) -> None:
        self.lab, self.prefix = lab, prefix
        self.acked: list[str] = []
        self.acked_at: list[float] = []
        self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        for i in range(5000):
            if self.stop.is_set():
                return
            ready = [a for a, r in self.lab.slice_endpoints("bind-master").values() if r]
            if len(ready) == 1:
                name = f"{self.prefix}{i}.{ZONE}"
                if send_update(self.lab, ready[0], name):
                    self.acked_at.append(time.monotonic())
                    self.acked.append(name)
                else:
                    self.failures += 1
            self.stop.wait(0.05)

    def longest_gap(self, since: float) -> float:
        """The longest time between two acknowledgements, the later one after ``since``
        (monotonic): how long a client behind the Service could not write."""
        times = list(self.acked_at)
        gaps = [b - a for a, b in itertools.pairwise(times) if b > since]
        return max(gaps, default=float("inf"))

    def finish(self, leader: Any) -> tuple[list[str], int]:
        """Wait for 20 updates acknowledged by ``leader``, then stop."""
        count = len(self.acked)
        wait_until(lambda: len(self.acked) >= count + 20, 60,
                   f"20 updates acknowledged by {leader.metadata.name}", interval=0.1)
        self.stop.set()
        self.thread.join(10)
        return list(self.acked), self.failures


def serves(address: str, name: str) -> bool:
    """The server at ``address`` answers ``name`` TXT (secondaries allow no AXFR)."""
    try:
        answer = dns.query.udp(dns.message.make_query(name, "TXT"), address, timeout=1)
    except (OSError, dns.exception.DNSException):
        return False
    return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)
