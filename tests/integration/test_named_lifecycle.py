"""named's lifecycle (bindha_rwx.named) against a real named: no mocks.

Start, serve, stop (rndc stop flushes), kill (the fence: SIGTERM, no flush), crash,
parent death (DESIGN invariant 5), rndc errors, and failures to serve that say why.
Each named has its own loopback IP and rndc port and logs to a file that a failing
assertion prints.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import psutil
import pytest

from bindha_rwx.bindtools import ensure_key_file
from bindha_rwx.config import Config
from bindha_rwx.named import ExitInfo, NamedError, NamedProcess, RestartPolicy, Rndc
from bindha_rwx.render import RNDC_KEY_NAME, render_bootstrap_zone, render_primary
from harness.bindlab import keyring, load_pod_config, write_key_files, write_pod_config
from harness.loopback import has_address
from harness.pods import wait_until
from tests.conftest import require

pytestmark = [pytest.mark.named, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
ZONE = "lab.example."
ZONES = [{"name": ZONE,
          "nameservers": [{"name": "ns1.lab.example", "addresses": ["192.0.2.53"]}],
          "updatePolicy": [{"key": "update-key", "rule": "zonesub"}]}]
_rndc_ports = itertools.count(9541)


@dataclass
class Pod:
    """One test pod: its config, rendered named.conf and named's log file."""

    name: str
    config_path: Path
    config: Config
    conf_path: Path
    log_path: Path
    started: list[NamedProcess] = field(default_factory=list)
    streams: list[BinaryIO] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return self.config.local_address

    @property
    def zone_file(self) -> Path:
        return self.config.paths.dyn_dir / self.config.zones[0].file_name

    def named(self, user: str | None = None) -> NamedProcess:
        stream = self.log_path.open("ab")  # O_APPEND: named's -L and its stderr share it
        self.streams.append(stream)
        named = NamedProcess(self.config, self.conf_path, log_stream=stream, user=user)
        self.started.append(named)
        return named

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def explain(self, named: NamedProcess) -> str:
        tail = "\n".join(self.log().splitlines()[-25:])
        return f"last problem: {named.last_problem}\nnamed log:\n{tail}"


@pytest.fixture
def make_pod(tmp_path: Path, address_pool, key_files, shared_dir) -> Iterator[Callable[..., Pod]]:
    """Pods on fresh loopback IPs; every named they start is killed at teardown."""
    pods: list[Pod] = []
    owned: list[Path] = []

    def make(*, ip: str | None = None, zone_file: bool = True, user: str | None = None) -> Pod:
        name = f"master-{len(pods)}"
        work, dyn, keys, base = tmp_path / name, shared_dir, key_files, None
        if user is not None:
            # The pytest temp tree is root's alone: a pod run as `user` lives elsewhere.
            base = Path(tempfile.mkdtemp(prefix="bindha-lifecycle-"))
            owned.append(base)
            work, dyn = base / name, base / "dyn"
            dyn.mkdir()
            keys = write_key_files(base / "keys", ["update-key", "transfer-key"])
        ip = ip or address_pool.take()
        path = write_pod_config(work, pod_ip=ip, dyn_dir=dyn, key_files=keys, zones=ZONES,
                                rndc_port=next(_rndc_ports))
        config = load_pod_config(path, f"bind-{name}", ip)
        zone = config.zones[0]
        if zone_file:
            (dyn / zone.file_name).write_text(render_bootstrap_zone(zone))
        ensure_key_file(config.paths.rndc_key, RNDC_KEY_NAME)
        conf = work / "named.conf"
        conf.write_text(render_primary(config))
        if base is not None and user is not None:
            entry = pwd.getpwnam(user)
            for item in [base, *base.rglob("*")]:
                os.chown(item, entry.pw_uid, entry.pw_gid)
        pod = Pod(name=name, config_path=path, config=config, conf_path=conf,
                  log_path=work / "named.log")
        pods.append(pod)
        return pod

    yield make
    for pod in pods:
        for named in pod.started:
            named.kill(2.0)
        for stream in pod.streams:
            stream.close()
    for folder in owned:
        shutil.rmtree(folder, ignore_errors=True)


def send_update(pod: Pod, name: str, address: str) -> int:
    key = pod.config.keys["update-key"]
    update = dns.update.UpdateMessage(ZONE, keyring=keyring(key), keyname=key.name)
    update.replace(name, 300, "A", address)
    return dns.query.tcp(update, pod.ip, port=pod.config.ports.dns, timeout=5).rcode()


def lookup(pod: Pod, name: str) -> list[str]:
    query = dns.message.make_query(f"{name}.{ZONE}", dns.rdatatype.A)
    answer = dns.query.udp(query, pod.ip, port=pod.config.ports.dns, timeout=2)
    return sorted(rr.address for rrset in answer.answer for rr in rrset)



def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def child_names() -> list[str]:
    names = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            names.append(child.name())
    return names


def start_serving(pod: Pod, user: str | None = None) -> NamedProcess:
    named = pod.named(user=user)
    named.start()
    assert named.wait_serving(15), pod.explain(named)
    return named


# ---------------------------------------------------------------------------
# 1. the happy path: serve, take updates, stop gracefully, lose nothing


def test_stop_after_updates_loses_none(make_pod):
    pod = make_pod()
    named = start_serving(pod)
    pid = named.pid
    assert pid is not None and named.running and named.poll() is None
    with pytest.raises(NamedError, match="already running"):
        named.start()
    updates = {f"host{i}": f"192.0.2.{10 + i}" for i in range(5)}
    for name, address in updates.items():
        assert send_update(pod, name, address) == dns.rcode.NOERROR

    ended = named.stop(timeout=5.0)

    assert ended == ExitInfo(0, "stopped"), pod.explain(named)
    assert named.poll() == ended and not named.running and named.pid is None
    assert gone(pid)
    # rndc stop flushed the zone: every update is in the zone file itself now.
    text = pod.zone_file.read_text()
    assert all(address in text for address in updates.values()), text
    # A new named on the same files serves every acknowledged update.
    again = start_serving(pod)
    assert {name: lookup(pod, name) for name in updates} == {
        name: [address] for name, address in updates.items()}
    assert again.stop(timeout=5.0).reason == "stopped"


# ---------------------------------------------------------------------------
# 2. rndc: works, and says what is wrong when it does not


def test_rndc_status_and_errors_that_name_the_problem(make_pod):
    pod = make_pod()
    named = start_serving(pod)
    assert "server is up and running" in Rndc(pod.config).status()
    with pytest.raises(NamedError, match="sync -clean is refused"):
        Rndc(pod.config).run("sync", "-clean")  # DESIGN: it can lose updates

    other_key = pod.config.paths.work_dir / "other-rndc.key"
    ensure_key_file(other_key, RNDC_KEY_NAME)  # same key name, another secret
    wrong = replace(pod.config, paths=replace(pod.config.paths, rndc_key=other_key))
    with pytest.raises(NamedError) as info:
        Rndc(wrong).status()
    message = str(info.value)
    assert "rndc status" in message and f"{pod.ip}#{pod.config.ports.rndc}" in message
    assert "the key is invalid" in message, message
    assert named.running  # a refused command changes nothing

    # A peer that accepts the connection and never answers: our timeout, not rndc's.
    with socket.create_server((pod.ip, 0)) as silent:
        port = silent.getsockname()[1]
        mute = replace(pod.config, ports=replace(pod.config.ports, rndc=port))
        started = time.monotonic()
        with pytest.raises(NamedError, match=r"gave no answer within 1s"):
            Rndc(mute).status(timeout=1.0)
        assert time.monotonic() - started < 3.0


# ---------------------------------------------------------------------------
# 3. DESIGN invariant 5: named never outlives its supervisor

HELPER = r"""
import sys, time
from pathlib import Path
from bindha_rwx import log
from bindha_rwx.named import NamedProcess
from harness.bindlab import load_pod_config
log.set_stream(sys.stderr)
config_path, pod, ip, conf, log_path, user = sys.argv[1:7]
config = load_pod_config(Path(config_path), pod, ip)
named = NamedProcess(config, Path(conf), log_stream=open(log_path, "ab"), user=user or None)
named.start()  # on the main thread, which lives as long as the helper
if not named.wait_serving(15):
    print("not serving:", named.last_problem, flush=True)
    sys.exit(1)
print(named.pid, flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def child_subreaper() -> Iterator[None]:
    """Orphans of our children are re-parented to us, so we can read how they died."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


def reap(pid: int, timeout: float) -> int | None:
    """The wait status of our (adopted) child ``pid``, or None if it is still alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return status
        time.sleep(0.02)
    return None


@pytest.mark.parametrize("user", [None, "bind"], ids=["as-root", "as-bind"])
def test_named_dies_with_its_supervisor(make_pod, user):
    if user is not None:
        require(_user_exists(user), f"needs the {user} user of Debian's bind9 package")
    pod = make_pod(user=user)
    args = [str(pod.config_path), f"bind-{pod.name}", pod.ip, str(pod.conf_path),
            str(pod.log_path), user or ""]
    errors = pod.log_path.with_name("helper.err")
    with child_subreaper(), errors.open("wb") as err:
        helper = subprocess.Popen([sys.executable, "-c", HELPER, *args], cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)},
                                  stdout=subprocess.PIPE, stderr=err, text=True)
        pid = None
        try:
            ready, _, _ = select.select([helper.stdout], [], [], 20)
            line = helper.stdout.readline().strip() if ready else "(nothing in 20s)"
            assert line.isdigit(), (f"helper said {line!r}; stderr: {errors.read_text()}\n"
                                    f"{pod.log()[-2000:]}")
            pid = int(line)
            process = psutil.Process(pid)
            assert process.name() == "named" and process.ppid() == helper.pid
            if user is not None:  # named runs as the user, still with its death signal
                assert process.uids().real == pwd.getpwnam(user).pw_uid

            helper.kill()  # the supervisor dies without any chance to clean up
            assert helper.wait(5) == -signal.SIGKILL

            status = reap(pid, timeout=5.0)
            assert status is not None, f"named {pid} outlived its supervisor"
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            pid = None
        finally:
            if helper.poll() is None:
                helper.kill()
                helper.wait(5)
            if pid is not None and not gone(pid):  # the test failed: do not leak named
                os.kill(pid, signal.SIGKILL)
                reap(pid, timeout=5.0)


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


# ---------------------------------------------------------------------------
# 4. the fence: kill() does not flush, the journal keeps the update; crashes are seen


def test_kill_does_not_flush_and_a_crash_is_seen(make_pod):
    pod = make_pod()
    named = start_serving(pod)
    assert send_update(pod, "fenced", "192.0.2.20") == dns.rcode.NOERROR

    started = time.monotonic()
    ended = named.kill(timeout=5.0)
    assert time.monotonic() - started < 5.0
    assert ended == ExitInfo(0, "killed"), pod.explain(named)  # SIGTERM: a clean exit
    assert named.kill(timeout=1.0) == ended  # killing an ended named changes nothing
    named.signal_now(signal.SIGKILL)  # nor does signalling it (its pid may be reused)
    # SIGTERM does not flush: the update is only in the journal, which the next start
    # rolls forward (the same NamedProcess starts again).
    assert "192.0.2.20" not in pod.zone_file.read_text()
    assert Path(f"{pod.zone_file}.jnl").stat().st_size > 0
    assert named.start() is None and named.wait_serving(15), pod.explain(named)
    assert lookup(pod, "fenced") == ["192.0.2.20"]

    os.kill(named.pid, signal.SIGKILL)  # a crash, from outside
    crashed = wait_until(named.poll, 5.0, "poll() sees named's end")
    assert crashed == ExitInfo(-signal.SIGKILL, "crashed")
    assert "SIGKILL" in named.last_problem and not named.serving()


def test_a_frozen_named_is_ended_in_time(make_pod):
    pod = make_pod()
    named = start_serving(pod)

    # stop(): rndc stop gets no answer (bounded by half the timeout), SIGTERM is not
    # handled, SIGKILL comes at the timeout.
    os.kill(named.pid, signal.SIGSTOP)
    started = time.monotonic()
    ended = named.stop(timeout=2.0)
    elapsed = time.monotonic() - started
    assert ended == ExitInfo(-signal.SIGKILL, "stopped"), pod.explain(named)
    assert 1.9 <= elapsed < 3.5, elapsed

    # kill() from another thread while stop() waits on rndc: the fence wins at once
    # and both callers see the same end.
    named.start()
    assert named.wait_serving(15), pod.explain(named)
    os.kill(named.pid, signal.SIGSTOP)
    results: dict[str, ExitInfo] = {}
    stopper = threading.Thread(target=lambda: results.update(stop=named.stop(timeout=8.0)))
    stopper.start()
    wait_until(lambda: "rndc" in child_names(), 5.0, "rndc stop runs")
    started = time.monotonic()
    killed = named.kill(timeout=1.0)
    stopper.join(5.0)
    assert killed == ExitInfo(-signal.SIGKILL, "killed")
    assert time.monotonic() - started < 3.0
    assert not stopper.is_alive() and results["stop"] == killed


# ---------------------------------------------------------------------------
# 5. restart policy: pure logic, a fake clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restart_policy_backs_off_then_steps_down():
    clock = FakeClock()
    policy = RestartPolicy(max_crashes=10, window=60.0, base_delay=0.5, max_delay=4.0,
                           clock=clock)
    delays = []
    for _ in range(6):
        delays.append(policy.record_crash())
        clock.now += 1
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]

    policy = RestartPolicy(clock=clock)  # 3 crashes within 60 s: step down
    assert policy.record_crash() == 0.5
    clock.now += 20
    assert policy.record_crash() == 1.0
    clock.now += 20
    assert policy.record_crash() is None
    policy.reset()
    assert policy.record_crash() == 0.5

    spread = RestartPolicy(clock=clock)  # a crash every 31 s never makes 3 in 60 s
    results = []
    for _ in range(10):
        clock.now += 31
        results.append(spread.record_crash())
    assert results == [0.5] + [1.0] * 9

    with pytest.raises(ValueError):
        RestartPolicy(max_crashes=0)


# ---------------------------------------------------------------------------
# 6. not serving: wait_serving returns False, and the reason is visible


def test_a_config_named_refuses_fails_fast_and_says_why(make_pod):
    pod = make_pod()
    pod.config.paths.rndc_key.unlink()  # e.g. the rndc key Secret is not mounted
    named = pod.named()
    assert not named.wait_serving(10.0) and named.last_problem == "named is not running"
    named.start()
    started = time.monotonic()
    assert not named.wait_serving(10.0)
    assert time.monotonic() - started < 3.0  # it saw named exit; it did not wait 10 s
    assert named.poll() == ExitInfo(1, "crashed")
    assert named.last_problem == "named exited with exit code 1 (crashed)"
    log = pod.log()  # named -L /dev/stderr: its words before the logging block are kept
    assert "loading configuration: file not found" in log, log[-2000:]


@pytest.mark.parametrize("case", ["missing zone file", "address on no interface"])
def test_named_that_runs_but_does_not_serve_says_why(make_pod, case):
    if case == "missing zone file":
        pod = make_pod(zone_file=False)
        problem, in_log = f"zone {ZONE}: SERVFAIL", "file not found"
    else:
        ip = "127.0.0.253"  # outside the address pool; listen-on only matches interfaces
        require(not has_address(ip), f"{ip} must not be on any interface")
        pod = make_pod(ip=ip)
        problem, in_log = f"zone {ZONE}: no answer from {ip}", "running"
    named = pod.named()
    named.start()
    started = time.monotonic()
    assert not named.wait_serving(1.0)
    assert 1.0 <= time.monotonic() - started < 2.5
    assert named.running  # named runs: only the probe tells it does not serve
    assert named.last_problem is not None and named.last_problem.startswith(problem), (
        pod.explain(named))
    assert in_log in pod.log()
