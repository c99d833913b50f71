"""PID 1 duties: reap orphaned children that the kernel re-parents to us.

Children we wait for ourselves (named, and every BIND tool we run: named-checkconf,
rndc, named-journalprint) must keep their exit status: if the reaper took a
named-checkconf that exited 1, its Popen would see ECHILD and report 0, and a config
named refuses would pass. So every such child is spawned through ``spawn``/``run``
here, which registers its pid under the same lock the reaper holds, and the reaper
peeks with WNOWAIT and reaps only strangers.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

_lock = threading.Lock()
_ours: set[int] = set()


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` whose child the reaper leaves to it; call ``release`` with
    the pid once it has been waited for."""
    with _lock:
        process = subprocess.Popen(argv, **popen)
        _ours.add(process.pid)
    return process


def release(pid: int) -> None:
    with _lock:
        _ours.discard(pid)


def run(argv: Sequence[str], *, timeout: float,
        text: bool = True) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(argv, capture_output=True, stdin=DEVNULL, timeout=...)`` safe from
    the reaper; on timeout the child is killed and waited for, then TimeoutExpired."""
    process = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=text)
    try:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    finally:
        release(process.pid)
    return subprocess.CompletedProcess(list(argv), process.returncode, out, err)


def reap_orphans(managed: set[int]) -> list[int]:
    """Reap every exited child that is neither in ``managed`` nor spawned here; return
    their pids."""
    reaped = []
    with _lock:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return reaped
            if info is None or info.si_pid == 0 or info.si_pid in managed \
                    or info.si_pid in _ours:
                # Nothing exited, or the first exited child is ours: its Popen will wait.
                return reaped
            try:
                os.waitpid(info.si_pid, 0)
                reaped.append(info.si_pid)
            except ChildProcessError:
                pass
