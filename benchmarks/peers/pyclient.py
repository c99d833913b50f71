"""The `kubernetes` Python client's own elector (kubernetes.leaderelection, 37.x) with
its LeaseLock, wired as its example.py shows: lease_duration 17, renew_deadline 15,
retry_period 5, onstarted_leading starting named, onstopped_leading killing it.

After LeaderElection.run() returns (the renewal failed) the process exits, as the
example does after "Exited leader election"; the pod's restart policy brings it back.
SIGTERM: kill named and exit; the elector has no release, so the Lease stays held until
it expires. Its API calls carry no timeout (the library sets none): that is measured
as it is.
"""

from __future__ import annotations

import logging
import signal
import sys

from kubernetes import config
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from benchmarks.peers.common import NamedChild, emit, exit_now, parse_args

LEASE_DURATION = 17
RENEW_DEADLINE = 15
RETRY_PERIOD = 5


def main() -> int:
    args = parse_args(__doc__ or "")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    config.load_kube_config(config_file=args.kubeconfig)
    named = NamedChild(args.named)

    def on_term(_signum: int, _frame: object) -> None:
        named.stop()
        exit_now(0)

    def started() -> None:
        emit("leading")
        named.start()

    def stopped() -> None:
        emit("stopped_leading")
        named.stop()

    signal.signal(signal.SIGTERM, on_term)
    emit("candidate", identity=args.identity)
    lock = LeaseLock(args.lease, args.namespace, args.identity)
    leaderelection.LeaderElection(electionconfig.Config(
        lock, lease_duration=LEASE_DURATION, renew_deadline=RENEW_DEADLINE,
        retry_period=RETRY_PERIOD, onstarted_leading=started,
        onstopped_leading=stopped)).run()
    exit_now(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
