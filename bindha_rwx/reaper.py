"""PID 1 duties: reap orphaned children that the kernel re-parents to us.

Children we manage (named) are waited for by their subprocess.Popen; reaping them here
would steal their exit status. So we peek with WNOWAIT and reap only strangers.
"""

from __future__ import annotations

import os


def reap_orphans(managed: set[int]) -> list[int]:
    """Reap every exited child that is not in ``managed``; return their pids."""
    reaped = []
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None or info.si_pid == 0 or info.si_pid in managed:
            # Nothing exited, or the first exited child is ours: its Popen will wait.
            return reaped
        try:
            os.waitpid(info.si_pid, 0)
            reaped.append(info.si_pid)
        except ChildProcessError:
            pass
