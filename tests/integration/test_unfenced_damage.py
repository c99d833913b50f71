"""Why the fence exists: two named on one journal, with nothing to stop them.

This is the failure the Lease + lock + epoch prevent (DESIGN "BIND facts"). Seen with
named 9.18: the second named serves a stale zone (it never sees the first one's
acknowledged updates) and fails its own writes with "malformed transaction ... last
serial N != transaction first serial M", answering SERVFAIL. Clients of the second
named read wrong data, and its writes are lost.
"""

from __future__ import annotations

import dns.message
import dns.query
import dns.rcode
import dns.update

from bindha_rwx.render import render_bootstrap_zone, render_primary
from harness.bindlab import NamedProcess, keyring, load_pod_config, write_pod_config

ZONE = "split.example."
ZONES = [{"name": ZONE, "nameservers": [{"name": "ns1.split.example",
                                         "addresses": ["192.0.2.1"]}],
          "updatePolicy": [{"key": "update-key", "rule": "zonesub"}]}]


def update(named: NamedProcess, name: str) -> int:
    key = named.config.keys["update-key"]
    message = dns.update.UpdateMessage(ZONE, keyring=keyring(key), keyname=key.name)
    message.add(name, 300, "TXT", '"x"')
    return dns.query.tcp(message, named.ip, timeout=5).rcode()


def serves(named: NamedProcess, name: str) -> bool:
    answer = dns.query.udp(dns.message.make_query(f"{name}.{ZONE}", "TXT"), named.ip, timeout=2)
    return bool(answer.answer)


def test_two_named_on_one_journal_corrupt_each_others_view(tmp_path, address_pool,
                                                           key_files, shared_dir):
    nameds = []
    try:
        for i in range(2):
            ip = address_pool.take()
            path = write_pod_config(tmp_path / f"unfenced-{i}", pod_ip=ip, dyn_dir=shared_dir,
                                    key_files=key_files, zones=ZONES, rndc_port=9561 + i)
            config = load_pod_config(path, f"unfenced-{i}", ip)
            if i == 0:
                (shared_dir / config.zones[0].file_name).write_text(
                    render_bootstrap_zone(config.zones[0]))
            named = NamedProcess.from_text(config, render_primary(config))
            named.start()
            named.wait_serving()
            nameds.append(named)
        first, second = nameds

        assert update(first, "a1") == dns.rcode.NOERROR
        # The second named's view of the journal is stale: its write is refused...
        assert update(second, "b1") == dns.rcode.SERVFAIL
        assert "malformed transaction" in second.log_tail(50)
        # ...and it serves a zone without the first one's acknowledged update.
        assert serves(first, "a1")
        assert not serves(second, "a1")
    finally:
        for named in nameds:
            named.stop()
