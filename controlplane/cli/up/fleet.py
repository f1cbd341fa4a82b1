"""The local fleet of `up --hosts H --vms V`: seeding it, and the one-line summary of it.

Seeding goes through the client library (`controlplane.client`) over the nodes' public
gRPC API, as another program's calls would: each call goes to its resource's owner, another
node when one is down (any node answers any call and forwards it to the owner). It runs on
a thread of its own beside the poll loop, so the screen stays live while a large fleet is
built; a failure that outlasts the retry budget is an event, like a node
exiting.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from typing import TypeVar

import grpc

from controlplane import paging
from controlplane.cli.up.retry import retry_call, wait_for
from controlplane.cli.up.screen import Reporter
from controlplane.client import Client, list_all
from controlplane.security.tls import Transport
from controlplane.v1 import host_pb2, host_pb2_grpc, vm_pb2, vm_pb2_grpc

__all__ = ["FleetBuilder", "FleetSummary", "fleet_line", "vm_name"]

FLEET_READY_TIMEOUT = 60.0  # for a node to become ready before hosts can be registered
FLEET_RETRY_BUDGET = 60.0  # per host/VM: retried while nodes and the agent come up
FLEET_RETRY_INTERVAL = 0.2
FLEET_CALL_TIMEOUT = 10.0
FLEET_WORKERS = 16  # calls in flight while building the fleet
SUMMARY_TIMEOUT = 30.0  # ListHosts/ListVms for the fleet line (large fleets: large answers)
SUMMARY_COST_FACTOR = 10  # ask again after max(min pause, 10 x the last answer's time)
VM_IMAGE = vm_pb2.ImageInfo(image_id="up-image", virtual_size=1 << 30, actual_size=256 << 20)

# While the fleet is built: the node (or the agent behind it) is still starting, the host is
# not yet in the owner's cache (NOT_FOUND from a start), or the owner changed meanwhile.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND})

T = TypeVar("T")


def vm_name(index: int, total: int) -> str:
    """vm-0000, vm-0001, ...: zero-padded so names sort in creation order."""
    return f"vm-{index:0{max(4, len(str(total - 1)))}d}"


def fleet_line(hosts: host_pb2.ListHostsResponse, vms: vm_pb2.ListVmsResponse) -> str:
    """`hosts 2/3 connected, 10 VMs: Running 9, Starting 1` (states sorted by name, so the
    line only changes when the fleet does)."""
    connected = sum(1 for h in hosts.hosts if h.status == host_pb2.HOST_STATUS_CONNECTED)
    states = Counter(v.state for v in vms.vms)
    per_state = ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
    return (f"hosts {connected}/{len(hosts.hosts)} connected, {len(vms.vms)} VMs"
            + (f": {per_state}" if per_state else ""))


class _Halted(Exception):
    """`up` is stopping: the fleet thread gives up what it was doing."""


class FleetBuilder:
    """Registers the agent's hosts, then creates `vms` VMs round-robin over them, started,
    HA never-stop for every other one."""

    def __init__(self, agent_address: str | list[str], host_ids: list[str], vms: int,
                 endpoints: list[str], ready_addresses: Callable[[], list[str]],
                 reporter: Reporter, stopping: threading.Event, *, cpus: int = 0,
                 memory_mb: int = 0, tls: Transport) -> None:
        # one agent for every host (sim), or host i's agent at agent_address[i] (libvirt)
        self.agent_addresses = (list(agent_address) if isinstance(agent_address, list)
                                else [agent_address] * len(host_ids))
        self.host_ids = host_ids
        self.vms = vms
        self.cpus, self.memory_mb = cpus, memory_mb  # 0: the node's defaults
        self.ready_addresses = ready_addresses  # nodes ready now (the wait for the first)
        self.reporter = reporter
        self.stopping = stopping  # set when `up` stops: give up between calls
        self._client = Client(endpoints, timeout=FLEET_CALL_TIMEOUT, tls=tls)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="fleet", daemon=True)
        self._thread.start()

    def join(self, timeout: float = FLEET_CALL_TIMEOUT + 5) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        report = self.reporter
        try:
            if not self._wait_any_ready():
                return
            hosts = self.host_ids
            failures = self._in_parallel(len(hosts), lambda i: self._add_host(hosts[i]),
                                         "registering hosts")
            if failures:
                report.event(f"could not register {len(failures)} of {len(hosts)} hosts "
                             f"(first: {failures[0]})")
            report.milestone(f"registered {len(hosts) - len(failures)} hosts")
            if self.vms:
                failures = self._in_parallel(self.vms, self._create_vm, "creating VMs")
                if failures:
                    report.event(f"could not create {len(failures)} of {self.vms} VMs "
                                 f"(first: {failures[0]})")
                report.milestone(f"created {self.vms - len(failures)} VMs")
        except _Halted:
            pass
        finally:
            report.step("")
            self._client.close()

    def _wait_any_ready(self) -> bool:
        self.reporter.step("waiting for a ready node to register hosts")
        if wait_for(lambda: bool(self.ready_addresses()), FLEET_READY_TIMEOUT, 0.1,
                    self.stopping):
            return True
        if not self.stopping.is_set():
            self.reporter.event(f"no node ready after {FLEET_READY_TIMEOUT:.0f}s: hosts not "
                                "registered")
        return False

    # -- calls ------------------------------------------------------------------------

    def _retried(self, call: Callable[[Client], T], retryable: frozenset) -> T:
        """call(the client), retried on `retryable` codes for FLEET_RETRY_BUDGET seconds
        (the client itself tries the next node on UNAVAILABLE); _Halted once `up` stops."""
        def attempt() -> T:
            if self.stopping.is_set():
                raise _Halted()
            return call(self._client)

        def again(exc: BaseException) -> bool:
            return isinstance(exc, grpc.RpcError) and exc.code() in retryable

        return retry_call(attempt, again, FLEET_RETRY_BUDGET, FLEET_RETRY_INTERVAL,
                          self.stopping)

    def _in_parallel(self, total: int, work: Callable[[int], None], what: str) -> list[str]:
        """work(0..total-1) on FLEET_WORKERS threads; the failures, as text. Raises _Halted
        when `up` stops meanwhile."""
        indexes = iter(range(total))
        lock = threading.Lock()
        done = [0]
        failures: list[str] = []

        def worker() -> None:
            while not self.stopping.is_set():
                with lock:
                    i = next(indexes, None)
                if i is None:
                    return
                try:
                    work(i)
                except _Halted:
                    return
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"#{i}: {exc.code().name}: {exc.details()}")
                with lock:
                    done[0] += 1
                    self.reporter.step(f"{what}: {done[0]}/{total}")

        self.reporter.step(f"{what}: 0/{total}", start=True)
        threads = [threading.Thread(target=worker, name=f"fleet-{k}", daemon=True)
                   for k in range(min(FLEET_WORKERS, total))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.stopping.is_set():
            raise _Halted()
        return failures

    def _add_host(self, host_id: str) -> None:
        """AddHost; an existing host (a reused --data-dir, or a retry after a lost answer)
        counts as registered."""
        address = self.agent_addresses[self.host_ids.index(host_id)]
        request = host_pb2.AddHostRequest(host_id=host_id, address=address)
        try:
            self._retried(lambda client: client.hosts.AddHost(request),
                          _RETRYABLE - {grpc.StatusCode.NOT_FOUND})
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    def _create_vm(self, index: int) -> None:
        """CreateVm(start, no wait) of VM `index` on hosts[index % len(hosts)], HA for every
        other VM.

        Create-and-start is two steps on the server: the record may be written and the start
        refused (the host not yet in the owner's cache) or the answer lost. The retry then
        meets ALREADY_EXISTS, and a VM still Created with no operation is started here."""
        vm_id = vm_name(index, self.vms)
        host_id = self.host_ids[index % len(self.host_ids)]
        request = vm_pb2.CreateVmRequest(
            vm_id=vm_id,
            ha=vm_pb2.HA_LEVEL_NEVER_STOP if index % 2 == 0 else vm_pb2.HA_LEVEL_UNSPECIFIED,
            image=VM_IMAGE, host_id=host_id, start=True, wait=False, cpus=self.cpus,
            memory_mb=self.memory_mb)
        try:
            self._retried(lambda client: client.vms.CreateVm(request), _RETRYABLE)
            return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        vm = self._retried(lambda client: client.vms.GetVm(vm_pb2.GetVmRequest(vm_id=vm_id)),
            frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})).vm
        if vm.state == "Created" and not vm.op.op_id:
            self._retried(lambda client: client.vms.StartVm(
                vm_pb2.StartVmRequest(vm_id=vm_id, host_id=host_id)), _RETRYABLE)


class FleetSummary:
    """ListHosts + ListVms on a ready node, turned into fleet_line(). Asked without waiting
    (a large fleet's listing may take longer than a poll), and again only after a pause that
    grows with what the last answer cost, so a big fleet is not listed twice a second."""

    def __init__(self, min_pause: float) -> None:
        self.min_pause = min_pause
        self.line: str | None = None  # fleet_line() of the last summary answered
        self._asked: tuple[futures.Future, float] | None = None
        self._next = 0.0
        # The listings are paginated: one thread pages through both, off the poll loop.
        self._pool = futures.ThreadPoolExecutor(1, thread_name_prefix="fleet-summary")

    def ask(self, channel: grpc.Channel | None) -> None:
        """Start the two listings on `channel` (a ready node's) when due and none is in
        flight."""
        if channel is None or self._asked is not None or time.monotonic() < self._next:
            return
        def both() -> tuple[host_pb2.ListHostsResponse, vm_pb2.ListVmsResponse]:
            hosts = list_all(host_pb2_grpc.HostServiceStub(channel).ListHosts,
                             host_pb2.ListHostsRequest(page_size=paging.MAX_PAGE_SIZE), "hosts",
                             timeout=SUMMARY_TIMEOUT)
            vms = list_all(vm_pb2_grpc.VmServiceStub(channel).ListVms,
                           vm_pb2.ListVmsRequest(page_size=paging.MAX_PAGE_SIZE), "vms",
                           timeout=SUMMARY_TIMEOUT)
            return hosts, vms

        self._asked = (self._pool.submit(both), time.monotonic())

    def read(self) -> str | None:
        """Take the answers if they are in; the last line answered (kept when a listing
        fails: the next poll asks again, maybe another node)."""
        if self._asked is None:
            return self.line
        listing, asked_at = self._asked
        if not listing.done():
            return self.line
        self._asked = None
        cost = time.monotonic() - asked_at
        self._next = time.monotonic() + max(self.min_pause - cost, SUMMARY_COST_FACTOR * cost)
        try:
            self.line = fleet_line(*listing.result())
        except grpc.RpcError:
            pass
        return self.line
