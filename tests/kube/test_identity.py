"""A holder identity names one incarnation of a pod (issue 11 item 6, invariant 13).

After a force delete, a new pod of the same name must not take the old one's Lease
at once, and the old one, back from a freeze, must neither renew the new one's Lease
nor relabel the new pod: the identity is the pod name plus its UID, and label PATCHes
carry the UID as a precondition.
"""

from __future__ import annotations

import signal

from harness.pods import MasterLab, samples, wait_until

T = {"lease": 3.0, "deadline": 1.6, "retry": 0.4, "stop": 0.8}


def _holder_identity(lab: MasterLab) -> str | None:
    lease = lab.lease()
    return lease.spec.holder_identity if lease else None


def test_a_new_pod_of_the_same_name_is_another_holder(lab: MasterLab):
    (old,) = lab.start(1)
    assert lab.leader() is old
    old_identity = _holder_identity(lab)
    assert old_identity == f"{old.name}_{old.uid}"
    named = old.named_processes()[0]
    old.signal(signal.SIGSTOP)  # its node froze
    named.suspend()
    # The operator force-deletes the pod; the StatefulSet makes a new one, same name.
    lab.core.delete_namespaced_pod(old.name, lab.namespace, grace_period_seconds=0)
    wait_until(lambda: old.name not in lab.role_labels(), 10, "the old Pod object is gone")
    new = lab.add_pod(old.name, incarnation=2)
    assert new.uid != old.uid
    new.start()
    wait_until(lambda: new.has_event("supervisor.start"), 15, "the new incarnation runs")
    # Not its own Lease: it waits for the old holder's Lease to expire, as seen here.
    for _ in samples(T["lease"] - 0.5, 0.05):
        assert _holder_identity(lab) == old_identity
        assert not new.has_event("lease.acquired"), "the new pod re-took another's Lease"
    wait_until(lambda: _holder_identity(lab) == f"{new.name}_{new.uid}", T["lease"] + 10,
               "the new incarnation takes the expired Lease")
    # The old one wakes: a 409, another holder, so it lost; its named dies, the lock
    # frees, the new one leads and keeps both the Lease and its label.
    named.resume()
    old.signal(signal.SIGCONT)
    named.wait(timeout=T["stop"] + 5)
    wait_until(lambda: new.has_event("named.serving"), 15, "the new incarnation serves")
    label = new.config.role_label
    for _ in samples(2 * T["lease"], 0.1):
        assert _holder_identity(lab) == f"{new.name}_{new.uid}"
        assert lab.role_labels()[new.name] == label.leader, "the old one relabelled the pod"
    wait_until(lambda: old.has_event("lease.lost"), 5, "the old incarnation knows it lost")
