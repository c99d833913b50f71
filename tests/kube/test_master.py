"""`bindha-rwx run` as real processes over one shared directory, against the real
apiserver, each with real named: the failure matrix rows the supervisor owns.

Timings come from the product's config (harness.pods.TEST_TIMING: a 3 s Lease,
renewDeadline 1.6 s, retryPeriod 0.4 s, stopTimeout 0.8 s). Bounds asserted here are
generous and prove invariants; speed is measured in benchmarks/.
"""

from __future__ import annotations

import platform
import signal
import subprocess
import time

import bindha_rwx
from harness.pods import MasterLab, _is_running_named, http_probe, samples, wait_until
from harness.writer import UpdateWriter, served_names

ZONE = "ha.example."
T = {"lease": 3.0, "deadline": 1.6, "retry": 0.4, "stop": 0.8}


def single_writer_sample(lab: MasterLab) -> list[str]:
    """Pods running named now; asserts the fence's view agrees when there is one."""
    writers = lab.writers()
    pods = [pod.name for pod, _ in writers]
    assert len(pods) <= 1, f"two named writers at once: {pods}"
    return pods


def test_five_candidates_exactly_one_writer(lab: MasterLab):
    lab.start(5)
    leader = lab.leader(timeout=30)
    for _ in samples(30, 0.1):
        pods = single_writer_sample(lab)
        assert pods == [leader.name], pods
        owner = lab.volume.read_owner()
        assert owner is not None and owner.pod == leader.name
    assert lab.holder() == leader.name
    lease = lab.lease()
    assert lease.metadata.annotations["bindha.io/epoch"] == str(lab.volume.read_epoch())
    labels = lab.role_labels()
    assert labels[leader.name] == "leader"
    assert sorted(v for k, v in labels.items() if k != leader.name) == ["standby"] * 4
    assert (leader.work_dir / "role").read_text() == "leader\n"
    assert all((p.work_dir / "role").read_text() == "standby\n" for p in lab.pods
               if p is not leader)
    events = lab.core.list_namespaced_event(lab.namespace).items
    acquired = [e for e in events if e.reason == "LeaderAcquired"]
    assert [e.involved_object.name for e in acquired] == [leader.name]
    # The zone was bootstrapped on the volume by the leader, once.
    assert (lab.shared / "ha.example.zone").exists()
    assert sum(p.has_event("zone.bootstrapped") for p in lab.pods) == 1


def test_graceful_handover_loses_no_acknowledged_update(lab: MasterLab):
    lab.start(3)
    leader = lab.leader()
    key = leader.config.keys["update-key"]
    writer = UpdateWriter(ZONE, [p.ip for p in lab.pods], key).start()
    wait_until(lambda: len(writer.acks) >= 50, 10, "updates flowing")
    sigterm_at = time.monotonic()
    leader.signal(signal.SIGTERM)
    assert leader.wait_exit(timeout=T["stop"] + 3 * T["retry"] + 5) == 0
    new = lab.leader(timeout=10)
    assert new is not leader
    wait_until(lambda: any(a.server == new.ip for a in writer.acks), 10,
               "the new leader acknowledges updates")
    time.sleep(0.5)
    writer.stop()
    gap = writer.max_gap(after=sigterm_at)
    print(f"graceful handover write gap: {gap:.3f}s; {len(writer.acks)} acknowledged updates")
    served = served_names(new.ip, ZONE, new.config.keys["transfer-key"])
    lost = [a.name for a in writer.acks if a.name not in served]
    assert lost == [], f"acknowledged updates lost: {lost[:10]}"
    assert not leader.named_processes()
    # A handover released the Lease: it did not wait for expiry.
    assert gap < T["lease"], f"write gap {gap:.2f}s: the Lease was not released"


def test_sigkill_of_the_supervisor_kills_named_and_a_standby_takes_over(lab: MasterLab):
    lab.start(2)
    leader = lab.leader()
    named = leader.named_processes()[0]
    leader.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    # Parent-death signal: named dies with its supervisor. Dead means a zombie or gone:
    # its reaper now is the machine's init, which may take its time (seen: 2.03 s).
    wait_until(lambda: not _is_running_named(named), 5, "named dies with its supervisor")
    assert time.monotonic() - killed_at < 2.0
    new = lab.leader(timeout=T["lease"] + 10)
    took = time.monotonic() - killed_at
    assert new is not leader
    # Not before the Lease could expire: nobody released it.
    assert took >= T["lease"] - T["retry"], took
    print(f"crash takeover: {took:.2f}s (leaseDuration {T['lease']}s)")


def test_leader_cut_off_from_the_api_stops_named_before_the_lease_expires(lab: MasterLab):
    lab.start(2)
    leader = lab.leader()
    standby = next(p for p in lab.pods if p is not leader)
    named = leader.named_processes()[0]
    leader.proxy.blackhole()
    cut_at = time.monotonic()
    named.wait(timeout=T["deadline"] + T["stop"] + 5)
    dead_at = time.monotonic()
    wait_until(lambda: lab.holder() == standby.name, T["lease"] + 10, "standby takes over")
    taken_at = time.monotonic()
    print(f"cut at 0; named dead at {dead_at - cut_at:.2f}s; Lease taken at "
          f"{taken_at - cut_at:.2f}s")
    assert dead_at - cut_at <= T["deadline"] + T["stop"] + 0.5
    assert dead_at < taken_at
    lab.leader(timeout=10)  # the standby starts named once it has the lock
    # The log line follows the signal: wait for it rather than race it.
    wait_until(lambda: leader.has_event("fence.guard_kill") or leader.has_event("named.killed"),
               5, "the old leader logs why named died")


def test_frozen_leader_blocks_the_standby_on_the_fence(lab: MasterLab):
    lab.start(2)
    leader = lab.leader()
    standby = next(p for p in lab.pods if p is not leader)
    named = leader.named_processes()[0]
    leader.signal(signal.SIGSTOP)
    named.suspend()  # the whole "VM" is frozen: supervisor and named
    wait_until(lambda: lab.holder() == standby.name, T["lease"] + 10, "standby gets the Lease")
    wait_until(lambda: standby.has_event("fence.blocked"), 5, "standby reports blocked on fence")
    for _ in samples(2 * T["lease"], 0.1):
        assert standby.named_processes() == [], "standby started named under a held lock"
    # The old leader wakes: it sees the Lease gone, kills named, frees the lock.
    named.resume()
    leader.signal(signal.SIGCONT)
    named.wait(timeout=T["stop"] + 5)
    assert lab.leader(timeout=10) is standby


def test_epoch_bumped_under_the_leader_kills_named(lab: MasterLab):
    lab.start(1)
    leader = lab.leader()
    named = leader.named_processes()[0]
    lab.volume.write_epoch(lab.volume.read_epoch() + 1)
    bumped_at = time.monotonic()
    named.wait(timeout=T["retry"] + T["stop"] + 5)
    assert time.monotonic() - bumped_at <= T["retry"] + T["stop"] + 0.5
    assert leader.has_event("fence.self_fence")


def test_frozen_supervisor_fails_liveness_and_keeps_the_standby_out(lab: MasterLab):
    lab.start(2)
    leader = lab.leader()
    standby = next(p for p in lab.pods if p is not leader)
    assert probe(leader, "live").returncode == 0
    # The HTTP probes the manifests use give the exec probes' verdicts.
    assert http_probe(leader, "/healthz")[0] == 200
    assert wait_until(lambda: http_probe(leader, "/readyz"), 10, "readyz")[0] == 200
    ready = http_probe(standby, "/readyz")
    assert ready is not None and ready[0] == 200 and "standby" in ready[1], ready
    assert http_probe(leader, "/nothing")[0] == 404
    leader.signal(signal.SIGSTOP)  # named keeps running: only the supervisor hangs
    frozen_at = time.monotonic()
    wait_until(lambda: probe(leader, "live").returncode == 1, T["deadline"] + 3,
               "probe live fails")
    assert time.monotonic() - frozen_at <= T["deadline"] + 1.5
    assert "hung or frozen" in probe(leader, "live").stdout
    assert http_probe(leader, "/healthz", timeout=1.0) is None  # a frozen one: no answer
    wait_until(lambda: lab.holder() == standby.name, T["lease"] + 10, "standby gets the Lease")
    for _ in samples(T["lease"], 0.1):
        assert standby.named_processes() == []
    leader.signal(signal.SIGCONT)
    assert lab.leader(timeout=15) is standby


def probe(pod, kind: str) -> subprocess.CompletedProcess[str]:
    return pod.probe(kind)


def test_named_crash_is_restarted_then_a_crash_loop_steps_down(lab: MasterLab):
    lab.start(2)
    leader = lab.leader()
    standby = next(p for p in lab.pods if p is not leader)
    first = leader.named_processes()[0]
    # Each killed named is waited for until its supervisor reaped it: right after kill()
    # it still shows as running, and its pod still holds the Lease.
    first.kill()
    first.wait(timeout=5)
    restarted = wait_until(lambda: [p for p in leader.named_processes() if p.pid != first.pid],
                           10, "named restarted by the same leader")
    assert lab.holder() == leader.name
    wait_until(lambda: leader.has_event("named.crashed"), 5, "the crash is logged")
    # Two more crashes inside the window: the leader steps down, the standby takes over.
    restarted[0].kill()
    restarted[0].wait(timeout=5)
    third = wait_until(lambda: [p for p in leader.named_processes()
                                if p.pid not in (first.pid, restarted[0].pid)], 10,
                       "named restarted again")
    third[0].kill()
    third[0].wait(timeout=5)
    wait_until(lambda: lab.holder() != leader.name, 10, "the crash-looping leader lets go")
    assert lab.leader(timeout=15) is standby
    wait_until(lambda: leader.has_event("leader.dropped"), 5, "the step-down is logged")
    assert leader.named_processes() == []


def scrape(pod) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://{pod.ip}:9110/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_say_who_leads(lab: MasterLab):
    lab.start(2)
    leader = lab.leader()
    standby = next(p for p in lab.pods if p is not leader)
    wait_until(lambda: scrape(leader).get("bindha_renewals_total", 0) >= 2, 5, "renewals")
    mine, theirs = scrape(leader), scrape(standby)
    assert mine['bindha_role{role="leader"}'] == 1 and mine['bindha_role{role="standby"}'] == 0
    assert theirs['bindha_role{role="standby"}'] == 1
    assert mine["bindha_epoch"] == lab.volume.read_epoch() and theirs["bindha_epoch"] == 0
    renewals = mine["bindha_lease_renew_duration_seconds_count"]
    assert renewals >= 2 and 0 < mine["bindha_lease_renew_duration_seconds_sum"] / renewals \
        < T["deadline"]
    assert mine['bindha_lease_renew_duration_seconds_bucket{le="+Inf"}'] == renewals
    assert mine[f'bindha_build_info{{python="{platform.python_version()}",version='
                f'"{bindha_rwx.__version__}"}}'] == 1
    assert mine["process_resident_memory_bytes"] > 10e6  # prometheus_client's collector
    assert theirs.get("bindha_renewals_total", 0) == 0
    leader.named_processes()[0].kill()
    wait_until(lambda: scrape(leader).get("bindha_named_restarts_total", 0) == 1, 5,
               "a named restart is counted")
