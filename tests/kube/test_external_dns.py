"""ExternalDNS (sigs.k8s.io/external-dns, built from the Go module proxy by
scripts/build-external-dns.sh) publishes a Service's records into the lab with its rfc2136
provider, keeps them through a graceful handover, and removes them when the Service goes.

Each sync is one ``--once`` run with a kubeconfig for the test apiserver and the leader's
pod IP as ``--rfc2136-host``: what the leader-only bind-master Service routes to (the lab
has no Service VIP). Not both masters' IPs: v0.23.0's failover from a host that refuses
the connection resends the update with a second TSIG record, which named answers with
FORMERR, for ever (seen here; docs/clients.md). Its key is granted updates (updatePolicy)
and transfers (zones[].allowTransfer): it reads the zone by AXFR to find the records it
owns. Without allowTransfer the AXFR is REFUSED, and ExternalDNS can plan nothing: no
record, no clean-up (the second test).

Every connect()/sendto() it makes is recorded with strace: all go to loopback addresses
(the apiserver and the leader), none off the machine (no cloud metadata service).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone
import psutil
import pytest
from kubernetes import client

from bindha_rwx.ops import Ops
from harness.bindlab import keyring, write_key_files
from harness.pods import MasterLab, MasterPod, wait_until
from tests.conftest import require
from tests.kube.conftest import built_tool

pytestmark = [pytest.mark.kube, pytest.mark.named, pytest.mark.root]

ZONE = "ha.example."
HOST = "web.ha.example"
ADDRESS = "192.0.2.80"  # TEST-NET-1: published, never contacted
KEY = "external-dns"


@pytest.fixture(scope="module")
def external_dns() -> str:
    return built_tool("BINDHA_EXTERNAL_DNS_BIN", "build-external-dns.sh")


@dataclass
class Run:
    """One ``--once`` run of ExternalDNS: its exit code, its log, where it connected."""

    returncode: int
    log: str
    destinations: set[str]


def run_once(binary: str, lab: MasterLab, kubeconfig: Path, work: Path, host: str,
             secret: str, algorithm: str) -> Run:
    """One sync, under strace, against ``host`` (what the bind-master Service routes to:
    the leader). The process is ours alone, waited for with a timeout, killed by pid."""
    require(shutil.which("strace") is not None, "needs strace (Debian's strace)")
    work.mkdir(parents=True, exist_ok=True)
    metrics_ip = lab.address_pool.take()
    argv = [binary, f"--kubeconfig={kubeconfig}", "--source=service",
            f"--namespace={lab.namespace}", "--provider=rfc2136", f"--rfc2136-host={host}",
            "--rfc2136-port=53", f"--rfc2136-zone={ZONE.rstrip('.')}",
            f"--rfc2136-tsig-keyname={KEY}", f"--rfc2136-tsig-secret-alg={algorithm}",
            "--rfc2136-axfr", f"--domain-filter={ZONE.rstrip('.')}",
            "--policy=sync", "--registry=txt", f"--txt-owner-id=lab-{lab.namespace}",
            "--rfc2136-min-ttl=60s",  # else its records get TTL 0 (no TTL annotation)
            "--once", f"--metrics-address={metrics_ip}:7979", "--log-level=debug"]
    # The secret as a pod gets it from a Secret: an environment variable (every flag
    # has one, EXTERNAL_DNS_<FLAG>), never on the command line. Nothing else: no cloud
    # credentials, no in-cluster service variables, a HOME of its own.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work),
           "EXTERNAL_DNS_RFC2136_TSIG_SECRET": secret}
    log = work / "external-dns.log"
    trace = work / "connect.strace"
    with log.open("wb") as out:
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace),
             *argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        returncode = tracer.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(tracer.pid).children(recursive=True):
                child.kill()
        tracer.kill()
        tracer.wait(timeout=15)
        raise AssertionError("ExternalDNS --once did not finish within 60s:\n"
                             + log.read_text(errors="replace")[-4000:]) from None
    text = trace.read_text(errors="replace")
    destinations = set(re.findall(r'inet_addr\("([^"]+)"\)', text))
    destinations |= set(re.findall(r'inet_pton\(AF_INET6, "([^"]+)"', text))
    return Run(returncode=returncode, log=log.read_text(errors="replace"),
               destinations=destinations)


def setup_lab(lab: MasterLab, tmp_path: Path, allow_transfer: bool) -> None:
    keys = write_key_files(tmp_path / "extdns-keys", [KEY])
    lab.key_files = {**lab.key_files, **keys}
    zone: dict[str, Any] = {
        "name": ZONE,
        "nameservers": [{"name": "ns1.ha.example", "addresses": ["192.0.2.53"]}],
        "updatePolicy": [{"key": "update-key", "rule": "zonesub"},
                         {"key": KEY, "rule": "zonesub", "types": ["A", "AAAA", "TXT"]}]}
    if allow_transfer:
        zone["allowTransfer"] = [KEY]
    lab.zones = [zone]


def create_service(lab: MasterLab) -> None:
    core = client.CoreV1Api(lab.api)
    core.create_namespaced_service(lab.namespace, client.V1Service(
        metadata=client.V1ObjectMeta(
            # v0.22.0 moved the prefix from external-dns.alpha.kubernetes.io/ (read only
            # with --enable-legacy-annotation-prefix)
            name="web", annotations={"external-dns.kubernetes.io/hostname": HOST}),
        spec=client.V1ServiceSpec(type="LoadBalancer", selector={"app": "web"},
                                  ports=[client.V1ServicePort(port=80)])))
    # What a cloud's load-balancer controller would report (none runs here).
    core.patch_namespaced_service_status("web", lab.namespace, {
        "status": {"loadBalancer": {"ingress": [{"ip": ADDRESS}]}}})


def served_a(pod: MasterPod) -> list[str]:
    query = dns.message.make_query(HOST + ".", dns.rdatatype.A)
    answer = dns.query.udp(query, pod.ip, port=pod.config.ports.dns, timeout=2)
    assert all(rrset.ttl == 60 for rrset in answer.answer), answer  # --rfc2136-min-ttl
    return sorted(rr.address for rrset in answer.answer for rr in rrset)


def owned_txt(pod: MasterPod, owner: str) -> list[str]:
    """The zone's TXT records that name ``owner`` (ExternalDNS's registry), by AXFR with
    the transfer key."""
    key = pod.config.keys["transfer-key"]
    zone = dns.zone.from_xfr(dns.query.xfr(pod.ip, ZONE, port=pod.config.ports.dns,
                                           keyring=keyring(key), keyname=key.name,
                                           timeout=5, lifetime=10))
    return sorted(f"{name} {rdata.to_text()}"
                  for name, _ttl, rdata in zone.iterate_rdatas(dns.rdatatype.TXT)
                  if f"external-dns/owner={owner}" in rdata.to_text())


def assert_loopback_only(run: Run, host: str) -> None:
    # it did reach the apiserver and the master: the trace is not empty by accident
    assert {"127.0.0.1", host} <= run.destinations, run.destinations
    outside = sorted(d for d in run.destinations if not ipaddress.ip_address(d).is_loopback)
    assert outside == [], f"ExternalDNS reached past loopback: {outside}"


def test_external_dns_publishes_through_a_handover_and_cleans_up(
        lab: MasterLab, kubeconfig: Path, tmp_path: Path, external_dns: str):
    setup_lab(lab, tmp_path, allow_transfer=True)
    lab.start(2)
    leader = lab.leader()
    standby = next(p for p in lab.masters if p is not leader)
    key = leader.config.keys[KEY]
    owner = f"lab-{lab.namespace}"

    def sync(name: str, pod: MasterPod) -> Run:
        run = run_once(external_dns, lab, kubeconfig, tmp_path / name, pod.ip, key.secret,
                       key.algorithm)
        assert run.returncode == 0, run.log[-4000:]
        assert "level=error" not in run.log and "level=warning" not in run.log, run.log[-4000:]
        assert_loopback_only(run, pod.ip)
        return run

    create_service(lab)
    created = sync("sync-1", leader)
    assert re.search(rf"Adding RR: {re.escape(HOST)} 60 A {re.escape(ADDRESS)}\"",
                     created.log), created.log[-4000:]
    assert served_a(leader) == [ADDRESS]
    txt = owned_txt(leader, owner)
    assert txt and all("heritage=external-dns" in t for t in txt), txt
    assert any(t.startswith("a-web ") for t in txt), txt  # its registry name: a-<name>

    # A graceful handover: the new leader serves the same records, TXT included.
    Ops(leader.config, lab.api).switchover(standby.name)
    wait_until(lambda: lab.holder() == standby.name, 20, "the standby holds the Lease")
    assert lab.leader(timeout=20) is standby
    assert served_a(standby) == [ADDRESS] and owned_txt(standby, owner) == txt

    # ExternalDNS, now routed to the new leader, reads the zone there (AXFR with its
    # key) and recognises its own records: nothing to change.
    again = sync("sync-2", standby)
    assert "All records are already up to date" in again.log, again.log[-4000:]
    assert "Adding RR" not in again.log and "Removing RR" not in again.log
    assert served_a(standby) == [ADDRESS] and owned_txt(standby, owner) == txt

    # The Service goes: ExternalDNS finds its records by AXFR and deletes them.
    client.CoreV1Api(lab.api).delete_namespaced_service("web", lab.namespace)
    removed = sync("sync-3", standby)
    assert re.search(rf"Removing RR: {re.escape(HOST)} 60 A {re.escape(ADDRESS)}\"",
                     removed.log), removed.log[-4000:]
    assert served_a(standby) == [] and owned_txt(standby, owner) == []
    assert "zone transfer 'ha.example/AXFR/IN' denied" not in (
        standby.named_log_path.read_text() + leader.named_log_path.read_text())


def test_without_allow_transfer_its_axfr_is_refused_and_it_changes_nothing(
        lab: MasterLab, kubeconfig: Path, tmp_path: Path, external_dns: str):
    """Before zones[].allowTransfer: the same key may update, but its AXFR is REFUSED, so
    ExternalDNS cannot list the zone and plans nothing: no record, and so no clean-up."""
    setup_lab(lab, tmp_path, allow_transfer=False)
    lab.start(2)
    leader = lab.leader()
    key = leader.config.keys[KEY]
    create_service(lab)
    run = run_once(external_dns, lab, kubeconfig, tmp_path / "sync-1", leader.ip,
                   key.secret, key.algorithm)
    assert run.returncode != 0
    assert "zone transfer 'ha.example/AXFR/IN' denied" in leader.named_log_path.read_text()
    # rcode 5 is REFUSED; the failed list ends the run (a soft error, fatal with --once)
    assert "AXFR error: dns: bad xfr rcode: 5" in run.log, run.log[-4000:]
    assert "failed to read AXFR response for zone" in run.log
    assert "Adding RR" not in run.log
    assert served_a(leader) == []
    assert_loopback_only(run, leader.ip)
