"""A real Kubernetes node for the test plane: containerd 2.x + kubelet, isolated.

The parts come from scripts/build-kubenode.sh (Go module proxy, cached); runc and the
CNI plugins are Debian's. Each node runs in:
- a network namespace of its own on a lab bridge (harness.netlab) with no default route:
  the node reaches the apiserver on the bridge's address, the apiserver reaches the
  kubelet by InternalIP, and nothing can be sent off the machine;
- a mount namespace of its own (a slave of the root one), where the paths kubelet and
  containerd write unasked (/var/lib/kubelet, /var/lib/cni, /run/containerd,
  /var/log/pods, /var/log/containers) are bind mounts of the node's temp dir, so every
  mount dies with the node's last process and nothing lands in the machine's dirs;
- a cgroup root of its own (cgroupfs driver, cgroup v1 with ``failCgroupV1: false``).
Images come from OCI archives packed here (``pack_image``) and imported with ctr: no
registry. A record under /run/bindha-kubenode lets ``python -m harness.kubenode cleanup``
(also run before every start) remove what a killed run left: processes, shims, cgroups,
the netns and bridge, the temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.loopback import claim, release

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SCRIPT = ROOT / "scripts" / "build-node-image.sh"
BUILD_SCRIPT = ROOT / "scripts" / "build-kubenode.sh"
RECORDS = Path("/run/bindha-kubenode")
# manifests/overlays/node-lab's hostPath PV is LAB_SHARE/dyn (tests/node/test_node_lab.py).
LAB_SHARE = Path("/var/tmp/bindha-node-lab")
RUNC = Path("/usr/sbin/runc")
# Every node's pod subnet (10.{220 + index}.{lab}.0/24) lies in it, and nothing else
# does: 10.213/16 is NetLab's, 10.214/16 the Ceph lab's.
POD_RANGE = "10.220.0.0/14"
SERVICE_RANGE = "10.0.0.0/24"  # harness.testplane's --service-cluster-ip-range
CNI_BIN = Path("/usr/lib/cni")
IMAGE_WORK = Path(os.environ.get("BINDHA_IMAGE_WORK", "/var/tmp/bindha-rwx-image"))
CGROUP_FS = Path("/sys/fs/cgroup")
# The v1 hierarchies the kubelet and runc use; the node's cgroup root is made in each.
CGROUP_HIERARCHIES = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio",
                      "pids", "systemd")
# runc also makes the containers' cgroups in the hybrid layout's unified hierarchy.
CGROUP_CLEANED = (*CGROUP_HIERARCHIES, "unified")
# Paths kubelet, containerd and the CNI plugins write whatever their config says.
PRIVATE_PATHS = ("/var/lib/kubelet", "/var/lib/cni", "/run/containerd", "/var/log/pods",
                 "/var/log/containers")
PAUSE_IMAGE = "docker.io/bindha/pause:1"
TEST_IMAGE = "docker.io/bindha/testbox:1"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def export_image(tag: str, out: Path, work: Path = IMAGE_WORK) -> Path:
    """A docker-archive of ``tag`` from scripts/build-image.sh's buildah store, named
    docker.io/library/<tag> as a pod's ``image: <tag>`` resolves (an OCI archive would
    lose the docker.io/library prefix)."""
    out.unlink(missing_ok=True)
    _run(["buildah", "--root", str(work / "storage"), "--runroot", str(work / "run"),
          "--storage-driver", "vfs", "push", "--quiet", tag,
          f"docker-archive:{out}:docker.io/library/{tag}"], timeout=600)
    return out


def _layer(files: dict[str, Path | bytes]) -> bytes:
    """An uncompressed, reproducible layer tar: every parent directory, root-owned, mtime 0."""
    buffer = io.BytesIO()
    dirs = {str(parent.relative_to("/")) for p in files for parent in Path(p).parents
            if parent != Path("/")}
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, source in sorted(files.items()):
            data = source if isinstance(source, bytes) else source.read_bytes()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = 0o644 if isinstance(source, bytes) else 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def pack_image(out: Path, name: str, files: dict[str, Path | bytes],
               entrypoint: list[str]) -> Path:
    """Write an OCI image-layout tarball that `ctr images import` takes without a registry.

    ``files`` maps absolute paths in the image to a host file (mode 0755) or to bytes (0644).
    The index carries ``io.containerd.image.name``, so the import keeps the full name.
    """
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer = _layer(files)
    layer_desc = blob(layer, "application/vnd.oci.image.layer.v1.tar")
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": entrypoint, "Env": [f"PATH={IMAGE_PATH}"]},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}
    config_desc = blob(json.dumps(config, sort_keys=True).encode(),
                       "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = blob(json.dumps(manifest, sort_keys=True).encode(),
                         "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    manifest_desc["annotations"] = {"io.containerd.image.name": name,
                                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}
    entries = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
               "index.json": json.dumps(index, sort_keys=True).encode()}
    entries.update({f"blobs/sha256/{d.split(':', 1)[1]}": data for d, data in blobs.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tar:
        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for entry, data in entries.items():
            info = tarfile.TarInfo(entry)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out


def node_image_archive() -> Path:
    """The product image (bindha-rwx:<version>) as a docker-archive for `ctr images
    import`: scripts/build-node-image.sh, cached by the hash of what the Dockerfile copies
    (cold ~95 s with the base cached, ~150 s without; warm 0.02 s)."""
    explicit = os.environ.get("BINDHA_NODE_IMAGE_ARCHIVE")
    if explicit:
        return Path(explicit)
    result = subprocess.run([str(IMAGE_SCRIPT)], stdout=subprocess.PIPE, text=True,
                            timeout=1800, check=True)
    return Path(result.stdout.strip().splitlines()[-1])


def build_parts() -> dict[str, Path]:
    """Paths of the node's binaries and pause.tar, building them (~90 s cold) if not cached."""
    explicit = os.environ.get("BINDHA_KUBENODE_DIR")
    if explicit:
        lines = [str(Path(explicit) / n) for n in ("kubelet", "kube-scheduler", "kube-proxy",
                                                   "containerd", "containerd-shim-runc-v2",
                                                   "ctr", "pause.tar")]
    else:
        result = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True,
                                timeout=3600, check=True)
        lines = result.stdout.split()
    return {Path(line).name: Path(line) for line in lines}


def unavailable() -> str | None:
    """Why a node cannot run here, or None."""
    if os.geteuid() != 0:
        return "a node needs root (namespaces, cgroups, mounts)"
    if not RUNC.exists():
        return f"{RUNC} is missing: apt-get install runc"
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN / plugin).exists():
            return f"{CNI_BIN / plugin} is missing: apt-get install containernetworking-plugins"
    for tool in ("nsenter", "unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    if not (CGROUP_FS / "memory").is_dir():
        return "no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory"
    return None


def _die_with_parent() -> None:
    """Run in the child before exec: SIGKILL it when the harness dies (PR_SET_PDEATHSIG),
    so a killed test run does not leave a kubelet running for minutes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)


def _run(argv: list[str], timeout: float = 30.0, check: bool = True,
         **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            check=False, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()}")
    return result


def _poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Return check()'s first truthy value; raise after ``timeout`` with the last error."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # reported on timeout
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:g}s (last: {last!r})")
        time.sleep(interval)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _pids_with(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (a path only this node uses)."""
    found = []
    for entry in Path("/proc").iterdir():
        if (entry.name.isdigit() and int(entry.name) != os.getpid()
                and any(marker in arg for arg in _cmdline(int(entry.name)))):
            found.append(int(entry.name))
    return found


def _cgroup_pids(cgroup_root: str) -> set[int]:
    pids: set[int] = set()
    for hierarchy in CGROUP_CLEANED:
        base = CGROUP_FS / hierarchy / cgroup_root.lstrip("/")
        if base.is_dir():
            for procs in base.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
    return pids


def _kill(pids: set[int] | list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: set[int] | list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in pids if Path(f"/proc/{p}").exists()
                and "Z" not in _proc_state(p)]:
            return True
        time.sleep(0.05)
    return False


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _make_cgroup_root(cgroup_root: str) -> None:
    """The node's cgroup root in every v1 hierarchy: the kubelet refuses a missing one.
    cpuset needs its cpus and mems copied from the parent before a task may join."""
    for hierarchy in CGROUP_HIERARCHIES:
        base = CGROUP_FS / hierarchy
        if not base.is_dir():
            continue
        path = base / cgroup_root.lstrip("/")
        path.mkdir(exist_ok=True)
        if hierarchy == "cpuset":
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (path / knob).write_text((base / knob).read_text())


def _remove_cgroup_root(cgroup_root: str) -> list[str]:
    """rmdir the node's cgroups, deepest first; returns those that would not go."""
    left = []
    for hierarchy in CGROUP_CLEANED:
        path = CGROUP_FS / hierarchy / cgroup_root.lstrip("/")
        if not path.is_dir():
            continue
        subs = sorted((p for p in path.rglob("*") if p.is_dir()),
                      key=lambda p: len(p.parts), reverse=True)
        for sub in [*subs, path]:
            for _ in range(50):  # a cgroup is busy for a moment after its last task
                try:
                    sub.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                left.append(str(sub))
    return left


@dataclass
class Record:
    """What a node made outside its temp dir, written before it makes it."""

    name: str
    workdir: str
    netns: str
    bridge: str
    cgroup_root: str
    pids: list[int] = field(default_factory=list)
    made_paths: list[str] = field(default_factory=list)
    # Processes of the run that the node outlives if the run is killed (the apiserver),
    # each with a string its command line must hold, so a reused pid is never hit.
    adopted: list[tuple[int, str]] = field(default_factory=list)
    pod_subnet: str = ""

    @property
    def path(self) -> Path:
        return RECORDS / f"{self.name}.json"

    def save(self) -> None:
        RECORDS.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.__dict__))


def veth_of(netns: str) -> str:
    """The root side of a NetLab host's veth, from its netns name (bh<N>-<host>)."""
    subnet, host = netns.removeprefix("bh").split("-", 1)
    return f"bh{subnet}h{host}"


def _freezer_state(cgroup_root: str) -> Path:
    return CGROUP_FS / "freezer" / cgroup_root.lstrip("/") / "freezer.state"


def _thaw_cgroups(cgroup_root: str) -> None:
    for state in (CGROUP_FS / "freezer" / cgroup_root.lstrip("/")).rglob("freezer.state"):
        with contextlib.suppress(OSError):
            state.write_text("THAWED")


def _kill_node(processes: Callable[[], set[int]], cgroup_root: str) -> bool:
    """SIGKILL ``processes()`` and every task in the node's cgroups; True once all are
    gone. A stopped (SIGSTOP) process takes SIGKILL at once; a task in a frozen v1
    cgroup only once thawed, so the thaw comes after the kill: it runs no code of its
    own before it dies."""
    for _ in range(3):
        victims = processes() | _cgroup_pids(cgroup_root)
        _kill(victims)
        _thaw_cgroups(cgroup_root)
        if _wait_gone(victims, 5.0):
            return True
    return False


def clean_record(record: Record, remove_bridge: bool = True, adopted: bool = True
                 ) -> list[str]:
    """Remove everything of one node: processes (ours by pid and by command line naming
    the node's dir, containers by the node's cgroups), cgroups, netns, dirs. Idempotent;
    returns what could not be removed."""
    marker = record.workdir
    ours = {p for p in record.pids if any(marker in a for a in _cmdline(p))}
    ours.update(_pids_with(marker))  # containerd, kubelet, the shims (-address <dir>/...)
    if adopted:
        ours.update(p for p, mark in record.adopted if any(mark in a for a in _cmdline(p)))
    _kill_node(lambda: ours, record.cgroup_root)
    left = _remove_cgroup_root(record.cgroup_root)
    if record.pod_subnet:
        _run(["ip", "route", "del", record.pod_subnet], check=False)
    # The root side of the node's veth, at once: `ip netns del` only drops the name, and
    # the kernel destroys the netns (and the veth with it) later, after its last
    # reference (seen: a next run's NetLab.take found the veth still there).
    _run(["ip", "link", "del", veth_of(record.netns)], check=False)
    _run(["ip", "netns", "del", record.netns], check=False)
    if remove_bridge:
        _run(["ip", "link", "del", record.bridge], check=False)
    if Path(record.workdir).exists():
        shutil.rmtree(record.workdir, ignore_errors=True)
        if Path(record.workdir).exists():
            left.append(record.workdir)
    with contextlib.suppress(FileNotFoundError):
        record.path.unlink()
    others = [p for p in RECORDS.glob("*.json")] if RECORDS.is_dir() else []
    if not others:  # the mount points are shared by every node: only the last removes them
        for made in sorted(record.made_paths, key=len, reverse=True):
            for _ in range(100):  # busy while a dying node's mount namespace goes
                try:
                    os.rmdir(made)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    error = exc
                    time.sleep(0.02)
            else:
                left.append(f"{made}: {error}")
    return left


def cleanup_stale() -> dict[str, list[str]]:
    """Clean every node whose owner is gone (its claim is free); returns each one's name
    with what could not be removed."""
    cleaned: dict[str, list[str]] = {}
    for path in sorted(RECORDS.glob("*.json")) if RECORDS.is_dir() else []:
        name = path.stem
        if not claim(f"kubenode-{name}"):
            continue  # a live run holds it
        try:
            record = Record(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
            continue
        cleaned[name] = clean_record(record)
        release(f"kubenode-{name}")  # else this process's own start() of it is refused
    return cleaned


def clean_lab_share() -> bool:
    """Remove the node-lab overlay's hostPath directory (LAB_SHARE) unless a live run
    holds it (claim "node-lab-share"); True if it is gone."""
    if not LAB_SHARE.exists():
        return True
    if not claim("node-lab-share"):
        return False
    shutil.rmtree(LAB_SHARE, ignore_errors=True)
    return not LAB_SHARE.exists()


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_kubeconfig(path: Path, server: str, ca: Path, token: str) -> Path:
    config = {"apiVersion": "v1", "kind": "Config",
              "clusters": [{"name": "lab", "cluster": {"server": server,
                                                       "certificate-authority": str(ca)}}],
              "users": [{"name": "lab", "user": {"token": token}}],
              "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
              "current-context": "lab"}
    path.write_text(json.dumps(config, indent=2))
    return path


class Component:
    """One long-running process in a session of its own, logging to ``log``."""

    def __init__(self, name: str, argv: list[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True,
                                            preexec_fn=_die_with_parent)
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; "
                               f"see {self.log}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class ControlPlaneExtras:
    """kube-controller-manager (the testplane binary's) and kube-scheduler, in the root
    netns, on the apiserver's lab address. The controllers are those a node's workloads
    need: StatefulSets, EndpointSlices, PDBs, node lifecycle (taints, eviction)."""

    CONTROLLERS = ("statefulset-controller", "endpointslice-controller",
                   "disruption-controller", "node-lifecycle-controller",
                   "taint-eviction-controller", "deployment-controller",
                   "replicaset-controller", "garbage-collector-controller",
                   "pod-garbage-collector-controller", "persistentvolume-binder-controller",
                   "persistentvolumeclaim-protection-controller",
                   "persistentvolume-protection-controller", "namespace-controller",
                   "serviceaccount-controller", "root-ca-certificate-publisher-controller")

    def __init__(self, testplane_binary: Path, scheduler_binary: Path, workdir: Path,
                 server: str, ca: Path, token: str,
                 node_monitor_grace: str = "20s") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        kubeconfig = write_kubeconfig(workdir / "kubeconfig", server, ca, token)
        common = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                  f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
                  "--bind-address=127.0.0.1", "--v=1"]
        self.controller_manager = Component("kube-controller-manager", [
            str(testplane_binary), "controller-manager", "--", *common,
            f"--secure-port={_free_port()}", f"--cert-dir={workdir / 'cm-certs'}",
            f"--controllers={','.join(self.CONTROLLERS)}",
            f"--root-ca-file={ca}", "--use-service-account-credentials=false",
            f"--node-monitor-grace-period={node_monitor_grace}",
            "--node-monitor-period=2s"], workdir / "controller-manager.log")
        self.scheduler = Component("kube-scheduler", [
            str(scheduler_binary), *common, f"--secure-port={_free_port()}",
            f"--cert-dir={workdir / 'sched-certs'}"], workdir / "scheduler.log")

    def start(self) -> None:
        self.controller_manager.start()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.controller_manager.stop()


class KubeNode:
    """One node: containerd and a kubelet in the node's netns and mount namespace.

    ``net`` is the test's NetLab (its bridge carries the apiserver's address); the
    apiserver must listen on ``net.api_host``. ``server``/``ca``/``token`` reach it.
    """

    def __init__(self, parts: dict[str, Path], net: Any, server: str, ca: Path, token: str,
                 index: int = 1, workdir: Path | None = None, proxy: bool = False) -> None:
        self.parts, self.net, self.server, self.ca, self.token = parts, net, server, ca, token
        self.proxy = proxy
        self.name = f"kn{net.subnet}-{index}"
        # 10.213/16 is NetLab's and 10.214/16 the Ceph lab's (their bridges route them in
        # the root netns): pods take 10.221+ so no reply can be routed to another lab.
        self.pod_subnet = f"10.{220 + index}.{net.subnet}.0/24"
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"bindha-{self.name}-"))
        self.cgroup_root = f"/bindha-{self.name}"
        self.ip = ""
        self.netns = ""
        self.socket = self.workdir / "containerd" / "containerd.sock"
        self.containerd: Component | None = None
        self.kubelet: Component | None = None
        self.kube_proxy: Component | None = None
        self.timings: dict[str, float] = {}
        self.record: Record | None = None
        self.frozen = False
        self.is_cut = False
        self._stopped: set[int] = set()

    # -- configuration ---------------------------------------------------------------
    def _containerd_config(self) -> Path:
        w = self.workdir
        config = f"""version = 3
root = "{w}/containerd/root"
state = "{w}/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{w}/containerd/opt"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins."io.containerd.cri.v1.runtime"]
  # Root here lacks CAP_SYS_RESOURCE: the pause container's oom_score_adj -998 is refused
  # and runc fails with "can't get final child's PID from pipe: EOF" unless restricted.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  tolerate_missing_hugetlb_controller = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{w}/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{w}/cni/net.d"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""
        path = w / "containerd.toml"
        path.write_text(config)
        cni = {"cniVersion": "1.0.0", "name": f"bindha-{self.name}", "plugins": [{
            "type": "bridge", "bridge": "kbr0", "isGateway": True, "isDefaultGateway": False,
            "ipMasq": False, "hairpinMode": True,
            # A pod's routes, all via its node and none a default one: the Service range
            # (kube-proxy), the other nodes' pods (POD_RANGE, routed node to node over
            # the lab bridge: connect()) and the lab bridge's subnet (a test in the root
            # netns talking to a pod gets its answers). Nothing else is reachable.
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.pod_subnet}]],
                     "routes": [{"dst": SERVICE_RANGE}, {"dst": POD_RANGE},
                                {"dst": f"10.213.{self.net.subnet}.0/24"}],
                     "dataDir": str(w / "cni" / "ipam")}}]}
        (w / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        (w / "cni" / "net.d" / "10-bridge.conflist").write_text(json.dumps(cni, indent=2))
        return path

    def _kubelet_args(self) -> list[str]:
        w = self.workdir
        resolv = w / "resolv.conf"
        resolv.write_text("")  # no nameserver: no pod may ask the machine's
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "failSwapOn": False, "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root, "cgroupsPerQOS": True,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "readOnlyPort": 0, "address": self.ip, "port": 10250,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "resolvConf": str(resolv), "volumePluginDir": str(w / "volume-plugins"),
            "podLogsDir": str(w / "pod-logs"),
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            # Imported images cannot be pulled again: never collect them.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "5s", "fileCheckFrequency": "5s",
            "rotateCertificates": False, "serverTLSBootstrap": False,
            "protectKernelDefaults": False, "enableControllerAttachDetach": True,
            "localStorageCapacityIsolation": True, "maxPods": 50,
        }
        path = w / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2))
        kubeconfig = write_kubeconfig(w / "kubelet.kubeconfig", self.server, self.ca,
                                      self.token)
        return [str(self.parts["kubelet"]), f"--config={path}", f"--kubeconfig={kubeconfig}",
                f"--root-dir={w / 'kubelet'}", f"--cert-dir={w / 'kubelet-pki'}",
                f"--hostname-override={self.name}", f"--node-ip={self.ip}", "--v=1"]

    # -- life cycle ------------------------------------------------------------------
    def start(self, images: list[Path] = (), timeout: float = 90.0) -> None:  # type: ignore[assignment]
        """Start containerd, import ``images`` (plus pause), start the kubelet, and return
        when the node has registered (Ready is the caller's to wait for)."""
        cleanup_stale()
        if not claim(f"kubenode-{self.name}"):
            raise RuntimeError(f"node {self.name} is in use by another run")
        started = time.monotonic()
        self.ip = self.net.take(default_route=False)
        netns = self.netns = self.net.netns(self.ip)
        made = [p for p in PRIVATE_PATHS if not Path(p).exists()]
        self.record = Record(self.name, str(self.workdir), netns, self.net.bridge,
                             self.cgroup_root, made_paths=made, pod_subnet=self.pod_subnet)
        self.record.save()
        # The root netns routes the pods' subnet to the node, so that nothing addressed to
        # a pod (an apiserver's answer through a Service) takes the default route off the
        # machine. The root netns forwards nothing (ip_forward 0): pods still reach only
        # their subnet and the Service range.
        _run(["ip", "route", "replace", self.pod_subnet, "via", self.ip, "dev",
              self.net.bridge])
        for p in made:
            Path(p).mkdir(parents=True, exist_ok=True)
        for sub in ("containerd", "kubelet", "private"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        _make_cgroup_root(self.cgroup_root)
        _raise_inotify_limit()
        config = self._containerd_config()
        binds = []
        for p in PRIVATE_PATHS:
            own = self.workdir / "private" / p.strip("/").replace("/", "_")
            own.mkdir(parents=True, exist_ok=True)
            binds.append(f"mount --bind {own} {p}")
        kubelet_root = self.workdir / "kubelet"
        # Shared, so Bidirectional mount propagation works under the kubelet's root.
        binds += [f"mount --bind {kubelet_root} {kubelet_root}",
                  f"mount --make-rshared {kubelet_root}"]
        env = {"PATH": f"{self.parts['containerd'].parent}:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": str(self.workdir)}
        self.containerd = Component("containerd", [
            "nsenter", f"--net=/run/netns/{netns}", "--",
            "unshare", "--mount", "--propagation", "slave", "--",
            "sh", "-ec", " && ".join(binds) + ' && exec "$0" "$@"',
            str(self.parts["containerd"]), "--config", str(config)],
            self.workdir / "containerd.log", env=env)
        self.record.pids.append(self.containerd.start())
        self.record.save()
        _poll("containerd answers", self._containerd_up, 30)
        self.timings["containerd"] = time.monotonic() - started
        for image in [self.parts["pause.tar"], *images]:
            self.import_image(image)
        self.timings["images"] = time.monotonic() - started - self.timings["containerd"]
        assert self.containerd.pid is not None
        self.kubelet = Component("kubelet", [
            "nsenter", f"--target={self.containerd.pid}", "--mount", "--net", "--",
            *self._kubelet_args()], self.workdir / "kubelet.log", env=env)
        self.record.pids.append(self.kubelet.start())
        self.record.save()
        self.timings["kubelet-started"] = time.monotonic() - started
        if self.proxy:
            self.kube_proxy = Component("kube-proxy", [
                "nsenter", f"--target={self.containerd.pid}", "--mount", "--net", "--",
                *self._proxy_args()], self.workdir / "kube-proxy.log", env=env)
            self.record.pids.append(self.kube_proxy.start())
            self.record.save()

    def _proxy_args(self) -> list[str]:
        """kube-proxy in iptables mode, in the node's netns only; it leaves the conntrack
        sysctls (machine-wide, or refused in a netns) and route_localnet alone."""
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration", "mode": "iptables",
            "clusterCIDR": self.pod_subnet, "hostnameOverride": self.name,
            # The root netns has no route to the pods: a Service's traffic leaves the
            # node with the node's address, so the apiserver's answer comes back to it.
            "iptables": {"masqueradeAll": True},
            "bindAddress": self.ip, "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249", "localhostNodePorts": False,
            "nodePortAddresses": [f"{self.ip}/32"],
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
            "clientConnection": {"kubeconfig": str(self.workdir / "kubelet.kubeconfig")},
        }
        path = self.workdir / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=2))
        return [str(self.parts["kube-proxy"]), f"--config={path}", "--v=1"]

    def connect(self, other: KubeNode) -> None:
        """Pod to pod across nodes: each node's netns routes the other's pod subnet to it
        over the lab bridge (the nodes forward; the root netns only bridges). The routes
        go with the nodes' netns."""
        for here, there in ((self, other), (other, self)):
            _run(["ip", "-n", here.netns, "route", "replace", there.pod_subnet, "via",
                  there.ip])

    def adopt(self, pid: int, marker: str) -> None:
        """Have ``cleanup`` stop ``pid`` too (its command line holding ``marker``) if this
        run dies: the control plane's processes do not die with the harness."""
        assert self.record is not None
        self.record.adopted.append((pid, marker))
        self.record.save()

    def _containerd_up(self) -> bool:
        assert self.containerd is not None
        self.containerd.check()
        return self.ctr("version", timeout=5, check=False).returncode == 0

    def ctr(self, *args: str, timeout: float = 60, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        return _run([str(self.parts["ctr"]), "--address", str(self.socket), "-n", "k8s.io",
                     *args], timeout=timeout, check=check)

    def import_image(self, archive: Path) -> None:
        """Import an OCI or docker archive into the node's CRI namespace (no registry)."""
        self.ctr("images", "import", "--platform", "linux/amd64", str(archive), timeout=600)

    def task_pid(self, namespace: str, pod: str, container: str) -> int:
        """Host pid of a running container, found by the kubelet's CRI labels."""
        # One filter, its terms joined by commas: separate filters would be OR'ed.
        wanted = ",".join(f'labels."io.kubernetes.{key}"=={value}' for key, value in (
            ("pod.namespace", namespace), ("pod.name", pod), ("container.name", container)))
        listed = self.ctr("containers", "list", "-q", wanted).stdout.split()
        if not listed:
            raise LookupError(f"no container {namespace}/{pod}/{container} on {self.name}")
        # `tasks ls` gives each task's init pid (`tasks ps` lists its children too).
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] in listed and fields[2] == "RUNNING":
                return int(fields[1])
        raise LookupError(f"container {namespace}/{pod}/{container} has no task")

    def images(self) -> list[str]:
        out = self.ctr("images", "list", "-q").stdout
        return [line for line in out.splitlines() if line]

    def rss_kib(self) -> dict[str, int]:
        """Resident memory of the node's processes (containerd, kubelet, each shim)."""
        out: dict[str, int] = {}
        for pid in _pids_with(str(self.workdir)):
            cmd = _cmdline(pid)
            if not cmd or Path(cmd[0]).name in ("nsenter", "unshare", "sh"):
                continue
            name = Path(cmd[0]).name
            out[name if name not in out else f"{name}-{pid}"] = rss_kib(pid)
        return out

    # -- losing the node (tests/node/test_node_loss.py) ------------------------------
    def daemons(self) -> set[int]:
        """containerd, the kubelet, kube-proxy and the shims: the processes whose command
        line names the node's temp dir."""
        return set(_pids_with(str(self.workdir)))

    def cut(self) -> None:
        """Take the node off the lab bridge (the root side of its veth down): neither
        the apiserver nor the other nodes nor the test reach it or its pods, and nothing
        it sends arrives. ``reconnect`` undoes it; the veth goes with the netns."""
        _run(["ip", "link", "set", self.net.link(self.ip), "down"])
        self.is_cut = True

    def reconnect(self) -> None:
        _run(["ip", "link", "set", self.net.link(self.ip), "up"])
        self.is_cut = False

    def freeze(self) -> None:
        """Stand the node still as a hung machine does: SIGSTOP its daemons (containerd,
        kubelet, kube-proxy, shims; they live in the harness's cgroup), then freeze its
        cgroup root in the v1 freezer (every pod's processes; their locks stay held).
        ``thaw`` undoes it; ``power_off``, ``stop`` and ``cleanup`` work on a frozen node."""
        self._stopped = self.daemons()
        _kill(self._stopped, signal.SIGSTOP)
        _poll("the node's daemons stopped",
              lambda: all(_proc_state(p) in ("T", "Z") for p in self._stopped), 10, 0.02)
        state = _freezer_state(self.cgroup_root)
        self.frozen = True
        state.write_text("FROZEN")
        _poll(f"{state} FROZEN", lambda: state.read_text().strip() == "FROZEN", 10, 0.02)

    def thaw(self) -> None:
        _thaw_cgroups(self.cgroup_root)
        _kill(self._stopped, signal.SIGCONT)
        self.frozen = False

    def power_off(self, timeout: float = 15.0) -> None:
        """What pulling the plug does to the node's processes: SIGKILL every one of them
        (thawed after the kill, so a frozen task dies without running again), their
        locks released by the kernel as they die. The node's dirs, cgroups and netns
        stay, as a dead machine's disk does, until ``stop``."""
        if not _kill_node(self.daemons, self.cgroup_root):
            raise RuntimeError(f"{self.name}: processes left after SIGKILL: "
                               f"{sorted(self.daemons() | _cgroup_pids(self.cgroup_root))}")
        for component in (self.kube_proxy, self.kubelet, self.containerd):
            if component is not None and component.process is not None:
                component.process.wait(timeout)  # reaped; stop() then finds it done
        self.frozen = False

    def stop(self) -> list[str]:
        """Stop the kubelet, then everything else; returns what could not be removed."""
        if self.frozen:  # SIGTERM would wait on stopped processes
            self.power_off()
        if self.kube_proxy is not None:
            self.kube_proxy.stop(5)
        if self.kubelet is not None:
            self.kubelet.stop(10)
        if self.containerd is not None:
            self.containerd.stop(10)
        if self.record is None:
            # start() failed before its record (the claim refused): only the temp dir
            # made in __init__ is ours to remove.
            if self._own_workdir and self.workdir.exists():
                shutil.rmtree(self.workdir, ignore_errors=True)
                if self.workdir.exists():
                    return [str(self.workdir)]
            return []
        left = clean_record(self.record, remove_bridge=False, adopted=False)
        self.record = None
        # The claim start() took was held for the life of the process: a second KubeNode
        # of the same name in this run (tests/node/test_two_nodes.py's kn<N>-2 after the
        # e2e product lab's, harness/nodelab.py) was refused "in use by another run" and
        # its fixture's teardown found the empty 0700 temp dir __init__ had mkdtemp'd.
        if not left:
            release(f"kubenode-{self.name}")
        return left


def _raise_inotify_limit(minimum: int = 1024) -> None:
    """kubelet and containerd each hold several inotify instances; 128 a user is short."""
    knob = Path("/proc/sys/fs/inotify/max_user_instances")
    with contextlib.suppress(OSError, ValueError):
        if int(knob.read_text()) < minimum:
            knob.write_text(str(minimum))


def test_image_files() -> dict[str, Path | bytes]:
    """A tiny image from this machine's Debian files: dash as /bin/sh, a few coreutils
    and their libraries, enough for exec probes and a shell that traps SIGTERM."""
    tools = ("sh", "sleep", "cat", "echo", "ls", "touch", "rm", "date", "kill", "true")
    files: dict[str, Path | bytes] = {}
    for tool in tools:
        found = shutil.which(tool, path="/usr/bin:/bin")
        if found is None:
            continue
        real = Path(found).resolve()
        files[f"/bin/{tool}"] = real
        libs = _run(["ldd", str(real)], check=False).stdout
        for line in libs.splitlines():
            parts = line.split()
            lib = parts[2] if "=>" in parts and len(parts) > 2 else (
                parts[0] if parts and parts[0].startswith("/") else "")
            if lib.startswith("/"):
                files[lib] = Path(lib).resolve()
                if lib.startswith("/lib/"):
                    files["/usr" + lib] = Path(lib).resolve()
    files["/etc/passwd"] = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"
    files["/etc/group"] = b"root:x:0:\nnogroup:x:65534:\n"
    files["/tmp/.keep"] = b""
    return files


def main() -> int:
    """`python -m harness.kubenode cleanup`: remove what killed runs left behind."""
    parser = argparse.ArgumentParser(prog="python -m harness.kubenode")
    sub = parser.add_subparsers(dest="action", required=True)
    pack = sub.add_parser("pack-pause", help="pack the pause binary into the pause image")
    pack.add_argument("binary", type=Path)
    pack.add_argument("out", type=Path)
    sub.add_parser("cleanup", help="remove the nodes whose run is gone")
    args = parser.parse_args()
    if args.action == "pack-pause":
        pack_image(args.out, PAUSE_IMAGE, {"/pause": args.binary}, ["/pause"])
        print(args.out)
    elif args.action == "cleanup":
        cleaned = cleanup_stale()
        print(f"cleaned {len(cleaned)} node(s){': ' if cleaned else ''}{' '.join(cleaned)}")
        if not clean_lab_share():
            print(f"{LAB_SHARE} is held by a live run: kept")
        for name, left in cleaned.items():
            for item in left:
                print(f"{name}: left {item}")
        return 1 if any(cleaned.values()) else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
