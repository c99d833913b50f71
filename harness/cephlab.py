"""A one-host Ceph cluster with a CephFS, and a ceph-fuse client per pod: the real RWX volume.

Why: the fence (Lease + an OFD lock on the RWX volume + the epoch file) must be shown on a
real CephFS, whose MDS owns the locks, times sessions out, evicts and blocklists clients.
harness/faultfs.py imitates that; this is the thing itself (Debian's Ceph 16.2, Pacific).

Shape. ``CephLab(workdir)`` (a context manager, or ``start()``/``stop()``) runs one mon
(``a``), one OSD (``0``, memstore: RAM, no disk preparation), one MDS (``a``) and a CephFS
(``cephfs``, pools ``cephfs_metadata`` and ``cephfs_data``, size 1, 8 PGs each); no mgr
(not needed for I/O, locks, eviction or blocklisting; health says MGR_DOWN). cephx is on,
with one key per entity:

- ``client.admin``: everything (``allow *``), for the lab itself;
- ``client.fencer``: what a storage fence needs and no more, ``FENCER_CAPS``: mds
  ``allow *`` (every ``ceph tell mds.X`` command, ``client evict`` and ``session ls``
  included, needs the MDS's ``*``) and mon ``allow r, allow command "osd blocklist"``;
- ``client.<pod>``, made by ``mount()``: ``POD_CAPS``, what a pod's CephFS key has in the
  product's manifests (ceph-csi's node key): mds ``allow rw path=/``, osd
  ``allow rw tag cephfs data=cephfs``, mon ``allow r``.

Network. The daemons run in a network namespace of their own, ``bhc<N>-ceph``, on the lab
address 10.214.N.2/24 (never 127.0.0.1: blocklisting a bare 127.0.0.1 would hit the MDS's
own RADOS client too). The namespace has only its connected route: nothing leaves this
machine. Its veth is on a bridge ``bhc<N>`` (10.214.N.1/24 in the root namespace, where the
lab's and the tests' ``ceph`` commands run). ``N`` is claimed machine-wide (an flock on
/run/bindha-lab/cephlab-N), like harness/netlab.py's subnets, so labs can run side by side.
The mon listens on msgr2 only (``[v2:10.214.N.2:3300]``); OSD and MDS pick ports in
6800-7300 on the same address.

Mounts. ``lab.mount(pod, mountpoint, netns=None)`` starts a ``ceph-fuse -f`` for that pod
with its own id and key (``client.<pod>``: its own MDS session and client id). With
``netns`` (a name in /run/netns or a path), ceph-fuse is started as ``nsenter --net=<path>
ceph-fuse ...``: its sockets live in that namespace, so cutting the namespace off cuts that
pod from Ceph, while the mount stays visible to the whole machine (``ip netns exec`` would
hide it in a private mount namespace). The lab gives that namespace a storage interface
``ceph0`` (10.214.N.k/24) on its bridge, unless it has one already; ``lab.host()`` makes a
bare namespace of this kind. Without ``netns`` the client runs in the root namespace (source
address 10.214.N.1). ``CephMount.client_id()`` is the MDS's id of that client's session (the
``N`` of ``client.N``), found in ``ceph tell mds.a session ls`` by entity and pid;
``CephMount.session()`` is that session's entry (JSON). ``lab.evict(client_id)`` runs
``ceph tell mds.a client evict id=N`` as ``client.fencer``: the MDS kills the session and
blocklists the client's address at the OSDs (for an hour: ``mon_osd_blocklist_default_
expire``), and its locks are granted to waiters. ``lab.blocklist(addr)`` is the OSD-only
half (``ceph osd blocklist add``). Every Ceph command runs with a ``timeout`` (seconds, the
process is killed after it) and the CLI's own ``--connect-timeout``; a refusal raises
``CephError`` with Ceph's return code and words (an unauthorised evict: ``EACCES``,
"permission denied").

MDS settings (``ceph fs set cephfs ...``, ``LabSettings``): ``session_timeout`` 30 s (the
least 16.2 accepts; default 60 s) and ``session_autoclose`` 30 s (default 300 s).

Clean-up. ``stop()`` unmounts every mount (``fusermount3 -u``, then ``umount -l``), ends
the processes it started, by pid (SIGKILL: the data is thrown away, and a SIGTERMed MDS
takes ~8 s to shut down), deletes the namespaces and veths it made, the bridge, and its
temp dir (``/tmp/bindha-ceph-<N>-*``: run dir with the admin sockets; the workdir with the
logs is the caller's and stays, unless the lab made it). Every process is started through
``setpriv --pdeathsig KILL`` (PR_SET_PDEATHSIG), so a test process that is killed (even by
SIGKILL) takes its daemons with it; what is left then (dead FUSE mounts, namespaces, the
bridge, temp dirs) is listed in a state file ``/run/bindha-lab/cephlab-<N>.json``, and
``cleanup_stale()`` (run by every ``start()``, or ``python -m harness.cephlab cleanup``)
removes the leftovers of every lab whose claim is free. Note that the death signal follows
the *thread* that started a process: start the lab from a thread that outlives it (pytest's
main thread does).

Hazard: a process that holds a descriptor on a ceph-fuse mount whose client is frozen
(SIGSTOP) or cut off cannot start a child: the child's close of inherited descriptors (or
close-on-exec) sends a FUSE FLUSH to that client and waits. Keep descriptors on a mount that
a test freezes in helper processes, never in the process that runs ``ceph`` commands.

Needs root, /dev/fuse, and Debian's ``ceph-mon ceph-osd ceph-mds ceph-fuse ceph-common``
(plus ``fuse3``, ``util-linux`` for nsenter, ``iproute2``); ``unavailable()`` says what is
missing.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.loopback import CLAIMS
from harness.polling import wait_until

FS_NAME = "cephfs"
METADATA_POOL = "cephfs_metadata"
DATA_POOL = "cephfs_data"
MON = "a"
MDS = "a"
STANDBY_MDS = "b"  # started only with LabSettings.standby_mds
RANK0 = f"{FS_NAME}:0"  # `ceph tell mds.cephfs:0`: whichever MDS holds rank 0 now
OSD = 0
MON_PORT = 3300
TEMP_PREFIX = "bindha-ceph-"  # + N + "-": the run dir (admin sockets), and the workdir if ours
STATE_PREFIX = "cephlab-"  # /run/bindha-lab/cephlab-<N> (the claim) and cephlab-<N>.json
BRIDGE_PREFIX = "bhc"  # bridge bhc<N>, namespaces bhc<N>-<host>, root-side veths bhc<N>h<k>
FIRST_SUBNET, LAST_SUBNET = 1, 250
PACKAGES = ("ceph-mon", "ceph-osd", "ceph-mds", "ceph-fuse", "ceph-common")
COMMANDS = {"ceph-mon": "ceph-mon", "ceph-osd": "ceph-osd", "ceph-mds": "ceph-mds",
            "ceph-fuse": "ceph-fuse", "ceph": "ceph-common", "ceph-authtool": "ceph-common",
            "monmaptool": "ceph-common", "nsenter": "util-linux", "setpriv": "util-linux",
            "fusermount3": "fuse3",
            "ip": "iproute2"}
CEPH_FUSE_FSTYPE = "fuse.ceph-fuse"

# What a pod's key may do (the product's manifests; ceph-csi's node-stage key looks alike).
POD_CAPS = {
    "mds": "allow rw path=/",
    "osd": f"allow rw tag cephfs data={FS_NAME}",
    "mon": "allow r",
}
# A storage fence: evict at the MDS (`ceph tell mds.X client evict`: the MDS runs `tell`
# commands only for a session whose caps include `allow *`), and blocklist at the OSDs
# (`ceph osd blocklist add`, a mon command: `allow command "osd blocklist"`); mon `allow r`
# to read the FSMap (find the MDS) and the OSDMap.
FENCER_CAPS = {
    "mds": "allow *",
    "mon": 'allow r, allow command "osd blocklist"',
}
ADMIN_CAPS = {"mon": "allow *", "osd": "allow *", "mds": "allow *", "mgr": "allow *"}
DAEMON_CAPS = {
    "mon.": {"mon": "allow *"},
    f"osd.{OSD}": {"mon": "allow profile osd", "osd": "allow *", "mgr": "allow profile osd"},
    **{f"mds.{name}": {"mon": "allow profile mds", "osd": "allow *", "mds": "allow *",
                       "mgr": "allow profile mds"} for name in (MDS, STANDBY_MDS)},
}

_lock = threading.Lock()


class CephError(Exception):
    """A Ceph command failed: ``returncode`` (Ceph's errno, e.g. 13 for EACCES, or 124 for a
    timeout of ours), ``stderr`` (Ceph's words), ``command``."""

    def __init__(self, command: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.command, self.returncode = command, returncode
        self.stdout, self.stderr = stdout, stderr
        words = stderr.strip().splitlines()[-1] if stderr.strip() else stdout.strip()[-200:]
        name = errno.errorcode.get(returncode, str(returncode))
        super().__init__(f"{' '.join(command)}: exit {returncode} ({name}): {words}")

    @property
    def refused(self) -> bool:
        """Ceph said no for lack of a capability (EACCES, or EPERM)."""
        return self.returncode in (errno.EACCES, errno.EPERM)


def unavailable() -> str | None:
    """Why the Ceph lab cannot run here, or None: for tests' require()."""
    if os.geteuid() != 0:
        return "the Ceph lab needs root (namespaces, FUSE mounts)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    missing = sorted({pkg for cmd, pkg in COMMANDS.items()
                      if shutil.which(cmd) is None and not os.path.exists(f"/usr/sbin/{cmd}")})
    if missing:
        return f"missing Debian packages: {' '.join(missing)} (scripts/setup.sh installs them)"
    return None


def _run(argv: list[str], timeout: float = 10.0, check: bool = True,
         input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            check=False, input=input_text)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()[-500:]}")
    return result


def _ip(*args: str, check: bool = True) -> None:
    _run(["ip", *args], check=check)


def _netns_path(netns: str | os.PathLike[str]) -> str:
    text = os.fspath(netns)
    return text if "/" in text else f"/run/netns/{text}"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- mounts ---------------------------------------------------------------------------


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def ceph_fuse_mounts() -> list[str]:
    """Mountpoints of every ceph-fuse mount in our mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == [CEPH_FUSE_FSTYPE]:
                out.append(_unescape(left.split()[4]))
    return out


def force_unmount(mountpoint: str, timeout: float = 10.0) -> None:
    """fusermount3 -u; when busy (or it fails), a lazy umount -l. Never waits on the
    daemon: a dead or blocklisted client's mount goes all the same."""
    if mountpoint not in ceph_fuse_mounts():
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        _run(["fusermount3", "-u", "-q", mountpoint], timeout=timeout, check=False)
    if mountpoint in ceph_fuse_mounts():
        _run(["umount", "-l", mountpoint], timeout=timeout, check=False)
    if mountpoint in ceph_fuse_mounts():
        raise RuntimeError(f"could not unmount {mountpoint}")


# -- claims and leftovers ---------------------------------------------------------------


def _try_claim(subnet: int) -> int | None:
    """An flock on /run/bindha-lab/cephlab-<N>, the descriptor if we got it."""
    CLAIMS.mkdir(parents=True, exist_ok=True)
    fd = os.open(CLAIMS / f"{STATE_PREFIX}{subnet}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def state_file(subnet: int) -> Path:
    """The state file of lab number ``subnet``: what cleanup_stale() removes after a kill."""
    return _state_file(subnet)


def _state_file(subnet: int) -> Path:
    return CLAIMS / f"{STATE_PREFIX}{subnet}.json"


def _netns_names() -> list[str]:
    result = _run(["ip", "-j", "netns", "list"], check=False)
    try:
        return [entry["name"] for entry in json.loads(result.stdout or "[]")]
    except (ValueError, KeyError, TypeError):
        return []


def _links() -> list[str]:
    result = _run(["ip", "-j", "link", "show"], check=False)
    try:
        return [entry["ifname"] for entry in json.loads(result.stdout or "[]")]
    except (ValueError, KeyError, TypeError):
        return []


def _remove_leftovers(subnet: int) -> list[str]:
    """What a dead lab on ``subnet`` left (we hold its claim): processes of its config
    (pid recorded and command line still naming the config), mounts, veths, namespaces,
    the bridge, temp dirs, the state file. Returns what it removed."""
    removed: list[str] = []
    state_path = _state_file(subnet)
    state: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(state_path.read_text())
    conf = state.get("conf", "")
    for pid in state.get("pids", []):
        if conf and conf.encode() in _cmdline(pid) and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            removed.append(f"pid {pid}")
    for mountpoint in state.get("mounts", []):
        if mountpoint in ceph_fuse_mounts():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                force_unmount(mountpoint)
                removed.append(f"mount {mountpoint}")
    prefix = f"{BRIDGE_PREFIX}{subnet}"
    for link in _links():
        if link.startswith(f"{prefix}h"):
            _ip("link", "del", link, check=False)
            removed.append(f"veth {link}")
    for netns in _netns_names():
        if netns.startswith(f"{prefix}-"):
            _ip("netns", "del", netns, check=False)
            removed.append(f"netns {netns}")
    if prefix in _links():
        _ip("link", "del", prefix, check=False)
        removed.append(f"bridge {prefix}")
    for directory in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}{subnet}-*"):
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(f"dir {directory}")
    with contextlib.suppress(FileNotFoundError):
        state_path.unlink()
    return removed


def cleanup_stale() -> list[str]:
    """Remove what killed labs left behind (every lab number whose claim is free and that
    left a state file, a bridge, a namespace or a temp dir); live labs are left alone."""
    numbers: set[int] = set()
    for path in CLAIMS.glob(f"{STATE_PREFIX}*.json") if CLAIMS.exists() else []:
        with contextlib.suppress(ValueError):
            numbers.add(int(path.stem[len(STATE_PREFIX):]))
    for name in [*_links(), *_netns_names()]:
        if name.startswith(BRIDGE_PREFIX):
            digits = name[len(BRIDGE_PREFIX):].split("-", 1)[0].split("h", 1)[0]
            if digits.isdigit():
                numbers.add(int(digits))
    for directory in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        digits = directory.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if digits.isdigit():
            numbers.add(int(digits))
    removed: list[str] = []
    for subnet in sorted(numbers):
        fd = _try_claim(subnet)
        if fd is None:
            continue  # a live lab's
        try:
            removed += _remove_leftovers(subnet)
        finally:
            os.close(fd)
    return removed


# -- the lab ------------------------------------------------------------------------------


@dataclass
class LabSettings:
    # `ceph fs set cephfs session_timeout|session_autoclose N`; 16.2 refuses N < 30 (ERANGE);
    # None leaves Ceph's defaults, 60 s and 300 s.
    session_timeout: int | None = 30
    session_autoclose: int | None = 30
    memstore_bytes: int = 1 << 30  # the OSD's RAM "disk"
    command_timeout: float = 20.0  # our limit on each Ceph command during bring-up
    connect_timeout: int = 10  # the CLI's --connect-timeout
    ready_timeout: float = 60.0  # bring-up to an active MDS
    paxos_propose_interval: float = 0.1  # Ceph's default 1 s: every map change waits ~1 s
    mds_beacon_interval: float = 1.0  # Ceph's default 4 s
    # A second MDS, standby for rank 0 (what a real cluster runs): a killed active MDS
    # is replaced once the mon misses its beacons for mds_beacon_grace (Ceph's 15 s).
    standby_mds: bool = False
    mds_beacon_grace: float | None = None
    mds_beacon_mon_down_grace: float = 5.0


@dataclass
class LabHost:
    """A network namespace on the lab's bridge: ``netns`` (its path), ``ip``, and the
    root-side end of its veth, ``link`` (``ip link set <link> down`` cuts it off Ceph)."""

    netns: str
    ip: str
    link: str
    owned: bool  # the lab made the namespace (and deletes it)


@dataclass
class CephMount:
    """One pod's ceph-fuse mount (its own client.<pod> key and MDS session)."""

    lab: CephLab
    pod: str
    mountpoint: Path
    process: subprocess.Popen[bytes]
    host: LabHost | None
    log_file: Path
    _client_id: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def mounted(self) -> bool:
        return str(self.mountpoint) in ceph_fuse_mounts()

    def session(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """This client's entry of the MDS's ``session ls``, or None if it has none (never
        mounted, closed, or evicted)."""
        for entry in self.lab.sessions(timeout=timeout):
            metadata = entry.get("client_metadata", {})
            if (metadata.get("entity_id") == self.pod
                    and str(metadata.get("pid")) == str(self.pid)):
                return entry
        return None

    def client_id(self, timeout: float = 10.0) -> int:
        """The MDS's id of this client (``client.N``: the ``id`` of its session)."""
        if self._client_id is None:
            entry = wait_until(lambda: self.session(timeout=timeout), timeout,
                               f"an MDS session of {self.pod}'s ceph-fuse (pid {self.pid})",
                               interval=0.1)
            self._client_id = int(entry["id"])
        return self._client_id

    def address(self, timeout: float = 10.0) -> str:
        """This client's address as the OSDs know it, ``IP:0/NONCE`` (for blocklisting)."""
        entry = self.session(timeout=timeout)
        if entry is None:
            raise RuntimeError(f"{self.pod}: no MDS session")
        inst = entry.get("inst", "")  # "client.4119 10.214.1.3:0/2120321832"
        addr = inst.split()[-1] if inst else ""
        for kind in ("v1:", "v2:", "any:"):
            addr = addr.removeprefix(kind)
        return addr

    def unmount(self, timeout: float = 10.0) -> None:
        """fusermount3 -u (umount -l when busy), then wait for ceph-fuse; SIGKILL after
        ``timeout`` (an evicted client may not manage a clean exit)."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            force_unmount(str(self.mountpoint))
        if self.alive:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.lab._forget_mount(self)

    def kill(self) -> None:
        """SIGKILL ceph-fuse (a crashed client; the mount stays, dead, until unmount)."""
        if self.alive:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class CephLab:
    """One mon, one memstore OSD, one MDS and a CephFS on a lab address; see the module."""

    def __init__(self, workdir: Path | str | None = None,
                 settings: LabSettings | None = None) -> None:
        self.settings = settings or LabSettings()
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self.subnet = 0
        self._claim_fd: int | None = None
        self.workdir = Path()
        self.rundir = Path()
        self.conf = Path()
        self.fsid = ""
        self.bridge = ""
        self.bridge_ip = ""
        self.ip = ""  # the daemons' address
        self.daemon_netns = ""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.mounts: dict[str, CephMount] = {}
        self.hosts: list[LabHost] = []
        self._next_host = 3
        self._keys: set[str] = set()
        self._owns_workdir = False
        self._started = False
        self.timings: dict[str, float] = {}

    # -- naming

    @property
    def mon_host(self) -> str:
        return f"[v2:{self.ip}:{MON_PORT}]"

    def keyring(self, entity: str) -> Path:
        return self.workdir / "keys" / f"{entity}.keyring"

    def log(self, name: str) -> Path:
        return self.workdir / "log" / f"{name}.log"

    # -- the CLI

    def ceph_argv(self, *args: str, user: str = "admin") -> list[str]:
        return ["ceph", "-c", str(self.conf), "--id", user,
                "--keyring", str(self.keyring(f"client.{user}")),
                "--connect-timeout", str(self.settings.connect_timeout), *args]

    def ceph(self, *args: str, user: str = "admin", timeout: float | None = None) -> str:
        """Run ``ceph ARGS`` as ``client.<user>``; stdout, or CephError (rc 124 on our
        ``timeout``)."""
        argv = self.ceph_argv(*args, user=user)
        limit = self.settings.command_timeout if timeout is None else timeout
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=limit,
                                    check=False)
        except subprocess.TimeoutExpired as exc:
            raise CephError(argv, 124, "", f"no answer within {limit:g}s") from exc
        if result.returncode != 0:
            raise CephError(argv, result.returncode, result.stdout, result.stderr)
        return result.stdout

    def ceph_json(self, *args: str, user: str = "admin", timeout: float | None = None) -> Any:
        return json.loads(self.ceph(*args, "--format", "json", user=user, timeout=timeout))

    def sessions(self, user: str = "admin", timeout: float = 10.0) -> list[dict[str, Any]]:
        """``ceph tell mds.cephfs:0 session ls`` (JSON): every client session the MDS has."""
        return list(self.ceph_json("tell", f"mds.{RANK0}", "session", "ls", user=user,
                                   timeout=timeout))

    def evict(self, client_id: int, user: str = "fencer", timeout: float = 15.0) -> float:
        """``ceph tell mds.cephfs:0 client evict id=N`` as ``client.<user>``: the MDS closes that
        session, blocklists the client and frees its locks. Returns the seconds it took;
        CephError if refused (``.refused``) or not answered within ``timeout``."""
        started = time.monotonic()
        self.ceph("tell", f"mds.{RANK0}", "client", "evict", f"id={client_id}", user=user,
                  timeout=timeout)
        return time.monotonic() - started

    def blocklist(self, addr: str, user: str = "fencer", timeout: float = 15.0,
                  expire: float | None = None) -> None:
        """``ceph osd blocklist add ADDR [EXPIRE]`` as ``client.<user>``."""
        extra = [f"{expire:g}"] if expire is not None else []
        self.ceph("osd", "blocklist", "add", addr, *extra, user=user, timeout=timeout)

    def blocklist_ls(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The OSD blocklist: [{"addr": "IP:0/NONCE", "until": ...}] (16.2 prints a second
        JSON list after it, the range blocklist, which is left out)."""
        text = self.ceph("osd", "blocklist", "ls", "--format", "json", timeout=timeout)
        value, _ = json.JSONDecoder().raw_decode(text.strip())
        return list(value)

    # -- faults of the cluster itself (the chaos runner's mds-hang, mds-restart, full)

    @property
    def mds_pid(self) -> int:
        """The active MDS's pid (the one holding rank 0)."""
        return self.processes[f"mds.{self.active_mds()}"].pid

    def active_mds(self) -> str:
        """The name of the MDS that is up:active now (the FSMap's word)."""
        for info in self._mds_infos():
            if info.get("state") == "up:active":
                return str(info["name"])
        raise RuntimeError("no active MDS")

    def _start_mds(self, name: str) -> None:
        self._daemon(f"mds.{name}", ["ceph-mds", "-c", str(self.conf), "-f", "-i", name])

    def restart_mds(self, timeout: float | None = None) -> float:
        """SIGKILL the active MDS and start it again (a crashed MDS that its init system
        restarts): it, or a standby, replays the journal and waits for the clients to
        reconnect. Seconds until an MDS is active again."""
        started = time.monotonic()
        name = self.active_mds()
        process = self.processes[f"mds.{name}"]
        process.kill()
        process.wait(10)
        self._start_mds(name)
        wait_until(self._mds_active, timeout or self.settings.ready_timeout,
                   "the restarted MDS active", interval=0.2)
        return time.monotonic() - started

    def fail_over_mds(self, timeout: float | None = None) -> tuple[str, str, float]:
        """SIGKILL the active MDS for good (its host died): the mon hands rank 0 to the
        standby once it misses the old one's beacons (mds_beacon_grace), the standby
        replays the journal and the clients reconnect to it. Then the dead one starts
        again, as the new standby. (old name, new name, seconds until the new one was
        active)."""
        if not self.settings.standby_mds:
            raise RuntimeError("no standby MDS in this lab (LabSettings.standby_mds)")
        started = time.monotonic()
        old = self.active_mds()
        process = self.processes[f"mds.{old}"]
        process.kill()
        process.wait(10)

        def replaced() -> str | None:
            self._check_daemons(but=f"mds.{old}")
            name = next((str(i["name"]) for i in self._mds_infos()
                         if i.get("state") == "up:active"), None)
            return name if name and name != old else None
        new = wait_until(replaced, timeout or self.settings.ready_timeout + 30,
                         "the standby MDS active", interval=0.2)
        took = time.monotonic() - started
        self._start_mds(old)
        wait_until(lambda: any(i.get("name") == old and i.get("state") == "up:standby"
                               for i in self._mds_infos(include_standbys=True)),
                   self.settings.ready_timeout, f"mds.{old} back as a standby", interval=0.2)
        return old, new, took

    def set_full(self, full: bool) -> None:
        """Make the cluster full (or not) by its ratios: each OSD compares its use with
        ``full_ratio`` at its next tick and flags itself full; writes then fail with
        ENOSPC on every client. (A directory quota, what a ceph-csi or Manila share
        has, was not enforced by ceph-fuse 16.2 mounted at the quota directory in a
        probe here, so "full" is the cluster's.)"""
        ratios = (("nearfull", "0.0001"), ("backfillfull", "0.0002"), ("full", "0.0003"))
        if not full:
            ratios = (("full", "0.95"), ("backfillfull", "0.90"), ("nearfull", "0.85"))
        for name, value in ratios:
            self.ceph("osd", f"set-{name}-ratio", value)

    def add_client(self, name: str, caps: dict[str, str] | None = None) -> Path:
        """Create ``client.<name>`` with ``caps`` (default POD_CAPS); its keyring path."""
        entity = f"client.{name}"
        if entity not in self._keys:
            argv: list[str] = []
            for daemon, cap in (caps or POD_CAPS).items():
                argv += [daemon, cap]
            keyring = self.ceph("auth", "get-or-create", entity, *argv)
            self.keyring(entity).write_text(keyring)
            self._keys.add(entity)
        return self.keyring(entity)

    # -- lifecycle

    def __enter__(self) -> CephLab:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        why = unavailable()
        if why:
            raise RuntimeError(why)
        started = time.monotonic()
        cleanup_stale()
        self._claim()
        try:
            self._prepare()
            self._network()
            self._bring_up()
        except BaseException:
            self.stop()
            raise
        self._started = True
        self.timings["start"] = time.monotonic() - started

    def _claim(self) -> None:
        with _lock:
            for subnet in range(FIRST_SUBNET, LAST_SUBNET + 1):
                fd = _try_claim(subnet)
                if fd is not None:
                    self.subnet, self._claim_fd = subnet, fd
                    break
        if not self.subnet:
            raise RuntimeError("no free Ceph lab number (250 in use)")
        _remove_leftovers(self.subnet)  # a killed run's, now ours

    def _save_state(self) -> None:
        state = {
            "owner": os.getpid(),
            "conf": str(self.conf),
            "workdir": str(self.workdir),
            "pids": [p.pid for p in self.processes.values()]
            + [m.pid for m in self.mounts.values()],
            "mounts": [str(m.mountpoint) for m in self.mounts.values()],
        }
        path = _state_file(self.subnet)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)

    def _prepare(self) -> None:
        self.rundir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{self.subnet}-"))
        if self._workdir_arg is None:
            self.workdir = self.rundir / "work"
            self._owns_workdir = True
        else:
            self.workdir = self._workdir_arg.resolve()
        for sub in ("keys", "mon", "osd", "mds"):  # a previous lab's, in the same workdir
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        for sub in ("keys", "log", f"mon/ceph-{MON}", f"osd/ceph-{OSD}", f"mds/ceph-{MDS}",
                    f"mds/ceph-{STANDBY_MDS}"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / "ceph.conf"
        self.fsid = str(uuid.uuid4())
        self.bridge = f"{BRIDGE_PREFIX}{self.subnet}"
        self.bridge_ip = f"10.214.{self.subnet}.1"
        self.ip = f"10.214.{self.subnet}.2"
        self.daemon_netns = f"/run/netns/{self.bridge}-ceph"
        self._write_conf()
        self._save_state()

    def _write_conf(self) -> None:
        w, s = self.workdir, self.settings
        self.conf.write_text(f"""\
[global]
fsid = {self.fsid}
mon_host = {self.mon_host}
ms_bind_msgr1 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = {w}/keys/$name.keyring
run_dir = {self.rundir}
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
auth_allow_insecure_global_id_reclaim = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
# Lab speed (LabSettings): how often the mon commits map changes (pool, fs, blocklist
# commands; default 1 s) and the MDS reports its state (default 4 s).
paxos_propose_interval = {s.paxos_propose_interval:g}
mds_beacon_interval = {s.mds_beacon_interval:g}
{"" if s.mds_beacon_grace is None else f"mds_beacon_grace = {s.mds_beacon_grace:g}"}
# A mon fails a silent MDS only once its own quorum is older than this (default 60 s): a
# lab's mon is seconds old, a real cluster's is not.
mds_beacon_mon_down_grace = {s.mds_beacon_mon_down_grace:g}

[mon]
admin_socket = $run_dir/$name.asok
mon_data = {w}/mon/$cluster-$id
mon_initial_members = {MON}
public_addr = {self.ip}
log_file = {w}/log/$name.log

[osd]
admin_socket = $run_dir/$name.asok
osd_data = {w}/osd/$cluster-$id
osd_objectstore = memstore
memstore_device_bytes = {s.memstore_bytes}
public_addr = {self.ip}
cluster_addr = {self.ip}
log_file = {w}/log/$name.log

[mds]
admin_socket = $run_dir/$name.asok
mds_data = {w}/mds/$cluster-$id
public_addr = {self.ip}
log_file = {w}/log/$name.log
""")

    def _network(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        name = f"{self.bridge}-ceph"
        _ip("netns", "add", name)
        outside, inside = f"{self.bridge}h2", f"{self.bridge}p2"
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", name)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("-n", name, "link", "set", inside, "name", "eth0")
        _ip("-n", name, "addr", "add", f"{self.ip}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        # No default route: the daemons reach 10.214.N.0/24 and nothing else.
        self.hosts.append(LabHost(self.daemon_netns, self.ip, outside, owned=True))

    def host(self, netns: str | None = None) -> LabHost:
        """A namespace on the lab's bridge with address 10.214.N.k: a new one (``netns``
        None, named bhc<N>-<k>, no route but the bridge's subnet), or an interface
        ``ceph0`` added to an existing namespace (a NetLab pod's: its default route stays
        where it was; Ceph's subnet goes through ceph0)."""
        if netns is not None:
            path = _netns_path(netns)
            known = next((h for h in self.hosts if h.netns == path), None)
            if known is not None:
                return known
        with _lock:
            k = self._next_host
            self._next_host += 1
        if k > 254:
            raise RuntimeError("no free lab host address")
        ip = f"10.214.{self.subnet}.{k}"
        outside, inside = f"{self.bridge}h{k}", f"{self.bridge}p{k}"
        owned = netns is None
        if owned:
            name = f"{self.bridge}-{k}"
            _ip("netns", "add", name)
            path, ifname = f"/run/netns/{name}", "eth0"
        else:
            path, ifname = _netns_path(netns), "ceph0"
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        target = path.rsplit("/", 1)[1] if path.startswith("/run/netns/") else path
        if path.startswith("/run/netns/"):
            _ip("link", "set", inside, "netns", target)
            ns_args = ["-n", target]
        else:  # a bare path: move by a pid inside it is not available; use nsenter
            raise RuntimeError(f"{path}: give a namespace from /run/netns")
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip(*ns_args, "link", "set", inside, "name", ifname)
        _ip(*ns_args, "addr", "add", f"{ip}/24", "dev", ifname)
        _ip(*ns_args, "link", "set", ifname, "up")
        _ip(*ns_args, "link", "set", "lo", "up")
        host = LabHost(path, ip, outside, owned)
        self.hosts.append(host)
        return host

    def remove_host(self, host: LabHost) -> None:
        """Take ``host`` off the bridge (its veth), and delete its namespace if ours."""
        _ip("link", "del", host.link, check=False)
        if host.owned and host.netns.startswith("/run/netns/"):
            _ip("netns", "del", host.netns.rsplit("/", 1)[1], check=False)
        with contextlib.suppress(ValueError):
            self.hosts.remove(host)

    def _popen(self, name: str, argv: list[str], netns: str | None) -> subprocess.Popen[bytes]:
        if netns is not None:
            argv = ["nsenter", f"--net={netns}", *argv]
        # setpriv sets PR_SET_PDEATHSIG and execs (so does nsenter): the pid is the daemon's,
        # and it is SIGKILLed when the thread that started it dies. (Not a preexec_fn:
        # Python code between fork and exec is unsafe while other threads run.)
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        out = (self.workdir / "log" / f"{name}.out").open("ab")
        try:
            # close_fds (the default): the daemons keep none of our descriptors (the claim
            # flock above all).
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        return process

    def _daemon(self, name: str, argv: list[str]) -> None:
        self.processes[name] = self._popen(name, argv, self.daemon_netns)
        self._save_state()

    def _gen_key(self, entity: str, caps: dict[str, str]) -> Path:
        path = self.keyring(entity)
        argv = ["ceph-authtool", "--create-keyring", str(path), "--gen-key", "-n", entity]
        for daemon, cap in caps.items():
            argv += ["--cap", daemon, cap]
        _run(argv)
        self._keys.add(entity)
        return path

    def _bring_up(self) -> None:
        t0 = time.monotonic()
        conf = ["-c", str(self.conf)]
        # Every key the cluster starts with goes into the mon's initial keyring: one mkfs
        # instead of an `auth add` per key.
        mon_keyring = self._gen_key("mon.", DAEMON_CAPS["mon."])
        for entity, caps in (("client.admin", ADMIN_CAPS), ("client.fencer", FENCER_CAPS),
                             (f"osd.{OSD}", DAEMON_CAPS[f"osd.{OSD}"]),
                             *[(f"mds.{name}", DAEMON_CAPS[f"mds.{name}"])
                               for name in self._mds_names()]):
            path = self._gen_key(entity, caps)
            _run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(path)])
        monmap = self.workdir / "monmap"
        _run(["monmaptool", "--create", "--clobber", "--fsid", self.fsid,
              "--addv", MON, self.mon_host, str(monmap)])
        _run(["ceph-mon", *conf, "--mkfs", "-i", MON, "--monmap", str(monmap),
              "--keyring", str(mon_keyring)], timeout=30)
        self._daemon(f"mon.{MON}", ["ceph-mon", *conf, "-f", "-i", MON])
        self.timings["mon_started"] = time.monotonic() - t0
        # The MDS may start now: it waits as a standby until the file system exists.
        for name in self._mds_names():
            self._start_mds(name)
        osd_uuid = str(uuid.uuid4())
        self.ceph("osd", "new", osd_uuid, str(OSD))
        self.timings["mon_answering"] = time.monotonic() - t0
        _run(["ceph-osd", *conf, "-i", str(OSD), "--mkfs", "--osd-uuid", osd_uuid],
             timeout=60)
        self.timings["osd_mkfs"] = time.monotonic() - t0
        self._daemon(f"osd.{OSD}", ["ceph-osd", *conf, "-f", "-i", str(OSD)])
        self.ceph("osd", "pool", "create", METADATA_POOL, "8")
        self.ceph("osd", "pool", "create", DATA_POOL, "8")
        self.ceph("fs", "new", FS_NAME, METADATA_POOL, DATA_POOL)
        for key in ("session_timeout", "session_autoclose"):
            value = getattr(self.settings, key)
            if value is not None:  # None: Ceph's default (60 s, 300 s)
                self.ceph("fs", "set", FS_NAME, key, str(value))
        self.timings["fs_created"] = time.monotonic() - t0
        wait_until(self._mds_active, self.settings.ready_timeout, "an active MDS",
                   interval=0.2)
        self.timings["mds_active"] = time.monotonic() - t0

    def _check_daemons(self, but: str | None = None) -> None:
        for name, process in self.processes.items():
            if name != but and process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see "
                                   f"{self.log(name)}:\n{_tail(self.log(name))}\n"
                                   f"{_tail(self.workdir / 'log' / f'{name}.out')}")

    def _mds_names(self) -> list[str]:
        return [MDS, STANDBY_MDS] if self.settings.standby_mds else [MDS]

    def _mds_infos(self, include_standbys: bool = False) -> list[dict[str, Any]]:
        """The FSMap's MDS entries of our file system (and the standbys, if asked)."""
        dump = self.ceph_json("fs", "dump")
        found: list[dict[str, Any]] = []
        for fs in dump.get("filesystems", []):
            if fs.get("mdsmap", {}).get("fs_name") == FS_NAME:
                found += list(fs["mdsmap"].get("info", {}).values())
        if include_standbys:
            found += list(dump.get("standbys", []))
        return found

    def _mds_active(self) -> bool:
        self._check_daemons()
        return any(i.get("state") == "up:active" for i in self._mds_infos())

    def mount(self, pod: str, mountpoint: Path | str, netns: str | None = None,
              timeout: float = 30.0) -> CephMount:
        """Mount the CephFS root at ``mountpoint`` with a ceph-fuse of ``pod``'s own
        (client.<pod>, POD_CAPS), in ``netns`` if given; returns once the mount is there
        and the MDS has the client's session."""
        if not self._started:
            raise RuntimeError("the lab is not started")
        if pod in self.mounts:
            raise RuntimeError(f"{pod} is mounted already")
        mountpoint = Path(mountpoint)
        mountpoint.mkdir(parents=True, exist_ok=True)
        mountpoint = mountpoint.resolve()
        keyring = self.add_client(pod)
        host = self.host(netns) if netns is not None else None
        log_file = self.log(f"client.{pod}")
        argv = ["ceph-fuse", "-f", "-c", str(self.conf), "--id", pod, "--keyring", str(keyring),
                "--log-file", str(log_file),
                "--admin-socket", str(self.rundir / f"client.{pod}.asok"),
                "-o", "allow_other", str(mountpoint)]
        process = self._popen(f"client.{pod}", argv, host.netns if host else None)
        ceph_mount = CephMount(self, pod, mountpoint, process, host, log_file)
        self.mounts[pod] = ceph_mount
        self._save_state()

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"ceph-fuse of {pod} exited with {process.returncode}:\n"
                                   f"{_tail(self.workdir / 'log' / f'client.{pod}.out')}\n"
                                   f"{ceph_mount.log_tail()}")
            return ceph_mount.mounted

        try:
            wait_until(ready, timeout, f"ceph-fuse of {pod} mounted at {mountpoint}",
                       interval=0.05)
            ceph_mount.client_id(timeout=timeout)
        except BaseException:
            ceph_mount.unmount()
            raise
        return ceph_mount

    def _forget_mount(self, ceph_mount: CephMount) -> None:
        if self.mounts.get(ceph_mount.pod) is ceph_mount:
            del self.mounts[ceph_mount.pod]
            if self.subnet:
                self._save_state()

    def rss(self) -> dict[str, int]:
        """Resident set size of every process of the lab, by name (bytes)."""
        out = {name: rss_bytes(p.pid) for name, p in self.processes.items()}
        out.update({f"client.{pod}": rss_bytes(m.pid) for pod, m in self.mounts.items()})
        return out

    def stop(self, grace: float = 5.0) -> None:
        """Unmount, end our processes (by pid), delete namespaces, bridge and temp dirs."""
        for ceph_mount in list(self.mounts.values()):
            with contextlib.suppress(Exception):
                ceph_mount.unmount(timeout=grace)
        # SIGKILL: the cluster's data is thrown away (memstore), and a SIGTERMed MDS takes
        # ~8 s to shut down cleanly.
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
        self.processes.clear()
        for host in list(self.hosts):
            self.remove_host(host)
        if self.bridge:
            _ip("link", "del", self.bridge, check=False)
        if self.rundir != Path() and self.rundir.exists():
            shutil.rmtree(self.rundir, ignore_errors=True)
        if self.subnet:
            with contextlib.suppress(FileNotFoundError):
                _state_file(self.subnet).unlink()
        if self._claim_fd is not None:
            os.close(self._claim_fd)
            self._claim_fd = None
        self._started = False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def ceph_lab(workdir: Path | str | None = None,
             settings: LabSettings | None = None) -> Iterator[CephLab]:
    lab = CephLab(workdir, settings)
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.cephlab up [--mount POD ...]`: a lab until Ctrl-C;
    `python -m harness.cephlab cleanup`: remove killed labs' leftovers."""
    parser = argparse.ArgumentParser(prog="python -m harness.cephlab")
    parser.add_argument("action", choices=("up", "cleanup"))
    parser.add_argument("--dir", help="working directory (default: a temp dir)")
    parser.add_argument("--mount", action="append", default=[], metavar="POD",
                        help="mount the CephFS for POD under the working directory")
    args = parser.parse_args(argv)
    if args.action == "cleanup":
        for line in cleanup_stale():
            print(f"removed {line}")
        return 0
    lab = CephLab(args.dir)
    lab.start()
    try:
        print(f"Ceph lab {lab.subnet} up in {lab.timings['start']:.1f}s: mon {lab.mon_host}, "
              f"conf {lab.conf}")
        for pod in args.mount:
            ceph_mount = lab.mount(pod, lab.workdir / "mnt" / pod, netns=lab.host().netns)
            print(f"{pod}: {ceph_mount.mountpoint} (client.{ceph_mount.client_id()})")
        print(f"ceph -c {lab.conf} --id admin -s   # Ctrl-C stops the lab")
        sys.stdout.flush()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        lab.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
