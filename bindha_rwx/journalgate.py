"""The journal gate: may named open these zones' journals? A verdict, no side effects.

Checked before named starts, before each restart of a crashed named, and every
retryPeriod while a damaged journal keeps named stopped (bindha_rwx.journal says what
counts as damage and why). The gate remembers what it found last, so the supervisor
says a damage once (log, Event) and notices the repair; what to do with the verdict
(state journal-damaged, keep the fence, the Event's words) is the supervisor's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bindha_rwx.journal import (
    Damage,
    check_served_floor,
    explain_all,
    same_damage,
    timed_check,
    zone_journals,
)


@dataclass(frozen=True)
class Verdict:
    damaged: list[Damage]  # empty: every journal is sound
    checked: int  # journals looked at
    seconds: float
    news: bool = False  # a damage not reported before (or a different one): say it
    repaired: list[Damage] = field(default_factory=list)  # damage gone since last time

    @property
    def sound(self) -> bool:
        return not self.damaged


class JournalGate:
    """Checks zone journals and remembers the last damage found."""

    def __init__(self) -> None:
        self.damaged: list[Damage] = []

    def check(self, dyn_dir: Path, zones: Iterable[tuple[str, str]],
              served: Mapping[str, int] | None = None) -> Verdict:
        """Every (zone, file name)'s journal; named's words for the first few damaged.

        ``served``: serials a named served from memory before the volume failed under
        it; a journal that ends older than its zone's is damage too (journal.py).
        """
        journals = zone_journals(dyn_dir, list(zones))
        damaged, took = timed_check(journals)
        if served:
            known = {d.zone for d in damaged}
            damaged += [d for d in (check_served_floor(zone, path, served[zone])
                                    for zone, path in journals
                                    if zone in served and zone not in known)
                        if d is not None]
        if not damaged:
            repaired, self.damaged = self.damaged, []
            return Verdict([], len(journals), took, repaired=repaired)
        news = not same_damage(damaged, self.damaged)
        if news:
            self.damaged = explain_all(damaged)  # BIND's words, for the first few
        return Verdict(self.damaged, len(journals), took, news=news)

    def forget(self) -> None:
        """Leadership ended: the next holder's first finding is news again."""
        self.damaged = []

    @staticmethod
    def summary(damaged: list[Damage], runbook: str) -> str:
        names = ", ".join(d.zone for d in damaged[:5]) + (
            f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        return (f"named not started: damaged journal of {names}: {damaged[0].summary()}; "
                f"this pod keeps the fence; see {runbook}")
