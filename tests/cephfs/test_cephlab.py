"""The fence's storage half on a real CephFS (harness/cephlab.py: Ceph 16.2 from Debian, one
mon, one memstore OSD, one MDS, cephx, a ceph-fuse per pod in a network namespace of its
own): coherence across mounts, OFD locks across mounts, a dead holder's lock, eviction, and
a pod key that may not evict. Each test prints its figures as ``cephfs: ...`` (pytest -s)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness.cephlab import (
    POD_CAPS,
    CephError,
    CephLab,
    ceph_fuse_mounts,
    cleanup_stale,
    state_file,
)
from harness.polling import wait_until
from tests.cephfs.conftest import Pods

pytestmark = [pytest.mark.cephfs, pytest.mark.root]

ROOT = Path(__file__).resolve().parents[2]

FLOCK = "hhqqi4x"  # struct flock as bindha_rwx/storagelock.py packs it
BUSY = ("EAGAIN", "EACCES")
# What an evicted (blocklisted) client's write+fsync may fail with.
FENCED = {"EIO", "ESHUTDOWN", "ENOTCONN", "EBADF", "EPERM", "EACCES"}


def try_lock(fd: int) -> str:
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                    struct.pack(FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def lock_type(fd: int) -> int:
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                         struct.pack(FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    return int(struct.unpack(FLOCK, answer)[0])


def open_rw(path: os.PathLike[str]) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def figure(text: str) -> None:
    print(f"\ncephfs: {text}")


def test_lab_is_on_its_own_address_and_each_pod_in_its_namespace(pods: Pods) -> None:
    lab = pods.lab
    assert not lab.ip.startswith("127.")
    routes = subprocess.run(["ip", "-n", lab.daemon_netns.rsplit("/", 1)[1], "route"],
                            capture_output=True, text=True, timeout=10, check=True).stdout
    assert "default" not in routes, routes  # nothing leaves this machine
    for mount in (pods.a, pods.b):
        assert mount.host is not None
        assert mount.address().startswith(f"{mount.host.ip}:0/"), mount.session()
        session = mount.session()
        assert session is not None and session["client_metadata"]["entity_id"] == mount.pod
    assert pods.a.client_id() != pods.b.client_id()
    assert lab.rss()[f"osd.{0}"] > 0


def test_two_mounts_see_each_others_writes_at_once(pods: Pods) -> None:
    a_path, b_path = pods.path(pods.a, "shared"), pods.path(pods.b, "shared")
    fd = open_rw(a_path)
    try:
        os.write(fd, b"from a\n")  # no fsync, file still open on a
        assert b_path.read_bytes() == b"from a\n"
        with b_path.open("ab") as b_file:
            b_file.write(b"from b\n")
        os.lseek(fd, 0, os.SEEK_SET)
        assert os.read(fd, 100) == b"from a\nfrom b\n"
        os.rename(a_path, pods.path(pods.a, "renamed"))
        assert not b_path.exists()
        assert pods.path(pods.b, "renamed").stat().st_size == 14
    finally:
        os.close(fd)


def test_ofd_lock_conflicts_across_mounts(pods: Pods) -> None:
    holder = pods.holder(pods.a, "lock")
    assert holder.do("lock") == "ok"
    fd_b = open_rw(pods.path(pods.b, "lock"))
    fd_a2 = open_rw(pods.path(pods.a, "lock"))  # another open file description, same mount
    try:
        assert try_lock(fd_b) in BUSY
        assert lock_type(fd_b) == fcntl.F_WRLCK
        assert try_lock(fd_a2) in BUSY
        assert holder.do("touch") == "ok"  # the holder re-asserts it, as LockWatch does
        assert holder.do("write") == "ok"
    finally:
        os.close(fd_b)
        os.close(fd_a2)


def test_lock_is_freed_when_the_holder_dies(pods: Pods) -> None:
    holder = pods.holder(pods.a, "lock")
    assert holder.do("lock") == "ok"
    fd_b = open_rw(pods.path(pods.b, "lock"))
    try:
        assert try_lock(fd_b) in BUSY
        killed = time.monotonic()
        holder.process.send_signal(signal.SIGKILL)
        wait_until(lambda: try_lock(fd_b) == "ok", 5.0, "the other mount gets the lock",
                   interval=0.005)
        figure(f"holder SIGKILLed -> other mount has the lock in "
               f"{(time.monotonic() - killed) * 1000:.0f} ms")
    finally:
        os.close(fd_b)


def test_evict_frees_the_lock_and_fences_the_evicted_client(pods: Pods) -> None:
    lab = pods.lab
    holder = pods.holder(pods.a, "lock")
    assert holder.do("lock") == "ok"
    assert holder.do("write") == "ok"
    fd_b = open_rw(pods.path(pods.b, "lock"))
    try:
        assert try_lock(fd_b) in BUSY
        victim, address = pods.a.client_id(), pods.a.address()
        started = time.monotonic()
        evict_s = lab.evict(victim)
        wait_until(lambda: try_lock(fd_b) == "ok", 5.0, "the waiter gets the lock",
                   interval=0.01)
        locked_s = time.monotonic() - started
        write = holder.do("write")
        touch = holder.do("touch")
        assert write.startswith("err "), write
        assert write.split()[1] in FENCED, write
        assert touch.startswith("err "), touch
        assert pods.a.session() is None
        assert address in [entry["addr"] for entry in lab.blocklist_ls()]
        os.write(fd_b, b"new holder\n")
        os.fsync(fd_b)
        figure(f"evict command {evict_s:.2f}s, waiter has the lock {locked_s:.2f}s after the "
               f"command started; evicted holder: write+fsync -> {write}, re-lock -> {touch}")
    finally:
        os.close(fd_b)


def test_a_pod_key_may_not_evict_nor_blocklist(pods: Pods) -> None:
    lab = pods.lab
    holder = pods.holder(pods.a, "lock")
    assert holder.do("lock") == "ok"
    victim = pods.a.client_id()
    with pytest.raises(CephError) as refused:
        lab.evict(victim, user=pods.b.pod)  # pod-b's own key: POD_CAPS
    assert refused.value.refused, refused.value
    assert refused.value.returncode == errno.EACCES
    with pytest.raises(CephError) as refused_blocklist:
        lab.blocklist(pods.a.address(), user=pods.b.pod)
    assert refused_blocklist.value.returncode == errno.EACCES
    # Nothing happened: the session and its lock are still there.
    assert pods.a.session() is not None
    fd_b = open_rw(pods.path(pods.b, "lock"))
    try:
        assert try_lock(fd_b) in BUSY
    finally:
        os.close(fd_b)
    assert holder.do("write") == "ok"
    mds_log = lab.log(f"mds.{lab.active_mds()}").read_text(errors="replace")
    assert "without `tell` capability" in mds_log
    figure(f"pod key {POD_CAPS}: evict -> {refused.value.stderr.strip().splitlines()[-1]!r}; "
           f"blocklist -> {refused_blocklist.value.stderr.strip().splitlines()[-1]!r}")


def test_the_lab_needs_no_mgr(ceph_lab: CephLab) -> None:
    status = ceph_lab.ceph_json("status")
    assert status["fsmap"]["up"] == 1
    assert "MGR_DOWN" in status["health"].get("checks", {}) or status["mgrmap"].get(
        "available") is False


def test_a_killed_lab_leaves_nothing_after_cleanup(ceph_lab: CephLab, tmp_path: Path) -> None:
    """A lab whose process is SIGKILLed: its daemons die with it (PR_SET_PDEATHSIG), and
    cleanup_stale() removes the dead mount, namespaces, veths, bridge, temp dir and state;
    the session's own lab is left alone."""
    workdir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.cephlab", "up", "--dir", str(workdir),
         "--mount", "pod-k"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("Ceph lab "), first
        subnet = int(first.split()[2])
        mounted = process.stdout.readline()
        assert mounted.startswith("pod-k:"), mounted
        state = json.loads(state_file(subnet).read_text())
    finally:
        process.kill()
        process.wait(10)
    wait_until(lambda: not any(_cmdline_has(pid, state["conf"]) for pid in state["pids"]),
               10.0, "the killed lab's daemons and ceph-fuse are gone", interval=0.05)
    prefix = f"bhc{subnet}"
    assert str(workdir / "mnt" / "pod-k") in ceph_fuse_mounts()  # dead, until cleanup
    removed = cleanup_stale()
    assert f"bridge {prefix}" in removed, removed
    assert not [m for m in ceph_fuse_mounts() if m.startswith(str(workdir))]
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           timeout=10, check=True).stdout.split()
    assert not [n for n in names if n.startswith(f"{prefix}-")], names
    assert not list(Path(tempfile.gettempdir()).glob(f"bindha-ceph-{subnet}-*"))
    assert not state_file(subnet).exists()
    assert ceph_lab.sessions() is not None  # ours still answers
    assert state_file(ceph_lab.subnet).exists()


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return text.encode() in cmdline.read()
    except OSError:
        return False
