"""named.conf and bootstrap zone text, as pure functions of the config.

The text is all we produce; BIND's own ``named-checkconf`` and ``named-checkzone``
(see bindtools) judge it. Secrets never appear in the text: TSIG and rndc keys are
``include``d from their files, so a rendered config can be printed and logged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from bindha_rwx.config import Config, ConfigError, Grant, Zone

RNDC_KEY_NAME = "bindha-rndc"
RATE_LIMIT = 1000  # notify-rate / serial-query-rate, per second; see _options
_INDENT = "    "


def render_primary(config: Config, also_notify: Sequence[str] = ()) -> str:
    """The leader's named.conf: primary zones on the shared volume.

    ``also_notify`` holds the secondaries' current IPs (DESIGN R9); with
    ``notify explicit`` they are the only NOTIFY targets, so NS records that point at
    the load balancer (or anywhere else) never receive NOTIFYs.
    """
    notify_targets = sorted(set(also_notify), key=_ip_sort_key)
    parts = [_header(config, "primary"), _includes(config), _acls(config),
             _options(config, "primary"),
             _controls(config), _statistics(config), _logging()]
    parts += [_primary_zone(config, zone, notify_targets) for zone in config.zones]
    return "\n".join(parts)


def render_secondary(config: Config, primary_ip: str) -> str:
    """A secondary's named.conf: every zone pulled from ``primary_ip`` (the leader).

    Transfers are TSIG-signed, so a secondary needs ``secondaries.transferKey``.
    """
    if not config.secondaries.transfer_key:
        raise ConfigError(["secondaries.transferKey: not set, and a secondary transfers "
                           "zones with TSIG only: name a key from keys"], config.source)
    parts = [_header(config, "secondary"), _includes(config), _acls(config),
             _options(config, "secondary"),
             _controls(config), _statistics(config), _logging()]
    parts += [_secondary_zone(config, zone, primary_ip) for zone in config.zones]
    return "\n".join(parts)


def render_bootstrap_zone(zone: Zone) -> str:
    """A minimal valid zone file (SOA, NS, glue) for a zone not yet on the volume."""
    soa = zone.soa
    lines = [
        "; Bootstrap zone written by bindha-rwx. named owns this file from now on;",
        "; change the zone with dynamic updates (nsupdate), never by editing it.",
        f"$ORIGIN {zone.name}",
        f"$TTL {zone.ttl}",
        f"@ IN SOA {soa.primary} {soa.contact} ( {soa.serial} {soa.refresh} {soa.retry} "
        f"{soa.expire} {soa.minimum} )",
    ]
    lines += [f"@ IN NS {ns.name}" for ns in zone.nameservers]
    for ns in zone.nameservers:
        for address in ns.addresses:
            rtype = "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
            lines.append(f"{ns.name} IN {rtype} {address}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------


def _header(config: Config, role: str) -> str:
    pod = config.pod.name or "(no POD_NAME)"
    return (f"# named.conf rendered by bindha-rwx for pod {pod}, role {role}, cluster "
            f"{config.cluster}.\n# Do not edit: it is rendered again at every start and "
            "reload. Change the bindha config instead.\n")


def _includes(config: Config) -> str:
    files = [key.file for key in config.keys.values()] + [config.paths.rndc_key]
    return "".join(f'include "{_quote(str(f))}";\n' for f in files)


def _acls(config: Config) -> str:
    return "".join(f"acl {name} {_list(entries)};\n" for name, entries in config.acls.items())


def _listen_addresses(config: Config) -> list[str]:
    addresses = [config.pod.ip] if config.pod.ip else []
    if config.local_address not in addresses:
        addresses.append(config.local_address)
    return addresses


def _options(config: Config, role: str) -> str:
    addresses = _listen_addresses(config)
    v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
    v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
    port = config.ports.dns
    lines = [
        f'directory "{_quote(str(config.paths.work_dir))}";',
        "pid-file none;",
        f'session-keyfile "{_quote(str(config.paths.work_dir / "session.key"))}";',
        f"listen-on port {port} {_list(v4) if v4 else '{ none; }'};",
        f"listen-on-v6 port {port} {_list(v6) if v6 else '{ none; }'};",
        f"allow-query {_list(config.allow_query)};",
        "recursion no;",
        "allow-recursion { none; };",
        "dnssec-validation no;",
        "version none;",
        "allow-transfer { none; };",
    ]
    # BIND paces NOTIFYs (notify-rate) and a secondary's refresh SOA queries
    # (serial-query-rate) with a rate limiter whose tick is 10/rate seconds for rates
    # above 10: the default 20/s means a 0.5 s tick, so the second secondary got its
    # NOTIFY 0.5 s after the first, and a NOTIFY queued behind a refresh waited as
    # long (benchmarks/propagation.py). 1000/s gives a 10 ms tick.
    if role == "primary":
        lines += [
            "# NOTIFY goes to also-notify only (the secondaries' pod IPs), at once.",
            "notify explicit;",
            "notify-delay 0;",
            f"notify-rate {RATE_LIMIT};",
        ]
    else:
        lines += ["notify no;", "allow-update { none; };", f"serial-query-rate {RATE_LIMIT};"]
    if config.pod.ip:
        # NOTIFY and transfers leave from the pod IP, the address the peer's ACLs know.
        keyword = "" if ipaddress.ip_address(config.pod.ip).version == 4 else "-v6"
        lines += [f"notify-source{keyword} {config.pod.ip};",
                  f"transfer-source{keyword} {config.pod.ip};"]
    return "options {\n" + "".join(f"{_INDENT}{line}\n" for line in lines) + "};\n"


def _controls(config: Config) -> str:
    local = config.local_address
    return (f"controls {{\n{_INDENT}inet {local} port {config.ports.rndc} allow {{ {local}; }} "
            f'keys {{ "{RNDC_KEY_NAME}"; }};\n}};\n')


def _statistics(config: Config) -> str:
    """named's statistics-channels, for the supervisor only (localAddress): its /metrics
    turns them into Prometheus series (bindha_rwx.namedstats), for both roles."""
    if not config.ports.stats:
        return ""
    local = config.local_address
    return (f"statistics-channels {{\n{_INDENT}inet {local} port {config.ports.stats} "
            f"allow {{ {local}; }};\n}};\n")


def _logging() -> str:
    # named -f honours this block (named -g would ignore it): everything to stderr.
    return (
        "logging {\n"
        f"{_INDENT}channel to_stderr {{ stderr; severity info; print-time iso8601-utc; "
        "print-category yes; print-severity yes; };\n"
        f"{_INDENT}category default {{ to_stderr; }};\n"
        f"{_INDENT}category lame-servers {{ null; }};\n"
        "};\n"
    )


def _primary_zone(config: Config, zone: Zone, also_notify: Sequence[str]) -> str:
    file = config.paths.dyn_dir / zone.file_name
    lines = ["type primary;", f'file "{_quote(str(file))}";']
    if zone.update_policy:
        grants = " ".join(_grant(g) for g in zone.update_policy)
        lines.append(f"update-policy {{ {grants} }};")
    else:
        keys = " ".join(f'key "{k}";' for k in zone.allow_update)
        lines.append(f"allow-update {{ {keys} }};")
    transfer_key = config.secondaries.transfer_key
    # The secondaries' key first, then the zone's allowTransfer keys (ExternalDNS's, say).
    transfer_keys = list(dict.fromkeys(
        ([transfer_key] if transfer_key else []) + list(zone.allow_transfer)))
    if transfer_keys:
        allowed = " ".join(f'key "{k}";' for k in transfer_keys)
        lines.append(f"allow-transfer {{ {allowed} }};")
    else:
        lines.append("allow-transfer { none; };  # no secondaries.transferKey configured")
    signed = f' key "{transfer_key}"' if transfer_key else ""
    targets = " ".join(f"{ip} port {config.ports.dns}{signed};" for ip in also_notify)
    lines.append(f"also-notify {{ {targets} }};" if targets else "also-notify { };")
    return _zone_block(zone, lines)


def _secondary_zone(config: Config, zone: Zone, primary_ip: str) -> str:
    file = config.paths.secondary_dir / zone.file_name
    key = config.secondaries.transfer_key
    lines = [
        "type secondary;",
        f'file "{_quote(str(file))}";',
        "masterfile-format text;",
        f'primaries {{ {primary_ip} port {config.ports.dns} key "{key}"; }};',
        f"allow-notify {{ {primary_ip}; }};",
    ]
    return _zone_block(zone, lines)


def _zone_block(zone: Zone, lines: Iterable[str]) -> str:
    body = "".join(f"{_INDENT}{line}\n" for line in lines)
    return f'zone "{zone.name}" {{\n{body}}};\n'


def _grant(grant: Grant) -> str:
    name = f" {grant.name}" if grant.name else ""
    return f'{grant.action} "{grant.key}" {grant.rule}{name} {" ".join(grant.types)};'


def _list(addresses: Iterable[str]) -> str:
    return "{ " + " ".join(f"{a};" for a in addresses) + " }"


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _ip_sort_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))
