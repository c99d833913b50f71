"""The product on two real nodes, set up as a user would (issue 13 stage 2): shared by
tests/node/test_node_lab.py and tests/node/test_node_loss.py, each of which brings up a
lab of its own (module-scoped fixtures calling ``product_lab`` and ``bring_up``).

`kustomize build manifests/overlays/node-lab` is server-side applied into bindha-lab, a
namespace enforcing Pod Security "restricted"; the pods run the image of
scripts/build-node-image.sh under the kubelets, with projected service-account tokens,
the kubelet's HTTP probes, the real statefulset, endpointslice and disruption controllers.
The RWX volume is a hostPath PV onto a directory root owns: the masters exit 2 until the
documented `chown 101:101`.
"""

from __future__ import annotations

import contextlib
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
from kubernetes import client, dynamic

from harness.kubenode import LAB_SHARE, KubeNode, node_image_archive
from harness.loopback import claim
from harness.polling import wait_until
from tests.conftest import require
from tests.node.conftest import NodeLab, node_ready

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "manifests" / "overlays" / "node-lab"
NS = "bindha-lab"
SHARE = LAB_SHARE / "dyn"  # the overlay's hostPath PV
ZONE = "example.com."
_share_claimed = False


def claim_share() -> bool:
    """The claim "node-lab-share" for this process: the overlay names a fixed host
    directory, so one run at a time (kubenode cleanup removes it after a killed run).
    An flock is not re-entrant across descriptors: claimed once, kept for the run."""
    global _share_claimed
    if not _share_claimed:
        _share_claimed = claim("node-lab-share")
    return _share_claimed


@dataclass
class Lab:
    node_lab: NodeLab
    nodes: dict[str, KubeNode]
    keys: dict[str, tuple[str, str]]  # name -> (algorithm, secret)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def core(self) -> client.CoreV1Api:
        return self.node_lab.core

    def pods(self, name: str) -> list[Any]:
        return self.core.list_namespaced_pod(
            NS, label_selector=f"app.kubernetes.io/name={name}").items

    def leader(self) -> Any | None:
        leaders = self.core.list_namespaced_pod(
            NS, label_selector="app.kubernetes.io/name=bind-master,role=leader").items
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



def product_lab(node_lab: NodeLab, index: int = 2) -> Iterator[Lab]:
    """The lab: a second node (``index``; a node index is claimed for the whole run, so
    each module takes its own), the product image on both, the overlay applied."""
    try:
        archive = node_image_archive()
    except Exception as exc:  # the build's own output is on stderr already
        require(False, f"the product image could not be built: {exc}")
        raise
    require(claim_share(), f"{LAB_SHARE} is in use by another run")
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
        except Exception:
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



def bring_up(lab: Lab) -> Lab:
    """The masters after the documented fix: root-owned share -> exit 2 -> chown -> Ready."""
    started = time.monotonic()

    def exited_2() -> list[Any] | None:
        pods = lab.pods("bind-master")
        done = [p for p in pods if (t := terminated(p)) is not None and t.exit_code == 2]
        return done if len(done) == 2 else None
    pods = wait_until(exited_2, 120, "both masters exit 2 on the root-owned share",
                      interval=0.5)
    lab.timings["masters exit 2"] = time.monotonic() - started
    try:  # the last exit's log (the container may be waiting to restart, or running)
        log = lab.core.read_namespaced_pod_log(pods[0].metadata.name, NS, container="bind",
                                               previous=True)
    except client.ApiException:
        log = lab.core.read_namespaced_pod_log(pods[0].metadata.name, NS, container="bind")
    print(f"\nmaster log on the root-owned share:\n{log.strip()[-600:]}")
    assert "cannot write there" in log and "chown -R 101:101" in log, log
    assert not list(SHARE.iterdir()), "a master wrote on a share it must not use"
    # The fix, as docs/deploy.md "The shared volume's owner" gives it.
    os.chown(SHARE, 101, 101)
    started = time.monotonic()

    def all_ready() -> bool:
        pods = lab.pods("bind-master") + lab.pods("bind-secondary")
        return len(pods) == 3 and all(
            any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            for p in pods)
    wait_until(all_ready, 180, "every pod Ready after chown 101:101", interval=0.5)
    lab.timings["Ready after chown (kubelet back-off included)"] = time.monotonic() - started
    return lab


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
    whatever address the controller's slice lists as ready (bounded: 5000 at most)."""

    def __init__(self, lab: Lab, prefix: str) -> None:
        self.lab, self.prefix = lab, prefix
        self.acked: list[str] = []
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
                    self.acked.append(name)
                else:
                    self.failures += 1
            self.stop.wait(0.05)

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


def masters_ready(lab: Lab) -> bool:
    pods = lab.pods("bind-master")
    return len(pods) == 2 and all(
        any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        for p in pods) and lab.leader() is not None


def soa(address: str, zone: str) -> bool:
    try:
        answer = dns.query.udp(dns.message.make_query(zone, "SOA"), address, timeout=1)
    except (OSError, dns.exception.DNSException):
        return False
    return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)


