"""A lock holder on a CephFS mount, driven one command a line over stdin/stdout.

It locks the way the product does (bindha_rwx/storagelock.py): ``os.open(O_RDWR|O_CREAT|
O_CLOEXEC)``, then a non-blocking whole-file F_OFD_SETLK F_WRLCK with the struct flock packed
as ``hhqqi4x``; ``touch`` re-issues it on the same descriptor; ``write`` appends a line to the
locked file (at the descriptor's offset) and fsyncs it (what named does to its journal).
For the lock-release cases (test_lock_release.py): ``open`` opens without locking (what a
standby does ahead), ``lock-posix`` takes a classic process-owned F_SETLK lock instead (the
contrast), ``open2``/``close2`` a second descriptor of the same file in this process, and
``spawn`` starts a child that inherits the locked descriptor as named does (``pass_fds``,
then exec) and outlives this process (no parent-death signal): ``ok PID FD``.
Every reply is ``ok`` or ``err ERRNAME [step]``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import sys

FLOCK = "hhqqi4x"  # as bindha_rwx/storagelock.py


def errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


CHILD_SECONDS = "300"  # an upper bound on a spawned child's life, should a test not end it


def setlk(fd: int, command: int = fcntl.F_OFD_SETLK) -> str:
    try:
        fcntl.fcntl(fd, command, struct.pack(FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        return f"err {errname(exc)}"
    return "ok"


def open_rw(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def main() -> None:
    path = sys.argv[1]
    fd: int | None = None
    fd2: int | None = None
    count = 0
    for line in sys.stdin:
        command = line.strip()
        if command == "lock":
            fd = open_rw(path)
            reply = setlk(fd)
        elif command == "lock-posix":
            fd = open_rw(path)
            reply = setlk(fd, fcntl.F_SETLK)
        elif command == "open":
            fd = open_rw(path)
            reply = "ok"
        elif command == "open2":
            fd2 = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            reply = "ok"
        elif command == "close2":
            assert fd2 is not None
            os.close(fd2)
            fd2 = None
            reply = "ok"
        elif command == "spawn":
            assert fd is not None
            child = subprocess.Popen(["sleep", CHILD_SECONDS], pass_fds=(fd,),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            reply = f"ok {child.pid} {fd}"
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
