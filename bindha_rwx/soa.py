"""Zone serials from many servers at once: SOA queries over one UDP socket.

A secondary compares every zone's serial with its primary's. Asking one zone at a time
costs zones x round trip, and zones x timeout once the primary is dead (DESIGN
"Liveness of the fence beats everything": the controller must never sit in such a
loop). Here each server has a window of queries in flight, each query a timeout and
one retry, the whole pass a deadline; a server that answers nothing for a timeout is
declared silent and dropped, and the caller can abandon the pass at any moment. So a
pass costs about a round trip per ``window`` zones while servers answer, and at most
about one timeout when one of them is dead, whatever the zone count.

Answers are read from the wire directly (header, question, the first SOA's serial):
dnspython's full parse would cost more CPU than the rest of the pass at 1,000 zones.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import random
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dns.message
import dns.rdatatype

WINDOW = 32  # queries in flight per server
QUERY_TIMEOUT = 0.3  # seconds before a query is retried (once), then given up
_SOA = 6
_SELECT = 0.05  # the longest the loop sleeps before it checks abandon and deadline


@dataclass
class SerialPass:
    """One pass: ``serials[server][zone]`` for every zone that answered NOERROR with
    a SOA; ``silent`` the servers that stopped answering; ``complete`` unless the pass
    was abandoned or hit its deadline with queries outstanding."""

    serials: dict[str, dict[str, int]] = field(default_factory=dict)
    answered: dict[str, set[str]] = field(default_factory=dict)  # any reply, even an error
    silent: set[str] = field(default_factory=set)
    complete: bool = True


@functools.lru_cache(maxsize=8192)
def _query_wire(zone: str) -> bytes:
    return dns.message.make_query(zone, dns.rdatatype.SOA).to_wire()


def _norm(ip: str) -> str:
    return ipaddress.ip_address(ip).compressed


class _Server:
    def __init__(self, ip: str, port: int, zones: Iterable[str]) -> None:
        self.ip = ip  # as the caller named it: the key of SerialPass's maps
        self.addr = (_norm(ip), port)
        self.family = socket.AF_INET6 if ":" in self.addr[0] else socket.AF_INET
        self.todo: deque[tuple[str, int]] = deque((z, 0) for z in zones)  # (zone, attempt)
        self.flight: dict[int, tuple[str, int, float]] = {}  # qid -> (zone, attempt, sent)
        self.heard = 0.0  # when it last answered (or when it was first asked)


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        length = data[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def parse_soa_serial(data: bytes, wire: bytes) -> tuple[bool, int | None]:
    """(is a reply to ``wire``, its SOA serial if NOERROR with a SOA answer)."""
    if len(data) < 12 or data[:2] != wire[:2]:
        return False, None
    flags, qdcount, ancount = struct.unpack("!HHH", data[2:8])
    question = wire[12:]
    if not flags & 0x8000 or qdcount != 1 or \
            data[12:12 + len(question)].lower() != question.lower():
        return False, None
    if flags & 0x000F or ancount < 1:
        return True, None
    try:
        offset = _skip_name(data, 12 + len(question))
        rtype, = struct.unpack("!H", data[offset:offset + 2])
        if rtype != _SOA:
            return True, None
        offset += 10  # type, class, ttl, rdlength: the rdata starts with mname
        offset = _skip_name(data, _skip_name(data, offset))  # mname, rname
        serial, = struct.unpack("!I", data[offset:offset + 4])
    except (IndexError, struct.error):
        return True, None
    return True, serial


def ask_serials(servers: Iterable[str], zones: Iterable[str], *, port: int = 53,
                deadline: float, abandon: Callable[[], bool] = lambda: False,
                progress: Callable[[], None] = lambda: None, window: int = WINDOW,
                timeout: float = QUERY_TIMEOUT) -> SerialPass:
    """Ask every server the SOA of every zone, concurrently (see the module's doc).

    ``deadline`` is a CLOCK_MONOTONIC time; ``abandon`` is checked and ``progress``
    called at least every 50 ms, so a caller can stop early and show it is alive.
    """
    names = list(zones)
    table = {s.addr[0]: s for s in (_Server(ip, port, names) for ip in servers)}
    result = SerialPass(serials={s.ip: {} for s in table.values()},
                        answered={s.ip: set() for s in table.values()})
    sockets: dict[int, socket.socket] = {}
    try:
        for server in table.values():
            if server.family not in sockets:
                sock = socket.socket(server.family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sockets[server.family] = sock
        started = time.monotonic()
        for server in table.values():
            server.heard = started
        while any(s.todo or s.flight for s in table.values()):
            now = time.monotonic()
            if abandon() or now >= deadline:
                result.complete = False
                break
            for server in table.values():
                _expire(server, now, timeout, result)
                _send(server, sockets[server.family], window, now)
            ready, _, _ = select.select(list(sockets.values()), [], [], _SELECT)
            for sock in ready:
                _receive(sock, table, result)
            progress()
    finally:
        for sock in sockets.values():
            sock.close()
    return result


def _expire(server: _Server, now: float, timeout: float, result: SerialPass) -> None:
    if server.flight and now - server.heard > timeout:
        # Not one answer for a whole timeout while asked: dead or cut off. Waiting for
        # every zone's own timeout is exactly what this module exists to avoid.
        result.silent.add(server.ip)
        server.todo.clear()
        server.flight.clear()
        return
    for qid, (zone, attempt, sent) in list(server.flight.items()):
        if now - sent > timeout:
            del server.flight[qid]
            if attempt == 0:
                server.todo.appendleft((zone, 1))


def _send(server: _Server, sock: socket.socket, window: int, now: float) -> None:
    while server.todo and len(server.flight) < window:
        zone, attempt = server.todo.popleft()
        qid = random.getrandbits(16)
        while qid in server.flight:
            qid = random.getrandbits(16)
        try:
            sock.sendto(struct.pack("!H", qid) + _query_wire(zone)[2:], server.addr)
        except BlockingIOError:
            server.todo.appendleft((zone, attempt))
            return
        except OSError:
            pass  # unreachable: counts as a query without an answer
        server.flight[qid] = (zone, attempt, now)


def _receive(sock: socket.socket, table: dict[str, _Server], result: SerialPass) -> None:
    while True:
        try:
            data, addr = sock.recvfrom(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # an ICMP error queued on the socket; its query times out
        with contextlib.suppress(ValueError):
            server = table.get(_norm(addr[0]))
            if server is None or len(data) < 2:
                continue
            qid, = struct.unpack("!H", data[:2])
            entry = server.flight.get(qid)
            if entry is None:
                continue
            zone = entry[0]
            wire = data[:2] + _query_wire(zone)[2:]
            is_reply, serial = parse_soa_serial(data, wire)
            if not is_reply:
                continue
            del server.flight[qid]
            server.heard = time.monotonic()
            result.answered[server.ip].add(zone)
            if serial is not None:
                result.serials[server.ip][zone] = serial


def serial_lt(a: int, b: int) -> bool:
    """RFC 1982 serial arithmetic: is ``a`` older than ``b``?"""
    return a != b and ((b - a) % 2**32) < 2**31
