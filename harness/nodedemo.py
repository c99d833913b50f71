"""The demo on real kubelets (``scripts/demo --kubelet``).

The same story as harness/demo.py, told by Kubernetes itself: two kubelet nodes with
containerd (harness/kubenode.py), the controller-manager and the scheduler, and the
product applied from manifests/overlays/node-lab as a user would (2 masters, one per
node, and a secondary; the lab's 6 s Lease). A client behind the leader-only Service
writes without pause while the demo

1. deletes the leader pod (`kubectl delete pod`): the kubelet's SIGTERM, a graceful
   handover, and the StatefulSet recreates the pod as a standby;
2. kills the leader's container (kill -9 of its PID 1, the supervisor; `named` dies with
   it): the kubelet restarts the container, which re-takes its own Lease;

and prints, for each, when the new leader acknowledged, the longest time the client could
not write, and how many acknowledged updates were lost. Then it waits; Ctrl-C stops it
and removes everything it made. Slower than the process demo: the nodes, the image
import and the pods' start take a minute or two.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.kubenode import build_parts, node_image_archive, unavailable
from harness.loopback import claim
from harness.nodelab import (
    NS,
    SHARE,
    ZONE,
    Lab,
    UpdateClient,
    is_ready,
    masters_ready,
    names_on,
    node_plane,
    product_lab,
    serves,
    wait_all_ready,
)
from harness.polling import wait_until
from harness.testplane import build_binary


def say(text: str = "") -> None:
    print(text, flush=True)


def report(lab: Lab, updates: UpdateClient, leader: Any, since: float, what: str) -> None:
    acked, failures = updates.finish(leader)
    lost = [n for n in acked if n not in names_on(lab, leader.status.pod_ip)]
    say(f"   longest time without an acknowledged update: {updates.longest_gap(since):.2f}s "
        f"({what})")
    say(f"   {len(acked)} updates acknowledged in all, {failures} refused or unanswered "
        f"while no pod led, {len(lost)} lost")
    secondary = lab.pods("bind-secondary")[0]
    wait_until(lambda: serves(secondary.status.pod_ip, acked[-1]), 30,
               "the secondary serves the last update", interval=0.2)
    say(f"   the secondary {secondary.metadata.name} serves the last one")


def switchover(lab: Lab) -> None:
    old = wait_until(lab.leader, 60, "a leader", interval=0.2)
    say(f"\n== switchover: kubectl delete pod {old.metadata.name} (the leader, on "
        f"{old.spec.node_name}); the kubelet sends SIGTERM")
    updates = UpdateClient(lab, "s")
    updates.start()
    wait_until(lambda: len(updates.acked) >= 20, 30, "updates flowing", interval=0.1)
    started = time.monotonic()
    lab.core.delete_namespaced_pod(old.metadata.name, NS)
    uid = old.metadata.uid
    new = wait_until(lambda: (p := lab.leader()) is not None and p.metadata.uid != uid
                     and is_ready(p) and p, 60, "a new leader", interval=0.1)
    say(f"   new leader {new.metadata.name} ({new.status.pod_ip}) after "
        f"{time.monotonic() - started:.1f}s")
    report(lab, updates, new, started, "the Service's switch to the new leader")

    def recreated() -> bool:
        pod = {p.metadata.name: p for p in lab.pods("bind-master")}.get(old.metadata.name)
        return pod is not None and pod.metadata.uid != uid and is_ready(pod)
    wait_until(recreated, 120, f"{old.metadata.name} recreated", interval=0.5)
    say(f"   {old.metadata.name} recreated by the StatefulSet: a standby again, "
        f"{time.monotonic() - started:.1f}s after the delete")


def crash(lab: Lab) -> None:
    wait_until(lambda: masters_ready(lab), 120, "both masters Ready", interval=0.5)
    leader = lab.leader()
    restarts = leader.status.container_statuses[0].restart_count
    say(f"\n== crash: kill -9 of {leader.metadata.name}'s supervisor (the container's PID 1, "
        "named dies with it); the kubelet restarts the container")
    updates = UpdateClient(lab, "c")
    updates.start()
    wait_until(lambda: len(updates.acked) >= 20, 30, "updates flowing", interval=0.1)
    started = time.monotonic()
    os.kill(lab.task_pid(leader), signal.SIGKILL)

    def leads() -> Any | None:
        """The restarted container leading again, or (had its restart been slower than the
        Lease) the other master: a ready container of the pod that holds the label."""
        pod = lab.leader()
        if pod is None:
            return None
        status = pod.status.container_statuses[0]
        if pod.metadata.uid == leader.metadata.uid and status.restart_count <= restarts:
            return None  # the label outlives the killed container
        return pod if status.ready else None
    again = wait_until(leads, 90, "a leader after the kill", interval=0.1)
    same = again.metadata.uid == leader.metadata.uid
    how = "again, on its own Lease (same pod UID)" if same else "(the standby took over)"
    say(f"   {again.metadata.name} leads {how} {time.monotonic() - started:.1f}s after the kill")
    report(lab, updates, again, started, "the container's restart")


def run(scenarios: bool) -> int:
    why = unavailable()
    if why:
        say(f"demo --kubelet: {why}")
        return 2
    if not claim("node-lab-share"):
        say(f"demo --kubelet: {SHARE.parent} is in use by another run (tests/node?)")
        return 2
    say("bindha-rwx demo on real kubelets: 2 nodes (kubelet + containerd each), the "
        "controller-manager, the scheduler, manifests/overlays/node-lab applied")
    parts, plane_binary, archive = build_parts(), build_binary(), node_image_archive()
    with tempfile.TemporaryDirectory(prefix="bindha-node-demo-") as tmp:
        work = Path(tmp)
        with node_plane(parts, plane_binary, work, verbose=False) as plane, \
                product_lab(plane, archive, share_owner=101) as lab:
            started = time.monotonic()
            wait_all_ready(lab, 240)
            leader = wait_until(lab.leader, 60, "a leader", interval=0.2)
            say(f"every pod Ready {time.monotonic() - started:.0f}s after the apply")
            key = work / "update-key.key"
            algorithm, secret = lab.keys["update-key"]
            key.write_text(f'key "update-key" {{ algorithm {algorithm}; secret "{secret}"; }};\n')
            say(f"\ncontrol plane:   export KUBECONFIG={plane.plane.kubeconfig}")
            say(f"                 kubectl -n {NS} get pods -o wide -L bindha.io/role")
            say(f"shared volume:   {SHARE} (a hostPath PV, owned by 101:101)")
            for pod in lab.pods("bind-master") + lab.pods("bind-secondary"):
                role = (pod.metadata.labels or {}).get("bindha.io/role", "secondary")
                say(f"{pod.metadata.name:18} {role:9} {pod.status.pod_ip:15} "
                    f"on {pod.spec.node_name}")
            say(f"\nsend an update to the leader ({leader.status.pod_ip}):")
            say(f"  printf 'server {leader.status.pod_ip}\\nzone {ZONE}\\nupdate add www.{ZONE} "
                f"300 A 192.0.2.1\\nsend\\n' | nsupdate -k {key}")
            secondary = lab.pods("bind-secondary")[0].status.pod_ip
            say(f"read it from the secondary:\n  dig @{secondary} www.{ZONE} A +short")
            if scenarios:
                switchover(lab)
                crash(lab)
                leader = wait_until(lab.leader, 60, "a leader", interval=0.2)
                say(f"\nthe leader is now {leader.metadata.name} ({leader.status.pod_ip})")
            say("\nrunning; Ctrl-C stops everything and removes the demo's files")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            say("\nstopping")
        if plane.left:
            say(f"demo --kubelet: left behind: {plane.left}")
            return 1
    return 0
