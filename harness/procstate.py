"""What a process can still do, read from outside: the invariant checkers' vocabulary.

A process that is stopped (SIGSTOP) or has SIGKILL pending executes no user code, so
it can issue no write: a frozen node's named, or one the supervisor killed while it
sits in uninterruptible I/O (it dies when the I/O returns, before it could reply).
"""

from __future__ import annotations

import signal

import psutil


def sigkill_pending(proc: psutil.Process) -> bool:
    """True once SIGKILL is queued for ``proc`` (or it is gone): it never runs user code
    again, though it is not a zombie yet. The kernel keeps the signal in the process's
    shared pending set (ShdPnd in /proc/PID/status) until the process is reaped."""
    try:
        with open(f"/proc/{proc.pid}/status") as status:
            pending = next(line for line in status if line.startswith("ShdPnd:"))
    except (OSError, StopIteration):
        return True
    return bool(int(pending.split()[1], 16) & (1 << (signal.SIGKILL - 1)))


def stopped(proc: psutil.Process) -> bool:
    """SIGSTOPped (or gone)."""
    try:
        return proc.status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return True


def can_run(proc: psutil.Process) -> bool:
    """Alive, not a zombie, not stopped, no SIGKILL pending: it may still write."""
    try:
        if not proc.is_running() or proc.status() in (psutil.STATUS_ZOMBIE,
                                                      psutil.STATUS_STOPPED):
            return False
    except psutil.Error:
        return False
    return not sigkill_pending(proc)
