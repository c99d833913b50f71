"""Command line: argument parsing and exit codes, nothing else.

Exit codes: 0 done; 1 a runtime failure (a BIND tool refused, a process failed);
2 bad input (config, flags), reported without a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

from bindha_rwx import __version__
from bindha_rwx.bindtools import BindToolError, check_conf
from bindha_rwx.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from bindha_rwx.render import render_primary, render_secondary

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A flag's value is wrong; the message names the flag and the fix."""


def _ip_list(value: str) -> list[str]:
    addresses = [v.strip() for v in value.split(",") if v.strip()]
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{address!r} is not an IP address: give pod IPs separated by commas") from None
    return addresses


def _ip(value: str) -> str:
    addresses = _ip_list(value)
    if len(addresses) != 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give exactly one IP address")
    return addresses[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bindha-rwx",
        description="Active/passive high availability for ISC BIND 9 on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"bindha-rwx {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    render = commands.add_parser(
        "render", help="print the named.conf this pod would run",
        description="Print the named.conf this pod would run, checked by named-checkconf. "
                    "It reads the config and the pod's env (POD_NAME, POD_NAMESPACE, POD_IP, "
                    "NODE_NAME) and writes nothing.")
    render.add_argument("--config", default=str(DEFAULT_CONFIG_PATH),
                        help=f"config file (default {DEFAULT_CONFIG_PATH})")
    render.add_argument("--role", choices=("primary", "secondary"), required=True)
    render.add_argument("--primary", type=_ip, metavar="IP",
                        help="the leader's pod IP (role secondary)")
    render.add_argument("--also-notify", type=_ip_list, default=[], metavar="IP[,IP...]",
                        help="the secondaries' pod IPs (role primary)")
    render.add_argument("--no-check", action="store_true",
                        help="skip named-checkconf (for a machine without BIND)")
    render.set_defaults(handler=_render)

    run = commands.add_parser(
        "run", help="the master pod's supervisor (its entrypoint, PID 1)",
        description="Elect a leader with the Lease, fence the shared volume, and run named "
                    "only while this pod holds both. Needs POD_NAME, POD_NAMESPACE (or "
                    "namespace in the config) and POD_IP. SIGTERM hands over gracefully.")
    run.add_argument("--config", default=str(DEFAULT_CONFIG_PATH),
                     help=f"config file (default {DEFAULT_CONFIG_PATH})")
    run.set_defaults(handler=_run)

    secondary = commands.add_parser(
        "secondary", help="the secondary pod's supervisor: follow whichever master leads",
        description="Run named with every zone as a secondary of the current leader (from "
                    "the Lease), re-pointed within one watch event when the leader changes. "
                    "Needs POD_IP and POD_NAMESPACE (or namespace in the config).")
    secondary.add_argument("--config", default=str(DEFAULT_CONFIG_PATH),
                           help=f"config file (default {DEFAULT_CONFIG_PATH})")
    secondary.set_defaults(handler=_secondary)

    probe = commands.add_parser(
        "probe", help="exec probes: live (the watchdog) and ready",
        description="Exit 0 when healthy, 1 when not, with one line saying why. Answers in "
                    "under a second; reads only local state, plus a DNS query for ready.")
    probe.add_argument("kind", choices=("live", "ready"))
    probe.add_argument("--config", default=str(DEFAULT_CONFIG_PATH),
                       help=f"config file (default {DEFAULT_CONFIG_PATH})")
    probe.set_defaults(handler=_probe)
    return parser


def _render(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.role == "secondary":
        if args.primary is None:
            raise UsageError("--primary IP is required with --role secondary: give the "
                             "leader's pod IP")
        if args.also_notify:
            raise UsageError("--also-notify goes with --role primary only")
        text = render_secondary(config, args.primary)
    else:
        if args.primary is not None:
            raise UsageError("--primary goes with --role secondary only")
        text = render_primary(config, args.also_notify)
    if not args.no_check:
        _require_included_files(config)
        check_conf(text)
    sys.stdout.write(text)
    return EXIT_OK


def _pod_config(path: str, need: tuple[str, ...]) -> Config:
    config = load_config(path)
    values = {"POD_NAME": config.pod.name, "POD_IP": config.pod.ip,
              "POD_NAMESPACE": config.namespace}
    missing = [name for name in need if not values[name]]
    if missing:
        raise UsageError(f"{', '.join(missing)} not set: give the pod these env variables "
                         "from the downward API (see manifests/), or namespace in the config")
    return config


def _api() -> object:
    # Imported here: the supervisors pull in the Kubernetes client, which `render` and
    # the probes do not need (they must answer fast).
    from bindha_rwx.kube import KubeConfigError, api_client

    try:
        return api_client()
    except KubeConfigError as exc:
        raise UsageError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    config = _pod_config(args.config, ("POD_NAME", "POD_IP", "POD_NAMESPACE"))
    from bindha_rwx.master import Master

    return Master(config, _api(), Path(args.config)).run()  # type: ignore[arg-type]


def _secondary(args: argparse.Namespace) -> int:
    config = _pod_config(args.config, ("POD_IP", "POD_NAMESPACE"))
    if not config.secondaries.transfer_key:
        raise UsageError("secondaries.transferKey is not set: a secondary transfers zones "
                         "with TSIG only; name a key from keys")
    from bindha_rwx.secondary import Secondary

    return Secondary(config, _api(), Path(args.config)).run()  # type: ignore[arg-type]


def _probe(args: argparse.Namespace) -> int:
    from bindha_rwx.probes import probe_live, probe_ready

    config = load_config(args.config)
    ok, reason = (probe_live if args.kind == "live" else probe_ready)(config)
    print(f"{args.kind}: {'ok' if ok else 'FAIL'}: {reason}")
    return EXIT_OK if ok else EXIT_FAILURE


def _require_included_files(config: Config) -> None:
    """named-checkconf opens workDir and every included file: say which is missing."""
    if not config.paths.work_dir.is_dir():
        raise UsageError(f"paths.workDir: {config.paths.work_dir} does not exist here, and "
                         "named-checkconf changes into it: pass --no-check to print anyway, "
                         "or run this where the pod's volumes are mounted")
    if not config.paths.rndc_key.exists():
        raise UsageError(f"paths.rndcKey: {config.paths.rndc_key} does not exist yet (the "
                         "supervisor generates it at start), so named-checkconf cannot run: "
                         "pass --no-check, or point paths.rndcKey at an existing key file")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"bindha-rwx: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"bindha-rwx {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BindToolError as exc:
        print(f"bindha-rwx {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
