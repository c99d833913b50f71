"""The shared volume's rows of the failure matrix, with real named and the real apiserver.

- corrupted `.jnl`: a journal whose tail was cut is never served. The Lease holder
  keeps the fence, starts no named, says why (log, state.json, `status`, probe, Event,
  metric), and starts named once the runbook's repair commands have run.
- read-only volume: the leader's write probe reports it and its recovery; named is
  left running (it answers SERVFAIL to updates meanwhile), and started afresh once the
  volume is writable.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
from pathlib import Path
from typing import Any

import dns.exception
import dns.query
import dns.rcode
import dns.update

from bindha_rwx.journal import HEADER_SIZE, read_header
from bindha_rwx.render import render_bootstrap_zone, render_primary
from harness.bindlab import NamedProcess, keyring, load_pod_config, soa_serial, write_pod_config
from harness.pods import MasterLab, MasterPod, samples, wait_until
from harness.runbooks import repair_intact
from tests.kube.test_master import scrape
from tests.kube.test_ops import cli

ZONE = "ha.example"


def state(pod: MasterPod) -> dict[str, Any]:
    try:
        return dict(json.loads((pod.work_dir / "bindha/state.json").read_text()))
    except (OSError, ValueError):
        return {}


def update(ip: str, key: Any, name: str) -> int:
    message = dns.update.UpdateMessage(ZONE, keyring=keyring(key), keyname=key.name)
    message.replace(name, 300, "TXT", '"x"')
    return dns.query.tcp(message, ip, timeout=5).rcode()


def events(lab: MasterLab, reason: str) -> list[Any]:
    return [e for e in lab.core.list_namespaced_event(lab.namespace).items
            if e.reason == reason]


def seed_journal(lab: MasterLab, tmp_path: Path, updates: int) -> Path:
    """A real journal on the lab's volume: a named takes updates, then is killed unflushed."""
    ip = lab.address_pool.take()
    path = write_pod_config(tmp_path / "seed", pod_ip=ip, dyn_dir=lab.shared,
                            key_files=lab.key_files, zones=lab.zones, rndc_port=9590)
    config = load_pod_config(path, "seed", ip)
    (lab.shared / config.zones[0].file_name).write_text(render_bootstrap_zone(config.zones[0]))
    named = NamedProcess.from_text(config, render_primary(config))
    named.start()
    try:
        named.wait_serving()
        for i in range(updates):
            assert update(ip, config.keys["update-key"], f"seed{i}") == dns.rcode.NOERROR
    finally:
        named.stop()  # SIGTERM: no zone dump, the updates live in the journal only
    return lab.shared / f"{config.zones[0].file_name}.jnl"


def test_cut_journal_is_refused_until_the_runbook_repair(lab: MasterLab, tmp_path: Path):
    journal = seed_journal(lab, tmp_path, updates=4)
    header = read_header(journal.read_bytes()[:HEADER_SIZE])
    assert header is not None
    os.truncate(journal, header.end_offset - 20)  # the last transaction loses its tail

    lab.start(2)
    wait_until(lambda: any(p.has_event("journal.damaged") for p in lab.pods), 20,
               "a Lease holder reports the damaged journal")
    holder = next(p for p in lab.pods if p.has_event("journal.damaged"))
    for _ in samples(1.5, 0.1):  # the fence is held and nobody serves the journal
        assert lab.writers() == []
        assert lab.holder() == holder.name
    owner = lab.volume.read_owner()
    assert owner is not None and owner.pod == holder.name
    found = state(holder)
    assert found["state"] == "journal-damaged", found
    [damage] = found["journals_damaged"]
    assert damage["zone"] == f"{ZONE}." and "is cut" in damage["problem"]
    assert damage["header_end_serial"] == header.end_serial
    assert damage["intact_serial"] == header.end_serial - 1
    assert "docs/runbooks/journal-out-of-sync.md" in found["detail"]
    status = json.loads(cli(holder, "status", "--json").stdout)
    assert status["this_pod"]["state"] == "journal-damaged"
    assert status["journals"]["damaged"] == 1
    ready = cli(holder, "probe", "ready")
    assert ready.returncode != 0 and "journal damaged" in ready.stdout + ready.stderr
    assert scrape(holder)["bindha_journals_damaged"] == 1
    wait_until(lambda: events(lab, "JournalDamaged"), 5, "Event JournalDamaged")

    # The runbook's repair, as printed there, run where the volume is mounted.
    repair = repair_intact(lab.shared, ZONE, f"{ZONE}.zone", damage["intact_bytes"])
    assert repair.returncode == 0, repair.stdout + repair.stderr

    leader = lab.leader(timeout=15)
    assert leader is holder and holder.has_event("journal.repaired")
    assert soa_serial(leader.ip, ZONE) == damage["intact_serial"]
    assert state(leader)["journals_damaged"] == []
    assert list((lab.shared / ".bindha/damaged").glob(f"{ZONE}.zone.jnl.2*"))
    key = leader.config.keys["update-key"]
    assert update(leader.ip, key, "after-repair") == dns.rcode.NOERROR


def test_a_damaged_holder_hands_over_on_sigterm_and_the_next_refuses_too(lab: MasterLab,
                                                                         tmp_path: Path):
    """SIGTERM releases lock and Lease as usual; the volume is shared, so the next
    holder finds the same damage and serves nothing either."""
    journal = seed_journal(lab, tmp_path, updates=2)
    os.truncate(journal, journal.stat().st_size - 20)
    lab.start(2)
    wait_until(lambda: any(p.has_event("journal.damaged") for p in lab.pods), 20,
               "a Lease holder reports the damaged journal")
    first = next(p for p in lab.pods if p.has_event("journal.damaged"))
    other = next(p for p in lab.pods if p is not first)
    first.signal(signal.SIGTERM)
    assert first.wait_exit(timeout=10) == 0
    wait_until(lambda: other.has_event("journal.damaged"), 10, "the next holder refuses too")
    assert lab.holder() == other.name
    assert lab.volume.read_owner().pod == other.name
    for _ in samples(1.0, 0.1):
        assert lab.writers() == []


def test_a_zone_added_with_a_cut_journal_is_refused_and_the_rest_served(lab: MasterLab):
    lab.start(1)
    leader = lab.leader()
    named_pid = leader.named_processes()[0].pid
    # A journal whose header claims 1000 bytes of transactions; the file has 600.
    header = b";BIND LOG V9.2\n".ljust(16, b"\0") + struct.pack(">IIIII", 1, 512, 2, 1000, 56)
    (lab.shared / "added.example.zone.jnl").write_bytes(header.ljust(600, b"\0"))
    zone = {"name": "added.example",
            "nameservers": [{"name": "ns1.added.example", "addresses": ["192.0.2.54"]}],
            "updatePolicy": [{"key": "update-key", "rule": "zonesub"}]}
    lab.rewrite_configs(lambda data: data["zones"].append(zone))
    wait_until(lambda: leader.has_event("config.refused"), 10, "the new config is refused")
    refused = wait_until(lambda: events(lab, "ConfigRefused"), 5, "Event ConfigRefused")
    assert "added.example." in refused[0].message and "is cut" in refused[0].message
    assert soa_serial(leader.ip, "added.example.") is None
    assert soa_serial(leader.ip, f"{ZONE}.") is not None
    assert [p.pid for p in leader.named_processes()] == [named_pid]


def test_write_probe_reports_a_read_only_volume_and_its_recovery(lab: MasterLab):
    """A read-only bind mount of the shared dir stacked on itself; unmounted to recover.

    Not a remount of one bind mount from rw to ro: the kernel refuses that (EBUSY) while
    a file on it is open for writing, and the lock file always is. Opens after the
    stacking resolve to the read-only mount, as on a volume that turned read-only.
    """
    shared = str(lab.shared)
    lab.start(1)
    leader = lab.leader()
    wait_until(lambda: (state(leader).get("volume") or {}).get("writable") is True, 10,
               "the write probe succeeds")
    named_pid = leader.named_processes()[0].pid
    key = leader.config.keys["update-key"]
    try:
        subprocess.run(["mount", "--bind", shared, shared], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", shared], check=True)
        wait_until(lambda: (state(leader).get("volume") or {}).get("writable") is False, 10,
                   "the probe reports the volume unwritable")
        assert state(leader)["volume"]["problem"].startswith("read-only")
        assert leader.has_event("volume.unwritable")
        assert scrape(leader)["bindha_volume_writable"] == 0
        wait_until(lambda: events(lab, "VolumeUnwritable"), 5, "Event VolumeUnwritable")
        assert update(leader.ip, key, "while-ro") == dns.rcode.SERVFAIL  # named's own answer
        assert [p.pid for p in leader.named_processes()] == [named_pid]  # not killed
        assert cli(leader, "probe", "ready").returncode == 0  # readiness unchanged
    finally:
        subprocess.run(["umount", "-l", shared], check=False)
    wait_until(lambda: (state(leader).get("volume") or {}).get("writable") is True, 10,
               "the probe sees the volume writable again")
    assert scrape(leader)["bindha_volume_writable"] == 1
    wait_until(lambda: events(lab, "VolumeWritable"), 5, "Event VolumeWritable")
    # Writable again: the leader starts named afresh (it may lag its journal after
    # failed writes), and the new one takes updates.
    wait_until(lambda: leader.has_event("named.restart"), 10, "named started afresh")
    wait_until(lambda: [p.pid for p in leader.named_processes()] not in ([], [named_pid]),
               10, "a new named")
    wait_until(lambda: _update_or_none(leader.ip, key, "after-rw") == dns.rcode.NOERROR, 10,
               "an update acknowledged by the new named")
    assert lab.holder() == leader.name


def _update_or_none(ip: str, key: Any, name: str) -> int | None:
    try:
        return update(ip, key, name)
    except (OSError, dns.exception.DNSException):  # the new named not listening yet
        return None
