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

import yaml

from harness.netlab import NetLab
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
    assert "is Running and Ready" in refused.stderr and "--force" in refused.stderr
    assert lab.volume.read_generation() == 0
    # Without --yes and without a terminal it asks nobody and changes nothing.
    lab.set_pod_status(leader.name, leader.ip, ready=False)  # the node controller's verdict
    unconfirmed = cli(standby, "fence", "break", "--confirm-dead", leader.name, stdin="")
    assert unconfirmed.returncode == 1 and "add --yes" in unconfirmed.stderr
    assert lab.volume.read_generation() == 0
    wrong = cli(standby, "fence", "break", "--confirm-dead", standby.name, "--yes")
    assert wrong.returncode == 1 and f"the lock owner is {leader.name}" in wrong.stderr

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
