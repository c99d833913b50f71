"""Master "pods" as real processes: `bindha-rwx run` with its own env, loopback IP,
work directory, rndc port and API proxy, all sharing one dyn directory.

The Pod objects exist in the API (created here, Pending forever, as without a kubelet)
so that the supervisor can label them and attach Events to them.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from kubernetes import client

from bindha_rwx.config import Config, holder_pod, load_config
from bindha_rwx.fencing import SharedVolume
from bindha_rwx.kube import ROLE_LABEL
from bindha_rwx.probes import RuntimeFiles
from harness.apiproxy import ApiProxy
from harness.bindlab import pod_env, write_pod_config
from harness.polling import samples as samples  # re-exported for the tests
from harness.polling import wait_until as wait_until
from harness.procstate import sigkill_pending, stopped

ROOT = Path(__file__).resolve().parent.parent
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), named here for Pythons without it

# Short timings from the product's own config (DESIGN: tests run with e.g. a 2-3 s Lease).
TEST_TIMING = {"leaseDuration": 3, "renewDeadline": 1.6, "retryPeriod": 0.4,
               "stopTimeout": 0.8}


def default_zones() -> list[dict[str, Any]]:
    return [{"name": "ha.example",
             "nameservers": [{"name": "ns1.ha.example", "addresses": ["192.0.2.53"]}],
             "updatePolicy": [{"key": "update-key", "rule": "zonesub"}]}]


def configmap_mount(config_file: Path) -> Path:
    """Lay ``config_file`` out the way the kubelet mounts a ConfigMap; return the path.

    ``mount/config.yaml -> ..data/config.yaml``, ``..data -> ..v1``: an update writes a
    new ``..vN`` and swaps the ``..data`` symlink atomically (AtomicWriter's scheme).
    """
    mount = config_file.parent / "configmap"
    version = mount / "..v1"
    version.mkdir(parents=True)
    os.replace(config_file, version / "config.yaml")
    (mount / "..data").symlink_to("..v1")
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    return mount / "config.yaml"


def configmap_update(mounted: Path, text: str) -> None:
    mount = mounted.parent
    versions = [p for p in mount.iterdir() if p.name.startswith("..v")]
    version = mount / f"..v{len(versions) + 1}"
    version.mkdir()
    (version / "config.yaml").write_text(text)
    link = mount / "..data_tmp"
    link.symlink_to(version.name)
    os.replace(link, mount / "..data")


@dataclass
class MasterPod:
    """One `bindha-rwx run` process playing a master pod."""

    name: str
    ip: str
    namespace: str
    config_path: Path
    kubeconfig: Path
    proxy: ApiProxy
    work_dir: Path
    command: str = "run"  # or "secondary"
    wrap: Callable[[str, list[str]], list[str]] = lambda _ip, argv: argv
    process: subprocess.Popen[bytes] | None = None
    # A fault of harness.inject, armed once ``inject_trigger`` exists (fail-stop tests).
    inject: str | None = None
    uid: str | None = None  # the Pod object's metadata.uid, given as POD_UID
    # stdout into a 4 KiB pipe that is full from the start and read by nobody until
    # resume_log_collector(): a stalled log pipeline (fail-stop tests).
    full_stdout: bool = False
    _collecting: threading.Event = field(default_factory=threading.Event)

    @property
    def inject_trigger(self) -> Path:
        return self.work_dir / "inject.trigger"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "supervisor.log"

    @property
    def named_log_path(self) -> Path:
        return self.work_dir / "named.stderr"

    @property
    def config(self) -> Config:
        return load_config(self.config_path,
                           env=pod_env(self.name, self.ip, self.namespace, uid=self.uid))

    def start(self) -> None:
        env = {**os.environ, **pod_env(self.name, self.ip, self.namespace, uid=self.uid),
               "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        module = ["bindha_rwx"]
        if self.inject is not None:
            module = ["harness.inject", self.inject, "--"]
            env["BINDHA_INJECT_TRIGGER"] = str(self.inject_trigger)
        stdout_pipe = self._full_pipe() if self.full_stdout else None
        with self.log_path.open("ab") as out, self.named_log_path.open("ab") as err:
            self.process = subprocess.Popen(
                self.wrap(self.ip, [sys.executable, "-m", *module, self.command,
                                    "--config", str(self.config_path)]),
                env=env, stdout=out if stdout_pipe is None else stdout_pipe[1], stderr=err,
                cwd=ROOT, start_new_session=True)
        if stdout_pipe is not None:
            os.close(stdout_pipe[1])
            threading.Thread(target=self._collect, args=(stdout_pipe[0],),
                             name=f"log-collector-{self.name}", daemon=True).start()

    @staticmethod
    def _full_pipe() -> tuple[int, int]:
        """A pipe of one page, already full: the child's first write to it blocks."""
        read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
        os.set_blocking(write_end, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(write_end, b"#" * 1023 + b"\n")
        os.set_blocking(write_end, True)
        return read_end, write_end

    def _collect(self, read_end: int) -> None:
        """Copies the pipe to log_path once resume_log_collector() is called."""
        self._collecting.wait()
        with self.log_path.open("ab") as out:
            while chunk := os.read(read_end, 65536):
                out.write(chunk)
                out.flush()
        os.close(read_end)

    def resume_log_collector(self) -> None:
        self._collecting.set()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def named_processes(self) -> list[psutil.Process]:
        """Running (not zombie) named children of this supervisor."""
        if self.process is None:
            return []
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if _is_running_named(c)]

    def restart(self, timeout: float = 60.0) -> None:
        """Start the pod again, as its StatefulSet would, and wait until it is a watching
        standby (Ready) before the next disruption."""
        self.process = None
        self.start()
        files = RuntimeFiles(self.work_dir)

        def watching() -> bool:
            state = files.read_state()
            return bool(state and state.pid == self.pid and state.watch_connected)
        wait_until(watching, timeout, f"{self.name} back as a watching standby")

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def has_event(self, name: str) -> bool:
        return any(e.get("event") == name for e in self.events())

    def probe(self, kind: str) -> subprocess.CompletedProcess[str]:
        """``bindha-rwx probe live|ready`` as the kubelet's exec probe runs it."""
        return subprocess.run([sys.executable, "-m", "bindha_rwx", "probe", kind, "--config",
                               str(self.config_path)], capture_output=True, text=True,
                              timeout=10, env={"POD_NAME": self.name, "POD_IP": self.ip,
                                               "PATH": "/usr/bin:/bin:/usr/sbin"})

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Test clean-up: continue if frozen, SIGTERM, then SIGKILL."""
        if self.process is None:
            return
        self.resume_log_collector()
        for proc in [*self.named_processes(), self._psutil()]:
            if proc is not None:
                with contextlib.suppress(psutil.Error):
                    proc.resume()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def _psutil(self) -> psutil.Process | None:
        try:
            return psutil.Process(self.pid)
        except psutil.Error:
            return None


def _is_running_named(proc: psutil.Process) -> bool:
    try:
        return proc.name() == "named" and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def all_named(under: Path) -> list[psutil.Process]:
    """Every running named whose config lies under ``under`` (orphans included)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == "named" and proc.status() != psutil.STATUS_ZOMBIE and \
                    any(str(under) in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@dataclass
class MasterLab:
    """N master pods over one shared directory, against the real test apiserver."""

    root: Path
    api: client.ApiClient
    kubeconfig: Path
    namespace: str
    address_pool: Any
    key_files: dict[str, Path]
    timing: dict[str, float] = field(default_factory=lambda: dict(TEST_TIMING))
    zones: list[dict[str, Any]] = field(default_factory=default_zones)
    pods: list[MasterPod] = field(default_factory=list)
    lease_name: str = "bind-master-leader"
    # Where a master pod's dynDir is when add_pod gets none: a mount of its own of the
    # shared volume (``BINDHA_TEST_VOLUME=cephfs``: a ceph-fuse per pod), else lab.shared.
    pod_volume: Callable[[str], Path] | None = None
    # More top-level config for every pod added from now on (e.g. ``fencing``).
    extra_config: dict[str, Any] = field(default_factory=dict)
    # Cluster-scoped objects a test made (Nodes, admission policies): removed at stop().
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shared = self.root / "shared-dyn"
        self.shared.mkdir(parents=True, exist_ok=True)
        self.volume = SharedVolume(self.shared)
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self._api_port = int(yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]
                             ["cluster"]["server"].rsplit(":", 1)[1])

    def add_pod(self, name: str | None = None, command: str = "run",
                dyn_dir: Path | None = None, incarnation: int = 1) -> MasterPod:
        """A pod whose ``paths.dynDir`` is the one shared directory, or ``dyn_dir``: its own
        mount of it (harness.faultfs: ``FaultVolume(lab.shared).mount(name, dir)``), so a
        fault hits this pod only; ``lab.volume`` still reads the shared directory.
        ``incarnation`` > 1: a new pod of an existing name (after a force delete), with
        a work directory of its own; the caller deleted the old Pod object."""
        kind = "master" if command == "run" else "secondary"
        index = len([p for p in self.pods if p.command == command])
        name = name or f"bind-{kind}-{index}"
        if dyn_dir is None and self.pod_volume is not None and command == "run":
            dyn_dir = self.pod_volume(name if incarnation == 1 else f"{name}.{incarnation}")
        ip = self.address_pool.take()
        work = self.root / (name if incarnation == 1 else f"{name}.{incarnation}")
        path = write_pod_config(
            work, pod_ip=ip, dyn_dir=dyn_dir or self.shared, key_files=self.key_files,
            zones=self.zones,
            rndc_port=9600 + int(ip.rsplit(".", 1)[1]),
            extra={"namespace": self.namespace, "cluster": "lab", "timing": self.timing,
                   "lease": {"name": self.lease_name}, **self.extra_config})
        path = configmap_mount(path)
        proxy = ApiProxy(self._api_port, listen_host=self.address_pool.api_host)
        kubeconfig = work / "kubeconfig"
        data = yaml.safe_load(self.kubeconfig.read_text())
        data["clusters"][0]["cluster"]["server"] = proxy.url
        # The proxy's address is not in the apiserver's certificate; this name is.
        data["clusters"][0]["cluster"]["tls-server-name"] = "kubernetes.default.svc"
        kubeconfig.write_text(yaml.safe_dump(data))
        created = self.core.create_namespaced_pod(self.namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels={
                "bindha.io/cluster": "lab", "bindha.io/component": kind}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="bind",
                                                                  image="bindha-rwx")])))
        self.set_pod_status(name, ip, ready=True)
        pod = MasterPod(name=name, ip=ip, namespace=self.namespace, config_path=path,
                        kubeconfig=kubeconfig, proxy=proxy, work_dir=work, command=command,
                        wrap=self.address_pool.wrap, uid=created.metadata.uid)
        self.pods.append(pod)
        return pod

    def start(self, count: int) -> list[MasterPod]:
        new = [self.add_pod() for _ in range(count)]
        for pod in new:
            pod.start()
        return new

    def set_pod_status(self, name: str, ip: str, ready: bool) -> None:
        """What a kubelet would report (none runs here): Running, the pod IP, Ready."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.core.patch_namespaced_pod_status(name, self.namespace, {"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                            "lastTransitionTime": now}]}})

    def start_secondaries(self, count: int) -> list[MasterPod]:
        new = [self.add_pod(command="secondary") for _ in range(count)]
        for pod in new:
            pod.start()
        return new

    @property
    def masters(self) -> list[MasterPod]:
        return [p for p in self.pods if p.command == "run"]

    @property
    def secondaries(self) -> list[MasterPod]:
        return [p for p in self.pods if p.command == "secondary"]

    def publish_endpoints(self, ips: list[str], service: str = "bind-secondary") -> None:
        """Write the secondaries' EndpointSlice, as the endpointslice controller would."""
        discovery = client.DiscoveryV1Api(self.api)
        body = client.V1EndpointSlice(
            metadata=client.V1ObjectMeta(name=f"{service}-lab",
                                         labels={"kubernetes.io/service-name": service}),
            address_type="IPv4",
            endpoints=[client.V1Endpoint(addresses=[ip],
                                         conditions=client.V1EndpointConditions(ready=True))
                       for ip in ips],
            ports=[client.DiscoveryV1EndpointPort(name="dns", port=53, protocol="UDP")])
        try:
            discovery.replace_namespaced_endpoint_slice(f"{service}-lab", self.namespace, body)
        except client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
            discovery.create_namespaced_endpoint_slice(self.namespace, body)

    def rewrite_configs(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Change every pod's config.yaml by a symlink swap, as a ConfigMap update does."""
        for pod in self.pods:
            data = yaml.safe_load(pod.config_path.read_text())
            change(data)
            configmap_update(pod.config_path, yaml.safe_dump(data, sort_keys=False))

    def stop(self) -> None:
        for pod in self.pods:
            pod.stop()
            pod.proxy.close()
        for proc in all_named(self.root):
            proc.kill()
        while self.cleanups:
            with contextlib.suppress(Exception):
                self.cleanups.pop()()

    # -- observations --------------------------------------------------------

    def lease(self) -> client.V1Lease | None:
        try:
            return self.coordination.read_namespaced_lease(self.lease_name, self.namespace,
                                                           _request_timeout=5)
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def holder(self) -> str | None:
        lease = self.lease()
        return holder_pod(lease.spec.holder_identity) if lease else None

    def pod(self, name: str) -> MasterPod:
        return next(p for p in self.pods if p.name == name)

    def writers(self) -> list[tuple[MasterPod, psutil.Process]]:
        return [(pod, proc) for pod in self.masters for proc in pod.named_processes()]

    def leader(self, timeout: float = 20.0) -> MasterPod:
        """The pod whose named serves every zone, once there is exactly one.

        A frozen (SIGSTOPped) named serves nothing: a lost node's is no answer either.
        A named that was just sent SIGKILL still shows as running for a moment, and its
        pod still holds the Lease and logged ``named.serving`` long ago: it is no answer
        (it still counts in writers(), which must see every possible writer). Nor is a
        restarted named before it serves: the serving line must name this named's pid.
        """
        def one() -> MasterPod | None:
            writers = [(p, n) for p, n in self.writers() if not stopped(n)]
            if len(writers) != 1:
                return None
            pod, named = writers[0]
            if self.holder() != pod.name or sigkill_pending(named):
                return None
            serving = any(e.get("event") == "named.serving" and e.get("pid") == named.pid
                          for e in pod.events())
            return pod if serving else None
        return wait_until(one, timeout, "one leader serving")

    def role_labels(self) -> dict[str, str | None]:
        """Each pod's role label. The supervisor writes it twice (``bindha.io/role`` and
        the alias ``role``, roleLabel.key); two values that differ read as a mismatch,
        so every test that reads roles also checks that both are written together."""
        pods = self.core.list_namespaced_pod(self.namespace, _request_timeout=5).items

        def role(labels: dict[str, str]) -> str | None:
            prefixed, alias = labels.get(ROLE_LABEL), labels.get("role")
            return alias if prefixed == alias else f"mismatch {ROLE_LABEL}={prefixed} role={alias}"
        return {p.metadata.name: role(p.metadata.labels or {}) for p in pods}


def start_lab(root: Path, namespace: str, address_pool: Any,
              timing: dict[str, float] | None = None) -> tuple[Any, MasterLab]:
    """A fresh control plane under ``root`` and an empty MasterLab in ``namespace``
    (for the demo and the benchmarks; tests use the pytest fixtures instead)."""
    from harness.bindlab import write_key_files
    from harness.testplane import TestPlane, build_binary

    plane = TestPlane(binary=build_binary(), workdir=root / "testplane")
    plane.start()
    api = client.ApiClient(_configuration(plane.kubeconfig))
    client.CoreV1Api(api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    lab = MasterLab(root=root, api=api, kubeconfig=plane.kubeconfig, namespace=namespace,
                    address_pool=address_pool,
                    key_files=write_key_files(root / "keys", ["update-key", "transfer-key"]),
                    timing=dict(timing or TEST_TIMING))
    return plane, lab


@contextlib.contextmanager
def netns_lab(prefix: str, timing: dict[str, float] | None = None,
              namespace: str | None = None) -> Iterator[MasterLab]:
    """A temp dir, a fresh control plane and an empty MasterLab whose pods each get a
    network namespace (harness.netlab); on exit every pod, the namespaces, the control
    plane and the dir are gone (the demo and the benchmarks)."""
    from harness.netlab import NetLab

    root = Path(tempfile.mkdtemp(prefix=f"bindha-{prefix}-"))
    net = NetLab()
    plane = lab = None
    try:
        plane, lab = start_lab(root, namespace or f"{prefix}-{uuid.uuid4().hex[:6]}", net,
                               timing)
        yield lab
    finally:
        if lab is not None:
            lab.stop()
        net.close()
        if plane is not None:
            plane.stop()
        shutil.rmtree(root, ignore_errors=True)


def _configuration(kubeconfig: Path) -> client.Configuration:
    from kubernetes import config as kube_config

    configuration = client.Configuration()
    kube_config.load_kube_config(config_file=str(kubeconfig),
                                 client_configuration=configuration)
    return configuration


def http_probe(pod: Any, path: str, timeout: float = 1.0) -> tuple[int, str] | None:
    """GET ``path`` (/healthz, /readyz) from the pod's HTTP endpoint as the kubelet does:
    (status, body), or None when it does not answer within ``timeout``."""
    import urllib.error
    import urllib.request

    url = f"http://{pod.ip}:{pod.config.ports.metrics}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except (TimeoutError, urllib.error.URLError, ConnectionError):
        return None
