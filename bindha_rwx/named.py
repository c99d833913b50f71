"""The named process: our child, started with a parent-death signal, stopped or killed.

This module only does named's process job: start it, tell whether it serves, stop it
gracefully (a handover while we still hold the fence) or kill it (the fence is lost),
and decide how to restart it after a crash. No Kubernetes, no locks on the volume.

Reaping: each named is waited for by its ``subprocess.Popen`` and nothing else; other
code must never ``os.wait`` on its pid (bindha_rwx.reaper peeks with WNOWAIT and leaves
our children alone). Signals go through a pidfd, so a pid the kernel has reused after
named exited is never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from bindha_rwx import reaper
from bindha_rwx.bindtools import BindToolError, find_tool
from bindha_rwx.config import Config
from bindha_rwx.log import get_logger

log = get_logger("named")

# After SIGKILL: how long to wait for the kernel to end a process that may sit in an
# uninterruptible call on a dead network volume.
REAP_GRACE = 5.0
# After a successful `rndc stop`, the share of stop()'s timeout named gets to flush its
# zones and exit before SIGTERM (SIGKILL comes at the full timeout).
_GRACEFUL_SHARE = 0.8
_POLL_INTERVAL = 0.02


class NamedError(Exception):
    """named or rndc failed or could not be run; the message carries their words."""


@dataclass(frozen=True)
class ExitInfo:
    """How a named run ended.

    ``reason`` is "stopped" (we asked it to end gracefully), "killed" (we fenced it) or
    "crashed" (it ended on its own). ``returncode`` follows Popen: negative for a signal;
    None when named never ran, or when it survived SIGKILL (stuck in the kernel, as on a
    hung network volume): then it may still write, and poll() tells when it is gone.
    """

    returncode: int | None
    reason: str


def _tool(configured: Path, name: str) -> str:
    if configured.exists():
        return str(configured)
    try:
        return find_tool(name)
    except BindToolError as exc:
        raise NamedError(str(exc)) from None


class Rndc:
    """rndc against this pod's named: -k paths.rndc_key -b/-s config.local_address
    -p ports.rndc, every call with a timeout."""

    def __init__(self, config: Config) -> None:
        self.config = config

    @property
    def target(self) -> str:
        return f"{self.config.local_address}#{self.config.ports.rndc}"

    def run(self, *args: str, timeout: float = 5.0) -> str:
        """rndc's stdout; NamedError with rndc's words on failure, timeout or no binary."""
        what = "rndc " + " ".join(args)
        if args[:1] == ("sync",) and "-clean" in args:
            raise NamedError(f"{what} is refused: it unlinks the journal before the zone dump "
                             "is in place, so a crash then loses updates; use `rndc stop` or "
                             "plain `rndc sync`")
        local = self.config.local_address
        # -b: named's controls allow only local_address, so rndc must speak from it too
        # (with a pod's own loopback address, the kernel would pick 127.0.0.1).
        command = [_tool(self.config.paths.rndc, "rndc"), "-k", str(self.config.paths.rndc_key),
                   "-b", local, "-s", local, "-p", str(self.config.ports.rndc), *args]
        try:
            result = reaper.run(command, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NamedError(f"{what}: named at {self.target} gave no answer within "
                             f"{timeout:g}s") from None
        except OSError as exc:
            raise NamedError(f"{what}: cannot run {command[0]}: {exc.strerror}") from None
        if result.returncode != 0:
            words = " ".join((result.stderr.strip() or result.stdout.strip()
                              or "no output").split())
            raise NamedError(f"{what} to named at {self.target} failed "
                             f"(exit {result.returncode}): {words}")
        return result.stdout

    def reconfig(self, timeout: float = 5.0) -> str:
        """Re-read named.conf: applies a new also-notify and adds new zones."""
        return self.run("reconfig", timeout=timeout)

    def reload(self, timeout: float = 5.0) -> str:
        """reconfig, and also re-read zone files that changed."""
        return self.run("reload", timeout=timeout)

    def stop(self, timeout: float = 5.0) -> str:
        """Flush every zone to its file, then exit. Never `sync -clean` (DESIGN, BIND facts)."""
        return self.run("stop", timeout=timeout)

    def status(self, timeout: float = 5.0) -> str:
        return self.run("status", timeout=timeout)


class NamedProcess:
    """One named child: started with a parent-death signal, stopped gracefully or killed.

    Thread safety: poll(), stop(), kill() and signal_now() may run on different threads.
    A short lock guards the state and is never held while waiting; signal_now() takes no
    lock at all, so a fence guard can never block on a stop() in progress.
    """

    def __init__(self, config: Config, conf_path: Path, log_stream: IO[Any] | None = None,
                 user: str | None = None) -> None:
        """``log_stream`` (a real file, it needs a fileno) takes named's stdout and stderr;
        by default named writes to our stderr, never into our JSON lines on stdout.
        ``user``: run named as this user (see _command for why not ``named -u``)."""
        self.config = config
        self.conf_path = Path(conf_path)
        if log_stream is not None:
            try:
                log_stream.fileno()
            except (AttributeError, OSError, ValueError):
                raise TypeError("log_stream must be an open file with a descriptor: named "
                                "writes to it directly") from None
        self.log_stream = log_stream
        self.user = user
        self.rndc = Rndc(config)
        # Why the last serving() check failed, or how named ended: for logs and events.
        self.last_problem: str | None = None
        self._ids: tuple[int, int] | None = None
        if user is not None:
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise NamedError(f"user {user!r} does not exist: create it, or run named as "
                                 "the supervisor's own user") from None
            self._ids = (entry.pw_uid, entry.pw_gid)
        self._zones = [dns.name.from_text(zone.name) for zone in config.zones]
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._ending: str | None = None  # "stopped" or "killed" once we asked named to end
        self._exit: ExitInfo | None = None

    # -- starting -------------------------------------------------------------

    def _command(self) -> list[str]:
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        if not os.access(setpriv, os.X_OK):
            raise NamedError("setpriv not found: install util-linux (apt-get install "
                             "util-linux), it gives named its parent-death signal")
        command = [setpriv]
        if self._ids is not None:
            # Not `named -u`: the kernel clears PR_SET_PDEATHSIG when a process changes
            # its uid or gid, so named would outlive us (seen here). setpriv switches first,
            # keeps the one capability named needs for port 53, then sets the signal.
            uid, gid = self._ids
            command += ["--reuid", str(uid), "--regid", str(gid), "--init-groups",
                        "--inh-caps", "+net_bind_service", "--ambient-caps", "+net_bind_service"]
        named = _tool(self.config.paths.named, "named")
        return [*command, "--pdeathsig", "KILL", "--", named, "-f", *self._early_log(),
                "-c", str(self.conf_path)]

    def _early_log(self) -> list[str]:
        """``-L /dev/stderr`` when named's stderr takes it, so config errors are seen.

        Until named has read its logging block it logs to syslog, which a pod does not
        have: a config error would end named with no word. -L sends those lines to a
        file; /dev/stderr works for a pipe (a pod's stderr), a terminal or a file opened
        for appending. Not for a socket (seen here: named hangs at shutdown) nor a file
        without O_APPEND (the two descriptions overwrite each other's lines).
        """
        try:
            fd = self.log_stream.fileno() if self.log_stream is not None else 2
            mode = os.fstat(fd).st_mode
            appending = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
        except OSError:
            return []
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or (stat.S_ISREG(mode) and appending):
            return ["-L", "/dev/stderr"]
        return []

    def start(self, keep_fds: tuple[int, ...] = ()) -> None:
        """Start named; NamedError if it is already running or cannot be run.

        ``keep_fds``: descriptors named inherits. The master passes its storage lock's,
        so the open-file-description lock lives as long as named does (invariant 11).

        IMPORTANT: PR_SET_PDEATHSIG fires when the *thread* that forked named exits, not
        when the process does. Call start() from a thread that lives as long as the
        process (the main thread, or the supervisor's controller), or named is SIGKILLed
        the moment that thread ends.

        setpriv sets the signal and then execs named: preexec_fn would do it in Python
        between fork and exec, which is unsafe in a process with threads. A supervisor
        killed in the microseconds between fork and setpriv's prctl would leave named
        running; in a pod the supervisor is the container's main process, so the
        container's end kills named anyway.
        """
        command = self._command()
        # start_new_session: a terminal's Ctrl-C must not reach named; we order its end.
        stdout: IO[Any] | int = self.log_stream if self.log_stream is not None else 2
        with self._lock:
            if self._process is not None and self._check_exit() is None:
                raise NamedError(f"named is already running (pid {self._process.pid})")
            try:
                process = reaper.spawn(command, stdin=subprocess.DEVNULL, stdout=stdout,
                                       stderr=self.log_stream, start_new_session=True,
                                       pass_fds=keep_fds)
            except OSError as exc:
                raise NamedError(f"cannot start {command[0]}: {exc.strerror}") from None
            old_pidfd, self._pidfd = self._pidfd, _pidfd_open(process.pid)
            self._process, self._ending, self._exit = process, None, None
            self.last_problem = None
        if old_pidfd is not None:
            os.close(old_pidfd)

    # -- state ----------------------------------------------------------------

    def _check_exit(self) -> ExitInfo | None:
        """The ExitInfo once named has ended (reaping it through Popen); hold the lock."""
        if self._exit is not None or self._process is None:
            return self._exit
        code = self._process.poll()
        if code is None:
            return None
        reaper.release(self._process.pid)
        self._exit = ExitInfo(code, self._ending or "crashed")
        self.last_problem = f"named exited with {_describe(code)} ({self._exit.reason})"
        return self._exit

    @property
    def pid(self) -> int | None:
        """The running named's pid; None before start() and once it has ended."""
        with self._lock:
            if self._process is None or self._check_exit() is not None:
                return None
            return self._process.pid

    @property
    def running(self) -> bool:
        with self._lock:
            return self._process is not None and self._check_exit() is None

    def poll(self) -> ExitInfo | None:
        """None while named runs (or was never started); afterwards how it ended."""
        with self._lock:
            return self._check_exit()

    # -- serving --------------------------------------------------------------

    def serving(self, timeout: float = 0.5) -> bool:
        """True if every zone answers SOA with NOERROR and an answer (no SERVFAIL).

        Asked over UDP at local_address, like a client; the reason for a False is in
        ``last_problem``.
        """
        problem = self._serving_problem(timeout)
        self.last_problem = problem
        return problem is None

    def _serving_problem(self, timeout: float) -> str | None:
        if not self.running:
            return self.last_problem if self._exit is not None else "named is not running"
        where = self.config.local_address
        for zone in self._zones:
            query = dns.message.make_query(zone, dns.rdatatype.SOA)
            try:
                answer = dns.query.udp(query, where, port=self.config.ports.dns, timeout=timeout)
            except dns.exception.Timeout:
                return f"zone {zone}: no answer from {where} within {timeout:.2g}s"
            except OSError as exc:
                return f"zone {zone}: no answer from {where}: {exc.strerror or exc}"
            except dns.exception.DNSException as exc:
                return f"zone {zone}: bad answer from {where}: {exc}"
            if answer.rcode() != dns.rcode.NOERROR:
                return f"zone {zone}: {dns.rcode.to_text(answer.rcode())} from {where}"
            if answer.get_rrset(answer.answer, zone, dns.rdataclass.IN,
                                dns.rdatatype.SOA) is None:
                return f"zone {zone}: {where} answered without its SOA"
        return None

    def wait_serving(self, deadline_s: float) -> bool:
        """Poll serving() until it is true or ``deadline_s`` seconds have passed.

        Returns False at once if named exits meanwhile (or was never started);
        ``last_problem`` says why.
        """
        end = time.monotonic() + deadline_s
        while True:
            remaining = end - time.monotonic()
            if self.serving(timeout=max(0.05, min(0.25, remaining))):
                return True
            if not self.running or time.monotonic() >= end:
                return False
            time.sleep(_POLL_INTERVAL)

    # -- ending ---------------------------------------------------------------

    def stop(self, timeout: float) -> ExitInfo:
        """Graceful end, for a handover while we still hold the fence.

        `rndc stop` (bounded by half of ``timeout``) flushes the zones to their files;
        then SIGTERM if named has not exited, and SIGKILL at ``timeout``. If kill() runs
        meanwhile, its reason wins.
        """
        started = time.monotonic()
        with self._lock:
            if self._process is None:
                return ExitInfo(None, "stopped")
            ended = self._check_exit()
            if ended is not None:
                return ended
            ask = self._ending is None
            if ask:
                self._ending = "stopped"
        # Another stop() already asked: give named the same time to flush.
        term_at = started if ask or self._ending == "killed" else (
            started + timeout * _GRACEFUL_SHARE)
        if ask:
            try:
                self.rndc.stop(timeout=max(0.1, timeout / 2))
                term_at = started + timeout * _GRACEFUL_SHARE
            except NamedError as exc:
                log.warning("named.rndc_stop_failed", error=str(exc), next="SIGTERM")
        return self._end(term_at, started + timeout)

    def kill(self, timeout: float) -> ExitInfo:
        """Fencing, when the Lease, lock or epoch is lost: SIGTERM, SIGKILL after ``timeout``.

        No rndc: `rndc stop` would dump zone files we may no longer own. SIGTERM makes
        named finish the journal transaction in flight and exit without flushing zones;
        the journal rolls forward at the next start.
        """
        started = time.monotonic()
        with self._lock:
            if self._process is None:
                return ExitInfo(None, "killed")
            ended = self._check_exit()
            if ended is not None:
                return ended
            self._ending = "killed"
        return self._end(started, started + timeout)

    def signal_now(self, sig: int) -> None:
        """Send ``sig`` to named without waiting or locking; a no-op if it is not running.

        For the supervisor's fence guard. SIGTERM and SIGKILL mark the end as "killed",
        so that poll() does not report a crash to restart.
        """
        process, pidfd = self._process, self._pidfd
        if process is None or process.returncode is not None:
            return
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self._ending = "killed"
        _deliver(process, pidfd, sig)

    def _end(self, term_at: float, kill_at: float) -> ExitInfo:
        """Wait for the exit; SIGTERM at ``term_at``, SIGKILL at ``kill_at``."""
        for moment, sig in ((term_at, signal.SIGTERM), (kill_at, signal.SIGKILL)):
            ended = self._wait_until(moment)
            if ended is not None:
                return ended
            with self._lock:
                process = self._process
                if process is None or self._check_exit() is not None:
                    continue
                _deliver(process, self._pidfd, sig)
            log.warning("named.signalled", pid=process.pid, signal=sig.name,
                        reason=self._ending)
        ended = self._wait_until(time.monotonic() + REAP_GRACE)
        if ended is not None:
            return ended
        pid = self._process.pid if self._process is not None else None
        self.last_problem = f"named (pid {pid}) survived SIGKILL for {REAP_GRACE:g}s"
        log.error("named.unkillable", pid=pid, waited=REAP_GRACE)
        return ExitInfo(None, self._ending or "killed")

    def _wait_until(self, moment: float) -> ExitInfo | None:
        process = self._process
        while True:
            ended = self.poll()
            remaining = moment - time.monotonic()
            if ended is not None or process is None or remaining <= 0:
                return ended
            # Popen.wait with a timeout polls without holding its lock for long, so
            # other threads' poll() and signal_now() go on meanwhile.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=min(remaining, 0.1))


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): fall back on the pid
        return None


def _deliver(process: subprocess.Popen[bytes], pidfd: int | None, sig: int) -> None:
    """Signal named; an exited (even reaped) named is not an error."""
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            process.send_signal(sig)
    except (ProcessLookupError, OSError):
        pass


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class RestartPolicy:
    """Restart a crashed named with exponential backoff; after ``max_crashes`` crashes
    within ``window`` seconds, say step down (another master may do better).

    Pure logic with an injectable clock, so tests need no sleeping.
    """

    def __init__(self, max_crashes: int = 3, window: float = 60.0, base_delay: float = 0.5,
                 max_delay: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        if max_crashes < 1 or window <= 0 or base_delay < 0 or max_delay < base_delay:
            raise ValueError("RestartPolicy needs max_crashes >= 1, window > 0 and "
                             "0 <= base_delay <= max_delay")
        self.max_crashes = max_crashes
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.clock = clock
        self._crashes: deque[float] = deque()

    def record_crash(self) -> float | None:
        """Seconds to wait before the next restart, or None: step down.

        The delay doubles with each crash still inside the window, so a named that
        crashes once after serving for long restarts at once (base_delay).
        """
        now = self.clock()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] <= now - self.window:
            self._crashes.popleft()
        count = len(self._crashes)
        if count >= self.max_crashes:
            return None
        return min(self.max_delay, self.base_delay * 2 ** (count - 1))

    def reset(self) -> None:
        """Forget past crashes: after a step-down, or once named has served a while."""
        self._crashes.clear()
