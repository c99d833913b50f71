"""The node e2e suite's side of harness/nodelab.py: the lab as module fixtures use it
(tests/node/test_node_lab.py and tests/node/test_node_loss.py each bring up a lab of
their own), with the prerequisites as test requirements and the masters brought up
through the documented fix of a root-owned share (exit 2, chown 101:101, Ready)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
from kubernetes import client

from harness import nodelab
from harness.kubenode import LAB_SHARE, node_image_archive
from harness.loopback import claim
from harness.nodelab import (
    NS,
    ROOT,
    SHARE,
    ZONE,
    Lab,
    UpdateClient,
    apply,
    kustomize_build,
    masters_ready,
    names_on,
    send_update,
    serves,
    terminated,
)
from harness.polling import wait_until
from tests.conftest import require
from tests.node.conftest import NodeLab

__all__ = ["NS", "ROOT", "SHARE", "ZONE", "Lab", "UpdateClient", "apply", "bring_up",
           "kustomize_build", "masters_ready", "names_on", "product_lab", "send_update",
           "serves", "soa"]
_share_claimed = False


def claim_share() -> bool:
    """The claim "node-lab-share" for this process: the overlay names a fixed host
    directory, so one run at a time (kubenode cleanup removes it after a killed run).
    An flock is not re-entrant across descriptors: claimed once, kept for the run."""
    global _share_claimed
    if not _share_claimed:
        _share_claimed = claim("node-lab-share")
    return _share_claimed


def product_lab(node_lab: NodeLab, index: int = 2) -> Iterator[Lab]:
    """The lab (a module fixture's generator): a second node (``index``), the product
    image on both, the overlay applied onto a root-owned share."""
    try:
        archive = node_image_archive()
    except Exception as exc:  # the build's own output is on stderr already
        require(False, f"the product image could not be built: {exc}")
        raise
    require(claim_share(), f"{LAB_SHARE} is in use by another run")
    with nodelab.product_lab(node_lab, archive, index=index) as lab:
        yield lab


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
    name = pods[0].metadata.name

    def exit_log() -> str | None:
        """The log of an attempt that refused the share. The last exit's (the container
        may be waiting to restart) or the running attempt's; the kubelet may already
        have removed the dead one ("unable to retrieve container logs for ..."), and
        every attempt logs the refusal again until the chown."""
        for previous in (True, False):
            with contextlib.suppress(client.ApiException):
                text = lab.core.read_namespaced_pod_log(name, NS, container="bind",
                                                        previous=previous)
                if "supervisor.volume_unusable" in text:
                    return text
        return None
    log = wait_until(exit_log, 90, f"{name}'s log of a refused start", interval=0.5)
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


def soa(address: str, zone: str) -> bool:
    try:
        answer = dns.query.udp(dns.message.make_query(zone, "SOA"), address, timeout=1)
    except (OSError, dns.exception.DNSException):
        return False
    return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)


