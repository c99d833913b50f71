"""A lock holder on a CephFS mount, driven one command a line over stdin/stdout.

It locks the way the product does (bindha_rwx/storagelock.py): ``os.open(O_RDWR|O_CREAT|
O_CLOEXEC)``, then a non-blocking whole-file F_OFD_SETLK F_WRLCK with the struct flock packed
as ``hhqqi4x``; ``touch`` re-issues it on the same descriptor; ``write`` appends a line to the
locked file (at the descriptor's offset) and fsyncs it (what named does to its journal).
Every reply is ``ok`` or ``err ERRNAME [step]``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import sys

FLOCK = "hhqqi4x"  # as bindha_rwx/storagelock.py


def errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def setlk(fd: int) -> str:
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        return f"err {errname(exc)}"
    return "ok"


def main() -> None:
    path = sys.argv[1]
    fd: int | None = None
    count = 0
    for line in sys.stdin:
        command = line.strip()
        if command == "lock":
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            reply = setlk(fd)
        elif command == "touch":
            assert fd is not None
            reply = setlk(fd)
        elif command == "write":
            assert fd is not None
            count += 1
            step = "write"
            try:
                os.write(fd, f"update {count} from pid {os.getpid()}\n".encode())
                step = "fsync"
                os.fsync(fd)
                reply = "ok"
            except OSError as exc:
                reply = f"err {errname(exc)} {step}"
        elif command == "close":
            assert fd is not None
            try:
                os.close(fd)
                reply = "ok"
            except OSError as exc:
                reply = f"err {errname(exc)}"
            fd = None
        elif command == "exit":
            return
        else:
            reply = f"err unknown command {command!r}"
        print(reply, flush=True)


if __name__ == "__main__":
    main()
