"""A real named from Debian's bind9, started from our rendered configs.

Proves what the renderer promises on the wire: TSIG-signed updates are taken and
served, unsigned ones are REFUSED, a rendered secondary transfers the zone with TSIG
and follows NOTIFYs, and a transfer without the key is refused.
"""

from __future__ import annotations

from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import dns.xfr
import dns.zone
import pytest

from bindha_rwx.render import render_bootstrap_zone, render_primary, render_secondary
from harness.bindlab import (
    NamedProcess,
    keyring,
    load_pod_config,
    write_key_files,
    write_pod_config,
)
from harness.pods import wait_until

ZONE = "lab.example."
ZONES = [{"name": ZONE,
          "nameservers": [{"name": "ns1.lab.example", "addresses": ["192.0.2.53"]}],
          "updatePolicy": [{"key": "update-key", "rule": "zonesub"}]}]


@pytest.fixture
def primary(tmp_path: Path, address_pool, key_files, shared_dir):
    ip = address_pool.take()
    path = write_pod_config(tmp_path / "master-0", pod_ip=ip, dyn_dir=shared_dir,
                            key_files=key_files, zones=ZONES, rndc_port=9531)
    config = load_pod_config(path, "bind-master-0", ip)
    zone = config.zones[0]
    (shared_dir / zone.file_name).write_text(render_bootstrap_zone(zone))
    named = NamedProcess.from_text(config, render_primary(config, also_notify=[]))
    yield named
    named.stop()


def start_secondary(tmp_path: Path, address_pool, key_files, shared_dir,
                    primary: NamedProcess) -> NamedProcess:
    ip = address_pool.take()
    path = write_pod_config(tmp_path / "secondary-0", pod_ip=ip, dyn_dir=shared_dir,
                            key_files=key_files, zones=ZONES, rndc_port=9532)
    config = load_pod_config(path, "bind-secondary-0", ip)
    named = NamedProcess.from_text(config, render_secondary(config, primary.ip))
    named.start()
    return named


def xfr_rcode(named: NamedProcess, key=None) -> int:
    """The rcode of an AXFR of ZONE from ``named``, signed with ``key`` (or unsigned)."""
    try:
        zone = dns.zone.from_xfr(dns.query.xfr(
            named.ip, ZONE, port=named.config.ports.dns, keyring=key and keyring(key),
            keyname=key and key.name, timeout=5, lifetime=10))
    except dns.xfr.TransferError as exc:
        return exc.rcode
    assert zone.get_rdataset("@", "SOA") is not None
    return dns.rcode.NOERROR


def send_update(named: NamedProcess, name: str, address: str, key=None) -> int:
    update = dns.update.UpdateMessage(ZONE, keyring=key and keyring(key),
                                      keyname=key and key.name)
    update.replace(name, 300, "A", address)
    answer = dns.query.tcp(update, named.ip, port=named.config.ports.dns, timeout=5)
    return answer.rcode()


def lookup(named: NamedProcess, name: str) -> list[str]:
    query = dns.message.make_query(f"{name}.{ZONE}", dns.rdatatype.A)
    answer = dns.query.udp(query, named.ip, port=named.config.ports.dns, timeout=2)
    return sorted(rr.address for rrset in answer.answer for rr in rrset)



def test_signed_update_is_served_unsigned_is_refused(primary: NamedProcess, shared_dir):
    primary.start()
    primary.wait_serving()
    key = primary.config.keys["update-key"]
    assert send_update(primary, "www", "192.0.2.10", key) == dns.rcode.NOERROR
    assert lookup(primary, "www") == ["192.0.2.10"]
    assert send_update(primary, "evil", "192.0.2.66") == dns.rcode.REFUSED
    assert lookup(primary, "evil") == []
    # The update went to the journal on the shared volume, as DESIGN invariant 4 needs.
    assert (shared_dir / "lab.example.zone.jnl").stat().st_size > 0
    wrong = primary.config.keys["transfer-key"]  # a known key that the policy does not grant
    assert send_update(primary, "other", "192.0.2.67", wrong) == dns.rcode.REFUSED


def test_secondary_transfers_with_tsig_and_follows_notify(
        primary: NamedProcess, tmp_path, address_pool, key_files, shared_dir):
    primary.start()
    primary.wait_serving()
    key = primary.config.keys["update-key"]
    assert send_update(primary, "before", "192.0.2.1", key) == dns.rcode.NOERROR

    secondary = start_secondary(tmp_path, address_pool, key_files, shared_dir, primary)
    try:
        serial = primary.soa_serial(ZONE)
        secondary.wait_serving(min_serial=serial)
        assert lookup(secondary, "before") == ["192.0.2.1"]
        # The secondary never writes: it refuses updates.
        assert send_update(secondary, "x", "192.0.2.2", key) in (dns.rcode.REFUSED,
                                                                  dns.rcode.NOTAUTH)

        # Re-render the primary with the secondary in also-notify, as the leader does.
        primary.stop()
        primary.conf_path.write_text(render_primary(primary.config, also_notify=[secondary.ip]))
        primary.start()
        primary.wait_serving()
        assert send_update(primary, "after", "192.0.2.3", key) == dns.rcode.NOERROR
        # The refresh timer is an hour: only the signed NOTIFY brings the update this fast.
        wait_until(lambda: lookup(secondary, "after") == ["192.0.2.3"], 10,
                 "the secondary serves the update after NOTIFY")
        assert "notify from" in secondary.log_tail(200).lower()
    finally:
        secondary.stop()


def test_transfer_needs_the_key(primary: NamedProcess):
    primary.start()
    primary.wait_serving()
    with pytest.raises(dns.xfr.TransferError) as info:
        dns.zone.from_xfr(dns.query.xfr(primary.ip, ZONE, port=primary.config.ports.dns,
                                        timeout=5, lifetime=10))
    assert info.value.rcode == dns.rcode.REFUSED
    key = primary.config.keys["transfer-key"]
    zone = dns.zone.from_xfr(dns.query.xfr(primary.ip, ZONE, port=primary.config.ports.dns,
                                           keyring=keyring(key), keyname=key.name,
                                           timeout=5, lifetime=10))
    assert zone.get_rdataset("@", "SOA") is not None


# cert-manager's RFC2136 solver (ACME DNS-01): tsigAlgorithm is one of HMACMD5 (its
# default), HMACSHA1, HMACSHA256, HMACSHA512, and must be the key's (docs/clients.md).
CERT_MANAGER_ALGORITHMS = {"HMACMD5": "hmac-md5", "HMACSHA1": "hmac-sha1",
                           "HMACSHA256": "hmac-sha256", "HMACSHA512": "hmac-sha512"}


def challenge(named: NamedProcess, key, algorithm: str, add: bool) -> int:
    """What the solver sends: add, then delete, one TXT at _acme-challenge."""
    names = {"hmac-md5": dns.tsig.HMAC_MD5, "hmac-sha1": dns.tsig.HMAC_SHA1,
             "hmac-sha256": dns.tsig.HMAC_SHA256, "hmac-sha512": dns.tsig.HMAC_SHA512}
    ring = dns.tsigkeyring.from_text({key.name: (names[algorithm], key.secret)})
    update = dns.update.UpdateMessage(ZONE, keyring=ring, keyname=key.name)
    if add:
        update.add("_acme-challenge.www", 60, "TXT", '"token-1"')
    else:
        update.delete("_acme-challenge.www", "TXT", '"token-1"')
    try:
        answer = dns.query.tcp(update, named.ip, port=named.config.ports.dns, timeout=5)
    except dns.tsig.PeerError as exc:  # named answered with a TSIG error
        return -1 if "BADKEY" in type(exc).__name__.upper() + str(exc).upper() else -2
    return answer.rcode()


def txt(named: NamedProcess, name: str) -> list[str]:
    query = dns.message.make_query(f"{name}.{ZONE}", dns.rdatatype.TXT)
    answer = dns.query.udp(query, named.ip, port=named.config.ports.dns, timeout=2)
    return [rr.to_text() for rrset in answer.answer for rr in rrset]


def test_cert_manager_dns01_add_and_remove_with_its_algorithm_choice(primary: NamedProcess):
    primary.start()
    primary.wait_serving()
    key = primary.config.keys["update-key"]
    assert key.algorithm == "hmac-sha256"  # what tsig-keygen makes, the docs' keys
    mine = next(k for k, v in CERT_MANAGER_ALGORITHMS.items() if v == key.algorithm)
    assert mine == "HMACSHA256"
    # cert-manager's default, HMACMD5, with this key: named refuses it (BADKEY), so
    # the Issuer must say tsigAlgorithm: HMACSHA256.
    assert challenge(primary, key, CERT_MANAGER_ALGORITHMS["HMACMD5"], add=True) == -1
    assert txt(primary, "_acme-challenge.www") == []
    assert challenge(primary, key, CERT_MANAGER_ALGORITHMS[mine], add=True) == dns.rcode.NOERROR
    assert txt(primary, "_acme-challenge.www") == ['"token-1"']
    assert challenge(primary, key, CERT_MANAGER_ALGORITHMS[mine], add=False) == \
        dns.rcode.NOERROR
    assert txt(primary, "_acme-challenge.www") == []


def test_allow_transfer_key_may_update_and_transfer_others_are_refused(
        tmp_path: Path, address_pool, shared_dir):
    """ExternalDNS's rfc2136 key: updates its records and AXFRs the zone to find them
    (zones[].allowTransfer); a key the zone does not list is REFUSED the transfer."""
    keys = write_key_files(tmp_path / "keys",
                           ["update-key", "transfer-key", "external-dns", "other-key"])
    zones = [dict(ZONES[0], allowTransfer=["external-dns"],
                  updatePolicy=[{"key": "update-key", "rule": "zonesub"},
                                {"key": "external-dns", "rule": "zonesub",
                                 "types": ["A", "AAAA", "TXT"]}])]
    ip = address_pool.take()
    path = write_pod_config(tmp_path / "master-0", pod_ip=ip, dyn_dir=shared_dir,
                            key_files=keys, zones=zones, rndc_port=9533)
    config = load_pod_config(path, "bind-master-0", ip)
    (shared_dir / config.zones[0].file_name).write_text(render_bootstrap_zone(config.zones[0]))
    text = render_primary(config, also_notify=[])
    assert 'allow-transfer { key "transfer-key"; key "external-dns"; };' in text
    named = NamedProcess.from_text(config, text)
    named.start()
    try:
        named.wait_serving()
        extdns = config.keys["external-dns"]
        assert send_update(named, "web", "192.0.2.80", key=extdns) == dns.rcode.NOERROR
        assert xfr_rcode(named, extdns) == dns.rcode.NOERROR
        zone = dns.zone.from_xfr(dns.query.xfr(named.ip, ZONE, port=config.ports.dns,
                                               keyring=keyring(extdns), keyname=extdns.name,
                                               timeout=5, lifetime=10))
        assert [rr.address for rr in zone.get_rdataset("web", "A")] == ["192.0.2.80"]
        assert xfr_rcode(named, config.keys["transfer-key"]) == dns.rcode.NOERROR
        # a key named can verify but the zone does not list, and no key at all: REFUSED
        assert xfr_rcode(named, config.keys["update-key"]) == dns.rcode.REFUSED
        assert xfr_rcode(named, config.keys["other-key"]) == dns.rcode.REFUSED
        assert xfr_rcode(named) == dns.rcode.REFUSED
        assert named.log_tail(200).count("zone transfer 'lab.example/AXFR/IN' denied") == 3
    finally:
        named.stop()
