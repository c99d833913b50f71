"""Operator commands against the real apiserver, with pods as processes.

The frozen leader (DESIGN failure matrix): SIGSTOP its supervisor and its named, the
standby gets the Lease and is blocked on the fence; `fence break` refuses while the
pod still looks alive, then, once the node controller would have marked it not Ready,
moves to a new lock generation; the standby takes over; the old supervisor wakes and
kills its named (still frozen, so it never runs again) before anything else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml
from kubernetes import client

from bindha_rwx.ops import Ops, OpsError
from harness.netlab import NetLab
from harness.nodes import bind_to_node, taint_out_of_service
from harness.pods import MasterLab, MasterPod, samples, wait_until

T = {"lease": 3.0, "deadline": 1.6, "retry": 0.4, "stop": 0.8}


def cli(pod: MasterPod, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run bindha-rwx as an operator would inside ``pod`` (kubectl exec)."""
    env = {"PATH": os.environ["PATH"], "POD_NAME": pod.name, "POD_NAMESPACE": pod.namespace,
           "POD_IP": pod.ip, "KUBECONFIG": str(pod.kubeconfig)}
    return subprocess.run([sys.executable, "-m", "bindha_rwx", *args, "--config",
                           str(pod.config_path)], capture_output=True, text=True, timeout=60,
                          env=env, input=stdin)


def test_fence_break_lets_the_standby_take_over_from_a_frozen_leader(lab: MasterLab):
    lab.start(2)
    leader = lab.leader()
    standby = next(p for p in lab.pods if p is not leader)
    named = leader.named_processes()[0]
    leader.signal(signal.SIGSTOP)
    named.suspend()
    wait_until(lambda: standby.has_event("fence.blocked"), T["lease"] + 10, "blocked on fence")

    found = json.loads(cli(standby, "fence", "status", "--json").stdout)
    assert found["lease_holder"] == standby.name and found["lease_renewing"] is True
    assert found["lock_owner"] == leader.name
    assert found["owner_pod"]["ready"] is True  # no kubelet here says otherwise yet

    # The dead pod still looks Running and Ready: refused, and nothing changed.
    refused = cli(standby, "fence", "break", "--confirm-dead", leader.name, "--yes")
    assert refused.returncode == 1
    assert f"pod {leader.name} still exists" in refused.stderr and "--force" in refused.stderr
    assert lab.volume.read_generation() == 0
    # Not Ready is no proof while the pod exists on a node that may still run it.
    lab.set_pod_status(leader.name, leader.ip, ready=False)
    node = bind_to_node(lab, leader.name, ready=True)
    refused = cli(standby, "fence", "break", "--confirm-dead", leader.name, "--yes")
    assert refused.returncode == 1 and f"on node {node}, which is Ready" in refused.stderr
    assert lab.volume.read_generation() == 0
    # The operator has powered the node off and says so with the out-of-service taint.
    taint_out_of_service(lab, node, on=True)
    # Without --yes and without a terminal it asks nobody and changes nothing.
    unconfirmed = cli(standby, "fence", "break", "--confirm-dead", leader.name, stdin="")
    assert unconfirmed.returncode == 1 and "add --yes" in unconfirmed.stderr
    assert lab.volume.read_generation() == 0
    wrong = cli(standby, "fence", "break", "--confirm-dead", standby.name, "--yes")
    assert wrong.returncode == 1 and f"the lock owner is {leader.name}" in wrong.stderr

    # The interlocks are asked again after the confirmation: a taint lifted while the
    # operator read the question refuses the break.
    ops = Ops(standby.config, lab.api)

    def untaint_then_yes(_question: str) -> bool:
        taint_out_of_service(lab, node, on=False)
        return True

    with pytest.raises(OpsError, match="refused after the confirmation"):
        ops.fence_break(leader.name, force=False, confirm=untaint_then_yes, delete_pod=False)
    assert lab.volume.read_generation() == 0
    lab.core.patch_node_status(node, {"status": {"conditions": [
        {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]}})

    epoch_before = lab.volume.read_epoch()
    done = cli(standby, "fence", "break", "--confirm-dead", leader.name, "--yes",
               "--delete-pod")
    assert done.returncode == 0, done.stderr
    assert "lock generation 0 -> 1" in done.stdout and "pod deleted: True" in done.stdout
    assert leader.name not in lab.role_labels()
    assert lab.volume.read_generation() == 1
    # The frozen named is still a process (a dead node's would be gone or cut off).
    wait_until(lambda: standby.has_event("named.serving") and lab.holder() == standby.name,
               10, "the standby takes the new lock generation and serves")
    assert lab.volume.read_epoch() == epoch_before + 2  # fence break, then the new leader
    record = json.loads((lab.volume.meta_dir / "fence.log").read_text().splitlines()[-1])
    assert record["dead_pod"] == leader.name and record["generation"] == [0, 1]
    events = [e for e in lab.core.list_namespaced_event(lab.namespace).items
              if e.reason == "FenceBroken"]
    assert events and events[0].involved_object.name == leader.name

    # The old supervisor wakes; its named stays frozen and is killed before it runs.
    leader.signal(signal.SIGCONT)
    named.wait(timeout=T["stop"] + 5)
    assert lab.leader(timeout=5) is standby
    # The log line follows the signal: wait for it rather than race it.
    wait_until(lambda: leader.has_event("fence.guard_kill") or leader.has_event("named.killed"),
               5, "the old leader logs why named died")


def test_status_shows_the_cluster(tmp_path, api_client, kubeconfig, namespace, key_files):
    net = NetLab()
    lab = MasterLab(root=tmp_path, api=api_client, kubeconfig=kubeconfig, namespace=namespace,
                    address_pool=net, key_files=key_files)
    try:
        lab.start(2)
        leader = lab.leader()
        secondaries = lab.start_secondaries(2)
        lab.publish_endpoints([s.ip for s in secondaries])

        def view() -> dict:
            result = cli(leader, "status", "--json")
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        data = wait_until(lambda: (lambda d: d if all(
            row["lag"] == 0 for row in d["zones"][0]["secondaries"]) else None)(view()), 15,
            "status shows converged secondaries")
        assert data["lease"]["holder"] == leader.name
        assert data["lease"]["leader_ip"] == leader.ip
        assert data["lease"]["epoch"] == str(lab.volume.read_epoch())
        assert data["volume"]["owner"]["pod"] == leader.name
        roles = {m["name"]: m["role"] for m in data["masters"]}
        assert roles == {p.name: ("leader" if p is leader else "standby") for p in lab.masters}
        assert [s["name"] for s in data["secondaries"]] == [s.name for s in secondaries]
        assert data["zones"][0]["leader_serial"] is not None

        text = cli(leader, "status").stdout
        assert f"holder: {leader.name}" in text and "leader_serial:" in text
        # From a workstation (no shared volume mounted), status says what it cannot see.
        config = yaml.safe_load(leader.config_path.read_text())
        config["paths"]["dynDir"] = str(tmp_path / "not-mounted")
        workstation = tmp_path / "workstation.yaml"
        workstation.write_text(yaml.safe_dump(config))
        outside = subprocess.run(
            [sys.executable, "-m", "bindha_rwx", "status", "--json", "--config",
             str(workstation)], capture_output=True, text=True, timeout=60,
            env={"PATH": os.environ["PATH"], "KUBECONFIG": str(kubeconfig)})
        assert outside.returncode == 0, outside.stderr
        seen = json.loads(outside.stdout)
        assert seen["volume"]["reachable"] is False and "kubectl exec" in seen["volume"]["note"]
        assert seen["lease"]["holder"] == leader.name
    finally:
        lab.stop()
        net.close()


def test_switchover_to_a_chosen_standby(lab: MasterLab):
    lab.start(3)
    leader = lab.leader()
    target = [p for p in lab.pods if p is not leader][-1]
    result = cli(leader, "switchover", "--to", target.name, "--wait", "15")
    assert result.returncode == 0, result.stderr
    assert f"{target.name} leads now" in result.stdout
    assert lab.leader(timeout=10) is target
    assert leader.alive() and leader.has_event("switchover.start")
    lease = lab.lease()
    assert "bindha.io/switchover-to" not in (lease.metadata.annotations or {})
    # Refusals say why and change nothing.
    again = cli(leader, "switchover", "--to", target.name)
    assert again.returncode == 1 and f"{target.name} already leads" in again.stderr
    nobody = cli(leader, "switchover", "--to", "bind-master-9")
    assert nobody.returncode == 1 and "is not a master pod" in nobody.stderr
    assert lab.holder() == target.name


def test_pause_stops_automatic_takeover_until_resume(lab: MasterLab):
    lab.start(2)
    leader = lab.leader()
    standby = next(p for p in lab.pods if p is not leader)
    paused = cli(standby, "pause")
    assert paused.returncode == 0, paused.stderr
    assert json.loads(cli(standby, "status", "--json").stdout)["lease"]["paused"] is True
    leader.signal(signal.SIGKILL)  # a crash during maintenance
    for _ in samples(2 * T["lease"] + 1, 0.1):
        assert lab.holder() == leader.name, "a standby took over while paused"
        assert standby.named_processes() == []
    assert cli(standby, "resume").returncode == 0
    wait_until(lambda: lab.holder() == standby.name, T["lease"] + 5, "takeover after resume")
    assert json.loads(cli(standby, "status", "--json").stdout)["lease"]["paused"] is False


def _annotate_lease(lab: MasterLab, **annotations: str | None) -> None:
    """Write the Lease's annotations as another writer would (CAS, retried)."""
    for _ in range(20):
        lease = lab.lease()
        assert lease is not None
        merged = dict(lease.metadata.annotations or {})
        for key, value in annotations.items():
            name = f"bindha.io/{key.replace('_', '-')}"
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        lease.metadata.annotations = merged
        try:
            lab.coordination.replace_namespaced_lease(lease.metadata.name, lab.namespace,
                                                      lease)
            return
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    raise AssertionError("the Lease kept changing")


def test_a_stale_switchover_is_dropped_not_obeyed_for_ever(lab: MasterLab):
    """`switchover` accepted a target that died: the leader hands over once, the
    request goes stale after 2 x leaseDuration, a pod leads and clears it, and nobody
    hands over again (before: every new leader did, one tick after starting named)."""
    lab.start(2)
    lab.leader()
    _annotate_lease(lab, switchover_to="bind-master-9")  # a target that is gone
    wait_until(lambda: "bindha.io/switchover-to" not in
               (lab.lease().metadata.annotations or {}), 2 * T["lease"] + T["lease"] + 10,
               "the stale request is dropped")
    leader = lab.leader(timeout=10)
    for _ in samples(2 * T["lease"], 0.1):
        assert lab.holder() == leader.name, "a stale switchover still moves the leader"
    handovers = sum(e.get("event") == "switchover.start" for p in lab.pods for e in p.events())
    assert handovers <= 1, handovers


def test_a_pause_inside_the_compare_and_swap_and_switchover_cancel(lab: MasterLab):
    lab.start(2)
    leader = lab.leader()
    standby = next(p for p in lab.pods if p is not leader)
    # A pause that lands between switchover's checks and its write wins.
    ops = Ops(standby.config, lab.api)
    pods = ops.pods

    def pods_then_pause(component: str) -> list:
        found = pods(component)
        Ops(standby.config, lab.api).pause()
        return found

    ops.pods = pods_then_pause  # type: ignore[method-assign]
    with pytest.raises(OpsError, match="paused meanwhile"):
        ops.switchover(standby.name)
    annotations = lab.lease().metadata.annotations or {}
    assert "bindha.io/switchover-to" not in annotations
    assert annotations.get("bindha.io/paused") == "true"
    # Paused, the leader terminates (a drain): nobody leads, and status says so.
    leader.signal(signal.SIGTERM)
    assert leader.wait_exit(timeout=15) == 0
    for _ in samples(T["lease"], 0.1):
        assert standby.named_processes() == []
    lease = json.loads(cli(standby, "status", "--json").stdout)["lease"]
    assert lease["holder"] is None and "paused with no leader" in lease["warning"]
    # A request for a target that died is withdrawn by hand.
    _annotate_lease(lab, switchover_to="bind-master-9")
    cancelled = cli(standby, "switchover", "--cancel")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "switchover to bind-master-9 withdrawn" in cancelled.stdout
    assert "bindha.io/switchover-to" not in (lab.lease().metadata.annotations or {})
    nothing = cli(standby, "switchover", "--cancel")
    assert nothing.returncode == 0 and "no switchover request was pending" in nothing.stdout
