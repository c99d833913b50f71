"""The journal check the leader runs before it starts ``named`` (DESIGN: corrupted ``.jnl``).

What detects damage, seen here with BIND 9.18.49:

- tail cut (the file is shorter than its header's end offset): ``named`` replays what
  is left **silently**: it loads the last complete transaction's serial (the later
  acknowledged updates are gone), or, cut inside a transaction's records, the new SOA
  without the rest of them; with only part of the SOA change left, it refuses the zone.
  ``named-journalprint`` exits 0 and prints the surviving transactions without a
  warning; ``named-journalprint -d``/``-u`` fail.
- zero length, or shorter than the 64-byte header: ``named`` refuses the zone ("journal
  open failed: no more"); ``named-journalprint`` exits 1 ("no more").
- a header that is not a BIND journal's: both refuse ("journal format not recognized").
- bytes after the header's end offset (what a crash mid-write leaves): both ignore them,
  rightly; the next write overwrites them. Not damage.
- garbage or zeros inside a transaction: ``named`` refuses the zone ("journal
  rollforward failed"); ``named-journalprint`` exits 1 ("journal corrupt").

So BIND's own tools miss the one silent case, and running ``named-journalprint`` on
every journal at a takeover costs 5-20 ms per zone (a process each), seconds for 1,000
zones. The check here reads each journal's header instead (format, begin/end serials
and offsets; journal.c's ``journal_rawheader_t``, big-endian) and compares the end
offset with the file's size: one open and a 64-byte read per zone. ``named-journalprint
-x`` (with a timeout) runs only on a journal found damaged, to say in BIND's words how
far the intact transactions go, which is what the runbook's recovery needs.

The check also walks the transaction headers of the journal's tail, from the last
index entry (the header is followed by an index of (serial, offset) pairs, one per
transaction until it fills) to the header's end offset: each transaction header must
have a size, records and the serial the one before ended at, and the chain must end
exactly at the header's end offset and serial. That catches what a full CephFS left
here: the header moved past a transaction whose own header was still the zeros BIND
writes as a placeholder (``dns_journal_begin_transaction``) and rewrites at commit.
``named`` refuses such a zone ("journal corrupt: empty transaction", "journal
rollforward failed"); the transaction was never acknowledged (the commit's fsync had
failed), so every transaction before it is intact and the runbook keeps them. A few
16-byte reads per zone, usually one read of the tail.

Damage inside a transaction's records is left to ``named``, which refuses such a zone
loudly (SERVFAIL for it, the leader's readiness fails); it is never served silently.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.rdatatype
import dns.zone

from bindha_rwx import reaper
from bindha_rwx.bindtools import BindToolError, find_tool
from bindha_rwx.soa import serial_lt

RUNBOOK = "docs/runbooks/journal-out-of-sync.md"
HEADER_SIZE = 64
# journal.c: ";BIND LOG V9\n" (before 9.16.13) and ";BIND LOG V9.2\n", NUL-padded to 16.
FORMATS = frozenset({b";BIND LOG V9\n", b";BIND LOG V9.2\n"})
TOOL_TIMEOUT = 10.0
XHDR_V2, XHDR_V1 = 16, 12  # journal_rawxhdr_t (size, count, serial0, serial1); V9: no count
TAIL_READ = 1 << 20  # bytes of a journal's tail read at once
WALK_AT_MOST = 100_000  # transaction headers walked per journal
# Journals are checked by a few threads: on a network volume each open is a round trip.
WORKERS = 8
EXPLAIN_AT_MOST = 10
_TRANSACTION = re.compile(r"^Transaction: version (\d+) offset (\d+) size (\d+) "
                          r"rrcount \d+ start (\d+) end (\d+)")


@dataclass(frozen=True)
class Damage:
    """One damaged journal: what is wrong, in words an operator can act on."""

    zone: str
    journal: str
    problem: str
    header_end_serial: int | None = None
    header_begin: tuple[int, int] | None = None  # (serial, offset) of the first transaction
    intact_serial: int | None = None  # the last complete transaction's serial, if known
    intact_bytes: int | None = None  # where that transaction ends in the file
    bind_says: str | None = None  # named-journalprint's words
    served_serial: int | None = None  # a serial named served that the volume lacks

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if v is not None and k != "header_begin"}

    def summary(self) -> str:
        text = f"zone {self.zone}: {self.journal}: {self.problem}"
        if self.intact_serial is not None:
            text += (f"; intact up to serial {self.intact_serial} (first "
                     f"{self.intact_bytes} bytes)")
        return text


@dataclass(frozen=True)
class Header:
    format_: bytes
    begin_serial: int
    begin_offset: int
    end_serial: int
    end_offset: int
    index_size: int


def read_header(data: bytes) -> Header | None:
    """The journal header of ``data`` (at least 64 bytes), or None if it is not one."""
    fmt = data[:16].rstrip(b"\0")
    if fmt not in FORMATS:
        return None
    begin_serial, begin_offset, end_serial, end_offset, index_size = struct.unpack(
        ">IIIII", data[16:36])
    return Header(fmt, begin_serial, begin_offset, end_serial, end_offset, index_size)


def check_journal(zone: str, path: Path) -> Damage | None:
    """None if ``path`` is absent or sound by its header; else what is wrong.

    Reads the header before the size: were ``named`` appending meanwhile, it writes a
    transaction before it moves the header's end offset, so the size read after the
    header is never smaller than that header's end (no false alarm in ``status``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Damage(zone, str(path), f"cannot be read: {exc.strerror}")
    try:
        return _check_open_journal(zone, path, fd)
    except OSError as exc:
        return Damage(zone, str(path), f"cannot be read: {exc.strerror}")
    finally:
        os.close(fd)


def _check_open_journal(zone: str, path: Path, fd: int) -> Damage | None:
    data = os.pread(fd, HEADER_SIZE, 0)
    size = os.fstat(fd).st_size
    if size == 0:
        return Damage(zone, str(path), "is empty (0 bytes): named would refuse the zone")
    if len(data) < HEADER_SIZE:
        return Damage(zone, str(path), f"has {size} bytes, less than the {HEADER_SIZE}-byte "
                      "journal header: named would refuse the zone")
    header = read_header(data)
    if header is None:
        return Damage(zone, str(path), f"is not a BIND journal (starts {data[:16]!r})")
    if header.begin_offset < HEADER_SIZE or header.end_offset < header.begin_offset:
        return Damage(zone, str(path), f"has an inconsistent header (begin offset "
                      f"{header.begin_offset}, end offset {header.end_offset})",
                      header.end_serial)
    if size < header.end_offset:
        return Damage(zone, str(path), f"is cut: its header records transactions up to "
                      f"serial {header.end_serial} ending at byte {header.end_offset}, the "
                      f"file has {size} bytes; named would replay it in part, silently",
                      header.end_serial, (header.begin_serial, header.begin_offset))
    problem = walk_tail(fd, header)
    if problem is not None:
        return Damage(zone, str(path), f"{problem}; its header records transactions up "
                      f"to serial {header.end_serial}: named would refuse the zone",
                      header.end_serial, (header.begin_serial, header.begin_offset))
    return None


def _transaction_starts(fd: int, header: Header) -> list[tuple[int, int]]:
    """The index's (serial, offset) entries inside [begin, end), by offset."""
    raw = os.pread(fd, header.index_size * 8, HEADER_SIZE) if header.index_size else b""
    entries = [struct.unpack(">II", raw[i:i + 8]) for i in range(0, len(raw) - 7, 8)]
    return sorted(((serial, offset) for serial, offset in entries
                   if header.begin_offset <= offset < header.end_offset),
                  key=lambda entry: entry[1])


def walk_tail(fd: int, header: Header) -> str | None:
    """What is wrong with the transaction chain from the last index entry to the
    header's end, or None. Reads that tail once (at most TAIL_READ bytes; past that,
    one read per transaction header)."""
    if header.end_offset == header.begin_offset:
        return None  # no transaction
    starts = _transaction_starts(fd, header)
    serial, offset = starts[-1] if starts else (header.begin_serial, header.begin_offset)
    xhdr = XHDR_V2 if header.format_ == b";BIND LOG V9.2\n" else XHDR_V1
    base = offset
    tail = os.pread(fd, header.end_offset - base, base) \
        if header.end_offset - base <= TAIL_READ else None
    for _ in range(WALK_AT_MOST):
        if offset == header.end_offset:
            if serial != header.end_serial:
                return (f"its transactions end at serial {serial}, its header says "
                        f"{header.end_serial}")
            return None
        if offset + xhdr > header.end_offset:
            return f"has a partial transaction header at byte {offset}"
        raw = tail[offset - base:offset - base + xhdr] if tail is not None \
            else os.pread(fd, xhdr, offset)
        if len(raw) < xhdr:
            return f"ends inside the transaction header at byte {offset}"
        if xhdr == XHDR_V2:
            length, count, serial0, serial1 = struct.unpack(">IIII", raw)
        else:
            (length, serial0, serial1), count = struct.unpack(">III", raw), 1
        if length == 0 or count == 0:
            return (f"has an empty transaction at byte {offset} (its header is BIND's "
                    f"placeholder: the commit of the update after serial {serial} never finished)")
        if serial0 != serial:
            return (f"has a transaction at byte {offset} from serial {serial0}, the one "
                    f"before ended at {serial}")
        if offset + xhdr + length > header.end_offset:
            return (f"has a transaction at byte {offset} of {length} bytes that runs past "
                    f"the header's end offset {header.end_offset}")
        offset, serial = offset + xhdr + length, serial1
    return None  # a very long tail: left to named


def check_served_floor(zone: str, path: Path, served: int) -> Damage | None:
    """Damage if the volume holds an older serial than ``served``, one that a running
    named served from memory before the volume failed under it.

    That named served ``served``, so the volume must hold it. If it holds an older one,
    the volume lost updates named had acknowledged, and a new named would hand out
    their serials again with other contents, which a secondary holding the old ones
    never transfers (seen once on a full CephFS). The journal's header says the serial;
    a zone with no journal, its zone file's SOA (read only on this rare path). Such a
    journal has no intact part to keep: the zone must come from a secondary.
    """
    try:
        with path.open("rb") as f:
            header = read_header(f.read(HEADER_SIZE))
        if header is None:
            return None  # check_journal's to report
        held: int | None = header.end_serial
    except FileNotFoundError:
        header, held = None, _zone_file_serial(zone, path.with_suffix(""))
    except OSError as exc:
        return Damage(zone, str(path), f"cannot be read: {exc.strerror}")
    if held is None or not serial_lt(held, served):
        return None
    where = "ends" if header is not None else "is absent and the zone file is"
    return Damage(zone, str(path), f"{where} at serial {held}, but named served serial "
                  f"{served} before the volume failed: the volume lost updates named "
                  f"had acknowledged; take the zone from a secondary at serial {served} "
                  f"or newer", held, served_serial=served)


def _zone_file_serial(zone: str, path: Path) -> int | None:
    try:
        parsed = dns.zone.from_file(str(path), origin=zone, relativize=False,
                                    check_origin=False)
        soa = parsed.find_rdataset(zone, dns.rdatatype.SOA)
    except (OSError, dns.exception.DNSException, KeyError):
        return None
    return int(soa[0].serial)


def check_journals(zones: Iterable[tuple[str, Path]],
                   explain: int = EXPLAIN_AT_MOST) -> list[Damage]:
    """Check every ``(zone, journal path)``; the damaged ones, the first ``explain`` of
    them explained by BIND's tool (a process each, so bounded: after a disaster that
    cut many journals, the check must still answer within a retryPeriod or so)."""
    items = list(zones)
    if len(items) <= WORKERS:
        found = [check_journal(zone, path) for zone, path in items]
    else:
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="journal-check") as pool:
            found = list(pool.map(lambda item: check_journal(*item), items))
    damaged = [d for d in found if d is not None]
    return explain_all(damaged, explain)


def explain_all(damaged: list[Damage], explain: int = EXPLAIN_AT_MOST) -> list[Damage]:
    return [explain_damage(d) if i < explain else d for i, d in enumerate(damaged)]


def explain_damage(damage: Damage, timeout: float = TOOL_TIMEOUT) -> Damage:
    """Add how far the journal is intact, in ``named-journalprint -x``'s words."""
    if damage.served_serial is not None:
        return damage  # intact, but older than what was served: no part of it to keep
    path = Path(damage.journal)
    try:
        tool = find_tool("named-journalprint")
        result = reaper.run([tool, "-x", str(path)], timeout=timeout)
    except BindToolError as exc:
        return _with(damage, bind_says=str(exc))
    except subprocess.TimeoutExpired:
        return _with(damage, bind_says=f"named-journalprint did not finish in {timeout:g}s")
    except OSError as exc:
        return _with(damage, bind_says=f"cannot run named-journalprint: {exc.strerror}")
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    intact: tuple[int, int] | None = None
    for line in result.stdout.splitlines():
        match = _TRANSACTION.match(line)
        if match is None:
            continue
        version, offset, length, _start, end = (int(g) for g in match.groups())
        stop = offset + (16 if version >= 2 else 12) + length  # + the transaction header
        if stop <= size:
            intact = (end, stop)
    begin = damage.header_begin
    if intact is None and begin is not None and begin[1] <= size:
        intact = begin  # no complete transaction: the zone file alone is what is left
    words = " ".join(result.stderr.split())[:300] or None
    if result.returncode == 0 and words is None:
        words = "named-journalprint reads it without complaint (it does not check the tail)"
    return _with(damage, bind_says=words, intact_serial=intact[0] if intact else None,
                 intact_bytes=intact[1] if intact else None)


def _with(damage: Damage, **changes: Any) -> Damage:
    return Damage(**{**asdict(damage), **changes})


def zone_journals(dyn_dir: Path, file_names: Iterable[tuple[str, str]]) -> list[tuple[str, Path]]:
    """``(zone, dyn_dir/<file>.jnl)`` for each ``(zone, file name)``: named's default
    journal name, the one our rendered named.conf uses."""
    return [(zone, dyn_dir / f"{name}.jnl") for zone, name in file_names]


def timed_check(zones: list[tuple[str, Path]]) -> tuple[list[Damage], float]:
    """Header check only (no process), and how long it took."""
    started = time.monotonic()
    damaged = check_journals(zones, explain=0)
    return damaged, time.monotonic() - started


def same_damage(a: list[Damage], b: list[Damage]) -> bool:
    """Equal by what the header check says (``b`` may carry BIND's explanations)."""
    return [(d.zone, d.journal, d.problem) for d in a] == \
        [(d.zone, d.journal, d.problem) for d in b]
