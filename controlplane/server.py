"""One management node, wired together: store, registration, view, router, gRPC server.

Start order matters: the gRPC server answers health checks first (liveness SERVING,
readiness NOT_SERVING), then the node waits for etcd with backoff (a cold start does not
crash-loop), registers, loads the view, and only then reports ready.

Stop order (SIGTERM) matters too: readiness NOT_SERVING first (load balancers stop sending),
then the lease is revoked (peers drop us within milliseconds, not a TTL), then in-flight
calls drain for `drain_grace`, then the process exits.
"""

from __future__ import annotations

import logging
import threading
import time

from controlplane import metrics
from controlplane.agentclient import AgentClients
from controlplane.cluster.registration import Registration
from controlplane.cluster.routing import Router
from controlplane.cluster.service import ClusterServicer
from controlplane.cluster.table import Change, MemberTable
from controlplane.cluster.view import ClusterView
from controlplane.config.service import ConfigServicer, live_config
from controlplane.config.settings import Settings, metrics_bind_address
from controlplane.host.maintenance import MaintenanceLoop
from controlplane.host.service import HostServicer
from controlplane.logs import NodeContext
from controlplane.owner import OwnerContext
from controlplane.rpc import (
    MetricsInterceptor,
    RpcServer,
    Stoppable,
    serve_metrics,
    serve_until_signal,
)
from controlplane.security.audit import AuditInterceptor, AuditWriter
from controlplane.security.audit_service import AuditServicer
from controlplane.security.tls import check_own
from controlplane.storage.images import ImageManager
from controlplane.storage.livejobs import LiveJobs
from controlplane.storage.primary import MdsHealthChecker
from controlplane.storage.primary_service import StorageServicer
from controlplane.storage.service import VolumeServicer
from controlplane.storage.vmdisks import VmDisks
from controlplane.store import Keys, Store
from controlplane.store.auth import EtcdLogin
from controlplane.store.cache import PrefixCache
from controlplane.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    config_pb2,
    config_pb2_grpc,
    host_pb2,
    host_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
    volume_pb2,
    volume_pb2_grpc,
)
from controlplane.vm.allocations import Allocations
from controlplane.vm.hostevents import HostEventWatcher
from controlplane.vm.migrations import Migrations
from controlplane.vm.operations import Operations
from controlplane.vm.service import VmServicer
from controlplane.vm.syncer import Syncer
from controlplane.vm.tracker import HostTracker

log = logging.getLogger(__name__)

CLUSTER_SERVICE = cluster_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name
SERVICES = (
    CLUSTER_SERVICE,
    host_pb2.DESCRIPTOR.services_by_name["HostService"].full_name,
    vm_pb2.DESCRIPTOR.services_by_name["VmService"].full_name,
    config_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name,
    storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name,
    volume_pb2.DESCRIPTOR.services_by_name["VolumeService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)


class ManagementNode:
    def __init__(self, settings: Settings, log_context: NodeContext | None = None) -> None:
        self.settings = settings
        self.log_context = log_context
        self.keys = Keys(settings.prefix)
        self.store = Store(settings.etcd, timeout=settings.etcd_timeout,
                           keepalive=max(1.0, min(5.0, settings.lease_ttl / 2)),
                           tls=settings.etcd_tls,
                           login=(EtcdLogin(settings.etcd_user, settings.etcd_password)
                                  if settings.etcd_user else None))
        self.registration = Registration(
            self.store, self.keys, settings.node_id, settings.advertise, settings.lease_ttl,
            on_incarnation=self._on_incarnation,
            on_ack_latency=metrics.KEEPALIVE_LATENCY.observe,
        )
        self.view = ClusterView(self.store, self.keys, settings.vnodes,
                                settings.reconcile_interval, name=settings.node_id)
        self.view.add_listener(self._on_membership)
        self.router = Router(settings.node_id, self.view, lambda: self.registration.fenced,
                             tls=settings.tls)
        # Watch-fed caches of the records owner work reads (no etcd read per VM in sync).
        self.vms = PrefixCache(self.store, self.keys.vms, vm_pb2.Vm.FromString,
                               index=lambda vm: vm.host_id, name="vms")
        self.ops = PrefixCache(self.store, self.keys.ops, vm_pb2.Op.FromString,
                               index=lambda op: op.host_id, name="ops")
        self.hosts = PrefixCache(self.store, self.keys.hosts, host_pb2.Host.FromString,
                                 name="hosts")
        self.config_cache = PrefixCache(self.store, self.keys.config,
                                        lambda b: b.decode(), name="config")
        self.config = live_config(self.config_cache, self.keys)
        self.owner = OwnerContext(settings.node_id, self.store, self.keys, self.registration,
                                  self.view, self.vms, self.ops, self.hosts, self.config,
                                  AgentClients(tls=settings.tls), settings.tls)
        self.images = PrefixCache(self.store, self.keys.images, volume_pb2.Image.FromString,
                                  index=lambda image: image.vm_id, name="images")
        self.storages = PrefixCache(self.store, self.keys.storages,
                                    storage_pb2.PrimaryStorage.FromString, name="storages")
        self.mds_checker = MdsHealthChecker(self.owner, self.storages, enabled=lambda: self.ready)
        # VM disks on primary storage: checked at create, opened by the agent at start,
        # asked about by HA (who holds them) through the storage's MDS client.
        self.vm_disks = VmDisks(self.keys, self.storages, self.mds_checker)
        self.allocation_cache = PrefixCache(self.store, self.keys.allocations,
                                            host_pb2.HostAllocation.FromString,
                                            name="allocations")
        self.allocations = Allocations(self.owner, self.allocation_cache)
        self.operations = Operations(self.owner, self.allocations, image_locks=lambda vm_id: [
            self.keys.image_lock(e.value.image_id) for e in self.images.by_index(vm_id)],
            volumes_of=self.vm_disks.agent_volumes)
        self.migrations = Migrations(self.operations)
        self.tracker = HostTracker(self.owner, Syncer(self.owner, self.operations,
                                                      self.migrations.resolve_later),
                                   enabled=lambda: self.ready,
                                   allocations=self.allocations,
                                   volume_holders=self.vm_disks.holders)
        self.maintenance = MaintenanceLoop(self.owner, self.operations,
                                           migrations=self.migrations,
                                           enabled=lambda: self.ready)
        self.host_events = HostEventWatcher(
            self.owner, self.tracker.poke,
            enabled=lambda: (self.ready and not self.registration.fenced
                             and self.config.get("host.events")))
        self.image_manager = ImageManager(self.owner, settings.image_dir)
        self.live_jobs = LiveJobs(self.image_manager, self.owner.agents.block_jobs)
        # every mutating call, recorded in etcd (bounded by the live audit.maxRecords)
        self.audit = AuditWriter(self.store, self.keys, settings.node_id,
                                 lambda: self.config.get("audit.maxRecords"))
        self.rpc = RpcServer(settings.listen, tls=settings.tls, max_workers=32,
                             max_streams=settings.max_streams,
                             interceptors=[MetricsInterceptor(metrics.RPCS,
                                                                metrics.RPCS_IN_FLIGHT),
                                           AuditInterceptor(self.audit, settings.node_id)])
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._view_started = threading.Event()
        self._failed = threading.Event()  # the view could not start: never live again
        self._monitor = threading.Thread(target=self._monitor_loop, name="monitor", daemon=True)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> ManagementNode:
        servicer = ClusterServicer(self.settings.node_id, self.view, self.registration,
                                   self.router)
        self.vm_servicer = VmServicer(self.owner, self.router, self.operations,
                                      self.migrations, check_disks=self.vm_disks.check)
        rpc = self.rpc
        rpc.add(cluster_pb2_grpc.add_ClusterServiceServicer_to_server, servicer, SERVICES[0])
        rpc.add(host_pb2_grpc.add_HostServiceServicer_to_server,
                HostServicer(self.owner, self.router, self.tracker, self.allocations,
                             self.maintenance), SERVICES[1])
        rpc.add(vm_pb2_grpc.add_VmServiceServicer_to_server, self.vm_servicer, SERVICES[2])
        rpc.add(config_pb2_grpc.add_ConfigServiceServicer_to_server,
                ConfigServicer(self.store, self.keys, self.config_cache, self.config),
                SERVICES[3])
        rpc.add(storage_pb2_grpc.add_StorageServiceServicer_to_server,
                StorageServicer(self.owner, self.router, self.storages, self.mds_checker),
                SERVICES[4])
        rpc.add(volume_pb2_grpc.add_VolumeServiceServicer_to_server,
                VolumeServicer(self.image_manager, self.router, self.images, self.live_jobs),
                SERVICES[5])
        rpc.add(audit_pb2_grpc.add_AuditServiceServicer_to_server,
                AuditServicer(self.store, self.keys), SERVICES[6])
        self.audit.start()
        rpc.start(ready=False)
        serve_metrics(self.settings.metrics_port,
                      metrics_bind_address(self.settings.metrics_address, self.settings.listen),
                      health=rpc.health)
        log.info("listening on %s (advertised %s), etcd %s, lease ttl %ds",
                 self.settings.listen, self.settings.advertise, self.settings.etcd,
                 self.settings.lease_ttl)
        self.registration.start()
        threading.Thread(target=self._start_view, name="view-start", daemon=True).start()
        self._monitor.start()
        return self

    def _start_view(self) -> None:
        try:
            self.view.start()
            for cache in (self.config_cache, self.hosts, self.ops, self.vms, self.storages,
                          self.images, self.allocation_cache):
                cache.start()
        except Exception:  # noqa: BLE001 - a cache start raises only what retries cannot mend
            if not self._stopping.is_set():
                # Never ready, and not live either: an orchestrator restarts the node (and
                # its probes say why) rather than keep a pod that can never serve.
                self._failed.set()
                log.critical("cluster view failed to start: liveness NOT_SERVING",
                             exc_info=True)
                self._set_health(live=False, ready=False)
                self.registration.stop(revoke=True)  # out of the ring: peers own our share
            return
        self.tracker.start()
        self.maintenance.start()
        self.host_events.start()
        self.mds_checker.start()
        self._view_started.set()

    def stop(self, grace: float | None = None) -> None:
        """Graceful leave; safe to call twice."""
        if self._stopping.is_set():
            self._stopped.wait(30)
            return
        self._stopping.set()
        grace = self.settings.drain_grace if grace is None else grace
        started = time.monotonic()
        self._set_health(live=True, ready=False)
        # The latch: no later set() (the monitor loop racing us) can turn readiness back on.
        self.rpc.health.enter_graceful_shutdown()
        self.host_events.stop()
        self.tracker.stop()
        self.maintenance.stop()
        self.mds_checker.stop()
        self.registration.stop(revoke=True)
        log.info("left the cluster in %.3fs; draining calls for up to %.1fs",
                 time.monotonic() - started, grace)
        self.vm_servicer.stop()
        self.rpc.stop(grace)
        self.audit.stop()
        self.operations.stop()
        for cache in (self.vms, self.ops, self.hosts, self.config_cache, self.storages,
                      self.images, self.allocation_cache):
            cache.stop()
        self.owner.agents.close()
        self.view.stop()
        self.router.close()
        self.store.close()
        self._stopped.set()
        log.info("stopped")

    def wait(self) -> None:
        self._stopped.wait()

    @property
    def ready(self) -> bool:
        return (self._view_started.is_set() and not self.registration.fenced
                and not self._stopping.is_set()
                and self.settings.node_id in self.view.table.members)

    # -- callbacks ------------------------------------------------------------------

    def _set_health(self, live: bool, ready: bool) -> None:
        self.rpc.set_health(live and not self._failed.is_set(), ready)

    def _on_incarnation(self, incarnation: int) -> None:
        if self.log_context:
            self.log_context.incarnation = incarnation
        if self.registration.registrations > 1:
            # We were cut off long enough to lose the lease: our watch stream may have
            # died silently with the connection, so re-list and reopen it.
            self.view.resync()

    def _on_membership(self, table: MemberTable, changes: list[Change]) -> None:
        metrics.MEMBERS.set(len(table.members))
        metrics.RING_EPOCH.set(table.epoch)
        for change in changes:
            if change.kind in ("leave", "evict"):
                metrics.EVICTIONS.labels(change.kind).inc()
            # Our *current* key removed (a delete older than our incarnation is the key of
            # a previous incarnation): re-register rather than silently stay out.
            if (change.node_id == self.settings.node_id and change.kind in ("leave", "evict")
                    and change.revision > self.registration.incarnation
                    and not self._stopping.is_set()):
                self.registration.reregister(f"our member key was removed ({change.kind})")
        me = table.members.get(self.settings.node_id)
        reg = self.registration
        if me is not None and reg.incarnation and me.incarnation > reg.incarnation \
                and not reg.fenced:
            log.error("another process registered as %s (incarnation %d > ours %d)",
                      self.settings.node_id, me.incarnation, reg.incarnation)

    def _monitor_loop(self) -> None:
        """Publish readiness and the fenced gauge; log fencing transitions."""
        was_ready = None
        was_fenced = None
        while not self._stopping.wait(0.05):
            fenced = self.registration.fenced
            ready = self.ready
            if fenced != was_fenced:
                metrics.FENCED.set(1 if fenced else 0)
                if fenced and was_fenced is not None:
                    log.warning("fenced: last keepalive ack %.2fs ago (ttl %ds); owner work "
                                "stops", self.registration.last_ack_age(), self.settings.lease_ttl)
                elif not fenced:
                    log.info("not fenced: lease fresh")
                was_fenced = fenced
            if ready != was_ready:
                if not self._stopping.is_set():
                    self._set_health(live=True, ready=ready)
                log.info("readiness %s", "SERVING" if ready else "NOT_SERVING")
                was_ready = ready


def serve(settings: Settings, log_context: NodeContext | None = None) -> int:
    """Run one node until SIGTERM/SIGINT; the `controlplane serve` command. Its own
    certificates (gRPC's and etcd's) are checked first: an expired or not-yet-valid one
    exits 1 with a line naming the file, before the node touches etcd."""
    def start() -> Stoppable:
        check_own(settings.tls)
        if settings.etcd_tls is not None:
            check_own(settings.etcd_tls)
        return ManagementNode(settings, log_context).start()

    return serve_until_signal(start)
