"""Config hot reload: notice a changed config file, validate it, say what it changes.

A mounted ConfigMap changes by a symlink swap (``..data`` is re-pointed), so the
file is re-read by path every poll and compared by content, not by mtime or inode.
Validation here is the schema (config.parse_config); the caller renders and runs
``named-checkconf`` before it applies anything. A refused config is reported once per
distinct content, and the running config stays.

What can change without a restart: zones (added, removed, their policies), keys, ACLs
and allowQuery, and the secondaries' settings. Timings, paths, ports, the Lease and the
labels shape the running supervisor and the election itself; a change there is logged
as needing a restart and is otherwise ignored.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from bindha_rwx.bindtools import BindToolError, check_conf
from bindha_rwx.config import Config, ConfigError, parse_config
from bindha_rwx.log import get_logger

log = get_logger("reload")
EventSink = Callable[[str, str, str], None]  # (reason, message, type), e.g. Publisher.event

RESTART_FIELDS = ("cluster", "namespace", "lease_name", "timing", "paths", "role_label",
                  "ports", "local_address")


class ConfigSource:
    """The config file, polled for changes of its content."""

    def __init__(self, path: Path, env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.env = os.environ if env is None else env
        self._digest = self._read_digest()[1]

    def _read_digest(self) -> tuple[str | None, str | None]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return None, None
        return text, hashlib.sha256(text.encode()).hexdigest()

    def poll(self) -> Config | None:
        """A new validated Config if the content changed, else None.

        Raises ConfigError (once per distinct content) when the new content is invalid.
        """
        text, digest = self._read_digest()
        if text is None or digest == self._digest:
            return None
        self._digest = digest
        return parse_config(text, env=self.env, source=str(self.path))


def merge(running: Config, new: Config) -> tuple[Config, list[str]]:
    """The config to apply now, and the changed fields that need a restart to apply."""
    needs_restart = [name for name in RESTART_FIELDS
                     if getattr(running, name) != getattr(new, name)]
    merged = replace(running, keys=new.keys, zones=new.zones, secondaries=new.secondaries,
                     acls=new.acls, allow_query=new.allow_query)
    return merged, needs_restart


def zone_changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    before = {z.name for z in old.zones}
    after = {z.name for z in new.zones}
    return sorted(after - before), sorted(before - after)


def candidate(source: ConfigSource, running: Config, render: Callable[[Config], str],
              event: EventSink) -> Config | None:
    """The config to apply now, or None: unchanged, or refused (then said, once).

    A candidate has passed the schema and ``named-checkconf`` on its rendering; fields
    that need a restart keep their running values.
    """
    try:
        new = source.poll()
        if new is None:
            return None
        merged, needs_restart = merge(running, new)
        if needs_restart:
            log.warning("config.restart_needed", fields=needs_restart,
                        note="these apply at the next start; the rest applies now")
        check_conf(render(merged))
    except (ConfigError, BindToolError) as exc:
        refused(event, "new config refused", exc)
        return None
    return merged


def refused(event: EventSink, what: str, exc: Exception) -> None:
    log.error("config.refused", error=str(exc)[:1000], kept="the running config")
    event("ConfigRefused", f"{what}, the running one is kept: {str(exc)[:600]}", "Warning")


def applied(event: EventSink, old: Config, new: Config, role: str) -> None:
    added, removed = zone_changes(old, new)
    log.info("config.applied", zones_added=added, zones_removed=removed, role=role)
    event("ConfigApplied", f"zones added {added or 'none'}, removed {removed or 'none'}",
          "Normal")
