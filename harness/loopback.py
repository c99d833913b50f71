"""Loopback aliases: one 127.0.0.N per "pod".

Linux routes all of 127/8 to lo, but named listens only on addresses that exist on
an interface, so each pod address is added to lo (needs root, or CAP_NET_ADMIN).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
from pathlib import Path

_lock = threading.Lock()
CLAIMS = Path("/run/bindha-lab")
# Claim files' descriptors by name, held open for the life of the process unless released.
_held: dict[str, int] = {}


def claim(name: str) -> bool:
    """Claim ``name`` for this process among every process on the machine (a test run,
    a benchmark and the demo may run at once): an flock on /run/bindha-lab/<name> that
    the kernel drops when the process ends, so a crashed run leaves nothing behind.
    A second claim of a name this process holds fails too (flock is per open file)."""
    CLAIMS.mkdir(parents=True, exist_ok=True)
    fd = os.open(CLAIMS / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _held[name] = fd
    return True


def release(name: str) -> None:
    """Give up a claim of this process (nothing if it holds none), so that this process
    or another one can claim ``name`` again."""
    fd = _held.pop(name, None)
    if fd is not None:
        os.close(fd)  # the only descriptor of its open file: the flock goes with it


def has_address(ip: str) -> bool:
    out = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    return any(f" {ip}/" in line for line in out.splitlines())


def ensure_alias(ip: str) -> None:
    """Add ``ip`` to lo unless it is there already; raise with ip's words on failure."""
    with _lock:
        if has_address(ip):
            return
        result = subprocess.run(["ip", "addr", "add", f"{ip}/8", "dev", "lo"],
                                capture_output=True, text=True, timeout=10, check=False)
        if result.returncode != 0 and not has_address(ip):
            raise PermissionError(f"cannot add {ip} to lo: {result.stderr.strip()} "
                                  "(run as root, or with CAP_NET_ADMIN)")


class AddressPool:
    """Hands out 127.0.0.N addresses, from ``first`` up, each aliased on lo.

    Pods on these addresses share the root network namespace (see harness.netlab for
    the kind that does not); ``wrap`` and ``api_host`` match NetLab's.
    """

    api_host = "127.0.0.1"

    def wrap(self, ip: str, argv: list[str]) -> list[str]:
        return argv

    def __init__(self, first: int = 10, last: int = 250) -> None:
        self._next = first
        self._last = last

    def take(self) -> str:
        """The next address no other process on this machine holds."""
        with _lock:
            while True:
                if self._next > self._last:
                    raise RuntimeError("loopback address pool exhausted")
                ip = f"127.0.0.{self._next}"
                self._next += 1
                if claim(ip):
                    break
        ensure_alias(ip)
        return ip
