"""The configuration: one YAML file plus the pod's environment, validated in full.

Every problem is reported as "where: what is wrong; how to fix it", all of them at
once, so that an operator fixes a ConfigMap in one round. Validation only reads:
it never writes, so a bad config changes nothing on the shared volume.

This module is the bottom of the layering: it imports nothing from the package.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.name
import dns.rdatatype
import yaml

DEFAULT_CONFIG_PATH = Path("/etc/bindha/config.yaml")

TSIG_ALGORITHMS = (
    "hmac-md5",
    "hmac-sha1",
    "hmac-sha224",
    "hmac-sha256",
    "hmac-sha384",
    "hmac-sha512",
)
# update-policy rule types of BIND 9.18 that take a key (TSIG) identity.
# "name", "subdomain" and "wildcard" need a name; the others must not have one.
GRANT_RULES_WITH_NAME = ("name", "subdomain", "wildcard")
GRANT_RULES_WITHOUT_NAME = ("zonesub", "self", "selfsub", "selfwild")
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,253}[A-Za-z0-9_])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
_LABEL_KEY = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_KEY_CLAUSE = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.S)
_ACL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
BUILTIN_ACLS = ("any", "none", "localhost", "localnets")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


class ConfigError(Exception):
    """The configuration is not usable; ``problems`` lists every reason."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"invalid configuration{where}:"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Timing:
    """Election timings in seconds; see docs/configuration.md for the budget."""

    lease_duration: float = 10.0
    renew_deadline: float = 6.0
    retry_period: float = 2.0
    stop_timeout: float = 3.0


@dataclass(frozen=True)
class Paths:
    # Defaults on the image's writable emptyDirs: the root filesystem is read-only.
    named_conf: Path = Path("/var/run/bindha/named.conf")
    work_dir: Path = Path("/var/lib/named")
    dyn_dir: Path = Path("/var/lib/named/dyn")
    role_file: Path = Path("/var/run/bindha/role")
    named: Path = Path("/usr/sbin/named")
    rndc: Path = Path("/usr/sbin/rndc")
    rndc_key: Path = Path("/var/lib/named/rndc.key")

    @property
    def secondary_dir(self) -> Path:
        """Where a secondary keeps its zone copies (its own PVC, never the shared volume)."""
        return self.work_dir / "secondary"


@dataclass(frozen=True)
class RoleLabel:
    key: str = "role"
    leader: str = "leader"
    standby: str = "standby"


@dataclass(frozen=True)
class Ports:
    dns: int = 53
    rndc: int = 953
    metrics: int = 9110  # the supervisor's HTTP endpoint (/metrics, probes); 0: off
    stats: int = 8053  # named's statistics-channels at localAddress (read by /metrics); 0: off


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key from a mounted Secret file in ``tsig-keygen`` format."""

    name: str
    file: Path
    algorithm: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Grant:
    """One ``update-policy`` rule whose identity is a TSIG key."""

    key: str
    rule: str
    name: str | None = None
    types: tuple[str, ...] = ("ANY",)
    action: str = "grant"


@dataclass(frozen=True)
class NameServer:
    name: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Soa:
    """The SOA of a zone's bootstrap file; ignored once the zone exists on the volume."""

    primary: str
    contact: str
    serial: int = 1
    refresh: int = 3600
    retry: int = 600
    expire: int = 1209600
    minimum: int = 300


@dataclass(frozen=True)
class Zone:
    name: str  # absolute, lower case, with the trailing dot
    soa: Soa
    nameservers: tuple[NameServer, ...]
    ttl: int = 300
    update_policy: tuple[Grant, ...] = ()
    allow_update: tuple[str, ...] = ()
    # Keys that may AXFR/IXFR this zone from the leader beside secondaries.transferKey,
    # such as ExternalDNS's rfc2136 key (it reads the zone to find its own records).
    allow_transfer: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        """File name of the zone in its directory; the journal adds ``.jnl``."""
        base = self.name.rstrip(".") or "root"
        return f"{base}.zone"


@dataclass(frozen=True)
class Secondaries:
    service: str = "bind-secondary"
    transfer_key: str | None = None


@dataclass(frozen=True)
class StorageFencing:
    """``fencing``: how a new Lease holder may take a lock a dead node still holds.

    ``storage: none`` waits for the storage to end the old client's session by itself
    (CephFS: session_autoclose, 300 s by default); ``ceph`` evicts and blocklists the old
    holder's CephFS client at the MDS once the interlocks prove that pod gone
    (docs/supervisor.md). The key needs mds 'allow *' and mon 'allow r' (docs/cephfs.md).
    ``ceph_root`` is the volume's path inside the file system as the MDS reports it
    (a session's ``root``): how the holder's client is found when the holder could not
    record its client id (ceph-csi). ``auto: false`` leaves every eviction to an
    operator (`fence evict`).
    """

    storage: str = "none"  # none | ceph
    ceph_conf: Path = Path("/etc/ceph/ceph.conf")
    ceph_keyring: Path = Path("/etc/ceph/keyring")
    ceph_id: str = "bindha-fencer"
    ceph_mds: str = "cephfs:0"  # the `ceph tell mds.<this>` target: <fs name>:<rank>
    timeout: float = 10.0
    ceph_root: str | None = None  # e.g. /volumes/csi/csi-vol-<uuid>/<uuid>
    auto: bool = True


@dataclass(frozen=True)
class PodEnv:
    """What the downward API tells this process about its pod."""

    name: str | None = None
    namespace: str | None = None
    ip: str | None = None
    node: str | None = None
    uid: str | None = None  # metadata.uid: with the name, it names one incarnation

    @property
    def identity(self) -> str | None:
        """The Lease holder identity: ``<pod name>_<pod UID>`` (DESIGN invariant 13), or
        the name alone when POD_UID is not set."""
        if not self.name:
            return None
        return f"{self.name}{IDENTITY_SEPARATOR}{self.uid}" if self.uid else self.name


# Pod names are DNS subdomains and never hold "_": the separator can be split on.
IDENTITY_SEPARATOR = "_"


def holder_pod(identity: str | None) -> str | None:
    """The pod name in a Lease holder identity (``pod_uid``, or a bare pod name)."""
    return identity.split(IDENTITY_SEPARATOR, 1)[0] if identity else identity


@dataclass(frozen=True)
class Config:
    cluster: str
    namespace: str | None
    lease_name: str
    timing: Timing
    paths: Paths
    role_label: RoleLabel
    ports: Ports
    local_address: str
    keys: dict[str, TsigKey]
    zones: tuple[Zone, ...]
    secondaries: Secondaries
    pod: PodEnv
    acls: dict[str, tuple[str, ...]] = field(default_factory=dict)
    allow_query: tuple[str, ...] = ("any",)
    fencing: StorageFencing = field(default_factory=StorageFencing)
    source: str = ""

    def zone(self, name: str) -> Zone:
        wanted = _absolute(name)
        for zone in self.zones:
            if zone.name == wanted:
                return zone
        raise KeyError(name)


# ---------------------------------------------------------------------------
# loading


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate the config file; raise ConfigError on any problem."""
    file = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"config file {file} does not exist: pass --config PATH, or mount the "
             f"ConfigMap at {DEFAULT_CONFIG_PATH}"]) from None
    except OSError as exc:
        raise ConfigError([f"config file {file} cannot be read: {exc.strerror}"]) from None
    return parse_config(text, env=env, source=source)


# libyaml's loader when PyYAML was built with it: about 8x faster than the pure-Python
# one (0.09 s against 0.74 s for 1,000 zones), paid at every start and config change.
# Same SafeConstructor, and its errors carry the same problem_mark (line, column).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_config(text: str, env: Mapping[str, str] | None = None, source: str = "",
                 read_files: bool = True) -> Config:
    """Validate config text; relative key file paths resolve against the file's folder.

    ``read_files=False``: the files the config names (TSIG keys, the fencer's ceph.conf
    and keyring) are not opened, for a workstation that reads the ConfigMap and never
    holds the keys (`kubectl bindha`); such keys have no secret.
    """
    try:
        data = yaml.load(text, Loader=YAML_LOADER)  # a safe loader, either way
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"not valid YAML{where}: {problem}"], source) from None
    if data is None:
        data = {}
    base_dir = Path(source).parent if source else Path.cwd()
    reader = _Reader(base_dir, read_files)
    config = reader.read(data, os.environ if env is None else env, source)
    if reader.problems:
        raise ConfigError(reader.problems, source)
    assert config is not None
    return config


def normalize_ceph_root(path: str) -> str:
    """"/volumes/csi/x/" and "//volumes/csi/x" are the MDS's "/volumes/csi/x"."""
    return posixpath.normpath("/" + path.strip().lstrip("/"))


_KEYRING_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")
_KEYRING_KEY = re.compile(r"^\s*key\s*=\s*\S+")


def _read_small(path: Path) -> tuple[str | None, str | None]:
    """(text, None), or (None, why it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as readable:
            return readable.read(1 << 20), None
    except OSError as exc:
        return None, exc.strerror or str(exc)


def ceph_conf_problem(path: Path) -> str | None:
    """Why the fencer's ceph.conf is of no use, or None (local checks only)."""
    text, why = _read_small(path)
    if text is None:
        return f"{path} cannot be read ({why}): mount the cluster's ceph.conf there"
    keys = {line.split("=", 1)[0].strip().lower().replace(" ", "_").replace("-", "_")
            for line in text.splitlines() if "=" in line and not line.lstrip().startswith(
                ("#", ";"))}
    if not keys & {"mon_host", "mon_dns_srv_name", "mon_addr"}:
        return (f"{path} names no monitor (no mon_host): the ceph CLI could not find the "
                "cluster; mount the cluster's ceph.conf (the one with mon_host) there")
    return None


def keyring_problem(path: Path, ceph_id: str) -> str | None:
    """Why the keyring holds no key for ``client.<ceph_id>``, or None. Its capabilities
    are the cluster's to judge: the supervisor's start check and `fence evict` ask it."""
    fix = "caps mds 'allow *', mon 'allow r'"
    text, why = _read_small(path)
    if text is None:
        return (f"{path} cannot be read ({why}): mount the fencer key's keyring there (a "
                f"Secret; {fix})")
    sections: dict[str, bool] = {}
    current = None
    for line in text.splitlines():
        header = _KEYRING_SECTION.match(line)
        if header:
            current = header.group(1).strip()
            sections.setdefault(current, False)
        elif current is not None and _KEYRING_KEY.match(line):
            sections[current] = True
    entity = f"client.{ceph_id}"
    if sections.get(entity):
        return None
    found = ", ".join(sorted(sections)) or "none"
    if entity in sections:
        return f"{path} has a [{entity}] section without a key line: export it again " \
               f"with `ceph auth get {entity}`"
    return (f"{path} holds no key for {entity} (keys in it: {found}): set fencing.ceph.id "
            f"to the key's name without 'client.', or mount `ceph auth get {entity}` "
            f"there ({fix})")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as "10s", "500ms" or "1m"."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            number, unit = float(match.group(1)), match.group(2) or "s"
            return number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]
    raise ValueError("a duration such as 10, 10s, 500ms or 1m")


def parse_tsig_key_file(text: str) -> list[tuple[str, str, str]]:
    """(name, algorithm, secret) for each ``key`` clause in tsig-keygen format."""
    found = []
    for match in _KEY_CLAUSE.finditer(text):
        body = match.group(2)
        algorithm = re.search(r"algorithm\s+\"?([\w-]+)\"?\s*;", body)
        secret = re.search(r'secret\s+"([^"]+)"\s*;', body)
        found.append((match.group(1), algorithm.group(1).lower() if algorithm else "",
                      secret.group(1) if secret else ""))
    return found


def _absolute(name: str) -> str:
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


# ---------------------------------------------------------------------------
# validation


class _Reader:
    """Walks the YAML tree, collecting problems instead of stopping at the first."""

    def __init__(self, base_dir: Path, read_files: bool = True) -> None:
        self.base_dir = base_dir
        self.read_files = read_files
        self.problems: list[str] = []
        # Keys whose definition already failed: references to them are not errors twice.
        self.broken_keys: set[str] = set()

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}" if where else message)

    # -- generic helpers -----------------------------------------------------

    def mapping(self, value: Any, where: str, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(where or "top level", f"expected a mapping, got {_show(value)}")
            return {}
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = (f"; did you mean {close[0]!r}?" if close
                        else f"; known keys: {', '.join(known)}")
                self.problem(_join(where, str(key)), f"unknown key{hint}")
        return value

    def string(self, data: dict[str, Any], key: str, where: str, default: str | None,
               pattern: re.Pattern[str] | None = None, fix: str = "") -> str | None:
        value = data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(_join(where, key), f"expected a non-empty string, got {_show(value)}")
            return default
        if pattern is not None and not pattern.match(value):
            self.problem(_join(where, key), f"{value!r} is not valid: {fix}")
            return default
        return value

    def integer(self, data: dict[str, Any], key: str, where: str, default: int,
                low: int, high: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.problem(_join(where, key),
                         f"{_show(value)} is not valid: use a whole number from {low} to {high}")
            return default
        return value

    def duration(self, data: dict[str, Any], key: str, where: str, default: float) -> float:
        value = data.get(key, default)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(_join(where, key), f"{_show(value)} is not valid: use {exc}")
            return default
        if seconds <= 0:
            self.problem(_join(where, key), f"{_show(value)} is not valid: use a positive duration")
            return default
        return seconds

    def path(self, data: dict[str, Any], key: str, where: str, default: Path) -> Path:
        value = data.get(key, str(default))
        if not isinstance(value, str) or not value.startswith("/"):
            self.problem(_join(where, key),
                         f"{_show(value)} is not valid: use an absolute path such as {default}")
            return default
        return Path(value)

    def dns_name(self, value: Any, where: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.problem(where, f"expected a domain name, got {_show(value)}")
            return None
        name = _absolute(value)
        labels = name.rstrip(".").split(".") if name != "." else []
        bad = [label for label in labels if not _LABEL.match(label)]
        if bad or len(name) > 254:
            self.problem(where, f"{value!r} is not a valid domain name: use letters, digits, "
                                "'-' and '_' in dot-separated labels of at most 63 characters")
            return None
        dns.name.from_text(name)  # cannot fail after the checks above
        return name

    # -- sections ------------------------------------------------------------

    def read(self, data: Any, env: Mapping[str, str], source: str) -> Config | None:
        top = self.mapping(data, "", (
            "cluster", "namespace", "lease", "timing", "paths", "roleLabel", "ports",
            "localAddress", "keys", "zones", "secondaries", "acls", "allowQuery", "fencing"))
        cluster = self.string(top, "cluster", "", "bind", _LABEL_VALUE,
                              "use a Kubernetes label value (letters, digits, '-', '_', '.')")
        pod = self.pod_env(env)
        namespace = self.string(top, "namespace", "", None, _LABEL_VALUE,
                                "use a Kubernetes namespace name")
        if namespace and pod.namespace and namespace != pod.namespace:
            self.problem("namespace", f"{namespace!r} differs from POD_NAMESPACE="
                         f"{pod.namespace!r}: remove it from the config or make them agree")
        lease = self.mapping(top.get("lease"), "lease", ("name",))
        lease_name = self.string(lease, "name", "lease", "bind-master-leader", _LABEL_VALUE,
                                 "use a Kubernetes object name (lower case, digits, '-', '.')")
        keys = self.keys(top.get("keys"))
        secondaries = self.secondaries(top.get("secondaries"), keys)
        fencing = self.fencing(top.get("fencing"))
        acls = self.acls(top.get("acls"))
        local_address = top.get("localAddress", "127.0.0.1")
        if not _is_ip(local_address):
            self.problem("localAddress", f"{_show(local_address)} is not an IP address: use the "
                         "address named's controls and local probes use, such as 127.0.0.1")
            local_address = "127.0.0.1"
        return Config(
            cluster=cluster or "bind",
            namespace=pod.namespace or namespace,
            lease_name=lease_name or "bind-master-leader",
            timing=self.timing(top.get("timing")),
            paths=self.paths(top.get("paths")),
            role_label=self.role_label(top.get("roleLabel")),
            ports=self.ports(top.get("ports")),
            local_address=str(local_address),
            keys=keys,
            zones=self.zones(top.get("zones"), keys),
            secondaries=secondaries,
            fencing=fencing,
            acls=acls,
            allow_query=self.allow_query(top.get("allowQuery"), acls),
            pod=pod,
            source=source,
        )

    def pod_env(self, env: Mapping[str, str]) -> PodEnv:
        ip = env.get("POD_IP") or None
        if ip is not None and not _is_ip(ip):
            self.problem("POD_IP", f"{ip!r} is not an IP address: set it from the downward API "
                         "(fieldRef status.podIP)")
            ip = None
        return PodEnv(name=env.get("POD_NAME") or None, namespace=env.get("POD_NAMESPACE") or None,
                      ip=ip, node=env.get("NODE_NAME") or None,
                      uid=env.get("POD_UID") or None)

    def timing(self, value: Any) -> Timing:
        data = self.mapping(value, "timing",
                            ("leaseDuration", "renewDeadline", "retryPeriod", "stopTimeout"))
        d = Timing()
        timing = Timing(
            lease_duration=self.duration(data, "leaseDuration", "timing", d.lease_duration),
            renew_deadline=self.duration(data, "renewDeadline", "timing", d.renew_deadline),
            retry_period=self.duration(data, "retryPeriod", "timing", d.retry_period),
            stop_timeout=self.duration(data, "stopTimeout", "timing", d.stop_timeout),
        )
        # The fence (DESIGN invariant 2): a leader that cannot renew must have named
        # stopped before anyone else may acquire the Lease.
        if timing.retry_period >= timing.renew_deadline:
            self.problem("timing.retryPeriod",
                         f"{timing.retry_period:g}s must be less than renewDeadline "
                         f"({timing.renew_deadline:g}s), or a single failed renewal loses the "
                         "Lease: lower retryPeriod or raise renewDeadline")
        if timing.renew_deadline + timing.stop_timeout >= timing.lease_duration:
            self.problem("timing.leaseDuration",
                         f"renewDeadline + stopTimeout = {timing.renew_deadline:g}s + "
                         f"{timing.stop_timeout:g}s must be less than leaseDuration "
                         f"({timing.lease_duration:g}s), or a cut-off leader may still run named "
                         "when a standby takes the Lease: raise leaseDuration or lower the others")
        return timing

    def paths(self, value: Any) -> Paths:
        names = {"namedConf": "named_conf", "workDir": "work_dir", "dynDir": "dyn_dir",
                 "roleFile": "role_file", "named": "named", "rndc": "rndc", "rndcKey": "rndc_key"}
        data = self.mapping(value, "paths", tuple(names))
        d = Paths()
        values = {attr: self.path(data, key, "paths", getattr(d, attr))
                  for key, attr in names.items()}
        paths = Paths(**values)
        if paths.rndc_key.is_relative_to(paths.dyn_dir):
            self.problem("paths.rndcKey", f"{paths.rndc_key} is on the shared volume: the rndc "
                         "key is per pod; keep it under workDir, outside dynDir")
        return paths

    def role_label(self, value: Any) -> RoleLabel:
        data = self.mapping(value, "roleLabel", ("key", "leader", "standby"))
        d = RoleLabel()
        fix = "use a Kubernetes label value (letters, digits, '-', '_', '.')"
        label = RoleLabel(
            key=self.string(data, "key", "roleLabel", d.key, _LABEL_KEY,
                            "use a Kubernetes label key such as role or bindha.io/role") or d.key,
            leader=self.string(data, "leader", "roleLabel", d.leader, _LABEL_VALUE, fix)
            or d.leader,
            standby=self.string(data, "standby", "roleLabel", d.standby, _LABEL_VALUE, fix)
            or d.standby,
        )
        if label.leader == label.standby:
            self.problem("roleLabel.standby", f"{label.standby!r} equals roleLabel.leader: the "
                         "leader-only Service selects on it, so use two different values")
        return label

    def ports(self, value: Any) -> Ports:
        data = self.mapping(value, "ports", ("dns", "rndc", "metrics", "stats"))
        ports = Ports(dns=self.integer(data, "dns", "ports", 53, 1, 65535),
                      rndc=self.integer(data, "rndc", "ports", 953, 1, 65535),
                      metrics=self.integer(data, "metrics", "ports", 9110, 0, 65535),
                      stats=self.integer(data, "stats", "ports", 8053, 0, 65535))
        if ports.dns == ports.rndc:
            self.problem("ports.rndc", f"{ports.rndc} equals ports.dns: use another port")
        if ports.metrics in (ports.dns, ports.rndc):
            self.problem("ports.metrics", f"{ports.metrics} is taken by ports.dns or "
                         "ports.rndc: use another port, or 0 to turn metrics off")
        if ports.stats and ports.stats in (ports.dns, ports.rndc, ports.metrics):
            self.problem("ports.stats", f"{ports.stats} is taken by ports.dns, ports.rndc or "
                         "ports.metrics: use another port, or 0 to turn named's statistics "
                         "off")
        return ports

    def keys(self, value: Any) -> dict[str, TsigKey]:
        keys: dict[str, TsigKey] = {}
        if value is None:
            return keys
        if not isinstance(value, list):
            self.problem("keys", f"expected a list of {{name, file}}, got {_show(value)}")
            return keys
        for i, item in enumerate(value):
            where = f"keys[{i}]"
            data = self.mapping(item, where, ("name", "file"))
            name = self.string(data, "name", where, None, _KEY_NAME,
                               "use letters, digits, '-', '_' and '.'")
            file_value = self.string(data, "file", where, None)
            if name is None or file_value is None:
                if "name" not in data or "file" not in data:
                    self.problem(where, "needs both name and file (a tsig-keygen key file, "
                                 "usually a mounted Secret)")
                continue
            if name in keys:
                self.problem(f"{where}.name", f"key {name!r} is defined twice: remove one")
                continue
            key = self.key_file(name, file_value, f"{where}.file")
            if key is None:
                self.broken_keys.add(name)
            else:
                keys[name] = key
        return keys

    def key_file(self, name: str, file_value: str, where: str) -> TsigKey | None:
        file = Path(file_value)
        if not file.is_absolute():
            file = self.base_dir / file
        if not self.read_files:
            return TsigKey(name, file, "", "")
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            self.problem(where, f"{file} cannot be read ({exc.strerror}): mount the Secret there "
                         f"or create it with `tsig-keygen -a hmac-sha256 {name} > {file}`")
            return None
        clauses = parse_tsig_key_file(text)
        match = [c for c in clauses if c[0] == name]
        if not match:
            found = ", ".join(c[0] for c in clauses) or "none"
            self.problem(where, f"{file} has no `key \"{name}\"` clause (found: {found}): "
                         f"create it with `tsig-keygen -a hmac-sha256 {name}`")
            return None
        _, algorithm, secret = match[0]
        if algorithm not in TSIG_ALGORITHMS:
            self.problem(where, f"{file}: algorithm {algorithm or '(none)'!r} of key {name!r} is "
                         f"not supported: use one of {', '.join(TSIG_ALGORITHMS)}")
            return None
        try:
            if not secret or not base64.b64decode(secret, validate=True):
                raise binascii.Error
        except (binascii.Error, ValueError):
            self.problem(where, f"{file}: the secret of key {name!r} is not base64: regenerate "
                         f"it with `tsig-keygen -a {algorithm} {name}`")
            return None
        return TsigKey(name=name, file=file, algorithm=algorithm, secret=secret)

    def fencing(self, value: Any) -> StorageFencing:
        data = self.mapping(value, "fencing", ("storage", "ceph"))
        d = StorageFencing()
        storage = data.get("storage", d.storage)
        if storage not in ("none", "ceph"):
            self.problem("fencing.storage", f"{_show(storage)} is not a storage fence: use "
                         "none (wait for the storage) or ceph (evict at the MDS)")
            storage = d.storage
        ceph = self.mapping(data.get("ceph"), "fencing.ceph",
                            ("conf", "keyring", "id", "mds", "timeout", "root", "auto"))
        root = self.string(ceph, "root", "fencing.ceph", None)
        if root is not None and not root.startswith("/"):
            self.problem("fencing.ceph.root", f"{root!r} is not valid: use the volume's "
                         "absolute path in the file system, as `ceph tell mds.<fs>:0 session "
                         "ls` shows it in a session's root (e.g. /volumes/csi/csi-vol-<id>/<id>)")
            root = None
        auto = ceph.get("auto", d.auto)
        if not isinstance(auto, bool):
            self.problem("fencing.ceph.auto", f"{_show(auto)} is not valid: use true (a "
                         "blocked standby evicts by itself) or false (only `fence evict`)")
            auto = d.auto
        fence = StorageFencing(
            storage=storage,
            ceph_conf=self.path(ceph, "conf", "fencing.ceph", d.ceph_conf),
            ceph_keyring=self.path(ceph, "keyring", "fencing.ceph", d.ceph_keyring),
            ceph_id=self.string(ceph, "id", "fencing.ceph", d.ceph_id) or d.ceph_id,
            ceph_mds=self.string(ceph, "mds", "fencing.ceph", d.ceph_mds) or d.ceph_mds,
            timeout=self.duration(ceph, "timeout", "fencing.ceph", d.timeout),
            ceph_root=normalize_ceph_root(root) if root else None, auto=auto)
        if storage == "ceph" and self.read_files:
            for key, problem in (("conf", ceph_conf_problem(fence.ceph_conf)),
                                 ("keyring", keyring_problem(fence.ceph_keyring,
                                                             fence.ceph_id))):
                if problem:
                    self.problem(f"fencing.ceph.{key}", problem)
        return fence

    def secondaries(self, value: Any, keys: dict[str, TsigKey]) -> Secondaries:
        data = self.mapping(value, "secondaries", ("service", "transferKey"))
        service = self.string(data, "service", "secondaries", "bind-secondary", _LABEL_VALUE,
                              "use the name of the secondaries' headless Service")
        transfer_key = self.string(data, "transferKey", "secondaries", None)
        if (transfer_key is not None and transfer_key not in keys
                and transfer_key not in self.broken_keys):
            self.problem("secondaries.transferKey", f"{transfer_key!r} is not in keys: add it "
                         f"there (known: {', '.join(keys) or 'none'})")
        return Secondaries(service=service or "bind-secondary", transfer_key=transfer_key)

    def acls(self, value: Any) -> dict[str, tuple[str, ...]]:
        """Named address match lists: ``{name: [CIDR or IP, ...]}``."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem("acls", f"expected a mapping of name to address list, got "
                         f"{_show(value)}")
            return {}
        acls: dict[str, tuple[str, ...]] = {}
        for name, entries in value.items():
            where = f"acls.{name}"
            if not isinstance(name, str) or not _ACL_NAME.match(name) or name in BUILTIN_ACLS:
                self.problem(where, f"{name!r} is not a usable ACL name: use letters, digits, "
                             f"'-' and '_', and none of {', '.join(BUILTIN_ACLS)}")
                continue
            if not isinstance(entries, list) or not entries:
                self.problem(where, "expected a non-empty list of CIDRs or IP addresses")
                continue
            good = [self.network(e, f"{where}[{i}]") for i, e in enumerate(entries)]
            if all(good):
                acls[name] = tuple(g for g in good if g)
        return acls

    def network(self, value: Any, where: str) -> str | None:
        try:
            return str(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            self.problem(where, f"{_show(value)} is not an IP address or CIDR such as "
                         "10.0.0.0/8")
            return None

    def allow_query(self, value: Any, acls: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
        """Who may query: ACL names, built-in ACLs, CIDRs. Default: any."""
        if value is None:
            return ("any",)
        if not isinstance(value, list) or not value:
            self.problem("allowQuery", f"expected a list such as [any] or [internal, "
                         f"10.0.0.0/8], got {_show(value)}")
            return ("any",)
        result = []
        for i, item in enumerate(value):
            if isinstance(item, str) and (item in BUILTIN_ACLS or item in acls):
                result.append(item)
            elif isinstance(item, str) and _ACL_NAME.match(item) and "/" not in item \
                    and not _is_ip(item):
                self.problem(f"allowQuery[{i}]", f"{item!r} is not an ACL: define it under "
                             f"acls (known: {', '.join(acls) or 'none'}) or use one of "
                             f"{', '.join(BUILTIN_ACLS)}")
            else:
                network = self.network(item, f"allowQuery[{i}]")
                if network:
                    result.append(network)
        return tuple(result) or ("any",)

    def zones(self, value: Any, keys: dict[str, TsigKey]) -> tuple[Zone, ...]:
        if value is None:
            value = []
        if not isinstance(value, list):
            self.problem("zones", f"expected a list of zones, got {_show(value)}")
            return ()
        zones: list[Zone] = []
        seen: set[str] = set()
        for i, item in enumerate(value):
            zone = self.zone(item, f"zones[{i}]", keys)
            if zone is None:
                continue
            if zone.name in seen:
                self.problem(f"zones[{i}].name", f"zone {zone.name} is listed twice: remove one")
                continue
            seen.add(zone.name)
            zones.append(zone)
        return tuple(zones)

    def zone(self, item: Any, where: str, keys: dict[str, TsigKey]) -> Zone | None:
        data = self.mapping(item, where, ("name", "ttl", "soa", "nameservers", "updatePolicy",
                                          "allowUpdate", "allowTransfer"))
        if "name" not in data:
            self.problem(where, "needs a name, such as example.com")
            return None
        name = self.dns_name(data["name"], f"{where}.name")
        if name is None:
            return None
        nameservers = self.nameservers(data.get("nameservers"), f"{where}.nameservers", name)
        policy = self.update_policy(data.get("updatePolicy"), f"{where}.updatePolicy", keys)
        allow = self.allow_update(data.get("allowUpdate"), f"{where}.allowUpdate", keys)
        transfer = self.allow_transfer(data.get("allowTransfer"), f"{where}.allowTransfer",
                                       keys)
        if "updatePolicy" in data and "allowUpdate" in data:
            self.problem(where, "has both updatePolicy and allowUpdate: BIND takes only one; "
                         "keep updatePolicy")
        elif "updatePolicy" not in data and "allowUpdate" not in data:
            self.problem(where, f"zone {name} takes no updates: give it updatePolicy "
                         "(preferred) or allowUpdate with a TSIG key")
        ttl = self.integer(data, "ttl", where, 300, 0, 2147483647)
        soa = self.soa(data.get("soa"), f"{where}.soa", name, nameservers)
        if not nameservers or soa is None or not (policy or allow):
            return None
        return Zone(name=name, soa=soa, nameservers=nameservers, ttl=ttl,
                    update_policy=policy, allow_update=allow, allow_transfer=transfer)

    def nameservers(self, value: Any, where: str, zone: str) -> tuple[NameServer, ...]:
        if not isinstance(value, list) or not value:
            self.problem(where, f"zone {zone} needs at least one name server, such as "
                         f"[ns1.{zone}] with its addresses, for its bootstrap NS records")
            return ()
        result = []
        for i, item in enumerate(value):
            at = f"{where}[{i}]"
            if isinstance(item, str):
                item = {"name": item}
            data = self.mapping(item, at, ("name", "addresses"))
            name = self.dns_name(data.get("name"), f"{at}.name")
            if name is None:
                continue
            addresses = data.get("addresses", [])
            if not isinstance(addresses, list) or not all(_is_ip(a) for a in addresses):
                self.problem(f"{at}.addresses", f"{_show(addresses)} is not a list of IP "
                             "addresses")
                addresses = []
            in_zone = zone == "." or name == zone or name.endswith("." + zone)
            if in_zone and not addresses:
                self.problem(at, f"{name} lies inside zone {zone}, so named needs its address "
                             "(glue) to load the zone: add addresses: [IP, ...]")
            result.append(NameServer(name=name, addresses=tuple(str(a) for a in addresses)))
        return tuple(result)

    def soa(self, value: Any, where: str, zone: str,
            nameservers: tuple[NameServer, ...]) -> Soa | None:
        data = self.mapping(value, where, ("primary", "contact", "serial", "refresh", "retry",
                                           "expire", "minimum"))
        primary = (self.dns_name(data["primary"], f"{where}.primary") if "primary" in data
                   else nameservers[0].name if nameservers else None)
        contact = (self.dns_name(data["contact"], f"{where}.contact") if "contact" in data
                   else "hostmaster." + (zone if zone != "." else ""))
        if primary is None or contact is None:
            return None
        d = Soa(primary=primary, contact=contact)
        return Soa(
            primary=primary,
            contact=contact,
            serial=self.integer(data, "serial", where, d.serial, 0, 4294967295),
            refresh=self.integer(data, "refresh", where, d.refresh, 1, 2147483647),
            retry=self.integer(data, "retry", where, d.retry, 1, 2147483647),
            expire=self.integer(data, "expire", where, d.expire, 1, 2147483647),
            minimum=self.integer(data, "minimum", where, d.minimum, 0, 2147483647),
        )

    def update_policy(self, value: Any, where: str,
                      keys: dict[str, TsigKey]) -> tuple[Grant, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            self.problem(where, f"expected a list of rules such as [{{key: update-key, "
                         f"rule: zonesub}}], got {_show(value)}")
            return ()
        grants = []
        for i, item in enumerate(value):
            at = f"{where}[{i}]"
            data = self.mapping(item, at, ("key", "rule", "name", "types", "action"))
            key = self.key_ref(data.get("key"), f"{at}.key", keys)
            rule = data.get("rule", "zonesub")
            rules = GRANT_RULES_WITH_NAME + GRANT_RULES_WITHOUT_NAME
            if rule not in rules:
                self.problem(f"{at}.rule", f"{_show(rule)} is not supported: use one of "
                             f"{', '.join(rules)}")
                continue
            name = None
            if rule in GRANT_RULES_WITH_NAME:
                if "name" not in data:
                    self.problem(at, f"rule {rule} needs a name (the owner name it grants)")
                    continue
                name = self.dns_name(str(data["name"]).replace("*", "x", 1), f"{at}.name")
                if name is None:
                    continue
                name = _absolute(str(data["name"]))
            elif "name" in data:
                self.problem(f"{at}.name", f"rule {rule} takes no name: remove it")
            types = data.get("types", ["ANY"])
            if isinstance(types, str):
                types = [types]
            good_types = []
            for t in types if isinstance(types, list) else [types]:
                try:
                    dns.rdatatype.from_text(str(t))
                    good_types.append(str(t).upper())
                except (dns.rdatatype.UnknownRdatatype, ValueError):
                    self.problem(f"{at}.types", f"{_show(t)} is not a record type: use names "
                                 "such as A, AAAA, TXT, CNAME or ANY")
            action = data.get("action", "grant")
            if action not in ("grant", "deny"):
                self.problem(f"{at}.action", f"{_show(action)} is not valid: use grant or deny")
                continue
            if key is not None and good_types:
                grants.append(Grant(key=key, rule=rule, name=name, types=tuple(good_types),
                                    action=action))
        return tuple(grants)

    def allow_update(self, value: Any, where: str, keys: dict[str, TsigKey]) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            self.problem(where, f"expected a list of TSIG key names, got {_show(value)}")
            return ()
        names = [self.key_ref(item, f"{where}[{i}]", keys) for i, item in enumerate(value)]
        return tuple(n for n in names if n is not None)

    def allow_transfer(self, value: Any, where: str,
                       keys: dict[str, TsigKey]) -> tuple[str, ...]:
        """``allowTransfer``: more TSIG keys that may transfer the zone from the leader."""
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            self.problem(where, "expected a list of TSIG key names from keys (such as "
                         f"[external-dns]), got {_show(value)}: list them, or remove "
                         "allowTransfer")
            return ()
        names: list[str] = []
        for i, item in enumerate(value):
            name = self.key_ref(item, f"{where}[{i}]", keys)
            if name is None:
                continue
            if name in names:
                self.problem(f"{where}[{i}]", f"key {name!r} is listed twice: remove one")
                continue
            names.append(name)
        return tuple(names)

    def key_ref(self, value: Any, where: str, keys: dict[str, TsigKey]) -> str | None:
        if not isinstance(value, str) or not value:
            self.problem(where, f"expected the name of a key from keys, got {_show(value)}")
            return None
        if value not in keys:
            if value not in self.broken_keys:
                self.problem(where, f"key {value!r} is not defined: add it to keys "
                             f"(known: {', '.join(keys) or 'none'})")
            return None
        return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return isinstance(value, str)
