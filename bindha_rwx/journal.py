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

Damage inside a transaction is left to ``named``, which refuses such a zone loudly
(SERVFAIL for it, the leader's readiness fails); it is never served silently.
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

from bindha_rwx import reaper
from bindha_rwx.bindtools import BindToolError, find_tool

RUNBOOK = "docs/runbooks/journal-out-of-sync.md"
HEADER_SIZE = 64
# journal.c: ";BIND LOG V9\n" (before 9.16.13) and ";BIND LOG V9.2\n", NUL-padded to 16.
FORMATS = frozenset({b";BIND LOG V9\n", b";BIND LOG V9.2\n"})
TOOL_TIMEOUT = 10.0
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
        data = os.pread(fd, HEADER_SIZE, 0)
        size = os.fstat(fd).st_size
    except OSError as exc:
        return Damage(zone, str(path), f"cannot be read: {exc.strerror}")
    finally:
        os.close(fd)
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
    return None


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
