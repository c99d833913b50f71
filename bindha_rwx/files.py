"""Atomic file replacement, the one way this package writes a file others read.

Readers see the old or the new content, never a part: write a temp file in the same
folder, fsync it, rename it over the target, fsync the folder (so the rename itself
survives a crash; named fsyncs no directory, DESIGN "BIND facts"). The bottom layer:
it imports nothing from the package.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def atomic_write(path: Path, text: str, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``text``; ``durable=False`` skips the fsyncs (local,
    throw-away state such as the probes' heartbeat, rewritten many times a second)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
