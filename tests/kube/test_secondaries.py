"""Secondaries that follow the leader, dynamic also-notify, validated hot reload.

Masters (`bindha-rwx run`) and secondaries (`bindha-rwx secondary`) are processes with
their own loopback IPs, against the real apiserver and real named. The tests write
the secondaries' EndpointSlice themselves, as the endpointslice controller would.
"""

from __future__ import annotations

import signal
import time

import dns.message
import dns.query
import dns.rcode
import dns.update
import dns.xfr
import dns.zone
import pytest

from harness.bindlab import keyring
from harness.netlab import NetLab
from harness.pods import MasterLab, MasterPod, all_named, wait_until

ZONE = "ha.example."


@pytest.fixture
def lab(tmp_path, api_client, kubeconfig, namespace, address_pool, key_files):
    """Every pod in its own network namespace: the API refuses loopback endpoints."""
    net = NetLab()
    made = MasterLab(root=tmp_path, api=api_client, kubeconfig=kubeconfig,
                     namespace=namespace, address_pool=net, key_files=key_files)
    try:
        yield made
    finally:
        made.stop()
        net.close()
    assert all_named(tmp_path) == []


def serial(ip: str, zone: str = ZONE) -> int | None:
    try:
        answer = dns.query.udp(dns.message.make_query(zone, "SOA"), ip, timeout=0.5)
    except Exception:
        return None
    if answer.rcode() != dns.rcode.NOERROR or not answer.answer:
        return None
    return int(answer.answer[0][0].serial)


def has_txt(ip: str, name: str, zone: str = ZONE) -> bool:
    try:
        answer = dns.query.udp(dns.message.make_query(f"{name}.{zone}", "TXT"), ip, timeout=0.5)
    except Exception:
        return False
    return bool(answer.answer)


def update(leader: MasterPod, name: str, zone: str = ZONE) -> None:
    key = leader.config.keys["update-key"]
    message = dns.update.UpdateMessage(zone, keyring=keyring(key), keyname=key.name)
    message.add(name, 300, "TXT", '"x"')
    assert dns.query.tcp(message, leader.ip, timeout=5).rcode() == dns.rcode.NOERROR


def also_notify(leader: MasterPod) -> str:
    text = leader.config.paths.named_conf.read_text()
    return text.split("also-notify {", 1)[1].split("};", 1)[0]


def converged(secondaries: list[MasterPod], leader: MasterPod, zone: str = ZONE) -> bool:
    theirs = serial(leader.ip, zone)
    return theirs is not None and all(serial(s.ip, zone) == theirs for s in secondaries)


def test_also_notify_follows_a_secondary_that_comes_back_with_a_new_ip(lab: MasterLab):
    lab.start(1)
    leader = lab.leader()
    first = lab.start_secondaries(1)[0]
    lab.publish_endpoints([first.ip])
    wait_until(lambda: f"{first.ip} port" in also_notify(leader), 5, "first secondary notified")
    wait_until(lambda: converged([first], leader), 10, "first secondary has the zone")

    # The secondary pod is replaced and comes back with another IP.
    first.signal(signal.SIGTERM)
    assert first.wait_exit(10) == 0
    second = lab.start_secondaries(1)[0]
    lab.publish_endpoints([second.ip])
    published = time.monotonic()
    wait_until(lambda: f"{second.ip} port" in also_notify(leader)
               and first.ip not in also_notify(leader), 2, "also-notify follows within 2 s")
    print(f"also-notify followed in {time.monotonic() - published:.2f}s")
    wait_until(lambda: leader.has_event("also_notify.changed"), 5, "the change is logged")
    wait_until(lambda: converged([second], leader), 10, "new secondary has the zone")

    update(leader, "after-move")
    wait_until(lambda: has_txt(second.ip, "after-move"), 5, "update reaches the secondary")
    log = second.named_log_path.read_text()
    assert "received notify for zone 'ha.example'" in log, "the update did not come by NOTIFY"


def test_secondaries_follow_the_new_leader(lab: MasterLab):
    lab.start(2)
    leader = lab.leader()
    secondaries = lab.start_secondaries(2)
    lab.publish_endpoints([s.ip for s in secondaries])
    update(leader, "before")
    wait_until(lambda: converged(secondaries, leader), 10, "secondaries converge")

    leader.signal(signal.SIGTERM)
    assert leader.wait_exit(10) == 0
    new = lab.leader(timeout=15)
    assert new is not leader
    changed = time.monotonic()
    update(new, "after-failover")
    wait_until(lambda: converged(secondaries, new), 10, "secondaries follow the new leader")
    print(f"secondaries on the new leader's serial {time.monotonic() - changed:.2f}s after "
          "its first update")
    assert all(has_txt(s.ip, "after-failover") and has_txt(s.ip, "before") for s in secondaries)
    for s in secondaries:
        assert f"primaries {{ {new.ip} port 53" in s.config.paths.named_conf.read_text()


def test_a_zone_added_by_config_is_served_everywhere_and_a_bad_config_is_refused(
        lab: MasterLab):
    lab.start(2)
    leader = lab.leader()
    secondaries = lab.start_secondaries(1)
    lab.publish_endpoints([s.ip for s in secondaries])
    wait_until(lambda: converged(secondaries, leader), 10, "secondary has the first zone")

    new_zone = {"name": "added.example",
                "nameservers": [{"name": "ns1.added.example", "addresses": ["192.0.2.54"]}],
                "updatePolicy": [{"key": "update-key", "rule": "zonesub"}]}
    lab.rewrite_configs(lambda data: data["zones"].append(new_zone))
    wait_until(lambda: serial(leader.ip, "added.example.") is not None, 10,
               "the leader serves the added zone (bootstrapped, no restart)")
    assert (lab.shared / "added.example.zone").exists()
    wait_until(lambda: converged(secondaries, leader, "added.example."), 10,
               "the secondary serves the added zone")
    wait_until(lambda: leader.has_event("config.applied"), 5, "the leader logs the change")
    assert len(leader.named_processes()) == 1  # applied without a restart

    # An ACL change applies without a restart too.
    def add_acl(data):
        data["acls"] = {"lab": ["10.213.0.0/16"]}
        data["allowQuery"] = ["lab", "localhost"]

    lab.rewrite_configs(add_acl)
    wait_until(lambda: "allow-query { lab; localhost; };"
               in leader.config.paths.named_conf.read_text(), 10, "ACL applied on the leader")
    assert serial(leader.ip, "added.example.") is not None  # the test host is in the ACL
    assert len(leader.named_processes()) == 1

    # A bad config (an unknown key): refused everywhere, the running one kept.
    lab.rewrite_configs(lambda data: data.update(zonez=[]))
    wait_until(lambda: all(p.has_event("config.refused") for p in lab.pods), 10,
               "every pod refuses the bad config")
    assert serial(leader.ip, "added.example.") is not None
    assert all(serial(s.ip, "added.example.") is not None for s in secondaries)
    refused = [e for e in lab.core.list_namespaced_event(lab.namespace).items
               if e.reason == "ConfigRefused"]
    assert refused and "zonez" in refused[0].message

    # Back to a good config without the added zone: it stops being served, files stay.
    lab.rewrite_configs(lambda data: (data.pop("zonez"), data["zones"].remove(new_zone),
                                      data.pop("acls"), data.pop("allowQuery")))
    wait_until(lambda: serial(leader.ip, "added.example.") is None, 10,
               "a removed zone stops being served")
    assert (lab.shared / "added.example.zone").exists(), "a removed zone's file is kept"


def test_a_transfer_without_the_key_is_refused(lab: MasterLab):
    lab.start(1)
    leader = lab.leader()
    secondary = lab.start_secondaries(1)[0]
    lab.publish_endpoints([secondary.ip])
    wait_until(lambda: converged([secondary], leader), 10, "secondary has the zone")
    for ip in (leader.ip, secondary.ip):
        with pytest.raises(dns.xfr.TransferError) as info:
            dns.zone.from_xfr(dns.query.xfr(ip, ZONE, timeout=5, lifetime=10))
        assert info.value.rcode == dns.rcode.REFUSED
    key = leader.config.keys["transfer-key"]
    zone = dns.zone.from_xfr(dns.query.xfr(leader.ip, ZONE, keyring=keyring(key),
                                           keyname=key.name, timeout=5, lifetime=10))
    assert zone.get_rdataset("@", "SOA") is not None
