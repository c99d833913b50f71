"""Command line: argument parsing and exit codes, nothing else.

Exit codes: 0 done; 1 a runtime failure (a BIND tool refused, a process failed);
2 bad input (config, flags), reported without a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bindha_rwx import __version__
from bindha_rwx.bindtools import BindToolError, check_conf
from bindha_rwx.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    holder_pod,
    load_config,
)
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


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH),
                        help=f"config file (default {DEFAULT_CONFIG_PATH})")


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
    _add_config(render)
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
    _add_config(run)
    run.set_defaults(handler=_run)

    secondary = commands.add_parser(
        "secondary", help="the secondary pod's supervisor: follow whichever master leads",
        description="Run named with every zone as a secondary of the current leader (from "
                    "the Lease), re-pointed within one watch event when the leader changes. "
                    "Needs POD_IP and POD_NAMESPACE (or namespace in the config).")
    _add_config(secondary)
    secondary.set_defaults(handler=_secondary)

    status = commands.add_parser(
        "status", help="one screen: Lease, lock, epoch, pods, zone serials and lag",
        description="Read-only. Works in a pod or from a workstation with a kubeconfig.")
    _add_config(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    fence = commands.add_parser(
        "fence", help="the storage lock when automation may not decide: status, evict, break",
        description="`fence status` reads; `fence evict --confirm-dead POD` evicts that pod's "
                    "CephFS client at the MDS (fencing.storage: ceph), so its lock frees and "
                    "the blocked standby takes over; `fence break --confirm-dead POD` moves to "
                    "a new lock generation. Both after their interlocks (see "
                    "docs/runbooks/stale-lock.md).")
    fence.add_argument("action", choices=("status", "evict", "break"))
    _add_config(fence)
    fence.add_argument("--confirm-dead", metavar="POD",
                       help="(evict, break) the pod that holds the lock and can no longer "
                            "write")
    fence.add_argument("--force", action="store_true",
                       help="(evict, break) override the interlocks (the pod looks alive); "
                            "the reasons are recorded")
    fence.add_argument("--yes", action="store_true", help="(evict, break) do not ask")
    fence.add_argument("--delete-pod", action="store_true",
                       help="(break) also delete the dead pod with grace 0")
    fence.add_argument("--json", action="store_true", help="machine-readable output")
    fence.set_defaults(handler=_fence)

    switchover = commands.add_parser(
        "switchover", help="planned handover from the leader to a standby",
        description="The leader leaves the Service, stops named, unlocks and releases the "
                    "Lease; the chosen standby takes it. Others stay out meanwhile.")
    switchover.add_argument("--to", metavar="POD", help="the standby to hand over to "
                            "(default: the first ready one)")
    _add_config(switchover)
    switchover.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                            help="how long to wait for the new leader (default 30)")
    switchover.add_argument("--cancel", action="store_true",
                            help="withdraw a pending switchover request")
    switchover.set_defaults(handler=_switchover)
    for name, text in (("pause", "maintenance: no automatic takeover until resume"),
                       ("resume", "end maintenance: automatic takeover again")):
        sub = commands.add_parser(name, help=text, description=text + ". The state lives "
                                  "on the Lease's annotations; status shows it.")
        _add_config(sub)
        sub.set_defaults(handler=_pause_resume)

    probe = commands.add_parser(
        "probe", help="exec probes: live (the watchdog) and ready",
        description="Exit 0 when healthy, 1 when not, with one line saying why. Answers in "
                    "under a second; reads only local state, plus a DNS query for ready.")
    probe.add_argument("kind", choices=("live", "ready"))
    _add_config(probe)
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
    from bindha_rwx.log import install
    from bindha_rwx.master import Master

    install()  # the libraries' log records as our JSON lines too
    return Master(config, _api(), Path(args.config)).run()  # type: ignore[arg-type]


def _secondary(args: argparse.Namespace) -> int:
    config = _pod_config(args.config, ("POD_IP", "POD_NAMESPACE"))
    if not config.secondaries.transfer_key:
        raise UsageError("secondaries.transferKey is not set: a secondary transfers zones "
                         "with TSIG only; name a key from keys")
    from bindha_rwx.log import install
    from bindha_rwx.secondary import Secondary

    install()
    return Secondary(config, _api(), Path(args.config)).run()  # type: ignore[arg-type]


def _ops(args: argparse.Namespace) -> object:
    """The Ops for this command: the caller's (``args.ops``, `kubectl bindha`), or one
    from the pod's config file and credentials."""
    if getattr(args, "ops", None) is not None:
        return args.ops
    from bindha_rwx.ops import Ops

    return Ops(_pod_config(args.config, ("POD_NAMESPACE",)), _api())  # type: ignore[arg-type]


def _show(data: object, as_json: bool) -> None:
    from bindha_rwx.ops import render_text

    print(json.dumps(data, indent=2, default=str) if as_json else render_text(data))


def _status(args: argparse.Namespace) -> int:
    from bindha_rwx.ops import OpsError

    try:
        _show(_ops(args).status(pod_network=getattr(args, "pod_network", True)),  # type: ignore[attr-defined]
              args.json)
    except OpsError as exc:
        print(f"bindha-rwx status: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _fence(args: argparse.Namespace) -> int:
    from bindha_rwx.cephfence import StorageFenceSetupError
    from bindha_rwx.ops import OpsError

    if args.action != "status" and not args.confirm_dead:
        raise UsageError(f"fence {args.action} needs --confirm-dead POD: the pod that holds "
                         "the lock and can no longer write")
    if args.delete_pod and args.action != "break":
        raise UsageError("--delete-pod goes with fence break only")
    ops = _ops(args)
    try:
        if args.action == "status":
            _show(ops.fence_status(), args.json)  # type: ignore[attr-defined]
            return EXIT_OK

        def confirm(question: str) -> bool:
            if args.yes:
                return True
            if not sys.stdin.isatty():
                raise OpsError("no terminal to ask on: add --yes once you are sure")
            return input(question).strip().lower() == "yes"

        if args.action == "evict":
            evicted = ops.fence_evict(args.confirm_dead, args.force,  # type: ignore[attr-defined]
                                      confirm)
            _say_evicted(evicted, ops.config)  # type: ignore[attr-defined]
            return EXIT_OK
        done = ops.fence_break(args.confirm_dead, args.force, confirm,  # type: ignore[attr-defined]
                               args.delete_pod)
    except StorageFenceSetupError as exc:
        print(f"bindha-rwx fence {args.action}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OpsError as exc:
        print(f"bindha-rwx fence {args.action}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"fence broken: lock generation {done['generation'][0]} -> {done['generation'][1]}, "
          f"epoch {done['epoch']}; Lease cleared: {done['lease_cleared']}; pod deleted: "
          f"{done['pod_deleted']}; recorded in .bindha/fence.log")
    return EXIT_OK


def _say_evicted(record: dict[str, object], config: Config) -> None:
    """What `fence evict` did, and what to watch: it changes no lock generation."""
    holder = record.get("lease_holder")
    clients = ", ".join(record["clients"])  # type: ignore[arg-type]
    forced = " (forced over the interlocks)" if record.get("forced") else ""
    print(f"evicted {clients} of {record['pod']} at the MDS{forced}: blocklisted, it can never "
          f"write again ({record['basis']}); recorded in .bindha/fence.log, Event "
          "StorageFenced")
    who = (f"{holder}, which holds the Lease," if holder and holder != record["pod"]
           else "the next pod to hold the Lease")
    print(f"the lock frees by itself (no lock generation change): {who} takes it within "
          f"retryPeriod ({config.timing.retry_period:g}s) and logs fence.acquired, then "
          "named.serving")
    print(f"watch: `bindha-rwx fence status` (lock_owner becomes {holder or 'the new leader'}), "
          f"`bindha-rwx status`; if it stays blocked, see docs/runbooks/stale-lock.md")
    if record.get("event_error"):
        print(f"note: the Event could not be written: {record['event_error']}")


def _switchover(args: argparse.Namespace) -> int:
    import time

    from bindha_rwx.ops import OpsError

    ops = _ops(args)
    if args.cancel:
        if args.to:
            raise UsageError("--cancel takes no --to: it withdraws whatever request is "
                             "pending")
        try:
            withdrawn = ops.cancel_switchover()  # type: ignore[attr-defined]
        except OpsError as exc:
            print(f"bindha-rwx switchover: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"switchover to {withdrawn} withdrawn" if withdrawn
              else "no switchover request was pending")
        return EXIT_OK
    try:
        before = ops.read_lease()  # type: ignore[attr-defined]
        target = ops.switchover(args.to)  # type: ignore[attr-defined]
        print(f"switchover requested: {holder_pod(before.holder)} -> {target}")
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            record = ops.read_lease()  # type: ignore[attr-defined]
            if record is not None and holder_pod(record.holder) == target:
                print(f"{target} leads now")
                return EXIT_OK
            time.sleep(0.2)
    except OpsError as exc:
        print(f"bindha-rwx switchover: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"bindha-rwx switchover: {target} did not take the Lease within {args.wait:g}s; "
          "see `bindha-rwx status` and its pod's log", file=sys.stderr)
    return EXIT_FAILURE


def _pause_resume(args: argparse.Namespace) -> int:
    from bindha_rwx.ops import OpsError

    try:
        getattr(_ops(args), args.command)()
    except OpsError as exc:
        print(f"bindha-rwx {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print("paused: no automatic takeover until `bindha-rwx resume`" if args.command == "pause"
          else "resumed: automatic takeover again")
    return EXIT_OK


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
