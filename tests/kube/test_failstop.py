"""The fence holds on every path (issue 11, DESIGN invariants 11 and 12), with real named,
the real apiserver and supervisors as processes.

- an error while taking the fence gives the lock and the Lease back (item 1);
- a thread the fence depends on that dies or stalls kills named and ends the process
  non-zero, and another pod leads (items 4 and 5), injected from inside by
  harness.inject;
- a graceful stop of a fenced leader never runs `rndc stop`, which dumps zone files
  the pod no longer owns (item 10).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import dns.query
import dns.rcode
import dns.update
import pytest

from bindha_rwx.master import thread_budgets
from bindha_rwx.scaffold import EXIT_THREAD_DIED
from harness.bindlab import keyring
from harness.pods import MasterLab, samples, wait_until

ZONE = "ha.example."
T = {"lease": 3.0, "deadline": 1.6, "retry": 0.4, "stop": 0.8}


def test_an_error_while_taking_the_fence_gives_lock_and_lease_back(lab: MasterLab):
    # owner.json is a directory: the rename of the new owner record over it fails
    # (EISDIR), after the lock was taken and the epoch bumped.
    (lab.shared / ".bindha").mkdir()
    (lab.shared / ".bindha" / "owner.json").mkdir()
    first, second = lab.start(2)
    wait_until(lambda: first.has_event("fence.take_failed")
               and second.has_event("fence.take_failed"), 20,
               "both pods fail to take the fence: the first gave the Lease back")
    epoch_before = lab.volume.read_epoch()
    for _ in samples(2 * T["lease"], 0.1):
        assert lab.writers() == [], "named started without an owner record"
    climbed = lab.volume.read_epoch() - epoch_before
    # Each failure steps down for a backoff of at least leaseDuration: a few bumps in
    # 2 x leaseDuration, not one every controller tick (about 60).
    assert climbed <= 6, f"the epoch climbed {climbed} times in {2 * T['lease']:g}s"
    # The volume heals: one pod leads, which needs the lock free.
    (lab.shared / ".bindha" / "owner.json").rmdir()
    leader = lab.leader(timeout=8 * T["lease"] + 10)
    owner = lab.volume.read_owner()
    assert owner is not None and owner.pod == leader.name
    assert owner.epoch == lab.volume.read_epoch()


def _injected(lab: MasterLab, fault: str, count: int = 2) -> list:
    pods = [lab.add_pod() for _ in range(count)]
    for pod in pods:
        pod.inject = fault
        pod.start()
    return pods


@pytest.mark.parametrize("fault", ["guard-sleep-raises", "controller-raises"])
def test_a_thread_that_dies_kills_named_and_ends_the_process(lab: MasterLab, fault: str):
    _injected(lab, fault)
    leader = lab.leader()
    standby = next(p for p in lab.pods if p is not leader)
    named = leader.named_processes()[0]
    leader.inject_trigger.touch()
    code = leader.wait_exit(timeout=10)
    assert code == EXIT_THREAD_DIED, code
    named.wait(timeout=5)
    assert leader.has_event("supervisor.thread_died")
    assert lab.leader(timeout=T["lease"] + 10) is standby


def test_a_secondary_whose_controller_dies_kills_named_and_exits(lab: MasterLab):
    lab.start(1)
    lab.leader()
    secondary = lab.add_pod(command="secondary")
    secondary.inject = "secondary-controller-raises"
    secondary.start()
    named = wait_until(lambda: secondary.named_processes(), 20, "the secondary runs named")[0]
    secondary.inject_trigger.touch()
    assert secondary.wait_exit(timeout=10) == EXIT_THREAD_DIED
    named.wait(timeout=5)
    assert secondary.has_event("supervisor.thread_died")


def test_a_stalled_controller_ends_the_process_while_the_elector_renews(lab: MasterLab):
    """A controller blocked on a hung volume (its epoch read never returns) while the
    elector still renews: the guard's watchdog ends the process at the controller's
    budget, and the standby takes over."""
    _injected(lab, "controller-hangs")
    leader = lab.leader()
    standby = next(p for p in lab.pods if p is not leader)
    named = leader.named_processes()[0]
    budget = thread_budgets(leader.config)["controller"]
    leader.inject_trigger.touch()
    armed_at = time.monotonic()
    code = leader.wait_exit(timeout=budget + 10)
    assert code == EXIT_THREAD_DIED, code
    assert time.monotonic() - armed_at >= budget - 1, "ended before its budget ran out"
    named.wait(timeout=5)
    died = [e for e in leader.events() if e.get("event") == "supervisor.thread_died"]
    assert died and "controller" in died[0]["why"], died
    assert lab.leader(timeout=T["lease"] + 10) is standby


def _update(server: str, key, name: str) -> int:
    update = dns.update.UpdateMessage(ZONE, keyring=keyring(key), keyname=key.name)
    update.add(name, 300, "TXT", '"x"')
    return dns.query.tcp(update, server, timeout=5).rcode()


def test_a_fenced_leader_stopping_never_dumps_zone_files(lab: MasterLab):
    lab.start(1)
    leader = lab.leader()
    key = leader.config.keys["update-key"]
    for n in range(5):  # the zone is dirty: `rndc stop` would dump it to its file
        assert _update(leader.ip, key, f"dirty{n}") == dns.rcode.NOERROR
    zone_file = lab.shared / "ha.example.zone"
    before = zone_file.read_bytes()
    # Someone else's epoch is on the volume, and SIGTERM arrives before the leader's
    # next epoch check (every retryPeriod) could notice it.
    lab.volume.write_epoch(lab.volume.read_epoch() + 1)
    leader.signal(signal.SIGTERM)
    assert leader.wait_exit(timeout=15) == 0
    assert zone_file.read_bytes() == before, "a fenced leader's named dumped its zone"
    stops = [e for e in leader.events() if e.get("event") in ("named.stopped", "named.killed")]
    assert [e["event"] for e in stops] == ["named.killed"], stops


def _deny_leader_label(lab: MasterLab, key: str, value: str) -> Callable[[], None]:
    """A real ValidatingAdmissionPolicy that refuses to label a pod of this namespace
    ``key=value``: the failover's label PATCH fails as an API error would make it.
    Returns the function that lifts it. Both wait until the apiserver applies them."""
    from kubernetes import client

    admission = client.AdmissionregistrationV1Api(lab.api)
    name = f"deny-leader-{lab.namespace}"
    admission.create_validating_admission_policy({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{
                     "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                     "resources": ["pods"]}]},
                 "validations": [{
                     "expression": f"!has(object.metadata.labels) || "
                                   f"!('{key}' in object.metadata.labels) || "
                                   f"object.metadata.labels['{key}'] != '{value}'",
                     "message": "test: this label is refused"}]}})
    admission.create_validating_admission_policy_binding({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": lab.namespace}}}}})
    probe = lab.add_pod("label-probe")  # a pod object only: never started

    def refused() -> bool:
        try:
            lab.core.patch_namespaced_pod(probe.name, lab.namespace,
                                          {"metadata": {"labels": {key: value}}},
                                          dry_run="All")
        except client.ApiException as exc:
            return exc.status in (403, 422)
        return False

    wait_until(refused, 30, "the admission policy is in force")

    def lift() -> None:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)
        wait_until(lambda: not refused(), 30, "the admission policy is lifted")

    return lift


def test_a_failed_role_label_is_sent_again(lab: MasterLab):
    first = lab.add_pod()
    label = first.config.role_label
    lift = _deny_leader_label(lab, label.key, label.leader)
    try:
        first.start()
        leader = lab.leader()
        wait_until(lambda: leader.has_event("kube.write_failed"), 10,
                   "the leader's label PATCH is refused")
        assert lab.role_labels()[leader.name] != label.leader
        assert (leader.work_dir / "role").read_text() == "leader\n"
    finally:
        lift()
    wait_until(lambda: lab.role_labels()[leader.name] == label.leader, 5 * T["retry"] + 5,
               "the leader's label is sent again once the API takes it")


def test_a_full_stdout_pipe_never_delays_the_kill_of_named(lab: MasterLab):
    """The log collector has stopped reading (a full stdout pipe from the start): no
    thread may wait on it. The leader still leads, and cut off from the API its guard
    still SIGKILLs a named that ignores SIGTERM (here: a stopped one) on time."""
    first = lab.add_pod()
    first.full_stdout = True
    first.start()
    wait_until(lambda: lab.holder() == first.name and first.named_processes(), 20,
               "the pod with a full stdout leads and runs named")
    named = first.named_processes()[0]
    named.suspend()  # SIGTERM stays pending: only the guard's SIGKILL ends it
    first.proxy.blackhole()
    cut_at = time.monotonic()
    named.wait(timeout=T["deadline"] + T["stop"] + 5)
    took = time.monotonic() - cut_at
    assert took <= T["deadline"] + T["stop"] + 1.0, took
    second = lab.add_pod()
    second.start()
    assert lab.leader(timeout=T["lease"] + 15) is second
    first.resume_log_collector()
    wait_until(lambda: first.has_event("fence.guard_kill"), 10, "the held lines come out")
