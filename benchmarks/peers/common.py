"""What the Python peers of the comparison benchmark share: flags, JSON event lines,
and the named child. Each peer is an elector someone might write instead of
bindha-rwx; these helpers only keep their plumbing identical, never their logic."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

_out = threading.Lock()


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """--identity, --lease, --namespace, --kubeconfig, then named's argv after ``--``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        raise SystemExit("usage: ... --identity ID --lease NAME --namespace NS "
                         "--kubeconfig FILE -- named [args]")
    split = args.index("--")
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--lease", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parsed = parser.parse_args(args[:split])
    parsed.named = args[split + 1:]
    if not parsed.named:
        raise SystemExit("no named command after --")
    return parsed


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout: the benchmark reads these (wall-clock ``ts``)."""
    line = json.dumps({"ts": time.time(), "event": event, **fields})
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class NamedChild:
    """named as a plain child process, the way a script starts it (no fencing)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.process: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                        stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno())
        emit("named_started", pid=self.process.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout`` (a shell trap's ``kill; wait``)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        emit("named_stopped", pid=process.pid, returncode=process.returncode)


def exit_now(code: int = 0) -> None:
    """Leave without running other threads' clean-up (they may sit in API calls)."""
    emit("exit", code=code)
    os._exit(code)
