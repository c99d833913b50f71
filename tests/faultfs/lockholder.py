"""A lock holder for the faultfs tests, driven one command a line over stdin/stdout.

It locks the way the product does: ``os.open(O_RDWR|O_CREAT|O_CLOEXEC)``, then a
non-blocking whole-file F_OFD_SETLK F_WRLCK; ``touch`` re-issues it on the same descriptor.
Every reply is ``ok [detail]`` or ``err ERRNAME``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import sys

FLOCK = struct.Struct("=hh4xqqi4x")


def setlk(fd: int) -> str:
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        return f"err {errno.errorcode[exc.errno or 0]}"
    return "ok"


def main() -> None:
    path = sys.argv[1]
    fd: int | None = None
    for line in sys.stdin:
        command = line.strip()
        if command == "lock":
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
            reply = setlk(fd)
        elif command == "touch":
            assert fd is not None
            reply = setlk(fd)
        elif command == "dupclose":  # libfuse's flush-time unlock, with our owner
            assert fd is not None
            os.close(os.dup(fd))
            reply = "ok"
        elif command == "openclose":  # another open file description of the same file
            os.close(os.open(path, os.O_RDWR))
            reply = "ok"
        elif command == "spawn":  # a child that inherits the descriptor, as named does
            assert fd is not None
            child = subprocess.Popen(
                [sys.executable, "-c", "import signal; signal.pause()"], pass_fds=[fd],
                start_new_session=True)
            reply = f"ok {child.pid}"
        elif command == "close":
            assert fd is not None
            os.close(fd)
            fd = None
            reply = "ok"
        elif command == "exit":
            return
        else:
            reply = f"err unknown command {command!r}"
        print(reply, flush=True)


if __name__ == "__main__":
    main()
