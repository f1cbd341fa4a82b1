"""The host tracker: the owner of each host pulls its VM states every sync interval.

An OwnedLoop (`cluster/owned_loop.py`) finds the hosts this node owns (from the ring and the
host cache, every tick) and hands due ones to a small pool; a host is never pulled twice at
once. A pull is
the ping: a failed pull counts toward `host.pingFailures`, after which the host is
Disconnected and its VMs Unknown.

HA guards kept here, because they are about evidence this node gathered itself:
- A host that just became ours (ring change, our restart) gets no HA decision until we
  completed one full sync of it: a successful pull, or `host.pingFailures` failed ones.
- The partition breaker (`vm.ha.breaker_open`) over every host record's
  `unreachable_since`.
- An unreachable host is fenced out of band (agent Fence) before any of its VMs restarts;
  a fence that fails means no restart. Except when storage proves it (issue 14): an HA VM
  with disks on primary storage is restarted without a fence when the store says, in two
  checks one `vm.syncInterval` apart, that the old host holds no session on any of its
  volumes (the store expired and blocklisted it: storage itself fenced the old copy); a
  live session holds the VM and the host (no restart, no fence); an unknown answer (every
  MDS failed) proves nothing and leaves the fence path as it was (`vm.ha.storage_step`).
- HA does not give up: a FENCED host is not pulled, but its HA VMs that found no host are
  tried again every round, and VMs a failed HA start left Stopped are restarted when their
  host reports them absent; `Operations.restart` spaces the attempts (backoff read from the
  audit records in etcd, so the next owner continues where this one stopped).
Intervals and thresholds are read from live config at every use, so a change applies at
once. stop() ends the scheduler and cancels queued pulls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from controlplane import metrics, wiretime
from controlplane.cluster.owned_loop import OwnedLoop
from controlplane.owner import Conflict, Fenced, OwnerContext
from controlplane.store import txn as t
from controlplane.v1 import agent_pb2, host_pb2
from controlplane.vm import ha
from controlplane.vm.allocations import Allocations
from controlplane.vm.records import AGENT_STATE_NAMES, op_view, vm_view
from controlplane.vm.sync import (
    SHOULD_RUN,
    Report,
    ReportedVm,
    Restart,
    VmRecordView,
    awaits_ha,
    migration_action,
    needs_fence,
    plan_sync,
    plan_unreachable,
)
from controlplane.vm.syncer import Applied, Syncer

log = logging.getLogger(__name__)


@dataclass
class HostState:
    """What this node learned about a host it owns (forgotten when it is no longer ours)."""
    failures: int = 0
    evidence: bool = False  # one full sync completed since this host became ours
    rounds: int = 0
    # vm id -> when the store first said (this run of answers) that the host holds none of
    # the VM's volumes: the first of the two checks storage-proven HA needs.
    absent_since: dict[str, float] = field(default_factory=dict)


# (storage id, volume id) -> what the store says about who holds it (server.py: VmDisks).
VolumeHolders = Callable[[str, str], ha.VolumeAnswer]


@dataclass
class StorageOutcome:
    """What the storage check of an unreachable host decided."""

    restarts: list[Restart] = field(default_factory=list)
    hold: bool = False  # a VM holds a live session: no fence of this host
    pending: bool = False  # a first absent answer: wait for the second, no fence meanwhile
    fallback: bool = False  # a VM that storage cannot settle: the fence path decides it


@dataclass(frozen=True)
class SyncResult:
    host_id: str
    reachable: bool
    seconds: float
    applied: Applied


class HostTracker:
    """Pulls every host this node owns once per `vm.syncInterval` (on an OwnedLoop)."""

    def __init__(self, ctx: OwnerContext, syncer: Syncer, *,
                 enabled: Callable[[], bool] = lambda: True, workers: int = 16,
                 tick: float = 0.05, allocations: Allocations | None = None,
                 volume_holders: VolumeHolders | None = None) -> None:
        self.ctx = ctx
        # the host's allocation record, reconciled from the VM records every round
        self.allocations = allocations
        self.syncer = syncer
        self.volume_holders = volume_holders
        # Volumes of one host are asked about at once: a hung MDS costs one deadline per
        # check, not one per volume.
        self._volume_pool = futures.ThreadPoolExecutor(8, thread_name_prefix="ha-storage")
        self._states: dict[str, HostState] = {}
        self._lock = threading.Lock()
        self._breaker = (-1e9, False)  # (computed at, open)
        self.loop: OwnedLoop[SyncResult] = OwnedLoop(
            "host-sync", resources=self._host_ids, owns=ctx.owns, work=self.sync_host,
            interval=lambda: ctx.config.get("vm.syncInterval"),
            enabled=lambda: not ctx.registration.fenced and enabled(),
            on_forget=self._forget, on_tick=metrics.HOSTS_OWNED.set, resource_key="host_id",
            workers=workers, tick=tick)

    def start(self) -> HostTracker:
        self.loop.start()
        return self

    def stop(self) -> None:
        self.loop.stop()
        self._volume_pool.shutdown(wait=False, cancel_futures=True)

    def state(self, host_id: str) -> HostState | None:
        with self._lock:
            return self._states.get(host_id)

    def _host_ids(self) -> list[str]:
        prefix_len = len(self.ctx.keys.hosts)
        return [e.key[prefix_len:] for e in self.ctx.hosts.entries()]

    def _forget(self, host_id: str) -> None:
        with self._lock:
            self._states.pop(host_id, None)  # no longer ours: forget all evidence

    def sync_now(self, host_id: str) -> SyncResult | None:
        """Pull the host right away (ReconnectHost); None if a pull is already running."""
        ran, result = self.loop.run_now(host_id)
        return result if ran else None

    def poke(self, host_id: str) -> bool:
        """Pull the host at the next tick, on the pool (a host event: see vm/hostevents.py);
        pokes coalesce, and one during a pull makes another pull follow it."""
        return self.loop.poke(host_id)

    # -- one host -------------------------------------------------------------------

    def ha_allowed(self, host_id: str, state: HostState, fresh: bool = False) -> bool:
        if not self.ctx.config.get("ha.enabled") or not state.evidence:
            return False
        frozen = self.breaker_open(max_age=0.0 if fresh else 0.2)
        if frozen:
            metrics.HA_DECISIONS.labels("frozen").inc()
        return not frozen

    def breaker_open(self, max_age: float = 0.2) -> bool:
        """The partition breaker's verdict over all host records, recomputed at most every
        `max_age` seconds (it reads every host record: per sync it would cost hosts^2)."""
        now = time.monotonic()
        with self._lock:
            if now - self._breaker[0] < max_age:
                return self._breaker[1]
        hosts = [e.value for e in self.ctx.hosts.entries()]
        stamps = [wiretime.seconds(h.unreachable_since) for h in hosts
                  if h.HasField("unreachable_since")]
        # Hosts that fail together are *seen* failing up to one interval apart (each is
        # pulled at its own phase of the interval, later on a loaded node), so a burst
        # "within one interval" is looked for in a window of two.
        frozen = ha.breaker_open(stamps, len(hosts),
                                 2 * self.ctx.config.get("vm.syncInterval"))
        with self._lock:
            was = self._breaker[1]
            self._breaker = (now, frozen)
        metrics.HA_FROZEN.set(1 if frozen else 0)
        if frozen != was:
            log.warning("HA %s by the partition breaker: %d of %d hosts unreachable",
                        "frozen" if frozen else "released", len(stamps), len(hosts))
        return frozen

    def sync_host(self, host_id: str) -> SyncResult:
        started = time.monotonic()
        with self._lock:
            state = self._states.setdefault(host_id, HostState())
        host = self.ctx.host_record(host_id)
        if host is None:
            return SyncResult(host_id, False, 0.0, Applied())
        if self.allocations is not None:
            # from the records as the previous round left them (etcd only: also for a
            # host we cannot reach, whose VMs HA moved away)
            self.allocations.reconcile(host_id)
        if host.status == host_pb2.HOST_STATUS_FENCED:
            return SyncResult(host_id, False, time.monotonic() - started,
                              self._retry_fenced(host, state))
        # Records as they are before the pull: every write compares these revisions.
        records = [vm_view(e.value, e.mod_revision) for e in self.ctx.vms.by_index(host_id)]
        try:
            reply = self.ctx.agents.stub(host.address, host_id).ListVms(
                agent_pb2.AgentServiceListVmsRequest(host_id=host_id),
                timeout=self.ctx.config.get("host.pingTimeout"))
        except grpc.RpcError as err:
            applied = self._unreachable(host, state, records, err)
            return SyncResult(host_id, False, time.monotonic() - started, applied)
        state.failures = 0
        state.evidence = True
        state.rounds += 1
        state.absent_since.clear()
        if host.status != host_pb2.HOST_STATUS_CONNECTED or host.HasField("unreachable_since"):
            self._write_host(host_id, status=host_pb2.HOST_STATUS_CONNECTED,
                             unreachable_since=None)
        report = Report(
            host_id,
            {v.vm_id: ReportedVm(v.vm_id, AGENT_STATE_NAMES.get(v.state, "stopped"),
                                 v.generation) for v in reply.vms},
            {o.vm_id: o.op_id for o in reply.ops},
            reports_ops=reply.reports_ops,
        )
        applied = self._plan_and_apply(report, records, state)
        self._retry_device_info(report)
        seconds = time.monotonic() - started
        metrics.SYNC_ROUNDS.observe(seconds)
        return SyncResult(host_id, True, seconds, applied)

    def _plan_and_apply(self, report: Report, records: list, state: HostState) -> Applied:
        # Ops of VMs on this host come from the ops cache's host index (an op names the host
        # its VM is placed on); only VMs reported here but placed elsewhere need a lookup.
        ops = {e.value.vm_id: op_view(e.value, e.mod_revision)
               for e in self.ctx.ops.by_index(report.host_id)}
        by_id = {vm.vm_id: vm for vm in records}
        for vm_id in report.vms:
            if vm_id in by_id:
                continue
            entry = self.ctx.vms.get(self.ctx.keys.vm(vm_id))
            if entry is not None:
                by_id[vm_id] = vm_view(entry.value, entry.mod_revision)
            op_entry = self.ctx.ops.get(self.ctx.keys.op(vm_id))
            if op_entry is not None:
                ops.setdefault(vm_id, op_view(op_entry.value, op_entry.mod_revision))
        plan = plan_sync(report, records, by_id, ops, self.ctx.members(), time.time(),
                         self.ctx.config.get("vm.orphanedSkipTimeout"),
                         self.ha_allowed(report.host_id, state))
        if plan.strangers:
            log.info("host %s runs VMs with no record (left alone): %s", report.host_id,
                     ", ".join(sorted(plan.strangers)[:10]), extra={"host_id": report.host_id})
        return self.syncer.apply(plan.actions)

    def _retry_device_info(self, report: Report) -> None:
        """Running VMs whose device info never got stored (every attempt after their start
        failed) get another try, in the background, one at a time per VM."""
        busy = {e.value.vm_id for e in self.ctx.ops.by_index(report.host_id)}
        for entry in self.ctx.vms.by_index(report.host_id):
            vm = entry.value
            if vm.state == "Running" and not vm.devices.devices and vm.vm_id not in busy \
                    and vm.vm_id in report.vms:
                self.syncer.operations.retry_device_info(vm)

    def _unreachable(self, host: host_pb2.Host, state: HostState, records: list,
                     err: grpc.RpcError) -> Applied:
        state.failures += 1
        metrics.PING_FAILURES.inc()
        threshold = self.ctx.config.get("host.pingFailures")
        log.warning("host %s unreachable (%d/%d): %s", host.host_id, state.failures, threshold,
                    err.details() if hasattr(err, "details") else err,
                    extra={"host_id": host.host_id})
        if not host.HasField("unreachable_since"):
            self._write_host(host.host_id, unreachable_since=wiretime.now())
        self._migrations_of_unreachable(host.host_id, records)
        if state.failures < threshold:
            return Applied()
        state.evidence = True
        applied = Applied()
        ops = {e.value.vm_id: op_view(e.value, e.mod_revision)
               for e in self.ctx.ops.by_index(host.host_id)}
        if host.status == host_pb2.HOST_STATUS_CONNECTED:
            self._write_host(host.host_id, status=host_pb2.HOST_STATUS_DISCONNECTED)
            log.warning("host %s disconnected after %d failed pings", host.host_id,
                        state.failures, extra={"host_id": host.host_id})
            applied = self.syncer.apply(plan_unreachable(host.host_id, records, ops))
            records = [vm_view(e.value, e.mod_revision)
                       for e in self.ctx.vms.by_index(host.host_id)]
        if not needs_fence(records, host.host_id):
            return applied
        # The breaker must see the whole burst: every host is pulled about once per interval
        # (later on a loaded node), so two intervals after this host's first failure every
        # other host cut off by the same partition has failed too and stamped its record.
        # (With the default 3 ping failures this adds no delay.) Decide on a fresh verdict.
        # A residual race remains on a node so loaded that it pulls a host more than two
        # intervals late: the breaker is a heuristic, fencing is what makes HA safe.
        since = wiretime.seconds(host.unreachable_since) or time.time()
        if time.time() - since < 2 * self.ctx.config.get("vm.syncInterval") \
                or not self.ha_allowed(host.host_id, state, fresh=True):
            return applied
        storage = self._storage_check(host.host_id, state, records, ops)
        if storage.restarts:
            _add(applied, self.syncer.apply(storage.restarts))
        if storage.hold or storage.pending or not storage.fallback:
            return applied
        _add(applied, self._fence_and_restart(host, state))
        return applied

    def _storage_check(self, host_id: str, state: HostState, records: Sequence[VmRecordView],
                       ops: dict) -> StorageOutcome:
        """Ask the stores who holds the volumes of this unreachable host's HA VMs, and turn
        the answers into restarts (absent twice), holds (live) or the fence path (unknown,
        no disks, an op in flight)."""
        out = StorageOutcome()
        disks: dict[str, list[tuple[str, str]]] = {}
        for vm in records:
            if not (vm.ha and vm.host_id == host_id and vm.state in SHOULD_RUN):
                continue
            entry = self.ctx.vms.get(self.ctx.keys.vm(vm.vm_id))
            vm_disks = [(d.primary_storage_id, d.volume_id)
                        for d in (entry.value.disks if entry is not None else ())]
            if self.volume_holders is None or not vm_disks or vm.vm_id in ops:
                out.fallback = True
                continue
            disks[vm.vm_id] = vm_disks
        if not disks:
            state.absent_since.clear()
            return out
        asked = sorted({d for vm_disks in disks.values() for d in vm_disks})
        holders = self.volume_holders
        assert holders is not None
        try:
            answers = dict(zip(asked, self._volume_pool.map(lambda d: holders(*d), asked),
                               strict=True))
        except RuntimeError:  # the pool is shut down: we are stopping
            return StorageOutcome(hold=True)
        now = time.time()
        interval = self.ctx.config.get("vm.syncInterval")
        by_id = {vm.vm_id: vm for vm in records}
        for vm_id, vm_disks in disks.items():
            vm_answers = [answers[d] for d in vm_disks]
            verdict = ha.storage_verdict(host_id, vm_answers)
            first = state.absent_since.get(vm_id)
            action, since = ha.storage_step(verdict, first, now, interval)
            if since is None:
                state.absent_since.pop(vm_id, None)
            else:
                state.absent_since[vm_id] = since
            lines = ha.storage_evidence(host_id, vm_answers)
            metrics.HA_DECISIONS.labels(f"storage-{action}").inc()
            if action == ha.HOLD:
                out.hold = True
                log.info("vm %s: host %s unreachable but holds its volumes: no restart (%s)",
                         vm_id, host_id, "; ".join(lines),
                         extra={"vm_id": vm_id, "host_id": host_id})
            elif action == ha.WAIT:
                out.pending = True
                log.warning("vm %s: host %s holds none of its volumes (first check); "
                            "checking again in %gs: %s", vm_id, host_id, interval,
                            "; ".join(lines), extra={"vm_id": vm_id, "host_id": host_id})
            elif action == ha.RESTART_ON_STORAGE:
                assert since is not None
                vm = by_id[vm_id]
                out.restarts.append(Restart(vm, host_id, (
                    f"host {host_id} unreachable ({state.failures} failed pings), not fenced",
                    f"storage: no session from {host_id} on any volume of the VM in two "
                    f"checks {now - since:.1f}s apart (at {since:.3f} and {now:.3f})",
                    *lines, f"record state {vm.state}", f"generation {vm.generation}"),
                    reason="storage proves the old host holds none of the VM's volumes"))
                state.absent_since.pop(vm_id, None)
            else:
                out.fallback = True
                log.warning("vm %s: storage cannot say whether host %s holds its volumes "
                            "(unknown is not absent): %s", vm_id, host_id, "; ".join(lines),
                            extra={"vm_id": vm_id, "host_id": host_id})
        return out

    def _migrations_of_unreachable(self, host_id: str, records: list) -> None:
        """Migrations away from a host that does not answer still get settled: the target's
        answer alone may prove where the VM runs (`vm.sync.migration_action`)."""
        actions = []
        for entry in self.ctx.ops.by_index(host_id):
            if entry.value.kind != "migrate":
                continue
            vm = next((r for r in records if r.vm_id == entry.value.vm_id), None)
            action = vm and migration_action(vm, op_view(entry.value, entry.mod_revision),
                                             self.ctx.members(), time.time(),
                                             self.ctx.config.get("vm.orphanedSkipTimeout"))
            if action is not None:
                actions.append(action)
        if actions:
            self.syncer.apply(actions)

    def _retry_fenced(self, host: host_pb2.Host, state: HostState) -> Applied:
        """A FENCED host is never pulled (it is powered off), but its HA VMs that no host
        could take when it was fenced still need placing: every round, the fenced plan is
        made again, and `Operations.restart` lets an attempt through when its backoff is
        due. The fence record is the proof that nothing runs there; this node's first round
        of the host (reading that record) stands for the one full sync a new owner must
        complete before any HA decision, so a retry runs from its second round on."""
        records = [vm_view(e.value, e.mod_revision) for e in self.ctx.vms.by_index(host.host_id)]
        seen_before = state.evidence
        state.evidence = True
        state.rounds += 1
        if not seen_before or not awaits_ha(records, host.host_id) \
                or not self.ha_allowed(host.host_id, state):
            return Applied()
        return self._plan_and_apply(Report(host.host_id, {}, {}, True, fenced=True), records,
                                    state)

    def _fence_and_restart(self, host: host_pb2.Host, state: HostState) -> Applied:
        try:
            reply = self.ctx.agents.stub(host.address, host.host_id).Fence(
                agent_pb2.FenceRequest(host_id=host.host_id),
                timeout=self.ctx.config.get("host.pingTimeout"))
        except grpc.RpcError as err:
            log.warning("host %s: fence failed (%s): no HA restart without proof",
                        host.host_id, err.details(), extra={"host_id": host.host_id})
            metrics.HA_DECISIONS.labels("fence-failed").inc()
            return Applied()
        log.warning("host %s fenced (powered off out of band); VMs killed: %s", host.host_id,
                    ", ".join(reply.vms_killed) or "none", extra={"host_id": host.host_id})
        self._write_host(host.host_id, status=host_pb2.HOST_STATUS_FENCED, fenced_at=wiretime.now())
        records = [vm_view(e.value, e.mod_revision) for e in self.ctx.vms.by_index(host.host_id)]
        return self._plan_and_apply(Report(host.host_id, {}, {}, True, fenced=True), records,
                                    state)

    def _write_host(self, host_id: str, **fields: object) -> None:
        """Set fields of the host record by CAS (None clears one: a Timestamp's "never")."""
        for _ in range(3):
            entry = self.ctx.hosts.get(self.ctx.keys.host(host_id))
            if entry is None:
                return
            host = host_pb2.Host()
            host.CopyFrom(entry.value)
            for name, value in fields.items():
                if value is None:
                    host.ClearField(name)
                elif isinstance(value, Timestamp):
                    getattr(host, name).CopyFrom(value)
                else:
                    setattr(host, name, value)
            try:
                result = self.ctx.owner_txn(
                    [t.mod_revision_is(self.ctx.keys.host(host_id), entry.mod_revision)],
                    [t.put(self.ctx.keys.host(host_id), host.SerializeToString())])
            except Conflict:
                self.loop.stopping.wait(0.05)  # our cache is behind a newer write: catch up
                continue
            except Fenced:
                return
            self.ctx.hosts.wait_for_revision(result.revision, 2.0)
            return


def _add(total: Applied, more: Applied) -> None:
    """Add the counts of `more` to `total` (in place)."""
    for name in ("writes", "dropped", "skipped", "restarts", "strays"):
        setattr(total, name, getattr(total, name) + getattr(more, name))
