"""When does ceph-fuse release the product's storage lock? (issue 12 item 4, last bullet)

The lock as bindha_rwx/storagelock.py takes it: a whole-file F_OFD_SETLK write lock, its
descriptor inherited by named (``pass_fds``), never F_UNLCK'd. Each case below is one way a
holder can go, and asserts what ceph-fuse 16.2 and the MDS do then; the holder's plain
SIGKILL is test_cephlab.py's ``test_lock_is_freed_when_the_holder_dies``. The figures are
printed as ``cephfs: ...`` (pytest -s) and kept in docs/cephfs.md, "ceph-fuse lock-release
semantics".
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bindha_rwx.storagelock import lock_holder_conflicts
from harness.cephlab import CephMount
from harness.polling import samples, wait_until
from tests.cephfs.conftest import Holder, Pods
from tests.cephfs.test_cephlab import BUSY, figure, open_rw, try_lock

pytestmark = [pytest.mark.cephfs, pytest.mark.root]

HELD_WINDOW = 2.0  # seconds a lock must stay held where nothing should free it


def assert_held(fd: int, why: str, window: float = HELD_WINDOW) -> None:
    """Another description's lock attempt fails for the whole window."""
    for elapsed in samples(window, 0.05):
        answer = try_lock(fd)
        assert answer in BUSY, f"lock free after {elapsed:.2f}s ({answer}): {why}"


def freed_after(fd: int, since: float, what: str, timeout: float = 5.0) -> float:
    """Seconds from ``since`` until ``fd``'s description gets the lock."""
    wait_until(lambda: try_lock(fd) == "ok", timeout, what, interval=0.005)
    return time.monotonic() - since


def killed(holder: Holder) -> float:
    """SIGKILL a holder and reap it: the moment of the kill."""
    at = time.monotonic()
    holder.process.send_signal(signal.SIGKILL)
    holder.process.wait(10)
    return at


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_a_child_that_inherited_the_descriptor_keeps_the_lock_after_its_parent_dies(
        pods: Pods) -> None:
    """Case 2: the supervisor hands the locked descriptor to named and dies (or closes its
    own copy first): the lock stays with the child until the child's descriptor closes."""
    holder = pods.holder(pods.a, "lock")
    assert holder.do("lock") == "ok"
    reply = holder.do("spawn").split()
    assert reply[0] == "ok", reply
    child, child_fd = int(reply[1]), int(reply[2])
    pods.adopt(child)
    assert os.readlink(f"/proc/{child}/fd/{child_fd}") == str(pods.path(pods.a, "lock"))
    fd_b = open_rw(pods.path(pods.b, "lock"))
    try:
        assert try_lock(fd_b) in BUSY
        assert holder.do("close") == "ok"  # StorageLock.close(): the parent's own copy
        assert_held(fd_b, "the parent closed its copy, the child keeps one")
        killed(holder)
        assert_held(fd_b, "the parent is dead, the child keeps the descriptor")
        child_killed = time.monotonic()
        os.kill(child, signal.SIGKILL)
        took = freed_after(fd_b, child_killed, "the lock frees once the child dies")
        wait_until(lambda: gone(child), 5.0, "the child is dead")
        figure(f"parent closed its copy and died: lock held {2 * HELD_WINDOW:.0f}s with the "
               f"child alive; child SIGKILLed -> other mount has the lock in "
               f"{took * 1000:.0f} ms")
    finally:
        os.close(fd_b)


def test_closing_another_descriptor_of_the_file_keeps_the_ofd_lock(pods: Pods) -> None:
    """Case 3: another descriptor of the lock file is closed (a second open() in the
    holder's process; a probe or `fence status` in another process on the same mount,
    which F_OFD_GETLKs; a standby's descriptor on another mount): the OFD lock stays.
    Only the close of the locked description's last descriptor frees it."""
    holder = pods.holder(pods.a, "lock")
    assert holder.do("lock") == "ok"
    fd_b = open_rw(pods.path(pods.b, "lock"))
    try:
        assert try_lock(fd_b) in BUSY
        assert holder.do("open2") == "ok" and holder.do("close2") == "ok"
        assert_held(fd_b, "a second open() of the holder's process was closed")
        neighbour = pods.holder(pods.a, "lock")  # another process, same mount
        assert neighbour.do("open") == "ok" and neighbour.do("close") == "ok"
        assert lock_holder_conflicts(pods.path(pods.a, "lock"))  # fence status: opens, closes
        assert_held(fd_b, "another process on the holder's mount opened and closed it")
        os.close(open_rw(pods.path(pods.b, "lock")))  # a standby's descriptor, given up
        assert_held(fd_b, "a descriptor on the other mount was closed")
        assert holder.do("touch") == "ok" and holder.do("write") == "ok"
        closed = time.monotonic()
        assert holder.do("close") == "ok"  # the locked description's only descriptor
        took = freed_after(fd_b, closed, "the lock frees with the locked description")
        figure(f"OFD lock kept through 3 closes of other descriptors; the locked "
               f"description's close -> other mount has the lock in {took * 1000:.0f} ms")
    finally:
        os.close(fd_b)


def test_a_posix_lock_on_ceph_fuse_survives_closing_another_descriptor_unlike_posix(
        pods: Pods, tmp_path: Path) -> None:
    """Case 3, the contrast: POSIX says closing any descriptor of the file drops the
    process's fcntl locks, and a local file system does so. ceph-fuse does not: its FLUSH
    handler ignores the lock owner, and it drops POSIX locks only with the FUSE file handle
    (the open file description) that took them. So a POSIX lock would have been safe from
    this close on ceph-fuse, but not on a local or other volume; OFD is the same everywhere."""
    local_path = tmp_path / "local-lock"
    local = Holder(local_path)
    pods.holders.append(local)
    on_ceph = pods.holder(pods.a, "posix-lock")
    assert local.do("lock-posix") == "ok" and on_ceph.do("lock-posix") == "ok"
    fd_local = open_rw(local_path)
    fd_b = open_rw(pods.path(pods.b, "posix-lock"))
    try:
        assert try_lock(fd_local) in BUSY and try_lock(fd_b) in BUSY
        for holder in (local, on_ceph):
            assert holder.do("open2") == "ok" and holder.do("close2") == "ok"
        assert try_lock(fd_local) == "ok", "a local file system keeps POSIX semantics"
        assert_held(fd_b, "ceph-fuse keeps a POSIX lock through another descriptor's close")
        closed = time.monotonic()
        assert on_ceph.do("close") == "ok"
        took = freed_after(fd_b, closed, "the POSIX lock frees with its own description")
        figure(f"POSIX lock after another descriptor's close: local fs dropped it, ceph-fuse "
               f"kept it; closing the locking descriptor freed it in {took * 1000:.0f} ms")
    finally:
        os.close(fd_local)
        os.close(fd_b)


def _kill_client_under_a_holder(pods: Pods) -> tuple[Holder, int, int, str, float]:
    """Lock on pod-a, then SIGKILL pod-a's ceph-fuse: (holder, the waiter's fd on pod-b,
    pod-a's client id, its address, the moment of the kill). The test process keeps no
    descriptor on pod-a's mount (module text of harness/cephlab.py: the hazard)."""
    holder = pods.holder(pods.a, "lock")
    assert holder.do("lock") == "ok" and holder.do("write") == "ok"
    fd_b = open_rw(pods.path(pods.b, "lock"))  # before: a fresh open would wait for the MDS
    assert try_lock(fd_b) in BUSY
    client_id, address = pods.a.client_id(), pods.a.address()
    at = time.monotonic()
    pods.a.kill()
    return holder, fd_b, client_id, address, at


def _dead_client_seen(holder: Holder, mount: CephMount) -> str:
    """What the holder and the mount say once their ceph-fuse is dead: ENOTCONN."""
    write, touch = holder.do("write"), holder.do("touch")
    assert write == "err ENOTCONN write", write
    assert touch == "err ENOTCONN", touch
    with pytest.raises(OSError) as stat_error:
        os.stat(mount.mountpoint)
    assert stat_error.value.errno == errno.ENOTCONN
    return f"write -> {write}, re-lock -> {touch}"


def test_a_killed_ceph_fuse_keeps_its_lock_until_the_mds_autocloses_its_session(
        pods: Pods) -> None:
    """Case 4: the holder's ceph-fuse dies (a crash, an OOM kill, a CSI node plugin
    restart) while the holder lives: every call on the mount fails with ENOTCONN, but the
    MDS keeps the session and its lock until it evicts the silent client after
    session_autoclose (30 s here, 300 s by default) counted from its last cap renewal
    (every session_timeout / 3); then the waiter gets the lock, and the client is
    blocklisted."""
    lab = pods.lab
    holder, fd_b, client_id, address, killed_at = _kill_client_under_a_holder(pods)
    try:
        seen = _dead_client_seen(holder, pods.a)
        autoclose = lab.settings.session_autoclose or 300
        renew = (lab.settings.session_timeout or 60) / 3
        for elapsed in samples(autoclose - renew - 2, 0.1):  # surely before the eviction
            assert try_lock(fd_b) in BUSY, f"lock free {elapsed:.1f}s after the kill"
        took = freed_after(fd_b, killed_at, "the MDS evicts the dead client",
                           timeout=autoclose + 20)
        mds_log = lab.log(f"mds.{lab.active_mds()}").read_text(errors="replace")
        found = re.search(rf"evicting unresponsive client \S*:{pods.a.pod} \({client_id}\), "
                          r"after ([0-9.]+) seconds", mds_log)
        assert found, f"no eviction of client {client_id} in the MDS log"
        silent = float(found.group(1))
        assert silent >= autoclose, silent
        assert pods.a.session() is None
        assert address in [entry["addr"] for entry in lab.blocklist_ls()]
        figure(f"ceph-fuse SIGKILLed under the holder ({seen}): other mount has the lock "
               f"{took:.1f}s after the kill; MDS: evicted after {silent:.1f}s without "
               f"renewal (session_autoclose {autoclose}s), blocklisted")
    finally:
        os.close(fd_b)


def test_evicting_a_killed_ceph_fuse_frees_its_lock_at_once(pods: Pods) -> None:
    """Case 4, with a storage fence: the MDS still has the dead client's session, so
    `client evict` (what fencing.storage: ceph runs once the pod is proven gone) ends it
    and hands the lock on within the command's time."""
    lab = pods.lab
    holder, fd_b, client_id, address, killed_at = _kill_client_under_a_holder(pods)
    try:
        seen = _dead_client_seen(holder, pods.a)
        assert_held(fd_b, "the dead client's session lives on at the MDS")
        started = time.monotonic()
        evict_s = lab.evict(client_id)
        took = freed_after(fd_b, started, "the waiter gets the lock after the evict")
        assert pods.a.session() is None
        assert address in [entry["addr"] for entry in lab.blocklist_ls()]
        figure(f"ceph-fuse SIGKILLed ({seen}), lock still held {HELD_WINDOW:.0f}s later; "
               f"evict {evict_s:.2f}s, waiter has the lock {took:.2f}s after the command "
               f"started ({time.monotonic() - killed_at:.1f}s after the kill)")
    finally:
        os.close(fd_b)


def test_a_lazy_unmount_under_a_holder_keeps_the_lock_until_the_descriptor_closes(
        pods: Pods) -> None:
    """Case 5: the mount is detached lazily (umount -l, what a kubelet or the lab falls
    back to when fusermount -u says busy) while the holder keeps its descriptor: ceph-fuse
    keeps running, the holder still writes and re-locks, the lock stays; the holder's
    death frees it, and only then does ceph-fuse exit and its session close."""
    holder = pods.holder(pods.a, "lock")
    assert holder.do("lock") == "ok" and holder.do("write") == "ok"
    fd_b = open_rw(pods.path(pods.b, "lock"))
    try:
        mountpoint = str(pods.a.mountpoint)
        busy = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True,
                              text=True, timeout=10, check=False)
        assert busy.returncode != 0 and "busy" in busy.stderr, busy
        assert pods.a.mounted
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, text=True,
                       timeout=10, check=True)
        assert not pods.a.mounted and pods.a.alive
        assert not pods.path(pods.a, "lock").exists()  # the path no longer leads there
        assert holder.do("write") == "ok" and holder.do("touch") == "ok"
        assert pods.a.session() is not None
        assert_held(fd_b, "the detached mount's holder keeps its descriptor")
        killed_at = killed(holder)
        took = freed_after(fd_b, killed_at, "the lock frees with the holder")
        wait_until(lambda: not pods.a.alive, 10.0, "ceph-fuse exits with the last descriptor")
        exited = time.monotonic() - killed_at
        assert pods.a.process.returncode == 0
        wait_until(lambda: pods.a.session() is None, 10.0, "the session is closed")
        figure(f"lazy unmount under the holder: ceph-fuse alive, writes and re-lock ok, lock "
               f"held; holder SIGKILLed -> other mount has the lock in {took * 1000:.0f} ms, "
               f"ceph-fuse exited (rc 0) {exited:.2f}s after the kill, session closed")
    finally:
        os.close(fd_b)
