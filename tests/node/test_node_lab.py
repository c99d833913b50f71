"""The product on two real nodes, applied as a user would (issue 13 stage 2).

`kustomize build manifests/overlays/node-lab` is server-side applied into bindha-lab, a
namespace enforcing Pod Security "restricted" (tests/node/productlab.py sets the lab up);
the pods run the image of scripts/build-node-image.sh under the kubelets, with projected
service-account tokens, the kubelet's HTTP probes, the real statefulset, endpointslice and
disruption controllers. The RWX volume is a hostPath PV onto a directory root owns: the
masters exit 2 until the documented `chown 101:101`.

Long (a few minutes): marker node_e2e, outside the default run; scripts/test-node runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from bindha_rwx.fencing import SharedVolume
from harness.polling import wait_until
from tests.node.conftest import NodeLab
from tests.node.productlab import (
    NS,
    ROOT,
    SHARE,
    ZONE,
    Lab,
    UpdateClient,
    apply,
    bring_up,
    kustomize_build,
    masters_ready,
    names_on,
    product_lab,
    send_update,
    serves,
    soa,
)

pytestmark = [pytest.mark.node, pytest.mark.node_e2e]


@pytest.fixture(scope="module")
def lab(node_lab: NodeLab) -> Iterator[Lab]:
    yield from product_lab(node_lab, index=2)


@pytest.fixture(scope="module")
def running(lab: Lab) -> Lab:
    return bring_up(lab)


def test_every_pod_ready_and_the_leader_slice_holds_exactly_the_leader(running: Lab) -> None:
    lab = running
    masters = lab.pods("bind-master")
    assert {p.spec.node_name for p in masters} == set(lab.nodes), "anti-affinity: one per node"
    leader = wait_until(lab.leader, 30, "one master labelled role=leader", interval=0.2)
    expected = {leader.metadata.name: (leader.status.pod_ip, True)}
    wait_until(lambda: lab.slice_endpoints("bind-master") == expected, 30,
               "bind-master's EndpointSlice holds exactly the leader", interval=0.2)
    print(f"\nleader {leader.metadata.name} on {leader.spec.node_name}; "
          f"slice {lab.slice_endpoints('bind-master')}")


def test_deleting_the_leader_hands_over_gracefully_with_no_acknowledged_update_lost(
        running: Lab) -> None:
    lab = running
    old = wait_until(lab.leader, 30, "a leader", interval=0.2)
    updates = UpdateClient(lab, "u")
    updates.start()
    wait_until(lambda: len(updates.acked) >= 20, 30,
               "20 updates acknowledged before the delete", interval=0.1)
    old_uid = old.metadata.uid
    grace = old.spec.termination_grace_period_seconds
    started = time.monotonic()
    lab.core.delete_namespaced_pod(old.metadata.name, NS)

    def new_leader() -> Any | None:
        pod = lab.leader()
        return pod if pod is not None and pod.metadata.uid != old_uid else None
    leader = wait_until(new_leader, grace + 30, "a new leader", interval=0.1)
    took_over = time.monotonic() - started

    def old_gone() -> bool:
        pods = [p for p in lab.pods("bind-master") if p.metadata.uid == old_uid]
        return not pods
    wait_until(old_gone, grace + 10, "the old leader's pod gone", interval=0.1)
    old_gone_after = time.monotonic() - started
    acked, failures = updates.finish(leader)
    on_new = names_on(lab, leader.status.pod_ip)
    lost = [n for n in acked if n not in on_new]
    print(f"\nhandover {old.metadata.name} -> {leader.metadata.name}: new leader after "
          f"{took_over:.1f}s, old pod gone after {old_gone_after:.1f}s (grace {grace}s); "
          f"{len(acked)} updates acknowledged, {failures} unanswered/refused, "
          f"{len(lost)} lost")
    assert lost == []
    assert old_gone_after < grace, "the old leader needed the whole grace period"

    def recreated_standby() -> bool:
        pods = {p.metadata.name: p for p in lab.pods("bind-master")}
        pod = pods.get(old.metadata.name)
        return (pod is not None and pod.metadata.uid != old_uid
                and pod.metadata.labels.get("role") == "standby"
                and any(c.type == "Ready" and c.status == "True"
                        for c in pod.status.conditions or []))
    started = time.monotonic()
    wait_until(recreated_standby, 90, f"{old.metadata.name} recreated, Ready, standby",
               interval=0.2)
    print(f"{old.metadata.name} recreated as a Ready standby in "
          f"{time.monotonic() - started:.1f}s")


def test_a_killed_leader_container_is_restarted_and_re_takes_its_own_lease(
        running: Lab) -> None:
    """SIGKILL the leader's supervisor (the container's PID 1; named dies with it): the
    kubelet restarts the container in the same pod, and the supervisor, whose identity is
    pod name + UID, re-takes its own Lease before it expires (DESIGN invariant 13)."""
    lab = running
    coordination = client.CoordinationV1Api(lab.node_lab.api)
    # A container that never restarted: the kubelet restarts it at once (later restarts
    # back off 10 s, 20 s, ..., longer than the lab's 6 s Lease). Hand over until the
    # leader is such a pod (a deleted pod comes back fresh).
    for _ in range(3):
        wait_until(lambda: masters_ready(lab), 90, "both masters Ready, a leader",
                   interval=0.2)
        leader = lab.leader()
        if leader.status.container_statuses[0].restart_count == 0:
            break
        lab.core.delete_namespaced_pod(leader.metadata.name, NS)
        wait_until(lambda uid=leader.metadata.uid: (p := lab.leader()) is not None
                   and p.metadata.uid != uid, 60, "a new leader", interval=0.1)
    assert leader.status.container_statuses[0].restart_count == 0
    identity = f"{leader.metadata.name}_{leader.metadata.uid}"
    lease = coordination.read_namespaced_lease("bind-master-leader", NS)
    assert lease.spec.holder_identity == identity
    transitions = lease.spec.lease_transitions
    updates = UpdateClient(lab, "k")
    updates.start()
    wait_until(lambda: len(updates.acked) >= 20, 30,
               "20 updates acknowledged before the kill", interval=0.1)
    os.kill(lab.task_pid(leader), signal.SIGKILL)
    started = time.monotonic()

    def restarted() -> Any | None:
        pod = lab.core.read_namespaced_pod(leader.metadata.name, NS)
        status = pod.status.container_statuses[0]
        return pod if status.restart_count == 1 and status.state.running else None
    wait_until(restarted, 30, f"{leader.metadata.name}'s container restarted", interval=0.1)
    restarted_after = time.monotonic() - started

    def leads_again() -> Any | None:
        # The label outlives the dead container: the new container's own readiness
        # (/readyz: named answers SOA for every zone) says it leads again.
        pod = lab.leader()
        if pod is None or pod.metadata.uid != leader.metadata.uid:
            return None
        status = pod.status.container_statuses[0]
        return pod if status.restart_count == 1 and status.ready else None
    again = wait_until(leads_again, 30, f"{leader.metadata.name} leads again", interval=0.1)
    led_after = time.monotonic() - started
    acked, failures = updates.finish(again)
    lost = [n for n in acked if n not in names_on(lab, again.status.pod_ip)]
    lease = coordination.read_namespaced_lease("bind-master-leader", NS)
    print(f"\nkilled leader container {leader.metadata.name}: restarted after "
          f"{restarted_after:.1f}s, leads again after {led_after:.1f}s as {identity}; "
          f"Lease transitions {transitions} -> {lease.spec.lease_transitions}; "
          f"{len(acked)} updates acknowledged, {failures} unanswered, {len(lost)} lost")
    assert lease.spec.holder_identity == identity
    assert lease.spec.lease_transitions == transitions  # its own Lease, not a new term
    assert lost == []


def test_the_secondaries_slices_feed_also_notify(running: Lab) -> None:
    lab = running
    secondaries = lab.pods("bind-secondary")
    addresses = {p.status.pod_ip for p in secondaries}
    wait_until(lambda: {a for a, _ in lab.slice_endpoints("bind-secondary").values()}
               == addresses, 30, "the secondaries' slice lists every secondary",
               interval=0.2)
    leader = wait_until(lab.leader, 30, "a leader", interval=0.2)
    # /var/run is the image's symlink to /run: an absolute link under /proc/PID/root
    # would resolve in this process's root, so name /run itself.
    conf = Path(f"/proc/{lab.task_pid(leader)}/root/run/bindha/named.conf")

    def notified() -> bool:
        text = conf.read_text()
        return all(a in text.split("also-notify", 1)[-1] for a in addresses)
    wait_until(notified, 30, f"also-notify lists {addresses}", interval=0.2)
    # The secondary serves an update made on the leader (NOTIFY, then the transfer).
    name = f"notify-{int(time.time())}.{ZONE}"
    assert send_update(lab, leader.status.pod_ip, name, timeout=3)
    started = time.monotonic()
    wait_until(lambda: all(serves(a, name) for a in addresses), 30,
               f"{name} on every secondary", interval=0.2)
    print(f"\nalso-notify {sorted(addresses)}; an update reached the secondaries in "
          f"{time.monotonic() - started:.2f}s")


def test_the_eviction_api_respects_the_pdb(running: Lab) -> None:
    lab = running
    wait_until(lambda: all(
        any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        for p in lab.pods("bind-master")) and len(lab.pods("bind-master")) == 2, 90,
        "both masters Ready", interval=0.2)
    policy = client.PolicyV1Api(lab.node_lab.api)
    wait_until(lambda: (policy.read_namespaced_pod_disruption_budget("bind-master", NS)
                        .status.disruptions_allowed or 0) == 1, 30,
               "the PDB allows one disruption", interval=0.2)
    leader = wait_until(lab.leader, 30, "a leader", interval=0.2)
    standby = next(p for p in lab.pods("bind-master")
                   if p.metadata.name != leader.metadata.name)

    def evict(pod: Any) -> int:
        try:
            lab.core.create_namespaced_pod_eviction(pod.metadata.name, NS, {
                "apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": pod.metadata.name, "namespace": NS}})
        except client.ApiException as exc:
            return int(exc.status)
        return 201
    assert evict(standby) == 201
    assert evict(leader) == 429, "the PDB let a second master go"
    started = time.monotonic()

    def back() -> bool:
        pods = lab.pods("bind-master")
        return len(pods) == 2 and all(
            p.metadata.uid != standby.metadata.uid and any(
                c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            for p in pods)
    wait_until(back, 90, "the evicted standby back and Ready", interval=0.2)
    wait_until(lambda: evict_dry(lab, leader) == 201, 30,
               "the PDB allows a disruption again", interval=0.5)
    print(f"\neviction: standby 201, leader 429 meanwhile; back in "
          f"{time.monotonic() - started:.1f}s")


def evict_dry(lab: Lab, pod: Any) -> int:
    try:
        lab.core.create_namespaced_pod_eviction(pod.metadata.name, NS, {
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod.metadata.name, "namespace": NS},
            "deleteOptions": {"dryRun": ["All"]}})
    except client.ApiException as exc:
        return int(exc.status)
    return 201


def test_the_liveness_probe_kills_a_frozen_supervisor(running: Lab) -> None:
    lab = running
    leader = wait_until(lab.leader, 30, "a leader", interval=0.2)
    standby = next(p for p in lab.pods("bind-master")
                   if p.metadata.name != leader.metadata.name)
    restarts = standby.status.container_statuses[0].restart_count
    pid = lab.task_pid(standby)
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()

    def restarted() -> bool:
        pod = lab.core.read_namespaced_pod(standby.metadata.name, NS)
        return pod.status.container_statuses[0].restart_count > restarts
    try:
        wait_until(restarted, 60, "the kubelet restarted the frozen supervisor",
                   interval=0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    took = time.monotonic() - started
    events = lab.core.list_namespaced_event(
        NS, field_selector=f"involvedObject.name={standby.metadata.name}").items
    reasons = [(e.reason, e.message) for e in events if e.reason in ("Unhealthy", "Killing")]
    print(f"\nfrozen supervisor of {standby.metadata.name} restarted after {took:.1f}s; "
          f"events {reasons[-3:]}")
    assert any(r == "Unhealthy" and "Liveness" in (m or "") for r, m in reasons), reasons
    # periodSeconds 2 + timeoutSeconds 1, then the probe's own grace (10 s) for the kill
    # that SIGTERM cannot do, not the pod's 30 s; a margin for a loaded machine.
    grace = next(c.liveness_probe.termination_grace_period_seconds
                 for c in standby.spec.containers if c.name == "bind")
    assert grace == 10 and took < grace + 10, took


def test_a_frozen_leader_is_killed_by_its_liveness_probe_and_the_standby_takes_over(
        running: Lab) -> None:
    """SIGSTOP the leader's supervisor: its named keeps serving and the lock stays held
    until the kubelet's liveness kill; then the standby takes the lock and leads, with
    every acknowledged update (the journal on the shared volume) kept."""
    lab = running
    wait_until(lambda: len(lab.pods("bind-master")) == 2 and all(
        any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        for p in lab.pods("bind-master")), 90, "both masters Ready", interval=0.2)
    old = wait_until(lab.leader, 30, "a leader", interval=0.2)
    restarts = old.status.container_statuses[0].restart_count
    updates = UpdateClient(lab, "f")
    updates.start()
    wait_until(lambda: len(updates.acked) >= 20, 30,
               "20 updates acknowledged before the freeze", interval=0.1)
    pid = lab.task_pid(old)
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        def new_leader() -> Any | None:
            pod = lab.leader()
            return pod if pod is not None and pod.metadata.name != old.metadata.name else None
        leader = wait_until(new_leader, 60, "the standby leads", interval=0.1)
        took_over = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    acked, failures = updates.finish(leader)
    lost = [n for n in acked if n not in names_on(lab, leader.status.pod_ip)]
    pod = lab.core.read_namespaced_pod(old.metadata.name, NS)
    print(f"\nfrozen leader {old.metadata.name}: {leader.metadata.name} leads after "
          f"{took_over:.1f}s; {old.metadata.name} restarts "
          f"{restarts} -> {pod.status.container_statuses[0].restart_count}; "
          f"{len(acked)} updates acknowledged, {failures} unanswered, {len(lost)} lost")
    assert lost == []
    assert pod.status.container_statuses[0].restart_count > restarts

    def standby_again() -> bool:
        pod = lab.core.read_namespaced_pod(old.metadata.name, NS)
        return pod.metadata.labels.get("role") == "standby" and any(
            c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    wait_until(standby_again, 90, f"{old.metadata.name} back as a Ready standby",
               interval=0.2)


def test_a_configmap_update_reaches_the_pods_and_is_hot_reloaded(running: Lab) -> None:
    """`kubectl apply` of the ConfigMap with a zone more: the kubelet's atomic writer swaps
    the mounted files (..data), the supervisors reload without a restart, and the leader
    and the secondary serve the new zone."""
    lab = running
    wait_until(lambda: masters_ready(lab), 90, "both masters Ready, a leader", interval=0.2)
    leader = lab.leader()
    restarts = {p.metadata.name: p.status.container_statuses[0].restart_count
                for p in lab.pods("bind-master") + lab.pods("bind-secondary")}
    configmap = next(o for o in kustomize_build() if o["kind"] == "ConfigMap")
    text = configmap["data"]["config.yaml"]
    assert text.rstrip().endswith("updatePolicy: [{key: update-key, rule: zonesub}]")
    configmap["data"]["config.yaml"] = text + (
        "  - name: example.org\n"
        "    nameservers: [{name: ns1.example.org, addresses: [192.0.2.54]}]\n"
        "    updatePolicy: [{key: update-key, rule: zonesub}]\n")
    started = time.monotonic()
    apply(lab.node_lab.api, [configmap])
    secondaries = [p.status.pod_ip for p in lab.pods("bind-secondary")]
    wait_until(lambda: soa(leader.status.pod_ip, "example.org."), 90,
               "the leader serves example.org", interval=0.2)
    on_leader = time.monotonic() - started
    wait_until(lambda: all(soa(a, "example.org.") for a in secondaries), 60,
               "the secondaries serve example.org", interval=0.2)
    on_secondaries = time.monotonic() - started
    now = {p.metadata.name: p.status.container_statuses[0].restart_count
           for p in lab.pods("bind-master") + lab.pods("bind-secondary")}
    print(f"\nConfigMap update: example.org served by the leader after {on_leader:.1f}s, "
          f"by the secondaries after {on_secondaries:.1f}s; restarts {restarts} -> {now}")
    assert now == restarts, "a reload must not restart a container"
    assert lab.leader().metadata.uid == leader.metadata.uid


def plugin(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl bindha` from a "workstation": the plane's kubeconfig and nothing else (no
    pod environment, no ~/.kube, not the pods' network nor the volume)."""
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "bindha_rwx.kubectlplugin", "--kubeconfig",
                           str(lab.node_lab.plane.kubeconfig), "-n", NS, *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_the_kubectl_plugin_execs_status_and_fence_status_in_the_lease_holder(
        running: Lab) -> None:
    """`kubectl bindha status --in-pod` and `fence status` run `bindha-rwx` in the Lease
    holder's container through the API's exec (apiserver -> kubelet -> containerd's
    stream server): what they print is what the shared volume holds."""
    lab = running
    wait_until(lambda: masters_ready(lab), 90, "both masters Ready, a leader", interval=0.2)
    leader = lab.leader()
    assert send_update(lab, leader.status.pod_ip, f"plugin-{int(time.time())}.{ZONE}",
                       timeout=3)  # a journal on the share
    volume = SharedVolume(SHARE)
    started = time.monotonic()
    shown = plugin(lab, "status", "--in-pod", "--json")
    took = time.monotonic() - started
    assert shown.returncode == 0, shown.stdout + shown.stderr
    status = json.loads(shown.stdout)
    owner = volume.read_owner()
    assert owner is not None and owner.pod == leader.metadata.name
    assert status["lease"]["holder"] == leader.metadata.name
    assert status["volume"]["reachable"] is True, status["volume"]
    assert status["volume"]["owner"]["pod"] == owner.pod
    assert status["volume"]["owner"]["node"] == leader.spec.node_name
    assert status["volume"]["epoch"] == volume.read_epoch()
    assert status["volume"]["generation"] == volume.read_generation()
    assert (SHARE / "example.com.zone.jnl").is_file()
    zones = yaml.safe_load(lab.core.read_namespaced_config_map(
        "bind-config", NS).data["config.yaml"])["zones"]  # a test above adds one
    assert status["journals"] == {"checked": len(zones), "damaged": 0}, status["journals"]
    assert status["this_pod"]["pod"] == leader.metadata.name
    assert status["this_pod"]["role"] == "leader", status["this_pod"]
    # From inside the pod the zones are asked over the pod network: the leader's serial.
    zone = status["zones"][0]
    assert zone["zone"] in ("example.com", "example.com.") and zone["leader_reachable"]
    fenced = plugin(lab, "fence", "status", "--json")
    assert fenced.returncode == 0, fenced.stdout + fenced.stderr
    fence = json.loads(fenced.stdout)
    assert fence["lease_holder"] == leader.metadata.name
    assert fence["lease_renewing"] is True
    assert fence["lock_owner"] == owner.pod
    assert fence["volume"]["epoch"] == volume.read_epoch()
    text = plugin(lab, "status", "--in-pod")
    assert text.returncode == 0 and leader.metadata.name in text.stdout, text.stderr
    print(f"\nkubectl bindha status --in-pod: {took:.1f}s; lock owner {owner.pod}, epoch "
          f"{status['volume']['epoch']}, journals {status['journals']}, zones "
          f"{status['zones']}")
