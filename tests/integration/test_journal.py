"""The journal check (bindha_rwx.journal) against journals a real named wrote.

Each kind of damage is checked three ways: our header check, BIND's named-journalprint,
and BIND's loader (named-checkzone -j, the code named runs at start). The point: the
one damage BIND loads silently (a cut tail) is the one the header check must catch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import dns.query
import dns.rcode
import dns.update
import pytest

from bindha_rwx.journal import HEADER_SIZE, check_journals, read_header
from bindha_rwx.journalgate import JournalGate
from bindha_rwx.render import render_bootstrap_zone, render_primary
from harness.bindlab import NamedProcess, keyring, load_pod_config, write_pod_config

pytestmark = [pytest.mark.named, pytest.mark.root]

ZONE = "jnl.example."
ZONES = [{"name": ZONE, "nameservers": [{"name": "ns1.jnl.example",
                                         "addresses": ["192.0.2.1"]}],
          "updatePolicy": [{"key": "update-key", "rule": "zonesub"}]}]
UPDATES = 3


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, address_pool, key_files) -> tuple[Path, Path]:
    """(zone file, journal) after UPDATES updates, named stopped without a zone dump."""
    root = tmp_path_factory.mktemp("journal")
    dyn = root / "dyn"
    dyn.mkdir()
    ip = address_pool.take()
    config = load_pod_config(write_pod_config(root / "pod", pod_ip=ip, dyn_dir=dyn,
                                              key_files=key_files, zones=ZONES,
                                              rndc_port=9571), "jnl", ip)
    zone_file = dyn / config.zones[0].file_name
    zone_file.write_text(render_bootstrap_zone(config.zones[0]))
    named = NamedProcess.from_text(config, render_primary(config))
    named.start()
    try:
        named.wait_serving()
        key = config.keys["update-key"]
        for i in range(UPDATES):
            message = dns.update.UpdateMessage(ZONE, keyring=keyring(key), keyname=key.name)
            message.add(f"h{i}", 300, "TXT", f'"update {i}"')
            assert dns.query.tcp(message, ip, timeout=5).rcode() == dns.rcode.NOERROR
    finally:
        named.stop()  # SIGTERM: the updates stay in the journal only
    return zone_file, Path(f"{zone_file}.jnl")


def damaged_copy(seeded: tuple[Path, Path], tmp_path: Path, change) -> tuple[Path, Path]:
    zone_file, journal = seeded
    zone, jnl = tmp_path / zone_file.name, tmp_path / journal.name
    shutil.copy(zone_file, zone)
    shutil.copy(journal, jnl)
    change(jnl)
    return zone, jnl


def journalprint(jnl: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["named-journalprint", str(jnl)], capture_output=True, text=True,
                          timeout=10, check=False)


def loaded_serial(zone: Path) -> int | None:
    """The serial BIND's loader ends at with this zone file and its journal, or None."""
    result = subprocess.run(["named-checkzone", "-j", ZONE, str(zone)], capture_output=True,
                            text=True, timeout=10, check=False)
    for line in result.stdout.splitlines():
        if "loaded serial" in line and result.returncode == 0:
            return int(line.rsplit(" ", 1)[1])
    return None


def header_of(jnl: Path):
    header = read_header(jnl.read_bytes()[:HEADER_SIZE])
    assert header is not None
    return header


def test_a_sound_journal_passes(seeded):
    zone, jnl = seeded
    assert check_journals([(ZONE, jnl)]) == []
    assert check_journals([(ZONE, zone.with_name("absent.zone.jnl"))]) == []
    assert loaded_serial(zone) == header_of(jnl).end_serial


def replayed(zone: Path) -> subprocess.CompletedProcess[str]:
    """The zone as BIND's loader replays it with its journal (named-compilezone -j)."""
    return subprocess.run(["named-compilezone", "-j", "-o", "-", ZONE, str(zone)],
                          capture_output=True, text=True, timeout=10, check=False)


@pytest.mark.parametrize("cut", [20, "boundary"])
def test_a_cut_tail_is_caught_where_bind_loads_it_silently(seeded, tmp_path, cut):
    header = header_of(seeded[1])

    def truncate(jnl: Path) -> None:
        os.truncate(jnl, header.end_offset - 20)
        if cut == "boundary":  # where the last complete transaction ends
            intact = check_journals([(ZONE, jnl)])[0].intact_bytes
            assert intact is not None
            os.truncate(jnl, intact)

    zone, jnl = damaged_copy(seeded, tmp_path, truncate)
    [damage] = check_journals([(ZONE, jnl)])
    assert "is cut" in damage.problem
    assert damage.header_end_serial == header.end_serial
    assert damage.intact_serial == header.end_serial - 1
    # BIND: named-journalprint exits 0 on it, and the loader succeeds without a word,
    # yet the last acknowledged update is gone. Cut inside the transaction, the loader
    # even ends at the acknowledged serial, its SOA applied without its records.
    assert journalprint(jnl).returncode == 0
    zone_text = replayed(zone)
    assert zone_text.returncode == 0, zone_text.stderr
    assert f'"update {UPDATES - 1}"' not in zone_text.stdout
    assert f'"update {UPDATES - 2}"' in zone_text.stdout
    if cut == 20:
        assert loaded_serial(zone) == header.end_serial
    else:
        assert loaded_serial(zone) == damage.intact_serial


@pytest.mark.parametrize(("name", "change", "bind_words"), [
    ("empty", lambda j: os.truncate(j, 0), "no more"),
    ("shorter than its header", lambda j: os.truncate(j, 40), "no more"),
    ("not a journal", lambda j: j.write_bytes(b"XXXX" + j.read_bytes()[4:]),
     "format not recognized"),
])
def test_a_damaged_header_is_caught_and_bind_agrees(seeded, tmp_path, name, change,
                                                     bind_words):
    zone, jnl = damaged_copy(seeded, tmp_path, change)
    [damage] = check_journals([(ZONE, jnl)])
    assert damage.bind_says and bind_words in damage.bind_says, damage
    assert journalprint(jnl).returncode == 1
    assert loaded_serial(zone) is None  # named refuses the zone: loud, not silent


def test_bytes_after_the_end_are_no_damage(seeded, tmp_path):
    """What a crash between a write and the header's update leaves: BIND ignores it."""
    zone, jnl = damaged_copy(seeded, tmp_path,
                             lambda j: j.write_bytes(j.read_bytes() + os.urandom(100)))
    assert check_journals([(ZONE, jnl)]) == []
    assert loaded_serial(zone) == header_of(jnl).end_serial


def test_garbage_inside_a_transaction_is_left_to_named_which_refuses_it(seeded, tmp_path):
    def scribble(jnl: Path) -> None:
        data = bytearray(jnl.read_bytes())
        middle = (header_of(jnl).begin_offset + header_of(jnl).end_offset) // 2
        data[middle:middle + 16] = b"\xff" * 16
        jnl.write_bytes(bytes(data))

    zone, jnl = damaged_copy(seeded, tmp_path, scribble)
    assert check_journals([(ZONE, jnl)]) == []  # the header is sound
    assert journalprint(jnl).returncode == 1
    assert loaded_serial(zone) is None


def last_transaction(jnl: Path) -> tuple[int, int]:
    """(offset, serial before it) of the journal's last transaction, in BIND's words."""
    result = subprocess.run(["named-journalprint", "-x", str(jnl)], capture_output=True,
                            text=True, timeout=10, check=True)
    lines = [line.split() for line in result.stdout.splitlines()
             if line.startswith("Transaction:")]
    return int(lines[-1][4]), int(lines[-1][10])


def test_a_placeholder_transaction_header_is_caught_as_named_refuses_it(seeded, tmp_path):
    """What a full CephFS left: the header moved past a transaction whose own header was
    still the zeros BIND writes before the records (its commit failed, the update was
    refused). named refuses the zone; the check says so before named starts, and the
    runbook's intact part is every transaction before it."""
    header = header_of(seeded[1])
    offset, before = last_transaction(seeded[1])

    def placeholder(jnl: Path) -> None:
        with jnl.open("r+b") as f:
            f.seek(offset)
            f.write(b"\0" * 16)

    zone, jnl = damaged_copy(seeded, tmp_path, placeholder)
    [damage] = check_journals([(ZONE, jnl)])
    assert f"empty transaction at byte {offset}" in damage.problem, damage
    assert damage.header_end_serial == header.end_serial
    assert damage.intact_serial == before
    assert damage.intact_bytes == offset
    assert damage.bind_says and "empty transaction" in damage.bind_says
    assert loaded_serial(zone) is None  # named-checkzone -j: "journal rollforward failed"
    # The runbook's repair: keep the intact part; BIND then loads the serial before it.
    intact = tmp_path / "intact.jnl"
    intact.write_bytes(jnl.read_bytes()[:offset])
    compiled = subprocess.run(["named-compilezone", "-j", "-J", str(intact), "-o", "-",
                               ZONE, str(zone)], capture_output=True, text=True, timeout=10,
                              check=False)
    assert compiled.returncode == 0, compiled.stderr
    assert f'"update {UPDATES - 2}"' in compiled.stdout
    assert f'"update {UPDATES - 1}"' not in compiled.stdout


def test_a_broken_serial_chain_is_caught(seeded, tmp_path):
    """A transaction that does not start where the one before ended: BIND refuses it."""
    offset, before = last_transaction(seeded[1])

    def reserial(jnl: Path) -> None:
        with jnl.open("r+b") as f:
            f.seek(offset + 8)  # serial0 of journal_rawxhdr_t
            f.write((before - 1).to_bytes(4, "big"))

    zone, jnl = damaged_copy(seeded, tmp_path, reserial)
    [damage] = check_journals([(ZONE, jnl)])
    assert f"from serial {before - 1}, the one before ended at {before}" in damage.problem
    assert journalprint(jnl).returncode == 1
    assert loaded_serial(zone) is None  # "expected serial N, got N-1"


def test_a_journal_older_than_what_named_served_is_damage(seeded, tmp_path):
    """The restart after the volume failed under named: the serial that named served
    from memory is the floor the volume must hold (else a new named would reuse its
    serials with other contents). Equal or newer is sound; the floor is serial
    arithmetic, so a wrap past 2**32 is newer, not older."""
    zone, jnl = damaged_copy(seeded, tmp_path, lambda j: None)
    end = header_of(jnl).end_serial
    files = [(ZONE, zone.name)]
    gate = JournalGate()
    assert gate.check(tmp_path, files, served={ZONE: end}).sound
    assert gate.check(tmp_path, files, served={ZONE: (end - 5) % 2**32}).sound
    verdict = gate.check(tmp_path, files, served={ZONE: end + 1})
    [damage] = verdict.damaged
    assert verdict.news
    assert f"ends at serial {end}, but named served serial {end + 1}" in damage.problem
    assert damage.served_serial == end + 1
    assert damage.intact_serial is None and damage.bind_says is None  # nothing to keep
    assert gate.check(tmp_path, files, served={"other.example.": end + 9}).sound
    assert gate.check(tmp_path, files).sound  # no floor: the header check alone
    assert JournalGate().check(tmp_path, [(ZONE, "absent.zone")],
                               served={ZONE: end + 1}).sound  # no zone at all: no floor
    jnl.unlink()  # no journal: the zone file's own serial is what the volume holds
    zone_serial = header_of(seeded[1]).begin_serial
    assert JournalGate().check(tmp_path, files, served={ZONE: zone_serial}).sound
    [damage] = JournalGate().check(tmp_path, files, served={ZONE: zone_serial + 1}).damaged
    assert f"the zone file is at serial {zone_serial}, but named served" in damage.problem


def test_checking_a_thousand_journals_costs_milliseconds(seeded, tmp_path):
    _zone, jnl = seeded
    zones = []
    for i in range(1000):
        copy = tmp_path / f"z{i}.example.zone.jnl"
        shutil.copy(jnl, copy)
        zones.append((f"z{i}.example.", copy))
    started = time.monotonic()
    assert check_journals(zones) == []
    took = time.monotonic() - started
    print(f"journal check of 1000 zones: {took * 1000:.1f} ms "
          f"({took * 1e6 / 1000:.0f} us per zone)")
    os.truncate(zones[500][1], 100)
    assert [d.zone for d in check_journals(zones)] == ["z500.example."]
