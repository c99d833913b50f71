"""Structured logs: one JSON object per line on stdout, one line per event.

``named`` writes its own log to stderr; ours goes to stdout so the two never
interleave inside a line. Field names are stable: ts, level, component, event.

Built on stdlib ``logging`` so that the libraries' own messages (the kubernetes
client, urllib3) come out as the same JSON lines (event "library.log", their text in
"message"); ``install()`` puts the one handler on the root logger.

Logging never blocks the caller: a line is formatted on the caller's thread and put
on a bounded queue without waiting; one writer thread ("log-writer") writes the queue
to the stream. A full stdout pipe (a stalled log collector) then stops only that
thread, never the fence guard that logs before it kills named (DESIGN invariant 12).
Lines that find the queue full are counted and dropped, and the count is logged once
there is room again. ``flush()`` waits, with a bound, for the queue to drain (at exit).
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

QUEUE_LINES = 10_000
_ROOT = "bindha"

_stream: TextIO | None = None
_queue: queue.Queue[str] = queue.Queue(QUEUE_LINES)
_dropped = 0
_writer: threading.Thread | None = None
_writer_lock = threading.Lock()


def set_stream(stream: TextIO | None) -> None:
    """Send log lines to ``stream`` (None: the current sys.stdout)."""
    global _stream
    _stream = stream


def _ts(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Our events keep their fields; anyone else's record becomes event library.log."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, "bindha_fields", None)
        level = record.levelname.lower()
        if fields is not None:
            line = {"ts": _ts(record.created), "level": level,
                    "component": record.name.removeprefix(_ROOT + "."),
                    "event": record.msg, **fields}
        else:
            line = {"ts": _ts(record.created), "level": level, "component": record.name,
                    "event": "library.log", "message": record.getMessage()}
            if record.exc_info:
                line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class QueueingHandler(logging.Handler):
    """Formats on the caller's thread, queues without waiting (see the module text)."""

    def emit(self, record: logging.LogRecord) -> None:
        global _dropped
        try:
            line = self.format(record)
        except Exception:  # a field json cannot take: say so rather than lose the event
            line = json.dumps({"ts": _ts(record.created), "level": "error",
                               "component": "log", "event": "log.unformattable",
                               "of": str(record.msg)[:200]})
        _start_writer()
        try:
            _queue.put_nowait(line)
        except queue.Full:
            _dropped += 1


_handler = QueueingHandler()
_handler.setFormatter(JsonFormatter())


def install(level: int = logging.INFO) -> None:
    """Route every logger (ours and the libraries') through the one JSON handler."""
    root = logging.getLogger()
    if _handler not in root.handlers:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(_handler)
    root.setLevel(logging.WARNING)  # the libraries: their warnings and errors only
    logging.getLogger(_ROOT).setLevel(level)


def _start_writer() -> None:
    global _writer
    if _writer is not None and _writer.is_alive():
        return
    with _writer_lock:
        if _writer is None or not _writer.is_alive():
            _writer = threading.Thread(target=_write_lines, name="log-writer", daemon=True)
            _writer.start()


def _write_lines() -> None:
    global _dropped
    while True:
        line = _queue.get()
        try:
            if _dropped:
                count, _dropped = _dropped, 0
                _write(json.dumps({"ts": _ts(time.time()), "level": "warning",
                                   "component": "log", "event": "log.dropped",
                                   "lines": count}))
            _write(line)
        except Exception:  # a closed or broken stream: the line is lost, we go on
            pass
        finally:
            _queue.task_done()


def _write(line: str) -> None:
    stream = _stream or sys.stdout
    stream.write(line + "\n")
    stream.flush()


def flush(timeout: float = 2.0) -> bool:
    """Wait until every queued line is written, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # not time.sleep: flush runs in a dying process's last act
    while _queue.unfinished_tasks:
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.005)
    return True


atexit.register(flush)


class Logger:
    """``log.info("event.name", key=value, ...)``: one JSON line, never blocking."""

    def __init__(self, component: str) -> None:
        self.component = component
        self._logger = logging.getLogger(f"{_ROOT}.{component}")
        if _handler not in logging.getLogger(_ROOT).handlers:
            # Works before install() too (tests, one-shot commands); install() adds
            # the libraries. propagate=False: never twice through the root's handler.
            root = logging.getLogger(_ROOT)
            root.addHandler(_handler)
            root.propagate = False
            root.setLevel(logging.INFO)

    def emit(self, level: str, event: str, **fields: Any) -> None:
        self._logger.log(getattr(logging, level.upper()), event,
                         extra={"bindha_fields": fields})

    def info(self, event: str, **fields: Any) -> None:
        self.emit("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit("error", event, **fields)


def get_logger(component: str) -> Logger:
    return Logger(component)
