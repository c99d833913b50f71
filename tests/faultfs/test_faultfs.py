"""harness/faultfs.py with real processes: hang (D state through SIGKILL), errors by
operation class and path, OFD locks across pods' mounts, eviction, daemon crash, clean-up."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.faultfs import (
    FaultFSError,
    PodMount,
    cleanup_stale_mounts,
    fault_mounts,
    mount_entry,
    pack_flock,
    unpack_flock,
    wait_for,
)
from tests.faultfs.conftest import ROOT, Lab

pytestmark = [pytest.mark.faultfs, pytest.mark.root]

WRITE = ("import os, sys\n"
         "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
         "os.write(fd, b'x')\n")
STAT = "import os, sys; os.stat(sys.argv[1])"


def state(pid: int) -> str | None:
    """The process state letter of /proc/PID/stat, None once gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            letter = stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return None if letter == "Z" else letter


def observe(duration: float, check: Callable[[], bool]) -> None:
    """``check()`` holds throughout ``duration`` (an observation, not a synchronisation)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert check()
        time.sleep(0.02)


def try_lock(fd: int) -> str:
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, pack_flock(fcntl.F_WRLCK))
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return "ok"


def wait_lock(fd: int, what: str) -> None:
    wait_for(lambda: try_lock(fd) == "ok", 5, what)


# -- hang -----------------------------------------------------------------------------


def test_hang_holds_a_writer_in_d_state_through_sigkill_until_heal(lab: Lab) -> None:
    a, b = lab.mount("pod-a"), lab.mount("pod-b")
    a.fault("hang", ops="write", paths="*.jnl")
    writer = lab.spawn(WRITE, str(a.path / "zone.jnl"))
    assert a.wait_held() == ["write zone.jnl"]

    writer.kill()
    wait_for(lambda: state(writer.pid) == "D", 5, "the killed writer in D state")
    observe(0.3, lambda: state(writer.pid) == "D" and writer.poll() is None)

    # The same file through another pod, and another file through this pod, go on.
    (b.path / "zone.jnl").write_bytes(b"b")
    (a.path / "zone.db").write_bytes(b"a")
    assert a.status()["held"] == ["write zone.jnl"]  # the control path answers meanwhile

    assert a.heal() == 1
    assert writer.wait(5) == -signal.SIGKILL
    # The held write was carried out after all, as on a mount that comes back.
    assert (lab.backing / "zone.jnl").read_bytes() == b"x"


def test_hang_of_everything_holds_metadata_too_and_only_for_that_pod(lab: Lab) -> None:
    a, b = lab.mount("pod-a"), lab.mount("pod-b")
    (lab.backing / "epoch").write_text("7")
    a.fault("hang")
    reader = lab.spawn(STAT, str(a.path / "epoch"))
    assert a.wait_held()[0].startswith("getattr")
    assert (b.path / "epoch").read_text() == "7"
    reader.send_signal(signal.SIGTERM)
    wait_for(lambda: state(reader.pid) == "D", 5, "the signalled stat in D state")
    observe(0.2, lambda: reader.poll() is None)
    a.heal()
    assert reader.wait(5) == -signal.SIGTERM
    assert (a.path / "epoch").read_text() == "7"


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["EIO", "ESTALE", "ENOSPC", "EROFS"])
def test_error_hits_the_chosen_ops_and_paths_of_one_pod_only(lab: Lab, kind: str) -> None:
    code = getattr(errno, kind)
    a, b = lab.mount("pod-a"), lab.mount("pod-b")
    for name in ("zone.jnl", "zone.db", "tmp"):
        (lab.backing / name).write_bytes(b"old")
    a.fault(kind, ops=["write", "create", "rename"], paths="*.jnl")

    fd = lab.open(a.path / "zone.jnl")  # open is not among the ops
    with pytest.raises(OSError) as caught:
        os.write(fd, b"new")
    assert caught.value.errno == code
    with pytest.raises(OSError) as caught:
        os.open(a.path / "new.jnl", os.O_WRONLY | os.O_CREAT)
    assert caught.value.errno == code
    with pytest.raises(OSError) as caught:
        os.rename(a.path / "tmp", a.path / "zone.jnl")
    assert caught.value.errno == code

    assert os.pread(fd, 3, 0) == b"old"  # reads are not among the ops
    (a.path / "zone.db").write_bytes(b"new")  # nor is this path
    (b.path / "zone.jnl").write_bytes(b"pod-b")  # nor is another pod
    assert (lab.backing / "zone.jnl").read_bytes() == b"pod-b"

    a.heal()
    os.pwrite(fd, b"new", 0)
    assert (lab.backing / "zone.jnl").read_bytes() == b"new-b"


def test_errors_on_fence_files_by_glob(lab: Lab) -> None:
    a = lab.mount("pod-a")
    (lab.backing / ".bindha").mkdir()
    a.fault("EIO", ops="mutating", paths=".bindha/owner.json*")
    with pytest.raises(OSError) as caught:
        (a.path / ".bindha" / "owner.json.tmp").write_text("{}")
    assert caught.value.errno == errno.EIO
    (a.path / ".bindha" / "epoch.tmp").write_text("3")
    os.replace(a.path / ".bindha" / "epoch.tmp", a.path / ".bindha" / "epoch")
    assert (lab.backing / ".bindha" / "epoch").read_text() == "3"


def test_error_on_every_op_reaches_the_volume_root(lab: Lab) -> None:
    a = lab.mount("pod-a")
    a.fault("ESTALE")
    with pytest.raises(OSError) as caught:
        os.listdir(a.path)
    assert caught.value.errno == errno.ESTALE
    a.heal()
    assert os.listdir(a.path) == []


def test_bad_fault_is_refused() -> None:
    pod_mount = PodMount(pod="x", mountpoint=Path("/nonexistent"), control=Path("/x"),
                         log=Path("/x"), process=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pod_mount.fault("ENOENT")
    with pytest.raises(ValueError):
        pod_mount.fault("EIO", ops="writes")


# -- locks ----------------------------------------------------------------------------


def test_lock_conflicts_across_pods_and_within_a_pod(lab: Lab) -> None:
    a, b = lab.mount("pod-a"), lab.mount("pod-b")
    holder = lab.holder(a.path / "lock")
    assert holder.do("lock") == "ok"
    other_pod = lab.open(b.path / "lock")
    same_pod = lab.open(a.path / "lock")
    assert try_lock(other_pod) == "EAGAIN"
    assert try_lock(same_pod) == "EAGAIN"
    l_type, *_ = unpack_flock(fcntl.fcntl(other_pod, fcntl.F_OFD_GETLK,
                                          pack_flock(fcntl.F_WRLCK)))
    assert l_type == fcntl.F_WRLCK
    assert holder.do("touch") == "ok"  # the liveness touch on its own descriptor


def test_lock_survives_closing_a_dup_and_another_descriptor(lab: Lab) -> None:
    a, b = lab.mount("pod-a"), lab.mount("pod-b")
    holder = lab.holder(a.path / "lock")
    assert holder.do("lock") == "ok"
    assert holder.do("dupclose") == "ok"  # FLUSH: libfuse unlocks with the closer's owner
    assert holder.do("openclose") == "ok"  # another handle: its own FLUSH and RELEASE
    other = lab.open(b.path / "lock")
    assert try_lock(other) == "EAGAIN"
    assert holder.do("touch") == "ok"


def test_lock_lives_as_long_as_an_inherited_descriptor(lab: Lab) -> None:
    a, b = lab.mount("pod-a"), lab.mount("pod-b")
    holder = lab.holder(a.path / "lock")
    assert holder.do("lock") == "ok"
    child = int(holder.do("spawn").split()[1])
    lab.strays.append((child, "signal.pause"))
    other = lab.open(b.path / "lock")
    assert holder.do("close") == "ok"
    assert try_lock(other) == "EAGAIN"
    holder.do("exit")
    assert try_lock(other) == "EAGAIN"  # the child's descriptor still holds it
    os.kill(child, signal.SIGKILL)
    wait_lock(other, "the lock, once the child's descriptor closed")


def test_lock_is_freed_when_the_holder_dies(lab: Lab) -> None:
    a, b = lab.mount("pod-a"), lab.mount("pod-b")
    holder = lab.holder(a.path / "lock")
    assert holder.do("lock") == "ok"
    other = lab.open(b.path / "lock")
    assert try_lock(other) == "EAGAIN"
    holder.process.kill()
    holder.process.wait(5)
    wait_lock(other, "the lock, once its holder died")
    # No phantom from libfuse's own lock table: the holder's pod sees pod-b's lock only.
    same_pod = lab.open(a.path / "lock")
    assert try_lock(same_pod) == "EAGAIN"
    fcntl.fcntl(other, fcntl.F_OFD_SETLK, pack_flock(fcntl.F_UNLCK))
    l_type, *_ = unpack_flock(fcntl.fcntl(same_pod, fcntl.F_OFD_GETLK,
                                          pack_flock(fcntl.F_WRLCK)))
    assert l_type == fcntl.F_UNLCK


def test_drop_locks_lets_another_pod_lock_and_fails_the_old_holders_touch(lab: Lab) -> None:
    a, b = lab.mount("pod-a"), lab.mount("pod-b")
    holder = lab.holder(a.path / "lock")
    assert holder.do("lock") == "ok"
    other = lab.open(b.path / "lock")
    assert try_lock(other) == "EAGAIN"

    assert a.drop_locks() == 1
    assert try_lock(other) == "ok"
    assert holder.do("touch") == "err EIO"
    assert holder.do("touch") == "err EIO"  # for good: the handle stays evicted
    assert a.status()["evicted"] == ["lock"]
    # A new open of the old pod locks normally again, and meets pod-b's lock.
    assert lab.holder(a.path / "lock").do("lock") == "err EAGAIN"


SETLKW = ("import fcntl, os, struct, sys\n"
          "fd = os.open(sys.argv[1], os.O_RDWR)\n"
          "fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, struct.pack('=hh4xqqi4x', 1, 0, 0, 0, 0))\n")


def test_blocking_lock_waits_for_the_other_pod_and_can_be_killed(lab: Lab) -> None:
    a, b = lab.mount("pod-a"), lab.mount("pod-b")
    holder = lab.holder(a.path / "lock")
    assert holder.do("lock") == "ok"
    quitter = lab.spawn(SETLKW, str(b.path / "lock"))
    waiter = lab.spawn(SETLKW, str(b.path / "lock"))
    observe(0.2, lambda: waiter.poll() is None and quitter.poll() is None)
    quitter.kill()  # the daemon sees the INTERRUPT and gives up: no process stuck
    assert quitter.wait(5) == -signal.SIGKILL
    holder.process.kill()
    assert waiter.wait(5) == 0


# -- crash and clean-up ---------------------------------------------------------------


def test_crash_gives_enotconn_to_that_pod_only(lab: Lab) -> None:
    a, b = lab.mount("pod-a"), lab.mount("pod-b")
    (lab.backing / "zone.db").write_text("data")
    fd = lab.open(a.path / "zone.db")
    a.crash()
    for attempt in (lambda: os.pread(fd, 4, 0), lambda: os.stat(a.path / "zone.db"),
                    lambda: os.listdir(a.path)):
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.ENOTCONN
    assert (b.path / "zone.db").read_text() == "data"
    assert mount_entry(a.path) is not None  # the dead mount stays until unmounted
    with pytest.raises(FaultFSError):
        a.heal()


def test_unmount_with_a_held_request_leaves_no_mount_and_no_stuck_process(lab: Lab) -> None:
    a = lab.mount("pod-a")
    a.fault("hang", ops="write")
    writer = lab.spawn(WRITE, str(a.path / "zone.jnl"))
    a.wait_held()
    writer.kill()
    wait_for(lambda: state(writer.pid) == "D", 5, "the killed writer in D state")
    a.unmount()
    assert writer.wait(5) == -signal.SIGKILL
    assert mount_entry(a.path) is None
    assert not a.alive


def test_stale_mount_of_a_dead_daemon_is_cleaned_up(lab: Lab) -> None:
    a = lab.mount("pod-a")
    b = lab.mount("pod-b")
    a.crash()
    assert cleanup_stale_mounts() == [str(a.path)]
    assert mount_entry(a.path) is None
    assert mount_entry(b.path) is not None  # a live daemon's mount is left alone


DRIVER = """
import sys, subprocess
from pathlib import Path
from harness.faultfs import FaultVolume
root = Path(sys.argv[1])
volume = FaultVolume(root / "backing")
pod = volume.mount("pod-a", root / "pod-a" / "dyn")
pod.fault("hang", ops="write")
writer = subprocess.Popen([sys.executable, "-c", sys.argv[2], str(pod.path / "w")])
pod.wait_held()
print(writer.pid, pod.process.pid, flush=True)
sys.stdin.read()
"""


def test_a_killed_test_process_leaves_no_mount_daemon_or_stuck_writer(lab: Lab) -> None:
    root = lab.root / "killed"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(root), WRITE], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    lab.processes.append(driver)
    assert driver.stdout is not None
    writer, daemon = (int(x) for x in driver.stdout.readline().split())
    lab.strays += [(writer, "os.write"), (daemon, "harness.faultfs")]
    mountpoint = (root / "pod-a" / "dyn").resolve()
    assert mount_entry(mountpoint) is not None
    driver.kill()
    driver.wait(5)
    wait_for(lambda: mount_entry(mountpoint) is None, 5, "the orphaned mount detached")
    wait_for(lambda: state(daemon) is None, 5, "the orphaned daemon gone")
    wait_for(lambda: state(writer) is None, 5, "the held writer finished")
    assert (root / "backing" / "w").read_bytes() == b"x"
    control_dirs = list(Path(tempfile.gettempdir()).glob(f"bindha-faultfs-{driver.pid}-*"))
    assert control_dirs
    assert cleanup_stale_mounts() == []
    assert not any(d.exists() for d in control_dirs)


def test_cleanup_leaves_no_mount(tmp_path: Path, lab: Lab) -> None:
    pods = [lab.mount(f"pod-{i}") for i in range(3)]
    pods[0].fault("hang")
    pods[1].crash()
    lab.spawn(STAT, str(pods[0].path / "x"))
    pods[0].wait_held()
    lab.close()
    assert not [m for m in fault_mounts() if m.mountpoint.startswith(str(tmp_path))]
    with contextlib.suppress(FileNotFoundError):
        assert not any(p.mountpoint.is_mount() for p in pods)
