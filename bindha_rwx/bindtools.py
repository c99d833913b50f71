"""BIND's offline tools: named-checkconf, named-checkzone and tsig-keygen.

We let BIND judge BIND's formats instead of re-implementing its grammar. Every call
has a timeout; none of them touches the shared volume (checks run on temp copies).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bindha_rwx import reaper
from bindha_rwx.files import atomic_write

TOOL_TIMEOUT = 30.0
_SEARCH = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")


class BindToolError(Exception):
    """A BIND tool rejected its input, or could not be run."""


def find_tool(name: str) -> str:
    """Path of a BIND tool, from PATH or the usual Debian places."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _SEARCH:
        candidate = Path(folder) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise BindToolError(f"{name} not found: install Debian's bind9-utils (apt-get install "
                        "bind9-utils) or put it on PATH")


def _run(args: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        return reaper.run(args, timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BindToolError(f"{what}: {args[0]} did not finish in {TOOL_TIMEOUT:g}s") from None
    except OSError as exc:
        raise BindToolError(f"{what}: cannot run {args[0]}: {exc.strerror}") from None


def check_conf(text: str) -> None:
    """Raise BindToolError with named-checkconf's words unless ``text`` is a valid config."""
    with tempfile.TemporaryDirectory(prefix="bindha-check-") as tmp:
        path = Path(tmp) / "named.conf"
        path.write_text(text, encoding="utf-8")
        result = _run([find_tool("named-checkconf"), str(path)], "named-checkconf")
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().replace(str(path), "named.conf")
        raise BindToolError(f"named-checkconf refused the rendered config:\n{output}")


def check_zone(zone: str, text: str) -> None:
    """Raise BindToolError with named-checkzone's words unless ``text`` loads as ``zone``."""
    with tempfile.TemporaryDirectory(prefix="bindha-check-") as tmp:
        path = Path(tmp) / "zone"
        path.write_text(text, encoding="utf-8")
        result = _run([find_tool("named-checkzone"), zone, str(path)], "named-checkzone")
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().replace(str(path), "zone file")
        raise BindToolError(f"named-checkzone refused zone {zone}:\n{output}")


def generate_tsig_key(name: str, algorithm: str = "hmac-sha256") -> str:
    """A fresh key clause in tsig-keygen format (the format of our key files)."""
    result = _run([find_tool("tsig-keygen"), "-a", algorithm, name], "tsig-keygen")
    if result.returncode != 0:
        raise BindToolError(f"tsig-keygen failed: {result.stderr.strip()}")
    return result.stdout


def ensure_key_file(path: Path, name: str) -> bool:
    """Create a key file (mode 0600, atomically) unless it exists; True if created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, generate_tsig_key(name), mode=0o600)
    return True
