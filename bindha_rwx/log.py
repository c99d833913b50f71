"""Structured logs: one JSON object per line on stdout, one line per event.

``named`` writes its own log to stderr; ours goes to stdout so the two never
interleave inside a line. Field names are stable: ts, level, component, event.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

_lock = threading.Lock()
_stream: TextIO | None = None


def set_stream(stream: TextIO | None) -> None:
    """Send log lines to ``stream`` (None: the current sys.stdout)."""
    global _stream
    _stream = stream


class Logger:
    def __init__(self, component: str) -> None:
        self.component = component

    def emit(self, level: str, event: str, **fields: Any) -> None:
        record = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level,
            "component": self.component,
            "event": event,
            **fields,
        }
        line = json.dumps(record, default=str, separators=(",", ":"))
        with _lock:
            stream = _stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()

    def info(self, event: str, **fields: Any) -> None:
        self.emit("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit("error", event, **fields)


def get_logger(component: str) -> Logger:
    return Logger(component)
