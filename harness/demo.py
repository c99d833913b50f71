"""The README's main job: a local demo cluster on this machine.

The real control plane (kube-apiserver + etcd), 3 master pods (`bindha-rwx run`) over
one shared directory and 2 secondaries (`bindha-rwx secondary`), each a process in a
network namespace of its own with its own IP (harness/netlab.py), at the product's
default timings. It prints where to send updates and queries, runs a scripted
switchover (SIGTERM to the leader) and a crash failover (kill -9 of the leader's
supervisor) while a client writes without pause, prints the write gap, the takeover
time and whether any acknowledged update was lost, then waits. Ctrl-C stops
everything and removes what it made.

    scripts/demo [--no-scenarios] [--test-timings] [--kubelet]

With ``--kubelet`` the same scenarios run on real pods (harness/nodedemo.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from harness.bindlab import soa_serial
from harness.pods import TEST_TIMING, MasterLab, MasterPod, netns_lab, wait_until
from harness.writer import UpdateWriter, served_names

ZONE = "ha.example."
DEFAULT_TIMING = {"leaseDuration": 10, "renewDeadline": 6, "retryPeriod": 2, "stopTimeout": 3}


def say(text: str = "") -> None:
    print(text, flush=True)


def converged(lab: MasterLab, leader: MasterPod) -> bool:
    theirs = soa_serial(leader.ip, ZONE)
    return theirs is not None and all(soa_serial(s.ip, ZONE) == theirs for s in lab.secondaries)


def scenario(lab: MasterLab, kind: str, timing: dict[str, float]) -> None:
    leader = lab.leader(timeout=60)
    key = leader.config.keys["update-key"]
    writer = UpdateWriter(ZONE, [p.ip for p in lab.masters], key).start()
    wait_until(lambda: len(writer.acks) >= 20, 20, "updates flowing")
    started = time.monotonic()
    if kind == "switchover":
        say(f"\n== switchover: SIGTERM to the leader {leader.name} ({leader.ip})")
        leader.signal(signal.SIGTERM)
    else:
        say(f"\n== crash: kill -9 of the leader's supervisor {leader.name} ({leader.ip}); "
            f"its named dies with it, the Lease must expire ({timing['leaseDuration']}s)")
        leader.signal(signal.SIGKILL)
    leader.wait_exit(60)
    new = wait_until(lambda: (lambda p: p if p is not leader else None)(lab.leader(60)), 60,
                     "a new leader")
    wait_until(lambda: any(a.server == new.ip and a.acked > started for a in writer.acks), 30,
               "the new leader acknowledges updates")
    taken = min(a.acked for a in writer.acks if a.server == new.ip and a.acked > started)
    time.sleep(0.5)
    writer.stop()
    served = served_names(new.ip, ZONE, new.config.keys["transfer-key"])
    lost = [a.name for a in writer.acks if a.name not in served]
    say(f"   new leader {new.name} ({new.ip}); first update acknowledged by it "
        f"{taken - started:.3f}s after the {'SIGTERM' if kind == 'switchover' else 'kill'}")
    say(f"   {len(writer.acks)} updates acknowledged in all, {len(lost)} lost")
    wait_until(lambda: converged(lab, new), 30, "secondaries converge")
    say("   both secondaries serve the new leader's serial")
    leader.process = None
    leader.start()
    wait_until(lambda: leader.has_event("lease.holder_seen"), 30, "old pod back")
    say(f"   {leader.name} restarted: a standby again")


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo")
    parser.add_argument("--no-scenarios", action="store_true",
                        help="start the cluster and wait, without the scripted faults")
    parser.add_argument("--test-timings", action="store_true",
                        help="a 3 s Lease instead of the default 10 s")
    parser.add_argument("--kubelet", action="store_true",
                        help="real pods: two kubelet nodes running the manifests "
                        "(harness/nodedemo.py; the node lab's own 6 s Lease)")
    args = parser.parse_args()
    if args.kubelet:
        from harness.nodedemo import run
        try:
            return run(scenarios=not args.no_scenarios)
        except AssertionError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
    timing = dict(TEST_TIMING) if args.test_timings else dict(DEFAULT_TIMING)
    try:
        say("bindha-rwx demo: a real kube-apiserver, 3 masters and 2 secondaries as "
            "processes, one shared directory")
        with netns_lab("demo", timing, namespace="demo") as lab:
            keys = lab.key_files
            lab.start(3)
            leader = lab.leader(timeout=60)
            lab.start_secondaries(2)
            lab.publish_endpoints([s.ip for s in lab.secondaries])
            wait_until(lambda: converged(lab, leader), 60, "secondaries loaded")
            say(f"\ncontrol plane:   export KUBECONFIG={lab.kubeconfig}")
            say("                 kubectl -n demo get lease bind-master-leader -o yaml")
            say(f"shared volume:   {lab.shared}")
            for pod in lab.masters:
                role = "LEADER " if pod is leader else "standby"
                say(f"master  {role} {pod.name} {pod.ip}   log {pod.log_path}")
            for pod in lab.secondaries:
                say(f"secondary       {pod.name} {pod.ip}   log {pod.log_path}")
            say(f"\nsend an update to the leader ({leader.ip}):")
            say(f"  printf 'server {leader.ip}\\nzone {ZONE}\\nupdate add www.{ZONE} 300 A "
                f"192.0.2.1\\nsend\\n' | nsupdate -k {keys['update-key']}")
            say(f"read it from a secondary:\n  dig @{lab.secondaries[0].ip} www.{ZONE} A +short")
            if not args.no_scenarios:
                scenario(lab, "switchover", timing)
                scenario(lab, "crash", timing)
                leader = lab.leader(timeout=60)
                say(f"\nthe leader is now {leader.name} ({leader.ip})")
            say("\nrunning; Ctrl-C stops everything and removes the demo's files")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
            say("\nstopping")
        return 0
    except AssertionError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
