"""A fault-injecting FUSE volume: one shared backing directory, one mount per pod.

Why: the fence (Lease + a file lock on the RWX volume + the epoch file) must be tested on a
volume that can fail the way CephFS or NFS fail, for one pod while the others go on. A tmpfs
never hangs, never returns EIO and never loses a lock.

Shape. ``FaultVolume(backing)`` passes every mount through to ONE backing directory (the
"cluster"). ``vol.mount(pod, mountpoint)`` starts that pod's own daemon (like each pod's own
ceph-fuse client): a process ``python -m harness.faultfs serve`` running libfuse 3's
multithreaded high-level loop through mfusepy, plus a control thread on a unix socket that
the test process talks to (``PodMount.fault/heal/drop_locks``). The control thread never
touches the FUSE loop, so it answers while every FUSE request of that pod hangs.

Faults, per pod (``PodMount.fault(kind, ops=..., paths=...)``; rules stack, first match wins,
``heal()`` clears them all):

- ``"hang"``: a matching request is read by the daemon and not answered until ``heal()``.
  The caller stays in the kernel: 'S' (interruptible) until it gets a signal, because libfuse
  never answers INTERRUPT with ENOSYS; after any signal, SIGKILL included, it is 'D' and does
  not end until the request is answered (FUSE waits out a request userspace has read). On
  heal the held requests are carried out, as on a mount that comes back.
- ``"EIO"``, ``"ESTALE"``, ``"ENOSPC"``, ``"EROFS"``: a matching request fails with that errno.

``ops`` are classes of FUSE operations (``OP_CLASSES``), or the groups ``"all"`` and
``"mutating"`` (write, create, rename, remove, setattr, sync): meta = getattr/readdir/
statfs/readlink, open, read, write = write/truncate, create = create/mkdir/symlink/link,
rename, remove = unlink/rmdir, setattr = chmod/chown/utimens, sync = fsync, close =
flush/release, lock. ``paths`` are fnmatch globs on the path relative to the volume root
(``*`` also matches ``/``); a rename matches on either name; no paths = every path. Requests
on an open file match the file's current path. An error on release is ignored by the kernel
(the backing file is closed all the same); a hang on release keeps the backing descriptor,
and so its lock, until heal, as a hung MDS keeps a dead client's lock.

Locks. The FUSE lock operation is forwarded to an OFD lock (F_OFD_SETLK/F_OFD_GETLK) on the
backing descriptor of that FUSE file handle (one per open file description), so two pods'
locks conflict exactly as two open file descriptions on one host do. libfuse's high-level
API calls the lock op with F_UNLCK on every FLUSH (each close() of any descriptor of the
file) with the closer's lock owner (its files_struct), while an OFD lock's owner is its open
file; so a flush unlocks only locks its own owner took through that handle (classic POSIX
locks, approximated per handle), and everything goes when the handle is released, i.e. when
the last descriptor of the open file description closes (a child's inherited one included)
or its processes die. ``drop_locks()`` is an eviction (CephFS client evict, NFSv4 lease
loss): every handle holding a lock loses it at once, and the next lock operation on such a
handle fails with EIO; handles opened later lock normally. F_SETLKW is a polling F_OFD_SETLK
(10 ms) that ends with EINTR on a signal. libfuse also keeps a lock table of its own and
answers GETLK from it without asking the filesystem; its entries of OFD locks are never
removed (their owner never flushes), so a GETLK on the holder's pod would report a lock long
gone: each granted lock is handed back to libfuse as F_UNLCK, which keeps that table empty.

``crash()`` SIGKILLs the daemon: the kernel aborts the connection, every pending and later
request of that mount fails with ENOTCONN, and the backing descriptors close, so its locks
go at once (a clean client death, not a lost node). The mount stays until ``unmount()``.

Clean-up. ``unmount()`` heals first (held callers finish), then ``fusermount3 -u``, falling
back on ``umount -l`` when busy, waits for the daemon and SIGKILLs it if it is still serving a
lazily detached mount (that aborts the connection: nothing stays in D state). A daemon whose
test process died (even by SIGKILL) heals, detaches its mount and exits by itself within
0.2 s. ``cleanup_stale_mounts()`` removes mounts of this filesystem whose daemon is gone (the
daemon's pid is in the mount source, ``bindha-faultfs:POD:PID`` in /proc/mounts, fstype
``fuse.bindha-faultfs``).

Mount options: allow_other + default_permissions (named runs as another user), attr,
entry and negative timeouts 0 and direct_io on every open (no cache: another pod's writes are
seen at once), hard_remove (no .fuse_hidden files in the shared directory), use_ino. Files a
non-root caller creates are chowned to it. Up to ``MAX_THREADS`` requests are held at once
per mount; later ones wait unread in the kernel. mfusepy drops rename flags (RENAME_NOREPLACE
acts as a plain rename). Needs root, /dev/fuse, libfuse3 (Debian
``libfuse3-3``; ``fuse3`` for fusermount3) and mfusepy; ``unavailable()`` says what is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import importlib.util
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.polling import wait_until

ROOT = Path(__file__).resolve().parent.parent
FSTYPE = "fuse.bindha-faultfs"
SOURCE_PREFIX = "bindha-faultfs"
CONTROL_PREFIX = "bindha-faultfs-"  # + the test process's pid: sockets and daemon logs
LIBFUSE = "libfuse3.so.3"
# libfuse worker threads per mount: held requests occupy one each; past this many, further
# requests wait in the kernel unread (still hung, but killable there).
MAX_THREADS = 32

ERRORS = {"EIO": errno.EIO, "ESTALE": errno.ESTALE, "ENOSPC": errno.ENOSPC,
          "EROFS": errno.EROFS}
KINDS = ("hang", *ERRORS)
OP_CLASSES = ("meta", "open", "read", "write", "create", "rename", "remove", "setattr",
              "sync", "close", "lock")
GROUPS = {"all": frozenset(OP_CLASSES),
          "mutating": frozenset({"write", "create", "rename", "remove", "setattr", "sync"})}

# struct flock on 64-bit Linux: short type, short whence, (pad), off_t start, off_t len,
# pid_t pid, (pad).
_FLOCK = struct.Struct("=hh4xqqi4x")


class FaultFSError(Exception):
    """The fault volume could not do what was asked (start, control, unmount)."""


def unavailable() -> str | None:
    """Why faultfs cannot run here, or None: for tests' require()."""
    if os.geteuid() != 0:
        return "faultfs mounts need root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if importlib.util.find_spec("mfusepy") is None:
        return "mfusepy is not installed (pip install -e '.[test]')"
    try:
        ctypes.CDLL(LIBFUSE)
    except OSError:
        return f"{LIBFUSE} not found (apt-get install libfuse3-3 fuse3)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not found (apt-get install fuse3)"
    return None


def normalize_ops(ops: str | Iterable[str]) -> frozenset[str]:
    """Operation classes from a class, a group or a list of either."""
    names = [ops] if isinstance(ops, str) else list(ops)
    out: set[str] = set()
    for name in names:
        if name in GROUPS:
            out |= GROUPS[name]
        elif name in OP_CLASSES:
            out.add(name)
        else:
            raise ValueError(f"unknown operation class {name!r}: one of {OP_CLASSES} "
                             f"or {tuple(GROUPS)}")
    return frozenset(out)


# -- the daemon: rules, passthrough operations, control socket ------------------------


@dataclass(frozen=True)
class Rule:
    kind: str
    ops: frozenset[str]
    paths: tuple[str, ...] = ()

    def matches(self, op_class: str, paths: Iterable[str]) -> bool:
        if op_class not in self.ops:
            return False
        if not self.paths:
            return True
        return any(fnmatch.fnmatchcase(p, glob) for p in paths for glob in self.paths)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "ops": sorted(self.ops), "paths": list(self.paths)}


class Faults:
    """One pod's fault rules, and the requests a hang rule holds until heal."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rules: list[Rule] = []
        self._generation = 0
        self._stopping = False
        self.held: list[str] = []  # "op path" of every request held now

    def add(self, rule: Rule) -> None:
        with self._cond:
            self._rules.append(rule)

    def heal(self) -> int:
        """Clear every rule and let held requests go on; return how many were held."""
        with self._cond:
            held = len(self.held)
            self._rules.clear()
            self._generation += 1
            self._cond.notify_all()
            return held

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
        self.heal()

    def rules(self) -> list[dict[str, Any]]:
        with self._cond:
            return [r.describe() for r in self._rules]

    def check(self, op: str, op_class: str, paths: list[str]) -> None:
        """Raise the first matching rule's errno, or hold the request while it hangs."""
        with self._cond:
            rule = next((r for r in self._rules if r.matches(op_class, paths)), None)
            if rule is None:
                return
            if rule.kind != "hang":
                raise OSError(ERRORS[rule.kind], os.strerror(ERRORS[rule.kind]))
            generation = self._generation
            entry = f"{op} {paths[0] if paths else ''}"
            self.held.append(entry)
            try:
                while self._generation == generation and not self._stopping:
                    self._cond.wait()
            finally:
                self.held.remove(entry)


@dataclass
class Handle:
    """One FUSE file handle = one open file description of a caller = one backing fd."""

    fd: int
    path: str  # relative to the volume root, kept current across renames
    owners: set[int] = field(default_factory=set)  # lock owners that locked through it
    evicted: bool = False  # drop_locks took its lock: lock ops fail with EIO


def _rel(path: str | None) -> str | None:
    return None if path is None else path.lstrip("/")


def pack_flock(l_type: int, start: int = 0, length: int = 0, whence: int = os.SEEK_SET,
               pid: int = 0) -> bytes:
    return _FLOCK.pack(l_type, whence, start, length, pid)


def unpack_flock(data: bytes) -> tuple[int, int, int, int, int]:
    """(type, whence, start, len, pid)"""
    l_type, whence, start, length, pid = _FLOCK.unpack(data)
    return l_type, whence, start, length, pid


class Passthrough:
    """The FUSE operations (mfusepy, raw_fi): every call goes to the backing directory after
    the pod's fault rules had their say."""

    use_ns = True

    def __init__(self, backing: Path, faults: Faults) -> None:
        self.root = str(backing.resolve())
        self.faults = faults
        self.ready = threading.Event()
        self._handles: dict[int, Handle] = {}
        self._ids = itertools.count(1)
        self._mutex = threading.Lock()  # the handle table and every backing lock call

    # -- helpers ----------------------------------------------------------------------

    def _real(self, path: str) -> str:
        return self.root + path

    def _handle(self, fi: Any) -> Handle:
        with self._mutex:
            handle = self._handles.get(fi.fh)
        if handle is None:
            raise OSError(errno.EBADF, "unknown FUSE file handle")
        return handle

    def _guard(self, op: str, op_class: str, *paths: str | None) -> None:
        rel = [p for p in (_rel(x) for x in paths) if p is not None]
        self.faults.check(op, op_class, rel)

    def _fh_path(self, path: str | None, fi: Any) -> str | None:
        """The path libfuse gave, else the one the handle remembers (unlinked files)."""
        if path is not None:
            return path
        if fi is None:
            return None
        with self._mutex:
            handle = self._handles.get(fi.fh)
        return None if handle is None else "/" + handle.path

    def _new_handle(self, fd: int, path: str, fi: Any) -> None:
        with self._mutex:
            number = next(self._ids)
            self._handles[number] = Handle(fd=fd, path=path.lstrip("/"))
        fi.fh = number
        fi.direct_io = 1
        fi.keep_cache = 0

    def _give_to_caller(self, real: str) -> None:
        """Files a non-root caller creates are its own, as on a real volume."""
        from mfusepy import fuse_get_context

        uid, gid, _pid = fuse_get_context()
        if uid != os.geteuid() or gid != os.getegid():
            os.lchown(real, uid, gid)

    # -- lifecycle ------------------------------------------------------------------

    def init(self, _path: str) -> None:
        self.ready.set()

    def destroy(self, _path: str) -> None:
        self.faults.stop()

    # -- metadata -------------------------------------------------------------------

    def getattr(self, path: str | None, fh: Any = None) -> dict[str, int]:
        self._guard("getattr", "meta", self._fh_path(path, fh))
        if fh is not None:
            st = os.fstat(self._handle(fh).fd)
        else:
            assert path is not None
            st = os.lstat(self._real(path))
        return {"st_mode": st.st_mode, "st_ino": st.st_ino, "st_nlink": st.st_nlink,
                "st_uid": st.st_uid, "st_gid": st.st_gid, "st_rdev": st.st_rdev,
                "st_size": st.st_size, "st_blksize": st.st_blksize, "st_blocks": st.st_blocks,
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns}

    def readdir(self, path: str, _fh: int) -> list[tuple[str, dict[str, int], int]]:
        """Entries with their inode and type: glibc skips an entry whose d_ino is 0."""
        self._guard("readdir", "meta", path)
        real = self._real(path)
        out = []
        for name, target in ((".", real), ("..", os.path.dirname(real.rstrip("/")) or "/")):
            st = os.lstat(target)
            out.append((name, {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0))
        with os.scandir(real) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                out.append((entry.name, {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0))
        return out

    def readlink(self, path: str) -> str:
        self._guard("readlink", "meta", path)
        return os.readlink(self._real(path))

    def statfs(self, path: str) -> dict[str, int]:
        self._guard("statfs", "meta", path)
        st = os.statvfs(self._real(path))
        return {key: getattr(st, key) for key in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
            "f_favail", "f_flag", "f_namemax")}

    def chmod(self, path: str | None, mode: int) -> None:
        self._guard("chmod", "setattr", path)
        if path is None:
            raise OSError(errno.ENOENT, "no path")
        os.chmod(self._real(path), mode)

    def chown(self, path: str | None, uid: int, gid: int) -> None:
        self._guard("chown", "setattr", path)
        if path is None:
            raise OSError(errno.ENOENT, "no path")
        os.lchown(self._real(path), uid, gid)

    def utimens_raw(self, path: str | None, times: Any) -> int:
        """utimensat with the caller's timespecs as they are (UTIME_NOW, UTIME_OMIT)."""
        self._guard("utimens", "setattr", path)
        if path is None:
            raise OSError(errno.ENOENT, "no path")
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, at_symlink_nofollow = -100, 0x100
        if libc.utimensat(at_fdcwd, self._real(path).encode(), times,
                          at_symlink_nofollow) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return 0

    # -- namespace ------------------------------------------------------------------

    def mkdir(self, path: str, mode: int) -> None:
        self._guard("mkdir", "create", path)
        os.mkdir(self._real(path), mode)
        self._give_to_caller(self._real(path))

    def symlink(self, target: str, source: str) -> None:
        self._guard("symlink", "create", target)
        os.symlink(source, self._real(target))
        self._give_to_caller(self._real(target))

    def link(self, target: str, source: str) -> None:
        self._guard("link", "create", target, source)
        os.link(self._real(source), self._real(target))

    def unlink(self, path: str) -> None:
        self._guard("unlink", "remove", path)
        os.unlink(self._real(path))

    def rmdir(self, path: str) -> None:
        self._guard("rmdir", "remove", path)
        os.rmdir(self._real(path))

    def rename(self, old: str, new: str) -> None:
        self._guard("rename", "rename", old, new)
        os.rename(self._real(old), self._real(new))
        old_rel, new_rel = old.lstrip("/"), new.lstrip("/")
        with self._mutex:
            for handle in self._handles.values():
                if handle.path == old_rel:
                    handle.path = new_rel
                elif handle.path.startswith(old_rel + "/"):
                    handle.path = new_rel + handle.path[len(old_rel):]

    # -- files ----------------------------------------------------------------------

    def open(self, path: str, fi: Any) -> int:
        self._guard("open", "open", path)
        fd = os.open(self._real(path), (fi.flags | os.O_CLOEXEC) & ~os.O_DIRECT)
        self._new_handle(fd, path, fi)
        return 0

    def create(self, path: str, mode: int, fi: Any) -> int:
        self._guard("create", "create", path)
        real = self._real(path)
        fd = os.open(real, (fi.flags | os.O_CREAT | os.O_CLOEXEC) & ~os.O_DIRECT, mode)
        try:
            self._give_to_caller(real)
        except OSError:
            os.close(fd)
            raise
        self._new_handle(fd, path, fi)
        return 0

    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        self._guard("read", "read", self._fh_path(path, fi))
        return os.pread(self._handle(fi).fd, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
        self._guard("write", "write", self._fh_path(path, fi))
        return os.pwrite(self._handle(fi).fd, data, offset)

    def truncate(self, path: str | None, length: int, fi: Any = None) -> None:
        self._guard("truncate", "write", self._fh_path(path, fi))
        if fi is not None:
            os.ftruncate(self._handle(fi).fd, length)
        elif path is not None:
            os.truncate(self._real(path), length)
        else:
            raise OSError(errno.ENOENT, "no path")

    def fsync(self, path: str | None, datasync: int, fi: Any) -> None:
        self._guard("fsync", "sync", self._fh_path(path, fi))
        fd = self._handle(fi).fd
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    def flush(self, path: str | None, fi: Any) -> None:
        self._guard("flush", "close", self._fh_path(path, fi))

    def release(self, path: str | None, fi: Any) -> None:
        """Close the backing fd (its OFD lock goes with it), even if a rule says fail."""
        try:
            self._guard("release", "close", self._fh_path(path, fi))
        finally:
            with self._mutex:
                handle = self._handles.pop(fi.fh, None)
            if handle is not None:
                os.close(handle.fd)

    # -- locks ----------------------------------------------------------------------

    def lock(self, path: str | None, fi: Any, cmd: int, flock: Any) -> int:
        lk = flock.contents
        handle = self._handle(fi)
        if fi.flush and lk.l_type == fcntl.F_UNLCK:
            return self._flush_unlock(handle, fi.lock_owner)
        self._guard("lock", "lock", self._fh_path(path, fi))
        if handle.evicted:
            raise OSError(errno.EIO, "lock lost: this client's locks were dropped")
        request = pack_flock(lk.l_type, lk.l_start, lk.l_len, lk.l_whence)
        if cmd == fcntl.F_GETLK:
            return self._getlk(handle, request, lk)
        if lk.l_type == fcntl.F_UNLCK:
            return self._unlock(handle, fi.lock_owner, request, lk.l_start, lk.l_len)
        if cmd == fcntl.F_SETLKW:
            self._setlk_wait(handle, fi.lock_owner, request)
        else:
            self._setlk(handle, fi.lock_owner, request)
        # libfuse records a granted lock in its own table from this struct once we return,
        # and answers a later GETLK from that table without asking us; nothing removes
        # the record when the handle is released (the OFD owner never flushes). Handing
        # it back as F_UNLCK keeps the table empty, so GETLK always reaches the backing
        # file and never reports a lock that is gone.
        lk.l_type = fcntl.F_UNLCK
        return 0

    def _flush_unlock(self, handle: Handle, owner: int) -> int:
        """libfuse's unlock on every close: only the owner's own (classic POSIX) locks."""
        with self._mutex:
            if owner in handle.owners and not handle.evicted:
                fcntl.fcntl(handle.fd, fcntl.F_OFD_SETLK, pack_flock(fcntl.F_UNLCK))
                handle.owners.discard(owner)
        return 0

    def _getlk(self, handle: Handle, request: bytes, lk: Any) -> int:
        with self._mutex:
            answer = fcntl.fcntl(handle.fd, fcntl.F_OFD_GETLK, request)
        l_type, whence, start, length, _pid = unpack_flock(answer)
        lk.l_type, lk.l_whence, lk.l_start, lk.l_len, lk.l_pid = l_type, whence, start, length, 0
        return 0

    def _unlock(self, handle: Handle, owner: int, request: bytes, start: int,
                length: int) -> int:
        with self._mutex:
            fcntl.fcntl(handle.fd, fcntl.F_OFD_SETLK, request)
            if start == 0 and length == 0:
                handle.owners.discard(owner)
        return 0

    def _setlk(self, handle: Handle, owner: int, request: bytes) -> None:
        with self._mutex:
            if handle.evicted:
                raise OSError(errno.EIO, "lock lost: this client's locks were dropped")
            fcntl.fcntl(handle.fd, fcntl.F_OFD_SETLK, request)
            handle.owners.add(owner)

    def _setlk_wait(self, handle: Handle, owner: int, request: bytes) -> None:
        """F_SETLKW without a worker stuck in the kernel: poll, give up on a signal."""
        from mfusepy import _libfuse

        while True:
            try:
                self._setlk(handle, owner, request)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if _libfuse.fuse_interrupted():
                raise OSError(errno.EINTR, "interrupted")
            time.sleep(0.01)

    def drop_locks(self) -> int:
        """Eviction: every handle holding a lock loses it; its next lock op fails (EIO)."""
        with self._mutex:
            victims = [h for h in self._handles.values() if h.owners and not h.evicted]
            for handle in victims:
                fcntl.fcntl(handle.fd, fcntl.F_OFD_SETLK, pack_flock(fcntl.F_UNLCK))
                handle.owners.clear()
                handle.evicted = True
        return len(victims)

    def status(self) -> dict[str, Any]:
        with self._mutex:
            handles = list(self._handles.values())
        return {"ready": self.ready.is_set(), "held": list(self.faults.held),
                "rules": self.faults.rules(), "handles": len(handles),
                "locked": [h.path for h in handles if h.owners],
                "evicted": [h.path for h in handles if h.evicted]}


def _fuse_class() -> type:
    """mfusepy's FUSE, passing the file handle to truncate and raw times to utimens."""
    import mfusepy

    def text(path: bytes | None) -> str | None:
        return None if path is None else path.decode("utf-8", "surrogateescape")

    class FaultFUSE(mfusepy.FUSE):  # type: ignore[misc]
        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            fi = fip.contents if fip else None
            return self.operations.truncate(text(path), length, fi)  # type: ignore[no-any-return]

        def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
            return self.operations.utimens_raw(text(path), buf)  # type: ignore[no-any-return]

    return FaultFUSE


class ControlServer:
    """The test's handle on the daemon: one JSON line in, one JSON line out, per
    connection, on a thread of its own (works while every FUSE request hangs)."""

    def __init__(self, path: Path, ops: Passthrough) -> None:
        self.ops = ops
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock.bind(str(path))
        self.sock.listen(8)

    def serve_forever(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            with conn, contextlib.suppress(OSError):
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        try:
            reply = {"ok": True, **self.handle(json.loads(data))}
        except (ValueError, KeyError, OSError) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "fault":
            kind = request["kind"]
            if kind not in KINDS:
                raise ValueError(f"unknown fault kind {kind!r}: one of {KINDS}")
            self.ops.faults.add(Rule(kind, normalize_ops(request["ops"]),
                                     tuple(request.get("paths") or ())))
            return {}
        if op == "heal":
            return {"released": self.ops.faults.heal()}
        if op == "drop_locks":
            return {"dropped": self.ops.drop_locks()}
        if op == "status":
            return self.ops.status()
        raise ValueError(f"unknown control op {op!r}")


def _watch_parent(parent: int, mountpoint: str, faults: Faults) -> None:
    """The test process died (even by SIGKILL): heal, detach the mount, exit."""
    while os.getppid() == parent:
        time.sleep(0.2)
    faults.stop()
    libc = ctypes.CDLL(None, use_errno=True)
    mnt_detach = 2
    libc.umount2(mountpoint.encode(), mnt_detach)
    os._exit(0)


def serve(backing: Path, mountpoint: str, control: Path, pod: str, parent: int) -> None:
    """The daemon's main: control thread, parent watchdog, then the FUSE loop."""
    os.environ.setdefault("FUSE_LIBRARY_PATH", LIBFUSE)
    faults = Faults()
    ops = Passthrough(backing, faults)
    server = ControlServer(control, ops)
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    threading.Thread(target=_watch_parent, args=(parent, mountpoint, faults), name="watchdog",
                     daemon=True).start()
    fuse = _fuse_class()
    fuse(ops, mountpoint, raw_fi=True, foreground=True,
         fsname=f"{SOURCE_PREFIX}:{pod}:{os.getpid()}", subtype=FSTYPE.split(".", 1)[1],
         allow_other=True, default_permissions=True, attr_timeout=0, entry_timeout=0,
         negative_timeout=0, hard_remove=True, direct_io=True, use_ino=True,
         max_threads=MAX_THREADS)


# -- the test side ---------------------------------------------------------------------


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    device: str  # "major:minor"; the minor is the FUSE connection number

    @property
    def daemon_pid(self) -> int | None:
        try:
            return int(self.source.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            return None


def _unescape(field_text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field_text):
        if field_text[i] == "\\" and field_text[i + 1:i + 4].isdigit():
            out.append(chr(int(field_text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def fault_mounts() -> list[MountEntry]:
    """Every mount of this filesystem in our mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(tail) >= 2 and tail[0] == FSTYPE:
                out.append(MountEntry(_unescape(fields[4]), tail[0], tail[1], fields[2]))
    return out


def mount_entry(mountpoint: Path | str) -> MountEntry | None:
    """The mount at ``mountpoint`` (a resolved path: resolving it here would stat the
    mount's root, which hangs on a hung mount)."""
    return next((m for m in fault_mounts() if m.mountpoint == str(mountpoint)), None)


def _daemon_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"harness.faultfs" in args and state != "Z"


def force_unmount(mountpoint: str, timeout: float = 10.0) -> None:
    """fusermount3 -u; when busy (or it fails), a lazy umount -l. Never blocks on the
    daemon: unmounting sends it nothing."""
    if mount_entry(mountpoint) is None:
        return
    fusermount = shutil.which("fusermount3")
    if fusermount:
        done = subprocess.run([fusermount, "-u", "-q", mountpoint], capture_output=True,
                              timeout=timeout, check=False)
        if done.returncode == 0 and mount_entry(mountpoint) is None:
            return
    subprocess.run(["umount", "-l", mountpoint], capture_output=True, timeout=timeout,
                   check=False)
    if mount_entry(mountpoint) is not None:
        raise FaultFSError(f"could not unmount {mountpoint}")


def cleanup_stale_mounts() -> list[str]:
    """Unmount this filesystem's mounts whose daemon is dead (a killed earlier run), and
    remove control directories whose test process is dead; return the mountpoints.
    Mounts of live daemons (another test session's) are left alone."""
    removed = []
    for entry in fault_mounts():
        if not _daemon_alive(entry.daemon_pid):
            force_unmount(entry.mountpoint)
            removed.append(entry.mountpoint)
    for directory in Path(tempfile.gettempdir()).glob(f"{CONTROL_PREFIX}*"):
        owner = directory.name[len(CONTROL_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(directory, ignore_errors=True)
    return removed


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.01) -> Any:
    """harness.polling.wait_until, polling faster (a mount answers in milliseconds)."""
    return wait_until(condition, timeout, what, interval)


@dataclass
class PodMount:
    """One pod's mount of the volume and the daemon that serves it."""

    pod: str
    mountpoint: Path
    control: Path
    log: Path
    process: subprocess.Popen[bytes]
    device: str = ""

    @property
    def path(self) -> Path:
        return self.mountpoint

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """One control request to the daemon; FaultFSError when it refuses or is gone."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.control))
                sock.sendall(json.dumps(request).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            raise FaultFSError(f"{self.pod}: control socket: {exc}") from exc
        try:
            reply: dict[str, Any] = json.loads(data)
        except ValueError as exc:
            raise FaultFSError(f"{self.pod}: bad control reply {data!r}") from exc
        if not reply.get("ok"):
            raise FaultFSError(f"{self.pod}: {reply.get('error')}")
        return reply

    def fault(self, kind: str, ops: str | Iterable[str] = "all",
              paths: str | Iterable[str] | None = None) -> None:
        """Add a rule: ``kind`` ("hang", "EIO", "ESTALE", "ENOSPC", "EROFS") for the
        operation classes ``ops`` on paths matching ``paths`` (globs; None = all)."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}: one of {KINDS}")
        classes = sorted(normalize_ops(ops))
        globs = [paths] if isinstance(paths, str) else list(paths or [])
        self.call({"op": "fault", "kind": kind, "ops": classes, "paths": globs})

    def heal(self) -> int:
        """Clear every rule; held requests go on. Returns how many were held."""
        return int(self.call({"op": "heal"})["released"])

    def drop_locks(self) -> int:
        """Evict this pod's locks: another pod may take them; the old handles' next lock
        operation fails with EIO. Returns how many handles lost a lock."""
        return int(self.call({"op": "drop_locks"})["dropped"])

    def status(self) -> dict[str, Any]:
        """ready, held (requests held by a hang), rules, handles, locked, evicted."""
        return self.call({"op": "status"})

    def held(self) -> list[str]:
        """The requests a hang holds now, as "op path"."""
        return list(self.status()["held"])

    def wait_held(self, count: int = 1, timeout: float = 5.0) -> list[str]:
        """Wait until the daemon holds at least ``count`` requests."""
        return wait_for(lambda: (h := self.held()) and len(h) >= count and h, timeout,
                        f"{count} request(s) held on {self.pod}'s mount")

    def crash(self) -> None:
        """The mount daemon dies (SIGKILL): the mount stays, every access gets ENOTCONN."""
        if self.alive:
            self.process.kill()
        self.process.wait(10)

    def abort(self) -> None:
        """Abort the FUSE connection (fusectl if mounted, else by killing the daemon):
        every held and later request fails with ENOTCONN, nothing stays in D state."""
        minor = self.device.rpartition(":")[2]
        control = Path(f"/sys/fs/fuse/connections/{minor}/abort")
        if minor and control.exists():
            with contextlib.suppress(OSError):
                control.write_text("1")
        self.crash()

    def unmount(self) -> None:
        """Heal, unmount (lazily if busy), end the daemon. Safe to call twice."""
        if self.alive:
            try:
                self.heal()
            except FaultFSError:
                self.abort()
        force_unmount(str(self.mountpoint))
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            # Still serving a lazily detached mount: killing it aborts the connection.
            self.process.kill()
            self.process.wait(10)
        with contextlib.suppress(FileNotFoundError):
            self.control.unlink()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class FaultVolume:
    """The shared backing directory and every pod's mount of it."""

    def __init__(self, backing: Path) -> None:
        self.backing = Path(backing).resolve()
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mounts: dict[str, PodMount] = {}
        self._dir = Path(tempfile.mkdtemp(prefix=f"{CONTROL_PREFIX}{os.getpid()}-"))
        self._count = itertools.count()

    def mount(self, pod: str, mountpoint: Path, timeout: float = 15.0) -> PodMount:
        """Start ``pod``'s daemon and mount the volume at ``mountpoint`` (created)."""
        if pod in self.mounts:
            raise FaultFSError(f"{pod} already has a mount")
        why = unavailable()
        if why:
            raise FaultFSError(why)
        mountpoint = Path(mountpoint)
        mountpoint.mkdir(parents=True, exist_ok=True)
        mountpoint = mountpoint.resolve()
        number = next(self._count)
        control = self._dir / f"{number}.sock"
        log = self._dir / f"{number}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "harness.faultfs", "serve", "--backing",
                 str(self.backing), "--mountpoint", str(mountpoint), "--control", str(control),
                 "--pod", pod, "--parent", str(os.getpid())],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env={**os.environ, "FUSE_LIBRARY_PATH": LIBFUSE}, start_new_session=True)
        pod_mount = PodMount(pod=pod, mountpoint=mountpoint, control=control, log=log,
                             process=process)
        self.mounts[pod] = pod_mount
        try:
            entry = wait_for(lambda: self._ready(pod_mount), timeout,
                             f"{pod}'s faultfs mount at {mountpoint}")
        except FaultFSError as exc:
            pod_mount.unmount()
            del self.mounts[pod]
            raise FaultFSError(f"{exc}\n{pod_mount.log_tail()}") from exc
        pod_mount.device = entry.device
        return pod_mount

    @staticmethod
    def _ready(pod_mount: PodMount) -> MountEntry | None:
        if not pod_mount.alive:
            raise FaultFSError(f"{pod_mount.pod}'s faultfs daemon exited "
                               f"({pod_mount.process.returncode}):\n{pod_mount.log_tail()}")
        entry = mount_entry(pod_mount.mountpoint)
        if entry is None or not pod_mount.control.exists():
            return None
        try:
            return entry if pod_mount.status()["ready"] else None
        except FaultFSError:  # bound, not listening yet
            return None

    def close(self) -> None:
        """Unmount every pod's mount and end every daemon."""
        errors = []
        for pod_mount in list(self.mounts.values()):
            try:
                pod_mount.unmount()
            except (FaultFSError, OSError, subprocess.SubprocessError) as exc:
                errors.append(f"{pod_mount.pod}: {exc}")
        self.mounts.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
        if errors:
            raise FaultFSError("; ".join(errors))

    def __enter__(self) -> FaultVolume:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@contextlib.contextmanager
def fault_volume(backing: Path) -> Iterator[FaultVolume]:
    volume = FaultVolume(backing)
    try:
        yield volume
    finally:
        volume.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.faultfs")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="one pod's mount daemon (started by FaultVolume)")
    run.add_argument("--backing", type=Path, required=True)
    run.add_argument("--mountpoint", required=True)
    run.add_argument("--control", type=Path, required=True)
    run.add_argument("--pod", required=True)
    run.add_argument("--parent", type=int, required=True)
    sub.add_parser("cleanup", help="unmount stale faultfs mounts (dead daemons)")
    args = parser.parse_args(argv)
    if args.command == "cleanup":
        for path in cleanup_stale_mounts():
            print(f"unmounted {path}")
        return
    serve(args.backing, args.mountpoint, args.control, args.pod, args.parent)


if __name__ == "__main__":
    main()
