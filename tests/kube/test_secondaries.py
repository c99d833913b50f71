"""Secondaries that follow the leader, dynamic also-notify, validated hot reload.

Masters (`bindha-rwx run`) and secondaries (`bindha-rwx secondary`) are processes with
their own loopback IPs, against the real apiserver and real named. The tests write
the secondaries' EndpointSlice themselves, as the endpointslice controller would.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.update
import dns.xfr
import dns.zone
import pytest

from bindha_rwx.probes import RuntimeFiles, probe_live
from bindha_rwx.soa import ask_serials
from harness.bindlab import keyring, soa_serial
from harness.netlab import NetLab
from harness.pods import MasterLab, MasterPod, all_named, http_probe, wait_until
from tests.kube.test_master import scrape

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
    for s in secondaries:  # the manifests' HTTP probes, on the secondary's own endpoint
        assert http_probe(s, "/healthz")[0] == 200
        ready = wait_until(lambda s=s: (r := http_probe(s, "/readyz")) and r[0] == 200 and r,
                           10, "readyz")
        assert "named answers all" in ready[1], ready
    # named's statistics channel through each supervisor's /metrics, both roles.
    serial = soa_serial(leader.ip, ZONE)
    lag = f'bindha_zone_serial_lag{{zone="{ZONE.rstrip(".")}"}}'
    for s in secondaries:  # the lag gauges come with the secondary's next SOA pass
        found = wait_until(lambda s=s: (f := scrape(s)).get(lag) == 0 and f, 10, "lag 0")
        assert found["bindha_named_up"] == 1
        assert found[f'bindha_named_zone_serial{{zone="{ZONE.rstrip(".")}"}}'] == serial
        assert found["bindha_zones_lagging"] == 0
        assert found['bindha_named_queries_total{type="SOA"}'] >= 1  # our SOA passes
    mine = scrape(leader)
    assert mine["bindha_named_up"] == 1
    assert mine['bindha_named_server_stats_total{counter="UpdateDone"}'] >= 1
    assert mine['bindha_named_server_stats_total{counter="XfrReqDone"}'] >= 1
    assert mine['bindha_named_requests_total{opcode="UPDATE"}'] >= 1

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
        assert scrape(s)["bindha_primary_changes_total"] == 1


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


def many_zones(lab: MasterLab, count: int) -> list[str]:
    """``count`` zones, their files on the volume before the first master starts (as an
    existing installation has them; bootstrapping each would take a while)."""
    names = [f"z{i:03d}.many.example." for i in range(count)]
    for name in names:
        (lab.shared / f"{name.rstrip('.')}.zone").write_text(
            f"$ORIGIN {name}\n$TTL 300\n@ IN SOA ns1.{name} hostmaster.{name} "
            f"( 1 3600 600 1209600 300 )\n@ IN NS ns1.{name}\nns1 IN A 192.0.2.53\n")
    lab.zones = [{"name": name, "nameservers": [{"name": f"ns1.{name}",
                                                  "addresses": ["192.0.2.53"]}],
                  "updatePolicy": [{"key": "update-key", "rule": "zonesub"}]}
                 for name in names]
    return names


def event_time(pod: MasterPod, name: str, **fields: str) -> float:
    event = next(e for e in pod.events() if e.get("event") == name
                 and all(e.get(k) == v for k, v in fields.items()))
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def update_at_leader(lab: MasterLab, leader: MasterPod, name: str, zone: str) -> None:
    """One update at the leader: at test timings (renewDeadline 1.6 s) an apiserver
    slowed by a busy machine can cost it the Lease midway; then retry at the next."""
    for attempt in range(3):
        try:
            return update(leader if attempt == 0 else lab.leader(), name, zone)
        except (OSError, EOFError, dns.exception.DNSException):
            if attempt == 2:
                raise
    return None


def serials_everywhere(pods: list[MasterPod], zones: list[str]) -> dict[str, dict[str, int]]:
    return ask_serials([p.ip for p in pods], zones, deadline=time.monotonic() + 3).serials


class Heartbeats:
    """The secondaries' heartbeat age, read as `probe live` reads it, every 50 ms."""

    def __init__(self, pods: list[MasterPod]) -> None:
        self.pods = pods
        self.worst: dict[str, float] = {p.name: 0.0 for p in pods}
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for pod in self.pods:
                age = RuntimeFiles(pod.config.paths.work_dir).heartbeat_age()
                ok, why = probe_live(pod.config)
                if age is not None:
                    self.worst[pod.name] = max(self.worst[pod.name], age)
                if not ok:
                    self.failed.append(f"{pod.name}: {why}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def test_200_zones_secondaries_switch_at_once_and_stay_live(lab: MasterLab):
    """A leader change with 200 zones: each secondary reconfigures within about a second
    (no per-zone work before the switch), every zone gets a fresh update, and `probe
    live` never fails on a secondary (its heartbeat stays younger than renewDeadline)."""
    zones = many_zones(lab, 200)
    lab.start(2)
    leader = lab.leader(timeout=30)
    secondaries = lab.start_secondaries(2)
    lab.publish_endpoints([s.ip for s in secondaries])
    wait_until(lambda: all(len(serials_everywhere([s], zones)[s.ip]) == len(zones)
                           for s in secondaries), 30, "the secondaries serve every zone",
               interval=0.5)

    beats = Heartbeats(secondaries)
    try:
        named = leader.named_processes()[0]
        leader.signal(signal.SIGKILL)  # named dies with it; takeover at Lease expiry
        named.wait(timeout=5)
        new = lab.leader(timeout=15)
        assert new is not leader
        for s in secondaries:
            wait_until(lambda s=s: any(e.get("event") == "primary.following"
                                       and e.get("primary") == new.ip for e in s.events()),
                       5, f"{s.name} follows the new leader")
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:  # each update waits for its journal's fsync
            list(pool.map(lambda zone: update_at_leader(lab, new, "after-kill", zone), zones))
        updated = time.monotonic()
        new = lab.leader()  # the same one, unless a busy machine cost it the Lease
        fresh = serials_everywhere([new], zones)[new.ip]
        assert len(fresh) == len(zones)

        def caught_up() -> bool:
            got = serials_everywhere(secondaries, zones)
            return all(got[s.ip] == fresh for s in secondaries)

        wait_until(caught_up, 15, "every zone's update on both secondaries", interval=0.3)
        print(f"{len(zones)} updates in {updated - started:.2f}s; on both secondaries "
              f"{time.monotonic() - updated:.2f}s after the last")
    finally:
        beats.stop()
    deadline = new.config.timing.renew_deadline
    print(f"worst heartbeat ages {beats.worst} (renewDeadline {deadline:g}s)")
    assert not beats.failed, beats.failed[:5]
    assert max(beats.worst.values()) < deadline
    for s in secondaries:
        seen = event_time(s, "primary.seen", ip=new.ip)
        following = event_time(s, "primary.following", primary=new.ip)
        print(f"{s.name}: following the new leader {following - seen:.2f}s after its "
              "Lease was seen")
        assert following - seen < 1.0
        assert f"primaries {{ {new.ip} port 53" in s.config.paths.named_conf.read_text()
        assert has_txt(s.ip, "after-kill", zones[-1])

    # A secondary the leader does not NOTIFY (not in its EndpointSlice) still catches
    # up: its passes find the lag and refresh those zones on the pool.
    quiet, told = secondaries
    lab.publish_endpoints([told.ip])
    wait_until(lambda: quiet.ip not in also_notify(new), 5, "also-notify without one")
    some = zones[:20]
    for zone in some:
        update(new, "unnotified", zone)
    wait_until(lambda: all(has_txt(quiet.ip, "unnotified", z) for z in some), 10,
               "the unnotified secondary refreshes the lagging zones")
    refreshed = [e for e in quiet.events() if e.get("event") == "zones.refresh"]
    assert refreshed and set(refreshed[-1]["zones"]) <= set(some)
