"""Operator commands: status, fence status, fence evict, fence break.

For an operator during an incident: every command here is safe to run when unsure.
`status` and `fence status` only read. `fence evict` evicts the lock owner's CephFS
client at the MDS (bindha_rwx.eviction, the steps the automatic storage fence takes);
`fence break` changes the shared volume and the Lease. Both act only after their
interlocks agree and the operator confirmed, check again after the answer, say what
they found, refused or did, and record the action in `dyn/.bindha/fence.log` and as
an Event.

It works from a master pod (`kubectl exec`, the shared volume mounted) or from a
workstation with a kubeconfig (then the volume's side is reported as not reachable,
and `fence break`, which must write there, refuses).
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from bindha_rwx.bounded import call_within
from bindha_rwx.cephfence import StorageFenceError, StorageFenceSetupError
from bindha_rwx.config import Config, holder_pod
from bindha_rwx.election import (
    EPOCH_ANNOTATION,
    LEADER_IP_ANNOTATION,
    PAUSED_ANNOTATION,
    SWITCHOVER_ANNOTATION,
    ApiUnavailable,
    Conflict,
    LeaseClient,
    LeaseRecord,
)
from bindha_rwx.eviction import Eviction, EvictionFailed, Refused, Target, audit, event_message
from bindha_rwx.fencing import FenceError, Owner, SharedVolume
from bindha_rwx.interlocks import not_proven_gone, pod_liveness
from bindha_rwx.journal import RUNBOOK as JOURNAL_RUNBOOK
from bindha_rwx.journal import check_journals, zone_journals
from bindha_rwx.kube import CLUSTER_LABEL, COMPONENT_LABEL, CoreCalls, event_body
from bindha_rwx.probes import RuntimeFiles

API_TIMEOUT = 5.0
# Reads of the shared volume by status and fence status: a hung mount, or on CephFS a
# frozen client holding a file's caps, blocks them (until its eviction).
VOLUME_TIMEOUT = 3.0
STATUS_EXPLAINS = 50  # damaged journals explained by named-journalprint, one process each


class OpsError(Exception):
    """A command refused or could not act; the message says why and what to do."""


def _ready(pod: dict[str, Any]) -> bool:
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def pod_summary(pod: dict[str, Any], role_key: str) -> dict[str, Any]:
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    return {"name": meta.get("name"), "role": (meta.get("labels") or {}).get(role_key),
            "phase": status.get("phase"), "ready": _ready(pod),
            "node": pod.get("spec", {}).get("nodeName"), "ip": status.get("podIP")}


def _soa_serial(ip: str | None, zone: str, port: int) -> int | None:
    if not ip:
        return None
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    try:
        answer = dns.query.udp(dns.message.make_query(zone, "SOA"), ip, port=port, timeout=0.5)
    except (dns.exception.DNSException, OSError):
        return None
    if answer.rcode() != dns.rcode.NOERROR or not answer.answer:
        return None
    return int(answer.answer[0][0].serial)


class Ops:
    def __init__(self, config: Config, api: client.ApiClient) -> None:
        if not config.namespace:
            raise OpsError("no namespace: set POD_NAMESPACE or namespace in the config")
        self.config = config
        self.namespace = config.namespace
        self.lease = LeaseClient(api, config.namespace, config.lease_name)
        self.core = CoreCalls(api, API_TIMEOUT)
        self.volume = SharedVolume(config.paths.dyn_dir)

    # -- reading ---------------------------------------------------------------

    def read_lease(self) -> LeaseRecord | None:
        try:
            return self.lease.get(API_TIMEOUT)
        except ApiUnavailable as exc:
            raise OpsError(f"cannot read Lease {self.namespace}/{self.config.lease_name}: "
                           f"{exc}; check KUBECONFIG and the API server") from None

    def renewing(self, record: LeaseRecord | None, watch_for: float | None = None) -> bool:
        """Is the holder still renewing? Watched for two retryPeriods (plus a margin)."""
        if record is None or not record.holder:
            return False
        deadline = time.monotonic() + (watch_for or 2 * self.config.timing.retry_period + 0.5)
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.read_lease()
            if now is None or now.holder != record.holder:
                return False
            if now.resource_version != record.resource_version:
                return True
        return False

    def volume_view(self) -> dict[str, Any]:
        if not self.volume.meta_dir.is_dir():
            return {"reachable": False,
                    "note": f"{self.volume.meta_dir} is not here: run this in a master pod "
                            "(kubectl exec) to see the lock owner and epoch"}
        view: dict[str, Any] = {"reachable": True}
        for key, read in (("owner", self.volume.read_owner),
                          ("epoch", self.volume.read_epoch),
                          ("generation", self.volume.read_generation)):
            try:
                value = call_within(read, VOLUME_TIMEOUT, f"reading the {key}")
            except TimeoutError:
                view[key] = None
                view.setdefault("unreadable", []).append(
                    f"{key}: no answer within {VOLUME_TIMEOUT:g}s (on CephFS a frozen client "
                    "that holds the file's caps blocks every other reader until it is "
                    "evicted: `bindha-rwx fence evict`)")
                continue
            except (FenceError, OSError) as exc:
                view[key] = None
                view.setdefault("error", str(exc))
                continue
            view[key] = value.__dict__ if key == "owner" and value else value
        return view

    def pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"{CLUSTER_LABEL}={self.config.cluster},{COMPONENT_LABEL}={component}"
        items = self.core.list_pod_objects(self.namespace, selector)
        return sorted((pod_summary(p, self.config.role_label.key) for p in items),
                      key=lambda p: p["name"] or "")

    def status(self, pod_network: bool = True) -> dict[str, Any]:
        """``pod_network=False`` (a workstation): no SOA queries to the pods' IPs."""
        record = self.read_lease()
        lease: dict[str, Any] = {"name": self.config.lease_name, "exists": record is not None}
        leader_ip = None
        if record is not None:
            age = None
            if record.renew_time is not None:
                age = round((datetime.now(UTC) - record.renew_time).total_seconds(), 1)
            leader_ip = record.annotations.get(LEADER_IP_ANNOTATION) if record.holder else None
            lease.update(holder=holder_pod(record.holder), holder_identity=record.holder,
                         transitions=record.transitions,
                         renew_time=record.renew_time.isoformat() if record.renew_time else None,
                         renew_age_seconds_by_this_clock=age,
                         epoch=record.annotations.get(EPOCH_ANNOTATION), leader_ip=leader_ip,
                         paused=record.annotations.get(PAUSED_ANNOTATION) == "true",
                         switchover_to=record.annotations.get(SWITCHOVER_ANNOTATION))
            if lease["paused"] and not record.holder:
                lease["warning"] = ("paused with no leader: nobody takes over while paused "
                                    "(a drain or rolling restart released the Lease); "
                                    "updates fail until `bindha-rwx resume`")
        masters, secondaries = self.pods("master"), self.pods("secondary")
        zones = []
        for zone in self.config.zones if pod_network else []:
            leader_serial = _soa_serial(leader_ip, zone.name, self.config.ports.dns)
            rows = []
            for pod in secondaries:
                serial = _soa_serial(pod["ip"], zone.name, self.config.ports.dns)
                rows.append({"pod": pod["name"], "serial": serial,
                             "lag": None if serial is None or leader_serial is None
                             else leader_serial - serial,
                             "reachable": serial is not None})
            zones.append({"zone": zone.name, "leader_serial": leader_serial,
                          "leader_reachable": leader_serial is not None,
                          "secondaries": rows})
        found = {"lease": lease, "volume": self.volume_view(), "masters": masters,
                 "secondaries": secondaries, "zones": zones}
        if found["volume"].get("reachable"):
            try:
                found["journals"] = call_within(self.journals_view, VOLUME_TIMEOUT,
                                                "reading the journals")
            except TimeoutError:
                found["journals"] = {"unreadable": f"no answer within {VOLUME_TIMEOUT:g}s "
                                     "(a hung volume, or a frozen client's caps on CephFS)"}
        local = self.this_pod()
        if local is not None:
            found["this_pod"] = local
        return found

    def journals_view(self) -> dict[str, Any]:
        """Every zone's journal by its header (read-only, safe while named writes)."""
        journals = zone_journals(self.config.paths.dyn_dir,
                                 [(z.name, z.file_name) for z in self.config.zones])
        damaged = check_journals(journals, explain=STATUS_EXPLAINS)
        view: dict[str, Any] = {"checked": len(journals), "damaged": len(damaged)}
        if damaged:
            view["problems"] = [d.as_dict() for d in damaged]
            view["runbook"] = JOURNAL_RUNBOOK
        return view

    def this_pod(self) -> dict[str, Any] | None:
        """The supervisor's own word when run inside a master pod (its state.json)."""
        state = RuntimeFiles(self.config.paths.work_dir).read_state()
        if state is None or state.role == "secondary":
            return None
        view: dict[str, Any] = {"pod": self.config.pod.name, "state": state.state,
                                "role": state.role}
        if state.detail:
            view["detail"] = state.detail
        if state.journals_damaged:
            view["journals_damaged"] = state.journals_damaged
        if state.volume is not None:
            view["volume_probe"] = state.volume
        return view

    def fence_status(self) -> dict[str, Any]:
        record = self.read_lease()
        volume = self.volume_view()
        holder = holder_pod(record.holder) if record else None
        owner = (volume.get("owner") or {}).get("pod") if volume.get("reachable") else None
        found: dict[str, Any] = {"lease_holder": holder,
                                 "lease_renewing": self.renewing(record),
                                 "lock_owner": owner, "volume": volume}
        for key, name in (("holder_pod", holder), ("owner_pod", owner)):
            if name:
                found[key] = self._pod_liveness(name)
        if self.config.fencing.storage == "ceph" and owner:
            found["owner_storage"] = self._storage_view(Owner(**volume["owner"]))
        return found

    def _storage_view(self, owner: Owner) -> dict[str, Any]:
        """Which MDS sessions `fence evict` would evict for the lock owner (reads only)."""
        try:
            target = Eviction(self.config, self.core, self.volume).plan(owner)
        except StorageFenceError as exc:  # Refused, no answer, a bad key: all worth saying
            return {"problem": str(exc)}
        except (FenceError, OSError, ApiException) as exc:
            return {"problem": f"{type(exc).__name__}: {exc}"[:300]}
        return {"basis": target.basis, "clients": target.clients or "none: gone already",
                "sessions": [s.describe() for s in target.sessions]}

    def _pod_liveness(self, name: str) -> dict[str, Any]:
        return pod_liveness(self.core, self.namespace, name)

    def _dead_problems(self, dead_pod: str) -> list[str]:
        """Why defeating ``dead_pod``'s lock (fence break) or evicting its client (fence
        evict) is not proven safe (DESIGN invariant 10); empty when its Lease is not
        renewed and the pod is gone, or its node is NotReady or tainted
        node.kubernetes.io/out-of-service. Asked before and after the operator's
        confirmation."""
        problems = []
        record = self.read_lease()
        if record is not None and holder_pod(record.holder) == dead_pod \
                and self.renewing(record):
            problems.append(f"{dead_pod} still renews the Lease: it is alive")
        problem = not_proven_gone(self._pod_liveness(dead_pod), dead_pod)
        if problem:
            problems.append(problem)
        return problems

    # -- pause, resume, switchover -------------------------------------------------

    def _annotate(self, change: Callable[[dict[str, str]], None]) -> LeaseRecord:
        """Change the Lease's annotations by compare-and-swap, retrying on conflicts."""
        for _ in range(10):
            record = self.read_lease()
            if record is None:
                raise OpsError(f"Lease {self.namespace}/{self.config.lease_name} does not "
                               "exist: no master has run yet")
            annotations = dict(record.annotations)
            change(annotations)
            try:
                return self.lease.replace(replace(record, annotations=annotations),
                                          API_TIMEOUT)
            except Conflict:
                continue  # a renewal came first: read again
            except ApiUnavailable as exc:
                raise OpsError(f"cannot write the Lease: {exc}") from None
        raise OpsError("the Lease kept changing under us (10 conflicts): try again")

    def pause(self) -> LeaseRecord:
        """No automatic takeover until resume: the leader goes on, nobody else acquires."""
        by = f"{getpass.getuser()}@{socket.gethostname()}"
        return self._annotate(lambda a: a.update({PAUSED_ANNOTATION: "true",
                                                   f"{PAUSED_ANNOTATION}-by": by}))

    def resume(self) -> LeaseRecord:
        def clear(a: dict[str, str]) -> None:
            a.pop(PAUSED_ANNOTATION, None)
            a.pop(f"{PAUSED_ANNOTATION}-by", None)
        return self._annotate(clear)

    def switchover(self, to: str | None) -> str:
        """Ask the leader to hand over to ``to`` (default: the first ready standby)."""
        record = self.read_lease()
        if record is None or not record.holder:
            raise OpsError("there is no leader to switch over from")
        if record.annotations.get(PAUSED_ANNOTATION) == "true":
            raise OpsError("the cluster is paused: `bindha-rwx resume` first")
        masters = {p["name"]: p for p in self.pods("master")}
        if to is None:
            ready = [n for n, p in masters.items()
                     if n != holder_pod(record.holder) and p["ready"]]
            if not ready:
                raise OpsError("no ready standby master to switch over to")
            to = ready[0]
        if to == holder_pod(record.holder):
            raise OpsError(f"{to} already leads")
        if to not in masters:
            raise OpsError(f"{to} is not a master pod of cluster {self.config.cluster} "
                           f"(masters: {', '.join(masters) or 'none'})")
        if not masters[to]["ready"]:
            raise OpsError(f"{to} is not Ready: it could not take over; pick another "
                           "with --to, or fix it first")
        def ask(annotations: dict[str, str]) -> None:
            # Checked again inside the compare-and-swap: a pause written between our
            # read and this write must win, not be overtaken by a handover.
            if annotations.get(PAUSED_ANNOTATION) == "true":
                raise OpsError("the cluster was paused meanwhile: `bindha-rwx resume` first")
            annotations[SWITCHOVER_ANNOTATION] = to
        self._annotate(ask)
        return to

    def cancel_switchover(self) -> str | None:
        """Withdraw a switchover request; the target it named, or None if there was none."""
        record = self.read_lease()
        target = record.annotations.get(SWITCHOVER_ANNOTATION) if record else None
        if target:
            self._annotate(lambda a: a.pop(SWITCHOVER_ANNOTATION, None))
        return target

    # -- fence evict -------------------------------------------------------------

    def fence_evict(self, dead_pod: str, force: bool,
                    confirm: Callable[[str], bool]) -> dict[str, Any]:
        """Evict ``dead_pod``'s CephFS client(s) at the MDS after the interlocks; its
        lock then frees by itself and the standby that holds the Lease takes it. The lock
        generation is not touched. StorageFenceSetupError for wrong settings (exit 2)."""
        settings = self.config.fencing
        if settings.storage != "ceph":
            raise StorageFenceSetupError(
                f"fencing.storage is {settings.storage}: fence evict evicts a CephFS client "
                "at the MDS with the fencer key of fencing.ceph; set fencing.storage: ceph "
                "and fencing.ceph (conf, keyring, id, mds; docs/configuration.md)",
                "fencing.storage")
        if not self.volume.meta_dir.is_dir():
            raise OpsError(f"{self.volume.meta_dir} is not here: fence evict reads the owner "
                           "record and writes its audit on the shared volume; run it in a "
                           "standby master pod (kubectl exec)")
        owner = self._read(self.volume.read_owner, "the owner record")
        if owner is None or owner.pod != dead_pod:
            raise OpsError(f"the lock owner is {owner.pod if owner else 'nobody'}, not "
                           f"{dead_pod}: nothing to evict; check `bindha-rwx fence status`")
        eviction = Eviction(self.config, self.core, self.volume)
        problems = self._dead_problems(dead_pod)
        if problems and not force:
            raise OpsError("refused: " + "; ".join(problems) + ". Nothing was evicted. If you "
                           "are sure its node is off (docs/runbooks/stale-lock.md), add --force")
        target = self._evict_plan(eviction, owner)
        forced = " The interlocks are overridden (--force)." if problems else ""
        question = (f"{dead_pod} (node {owner.node}, epoch {owner.epoch}) holds the storage "
                    f"lock. Evicting {', '.join(target.clients)} ({target.basis}) at the MDS "
                    "blocklists it: it can never write again, and the lock frees for the "
                    f"standby.{forced} Evict? [yes/no] ")
        generation_seen = self._read(self.volume.read_generation, "the lock generation")
        if not confirm(question):
            raise OpsError("not confirmed: nothing was evicted")
        # The world may have moved while the operator read the question: ask again.
        again = self._dead_problems(dead_pod)
        if self._read(self.volume.read_owner, "the owner record") != owner or \
                self._read(self.volume.read_generation, "the lock generation") != generation_seen:
            raise OpsError("the lock owner or generation changed while you answered: nothing "
                           "was evicted; check `bindha-rwx fence status` and start again")
        if again and not force:
            raise OpsError("refused after the confirmation: " + "; ".join(again) +
                           ". Nothing was evicted")
        if self._evict_plan(eviction, owner).clients != target.clients:
            raise OpsError("the owner's MDS sessions changed while you answered: nothing was "
                           "evicted; check `bindha-rwx fence status` and start again")
        overridden = problems or again
        proof = ("forced by the operator" if overridden else eviction.proof(owner)[1])
        by = f"{getpass.getuser()}@{socket.gethostname()}"
        try:
            record = eviction.carry_out(owner, target, by=by, via="fence evict", proof=proof,
                                        overridden=overridden)
        except EvictionFailed as exc:
            self._fence_event(dead_pod, "StorageFenceFailed", f"fence evict by {by} failed: "
                              f"{exc}"[:1000])
            raise OpsError(f"the eviction failed: {exc}. The lock generation is unchanged; "
                           "try again, or see docs/runbooks/stale-lock.md") from None
        error = self._fence_event(dead_pod, "StorageFenced", event_message(record))
        if error:
            record["event_error"] = error
        lease = self.read_lease()
        record["lease_holder"] = holder_pod(lease.holder) if lease else None
        return record

    def _read(self, read: Callable[[], Any], what: str) -> Any:
        """A read of the shared volume with a deadline (VOLUME_TIMEOUT)."""
        try:
            return call_within(read, VOLUME_TIMEOUT, f"reading {what}")
        except TimeoutError:
            raise OpsError(f"{what} on the shared volume gave no answer within "
                           f"{VOLUME_TIMEOUT:g}s (a hung mount, or on CephFS a frozen client "
                           "holding its caps until the MDS ends its session): nothing was "
                           "changed; try again, or see docs/runbooks/stale-lock.md") from None

    def _evict_plan(self, eviction: Eviction, owner: Owner) -> Target:
        """The owner's sessions to evict; OpsError (exit 1) when nothing is safe to
        evict or Ceph does not answer; StorageFenceSetupError (exit 2) propagates."""
        try:
            target = eviction.plan(owner)
        except Refused as exc:
            raise OpsError(f"refused: {exc}. Nothing was evicted") from None
        except StorageFenceSetupError:
            raise
        except StorageFenceError as exc:
            raise OpsError(f"cannot list the MDS's sessions: {exc}. Nothing was evicted"
                           ) from None
        except (ApiException, HTTPError, OSError) as exc:  # the pods on the owner's node
            raise OpsError(f"cannot read the pods and nodes from the API: {exc}. Nothing "
                           "was evicted") from None
        if not target.sessions:
            raise OpsError(f"nothing to evict: {target.basis} has no MDS session any more "
                           "(gone already), so its lock is free at the MDS. If the standby "
                           "stays blocked, see `bindha-rwx fence status` and "
                           "docs/runbooks/stale-lock.md (fence break)")
        return target

    def _fence_event(self, pod: str, reason: str, message: str) -> str | None:
        """An Event about ``pod``; the error text if it could not be written (the action
        is done and in fence.log: the Event is a record, not a condition)."""
        try:
            self.core.create_event(self.namespace, event_body(
                self.namespace, pod, reason, message, "Warning", None, "bindha-rwx-fence"))
        except Exception as exc:
            return str(exc)[:200]
        return None

    # -- fence break -------------------------------------------------------------

    def fence_break(self, dead_pod: str, force: bool, confirm: Callable[[str], bool],
                    delete_pod: bool) -> dict[str, Any]:
        """Move to a new lock generation so a standby can lock, after the interlocks."""
        if not self.volume.meta_dir.is_dir():
            raise OpsError(f"{self.volume.meta_dir} is not here: fence break writes the "
                           "shared volume; run it in a standby master pod (kubectl exec)")
        record = self.read_lease()
        owner = self.volume.read_owner()
        if owner is None or owner.pod != dead_pod:
            raise OpsError(f"the lock owner is {owner.pod if owner else 'nobody'}, not "
                           f"{dead_pod}: nothing to break; check `bindha-rwx fence status`")
        problems = self._dead_problems(dead_pod)
        if problems and not force:
            raise OpsError("refused: " + "; ".join(problems) + ". If you are sure its node is "
                           "off or its storage access revoked (docs/runbooks/stale-lock.md), "
                           "add --force")
        question = (f"{dead_pod} (node {owner.node}, epoch {owner.epoch}) holds the storage "
                    f"lock. Breaking it is safe only if that pod can no longer write: its "
                    f"node is off, or its storage access is revoked. Break it? [yes/no] ")
        generation_seen = self.volume.read_generation()
        if not confirm(question):
            raise OpsError("not confirmed: nothing was changed")
        # The world may have moved while the operator read the question: ask again.
        again = self._dead_problems(dead_pod)
        owner_now = self.volume.read_owner()
        if owner_now != owner or self.volume.read_generation() != generation_seen:
            raise OpsError("the lock owner or generation changed while you answered: nothing "
                           "was changed; check `bindha-rwx fence status` and start again")
        if again and not force:
            raise OpsError("refused after the confirmation: " + "; ".join(again) +
                           ". Nothing was changed")
        problems = problems or again
        record = self.read_lease()
        old_generation = self.volume.read_generation()
        generation = old_generation + 1
        self.volume.write_generation(generation)
        epoch = self.volume.bump_epoch()
        cleared = False
        if record is not None and holder_pod(record.holder) == dead_pod:
            try:
                self.lease.replace(replace(record, holder=None, lease_duration=1),
                                   API_TIMEOUT)
                cleared = True
            except (Conflict, ApiUnavailable):
                cleared = False
        deleted: bool | str = False
        if delete_pod:
            try:
                self.core.delete_pod(self.namespace, dead_pod, 0)
                deleted = True
            except (ApiException, OSError) as exc:
                # The in-pod ServiceAccount may not delete pods (by design): say so.
                deleted = (f"not deleted ({getattr(exc, 'status', exc)}): run `kubectl -n "
                           f"{self.namespace} delete pod {dead_pod} --grace-period=0 --force` "
                           "with your own credentials")
        action = {"time": datetime.now(UTC).isoformat(timespec="seconds"),
                  "by": f"{getpass.getuser()}@{socket.gethostname()}", "dead_pod": dead_pod,
                  "old_owner": owner.__dict__, "generation": [old_generation, generation],
                  "epoch": epoch, "forced": bool(problems), "overridden": problems,
                  "lease_cleared": cleared, "pod_deleted": deleted}
        audit(self.volume.meta_dir / "fence.log", action)
        error = self._fence_event(dead_pod, "FenceBroken", f"storage lock of {dead_pod} "
                                  f"broken: generation {old_generation} -> {generation}, "
                                  f"epoch {epoch}, by {action['by']}")
        if error:
            action["event_error"] = error
        return action


def render_text(data: Any, indent: int = 0) -> str:
    """A plain, stable, indented view of a status dict for people."""
    pad = "  " * indent
    if isinstance(data, dict):
        lines = []
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                lines.append(f"{pad}{key}:")
                lines.append(render_text(value, indent + 1))
            else:
                lines.append(f"{pad}{key}: {value}")
        return "\n".join(lines)
    if isinstance(data, list):
        return "\n".join(
            (f"{pad}- " + render_text(item, indent + 1).lstrip()) if isinstance(item, dict)
            else f"{pad}- {item}" for item in data)
    return f"{pad}{data}"

