"""`kubectl bindha`: the operator commands from a workstation, with a kubeconfig only.

kubectl runs any `kubectl-<name>` on the PATH as `kubectl <name>`. This one reads the
config from the cluster's ConfigMap (never the TSIG keys: it opens no file the config
names), talks to the API for what lives there (the Lease and its annotations, the
pods), and runs what needs the pods' network or the shared volume inside a master pod
through the API's exec (`bindha-rwx status`, `bindha-rwx fence ...`), so the laptop
needs neither the pod network nor the volume.

    kubectl bindha [-n NS] [--context C] [--configmap bind-config] status [--json] [--in-pod]
    kubectl bindha switchover [--to POD] [--cancel] [--wait S]
    kubectl bindha pause | resume
    kubectl bindha fence status|evict|break [...]      (in the Lease holder's pod)

Exit codes as `bindha-rwx`: 0 done, 1 failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from bindha_rwx import cli
from bindha_rwx.config import Config, ConfigError, holder_pod, parse_config

API_TIMEOUT = 10.0
EXEC_TIMEOUT = 60.0
CONTAINER = "bind"
CONFIG_IN_POD = "/etc/bindha/config.yaml"


class PluginError(Exception):
    """Something the operator must fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl bindha", description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--namespace", help="the namespace of bindha-rwx (default: "
                        "the kubeconfig context's)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or "
                        "~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--configmap", default="bind-config",
                        help="the ConfigMap holding config.yaml (default bind-config)")
    parser.add_argument("--configmap-key", default="config.yaml")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    status = commands.add_parser("status", help="Lease, roles, pods (from the API)")
    status.add_argument("--json", action="store_true")
    status.add_argument("--in-pod", action="store_true",
                        help="the full `bindha-rwx status` from inside the Lease holder's "
                             "pod: lock, epoch, journals, zone serials and lag")
    switchover = commands.add_parser("switchover", help="planned handover to a standby")
    switchover.add_argument("--to", metavar="POD")
    switchover.add_argument("--wait", type=float, default=30.0, metavar="SECONDS")
    switchover.add_argument("--cancel", action="store_true")
    commands.add_parser("pause", help="no automatic takeover until resume")
    commands.add_parser("resume", help="automatic takeover again")
    fence = commands.add_parser("fence", help="`bindha-rwx fence ...` in the Lease "
                                "holder's pod (or --pod)")
    fence.add_argument("--pod", help="run it in this master pod instead")
    fence.add_argument("rest", nargs=argparse.REMAINDER,
                       help="status | evict --confirm-dead POD --yes | break ...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        api, namespace = _api(args)
        config = _config(api, namespace, args)
        return _dispatch(args, api, config)
    except (PluginError, cli.UsageError) as exc:
        print(f"kubectl bindha: {exc}", file=sys.stderr)
        return cli.EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _api(args: argparse.Namespace) -> tuple[Any, str]:
    from kubernetes import config as kubeconfig
    from kubernetes.config.config_exception import ConfigException

    try:
        api = kubeconfig.new_client_from_config(config_file=args.kubeconfig,
                                                context=args.context)
        namespace = args.namespace
        if not namespace:
            _, current = kubeconfig.list_kube_config_contexts(config_file=args.kubeconfig)
            if args.context:
                contexts, _ = kubeconfig.list_kube_config_contexts(config_file=args.kubeconfig)
                current = next((c for c in contexts if c["name"] == args.context), current)
            namespace = (current or {}).get("context", {}).get("namespace") or "default"
    except (ConfigException, OSError) as exc:
        raise PluginError(f"no usable kubeconfig: {exc}; pass --kubeconfig or set "
                          "KUBECONFIG") from None
    return api, namespace


def _config(api: Any, namespace: str, args: argparse.Namespace) -> Config:
    from kubernetes import client

    try:
        found = client.CoreV1Api(api).read_namespaced_config_map(
            args.configmap, namespace, _request_timeout=API_TIMEOUT)
    except client.ApiException as exc:
        raise PluginError(f"cannot read ConfigMap {namespace}/{args.configmap}: "
                          f"{exc.status} {exc.reason}; is bindha-rwx installed there (-n, "
                          "--configmap)?") from None
    except OSError as exc:
        raise PluginError(f"the API server does not answer: {exc}") from None
    text = (found.data or {}).get(args.configmap_key)
    if text is None:
        raise PluginError(f"ConfigMap {namespace}/{args.configmap} has no key "
                          f"{args.configmap_key!r} (--configmap-key)")
    try:
        return parse_config(text, env={"POD_NAMESPACE": namespace},
                            source=f"ConfigMap {namespace}/{args.configmap}",
                            read_files=False)
    except ConfigError as exc:
        raise PluginError(str(exc)) from None


def _dispatch(args: argparse.Namespace, api: Any, config: Config) -> int:
    from bindha_rwx.ops import Ops, OpsError

    try:
        ops = Ops(config, api)
    except OpsError as exc:
        raise PluginError(str(exc)) from None
    if args.command == "status" and args.in_pod:
        command = ["bindha-rwx", "status", "--config", CONFIG_IN_POD]
        return _exec(api, config, _holder(ops), command + (["--json"] if args.json else []))
    if args.command == "fence":
        pod = args.pod or _holder(ops)
        return _exec(api, config, pod, ["bindha-rwx", "fence", *args.rest, "--config",
                                        CONFIG_IN_POD])
    args.ops, args.pod_network = ops, False  # what cli's handlers take instead of a file
    handler = {"status": cli._status, "switchover": cli._switchover,
               "pause": cli._pause_resume, "resume": cli._pause_resume}[args.command]
    return int(handler(args))


def _holder(ops: Any) -> str:
    record = ops.read_lease()
    if record is None or not record.holder:
        raise PluginError("no pod holds the Lease: pass --pod, or see `kubectl bindha status`")
    return holder_pod(record.holder)


def _exec(api: Any, config: Config, pod: str, command: list[str]) -> int:
    """Run ``command`` in ``pod``'s container through the API; its output is ours."""
    from kubernetes import client
    from kubernetes.stream import stream

    core = client.CoreV1Api(api)
    try:
        session = stream(core.connect_get_namespaced_pod_exec, pod, config.namespace,
                         container=CONTAINER, command=command, stderr=True, stdin=False,
                         stdout=True, tty=False, _preload_content=False,
                         _request_timeout=EXEC_TIMEOUT)
        session.run_forever(timeout=EXEC_TIMEOUT)
        out, err = session.read_stdout(), session.read_stderr()
        code = session.returncode
        session.close()
    except client.ApiException as exc:
        raise PluginError(f"cannot exec in {config.namespace}/{pod}: {exc.status} "
                          f"{exc.reason} (RBAC: pods/exec)") from None
    sys.stdout.write(out or "")
    sys.stderr.write(err or "")
    if code is None:
        print(f"kubectl bindha: {' '.join(command)} did not finish within "
              f"{EXEC_TIMEOUT:g}s in {pod}", file=sys.stderr)
        return cli.EXIT_FAILURE
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
