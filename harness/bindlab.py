"""Real named processes for tests and the demo: key files, per-pod configs, start/stop.

A "pod" here is a work directory with its own config.yaml, its own loopback IP and
its own rndc port; all pods share one dyn directory (the RWX volume).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import yaml

from bindha_rwx.bindtools import ensure_key_file, find_tool
from bindha_rwx.config import Config, TsigKey, load_config
from bindha_rwx.render import RNDC_KEY_NAME
from harness.process import log_tail, stop_group


def write_key_files(folder: Path, names: Iterable[str]) -> dict[str, Path]:
    """One tsig-keygen file per key name, as a mounted Secret would hold it."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        path = folder / f"{name}.key"
        ensure_key_file(path, name)
        paths[name] = path
    return paths


def write_pod_config(work_dir: Path, *, pod_ip: str, dyn_dir: Path, key_files: Mapping[str, Path],
                     zones: list[dict[str, Any]], rndc_port: int, dns_port: int = 53,
                     transfer_key: str | None = "transfer-key",
                     extra: Mapping[str, Any] | None = None) -> Path:
    """A config.yaml for one pod whose every address is its own loopback IP."""
    work_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "cluster": "lab",
        "paths": {"workDir": str(work_dir), "dynDir": str(dyn_dir),
                  "namedConf": str(work_dir / "named.conf"), "roleFile": str(work_dir / "role"),
                  "rndcKey": str(work_dir / "rndc.key")},
        "ports": {"dns": dns_port, "rndc": rndc_port},
        "localAddress": pod_ip,
        "keys": [{"name": n, "file": str(p)} for n, p in key_files.items()],
        "secondaries": {"service": "bind-secondary", "transferKey": transfer_key},
        "zones": zones,
    }
    if transfer_key is None:
        del data["secondaries"]["transferKey"]
    data.update(extra or {})
    path = work_dir / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def pod_env(name: str, ip: str, namespace: str = "lab", node: str = "node-1",
            uid: str | None = None) -> dict[str, str]:
    env = {"POD_NAME": name, "POD_NAMESPACE": namespace, "POD_IP": ip, "NODE_NAME": node}
    if uid:
        env["POD_UID"] = uid
    return env


def load_pod_config(path: Path, name: str, ip: str) -> Config:
    return load_config(path, env=pod_env(name, ip))


def soa_serial(ip: str, zone: str, port: int = 53, timeout: float = 0.5) -> int | None:
    """The zone's serial as ``ip`` serves it, or None (no answer, error, not loaded)."""
    try:
        answer = dns.query.udp(dns.message.make_query(zone, dns.rdatatype.SOA), ip, port=port,
                               timeout=timeout)
    except (dns.exception.DNSException, OSError):
        return None
    if answer.rcode() != dns.rcode.NOERROR or not answer.answer:
        return None
    return int(answer.answer[0][0].serial)


def keyring(key: TsigKey) -> dict[Any, Any]:
    return dns.tsigkeyring.from_text({key.name: (key.algorithm, key.secret)})


@dataclass
class NamedProcess:
    """One real named, started from a rendered config file, logging to a file."""

    config: Config
    conf_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_text(cls, config: Config, text: str) -> NamedProcess:
        work = config.paths.work_dir
        ensure_key_file(config.paths.rndc_key, RNDC_KEY_NAME)
        config.paths.secondary_dir.mkdir(parents=True, exist_ok=True)
        conf = work / "named.conf"
        conf.write_text(text)
        return cls(config=config, conf_path=conf, log_path=work / "named.log")

    @property
    def ip(self) -> str:
        assert self.config.pod.ip
        return self.config.pod.ip

    def start(self) -> None:
        named = str(self.config.paths.named) if self.config.paths.named.exists() else \
            find_tool("named")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([named, "-f", "-c", str(self.conf_path)],
                                            stdout=log, stderr=log, start_new_session=True)

    def soa_serial(self, zone: str, timeout: float = 1.0) -> int | None:
        """The zone's serial as served, or None (no answer, SERVFAIL, not loaded)."""
        return soa_serial(self.ip, zone, self.config.ports.dns, timeout)

    def wait_serving(self, zones: Iterable[str] | None = None, timeout: float = 20.0,
                     min_serial: int | None = None) -> None:
        """Poll until every zone answers SOA (at ``min_serial`` or later, if given)."""
        names = list(zones) if zones is not None else [z.name for z in self.config.zones]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"named exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            serials = [self.soa_serial(z, timeout=0.5) for z in names]
            if all(s is not None and (min_serial is None or s >= min_serial) for s in serials):
                return
            time.sleep(0.05)
        raise TimeoutError(f"named at {self.ip} not serving {names} after {timeout:g}s:\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        stop_group(process, timeout)
