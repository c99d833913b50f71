"""A lock-holder script (tests/cephfs/holder.py, tests/faultfs/lockholder.py) in a
process of its own, driven one command a line over stdin, one reply a line on stdout:
so that a lock can be held by a process the test can freeze, kill or let exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class HolderProcess:
    def __init__(self, script: Path, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(path)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def do(self, command: str) -> str:
        """Send ``command``; its reply (none for ``exit``, which waits for the exit)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        if command == "exit":
            self.process.wait(10)
            return ""
        return self.process.stdout.readline().strip()
