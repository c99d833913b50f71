"""A client that sends TSIG-signed updates without pause and records every ack.

It plays the update clients behind the leader-only Service: it sends to whichever
master answers, trying the pods' addresses in turn (a refused connection is instant on
loopback). Each update adds a unique name, so a lost acknowledged update is visible.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.update
import dns.zone

from bindha_rwx.config import TsigKey
from harness.bindlab import keyring


@dataclass
class Ack:
    name: str
    server: str
    sent: float  # monotonic
    acked: float


@dataclass
class UpdateWriter:
    zone: str
    servers: list[str]
    key: TsigKey
    port: int = 53
    timeout: float = 0.5
    prefix: str = "u"
    interval: float = 0.0  # least seconds between two sends (0: as fast as acks come)
    acks: list[Ack] = field(default_factory=list)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> UpdateWriter:
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        ring = keyring(self.key)
        n = 0
        preferred = 0
        while not self._stop.is_set():
            name = f"{self.prefix}{n}"
            for offset in range(len(self.servers)):
                server = self.servers[(preferred + offset) % len(self.servers)]
                update = dns.update.UpdateMessage(self.zone, keyring=ring, keyname=self.key.name)
                update.add(name, 300, "TXT", f'"{n}"')
                sent = time.monotonic()
                try:
                    answer = dns.query.tcp(update, server, port=self.port, timeout=self.timeout)
                except (dns.exception.DNSException, OSError, EOFError):
                    continue
                if answer.rcode() == dns.rcode.NOERROR:
                    self.acks.append(Ack(name, server, sent, time.monotonic()))
                    preferred = self.servers.index(server)
                    n += 1
                    if self.interval:
                        self._stop.wait(max(0.0, sent + self.interval - time.monotonic()))
                    break
            else:
                self.failures += 1
                time.sleep(0.005)

    def max_gap(self, after: float | None = None) -> float:
        """Longest time between consecutive acks (after ``after``, monotonic)."""
        times = [a.acked for a in self.acks if after is None or a.acked >= after]
        if after is not None:
            times = [after, *times]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def served_names(server: str, zone: str, key: TsigKey, port: int = 53) -> set[str]:
    """Every owner name the server has in ``zone``, by an AXFR signed with ``key``."""
    xfr = dns.query.xfr(server, zone, port=port, keyring=keyring(key), keyname=key.name,
                        timeout=5, lifetime=30)
    z = dns.zone.from_xfr(xfr)
    return {str(name) for name in z.nodes}
