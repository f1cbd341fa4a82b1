"""HA that storage proves (issue 14, section 1): real etcd, a real node, a sim agent process
and a simulated block store of two sim MDS processes sharing their sessions.

A NEVER_STOP VM with a disk on primary storage runs on h0; its agent holds a session on the
volume and keeps it alive. Then:
- h0 is cut from the management nodes but not from the store: its session stays live, so
  the VM is never restarted and h0 never fenced, whatever the ping and orphan settings;
- h0 is powered off: its session expires and is blocklisted; two checks of the store one
  interval apart find no session from h0, and the VM is restarted elsewhere without a
  fence, audited with what the store answered;
- the store's first MDS hangs: the check still answers (one per-attempt deadline, then
  the next MDS);
- every MDS is down: unknown is not absent: no restart on storage evidence (the fence path
  restarts it instead, and says so).
- the agent is restarted (kill -9, its VMs kept running): it re-opens its sessions from its
  state file, so a partition of h0 afterwards still never restarts the VM; an agent down
  longer than the session timeout finds its session blocklisted and says so (log, metric).
Asserts are on outcomes and audit records; times are printed, never asserted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controlplane.testing import cluster as c
from controlplane.testing.agents import vm_copies
from controlplane.testing.mds import MdsProcess
from controlplane.testing.ports import free_port
from controlplane.testing.store_rig import add_storage, seed_volume, start_store
from controlplane.testing.waiting import wait_until
from controlplane.v1 import agent_pb2, config_pb2, host_pb2, mds_pb2, vm_pb2

INTERVAL, FAILURES, SESSION_TIMEOUT, ATTEMPT = 0.5, 2, 2.0, 1.0
SETTINGS = {"vm.syncInterval": str(INTERVAL), "host.pingTimeout": "1",
            "host.pingFailures": str(FAILURES), "storage.mdsAttemptTimeout": str(ATTEMPT),
            "ha.retryDelay": "0.3", "ha.retryMaxDelay": "1"}
VOLUME = "vol-db"
HANG, REFUSE = mds_pb2.SIM_MDS_FAULT_MODE_HANG, mds_pb2.SIM_MDS_FAULT_MODE_REFUSE


@pytest.fixture
def store(tmp_path: Path) -> Iterator[list[MdsProcess]]:
    procs = start_store(str(tmp_path / "store"), 2, session_timeout=SESSION_TIMEOUT)
    try:
        seed_volume(procs, VOLUME)
        yield procs
    finally:
        for proc in procs:
            if proc.pid is not None:
                proc.terminate()


def configure(node, extra: dict[str, str] | None = None) -> None:
    for key, value in {**SETTINGS, **(extra or {})}.items():
        c.config(node).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                    timeout=5)


def get_vm(node, vm_id: str = "db") -> vm_pb2.Vm:
    return c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm


def get_host(node, host_id: str) -> host_pb2.Host:
    return c.hosts(node).GetHost(host_pb2.GetHostRequest(host_id=host_id), timeout=5).host


def audit(node, vm_id: str = "db") -> list[vm_pb2.HaAudit]:
    return list(c.vms(node).ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id=vm_id),
                                        timeout=5).records)


def set_condition(agent, host_id: str, condition: int) -> None:
    agent.sim().SetHostCondition(agent_pb2.SetHostConditionRequest(
        host_id=host_id, condition=condition), timeout=2)


def live_clients(store: list[MdsProcess]) -> list[str]:
    return [s.client_id for s in store[0].sessions() if s.volume_id == VOLUME
            and not s.blocklisted]


def clients_calls(store: list[MdsProcess]) -> int:
    return sum(p.calls().get("GetVolumeClients", 0) for p in store)


def rig(etcd, nodes, agents, store, settings: dict[str, str] | None = None,  # type: ignore[no-untyped-def]
        **agent_args):
    """A node, an agent with 2 hosts (``agent_args`` to AgentProcess), the storage, and the
    HA VM "db" running on h0 with its disk on the store (its session live)."""
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=2, **agent_args)
    configure(node, settings)
    h0, h1 = agent.host_ids
    for host_id in (h0, h1):
        c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=host_id, address=agent.address),
                              timeout=10)
    add_storage(c.storage(node), "ps", store)
    vm = c.vms(node).CreateVm(vm_pb2.CreateVmRequest(
        vm_id="db", ha=vm_pb2.HA_LEVEL_NEVER_STOP, host_id=h0, start=True, wait=True,
        disks=[vm_pb2.VmDisk(primary_storage_id="ps", volume_id=VOLUME, root=True)]),
        timeout=15).vm
    assert (vm.state, vm.host_id) == ("Running", h0), vm
    assert live_clients(store) == [h0]
    return node, agent, h0, h1


def test_create_refuses_a_disk_whose_storage_or_volume_does_not_exist(
        etcd, nodes, store) -> None:
    node = nodes.start("mn-0", etcd.endpoints)
    add_storage(c.storage(node), "ps", store)
    for disk, named in ((vm_pb2.VmDisk(primary_storage_id="nope", volume_id=VOLUME), "nope"),
                        (vm_pb2.VmDisk(primary_storage_id="ps", volume_id="ghost"), "ghost")):
        with pytest.raises(grpc.RpcError) as err:
            c.vms(node).CreateVm(vm_pb2.CreateVmRequest(
                vm_id="x", disks=[disk], root_disk_offering_size=1 << 30), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and named in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # nothing was written
        get_vm(node, "x")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_host_cut_from_the_nodes_but_not_the_store_is_never_restarted(
        etcd, nodes, agents, store) -> None:
    # The most eager settings: one failed ping is a lost host, orphans expire at once.
    node, agent, h0, _ = rig(etcd, nodes, agents, store,
                             {"host.pingFailures": "1", "vm.orphanedSkipTimeout": "0.1"})
    set_condition(agent, h0, agent_pb2.HOST_CONDITION_PARTITIONED)
    wait_until(lambda: get_host(node, h0).status == host_pb2.HOST_STATUS_DISCONNECTED, 10,
               message="h0 disconnected")
    before = clients_calls(store)
    # Many storage checks (each answered: h0 holds the volume), spanning several session
    # timeouts: the agent's keepalives go on while the host is partitioned.
    wait_until(lambda: clients_calls(store) >= before + 8, 20, message="storage checked")
    vm = get_vm(node)
    assert (vm.host_id, vm.generation, vm.state) == (h0, 1, "Unknown")
    assert not [a for a in audit(node) if a.action == "restart"]
    assert get_host(node, h0).status != host_pb2.HOST_STATUS_FENCED
    assert live_clients(store) == [h0]
    # healed: the VM is still the one copy, on h0
    set_condition(agent, h0, agent_pb2.HOST_CONDITION_UP)
    wait_until(lambda: get_vm(node).state == "Running", 10, message="Running again on h0")
    assert vm_copies([agent]) == {"db": [(h0, 1)]}


def test_a_powered_off_host_s_vm_is_restarted_on_storage_evidence_without_a_fence(
        etcd, nodes, agents, store) -> None:
    node, agent, h0, h1 = rig(etcd, nodes, agents, store)
    set_condition(agent, h0, agent_pb2.HOST_CONDITION_DOWN)
    started = time.monotonic()
    vm = wait_until(lambda: (v := get_vm(node)).state == "Running" and v.host_id == h1 and v,
                    30, message="VM Running on h1")
    took = time.monotonic() - started
    print(f"powered off -> Running on {h1}: {took:.2f}s (session timeout {SESSION_TIMEOUT}s, "
          f"ping {INTERVAL}s x {FAILURES} + 2 checks = {INTERVAL * (FAILURES + 2):.1f}s)")
    host = get_host(node, h0)
    assert host.status == host_pb2.HOST_STATUS_DISCONNECTED and not host.HasField("fenced_at")
    (restart,) = [a for a in audit(node) if a.action == "restart"]
    assert (restart.from_host, restart.to_host, restart.generation) == (h0, h1, vm.generation)
    assert "storage" in restart.reason
    text = " | ".join(restart.evidence)
    assert "not fenced" in text and "two checks" in text and f"ps/{VOLUME}" in text
    assert f"{h0} holds no session" in text
    # the new copy holds the volume; h0's old session is blocklisted
    assert live_clients(store) == [h1]
    old = [s for s in store[0].sessions() if s.client_id == h0]
    assert old and all(s.blocklisted for s in old)


def test_a_hung_first_mds_costs_the_check_one_attempt_deadline(
        etcd, nodes, agents, store) -> None:
    node, agent, h0, h1 = rig(etcd, nodes, agents, store)
    store[0].set_fault(HANG, "GetVolumeClients")
    # the check the HA path makes, timed through the API (same client, same deadline)
    from controlplane.v1 import storage_pb2
    started = time.monotonic()
    answer = c.storage(node).GetVolumeClients(storage_pb2.GetVolumeClientsRequest(
        storage_id="ps", volume_id=VOLUME), timeout=10)
    print(f"GetVolumeClients with {store[0].address} hung: {time.monotonic() - started:.2f}s "
          f"(per-attempt deadline {ATTEMPT}s)")
    assert [cl.client_id for cl in answer.clients] == [h0]
    set_condition(agent, h0, agent_pb2.HOST_CONDITION_DOWN)
    vm = wait_until(lambda: (v := get_vm(node)).state == "Running" and v.host_id == h1 and v,
                    30, message="VM Running on h1")
    (restart,) = [a for a in audit(node) if a.action == "restart"]
    assert "storage" in restart.reason and vm.generation == 2
    assert not get_host(node, h0).HasField("fenced_at")
    assert store[0].calls().get("GetVolumeClients", 0) >= 1  # the hung MDS was asked too


def test_every_mds_down_is_unknown_not_absent(etcd, nodes, agents, store) -> None:
    node, agent, h0, h1 = rig(etcd, nodes, agents, store)
    for proc in store:
        proc.set_fault(REFUSE)
    set_condition(agent, h0, agent_pb2.HOST_CONDITION_DOWN)
    # No restart on storage evidence: the fence path proves h0 runs nothing instead.
    restart = wait_until(lambda: next((a for a in audit(node) if a.action == "restart"), None),
                         30, message="an HA restart")
    assert get_host(node, h0).status == host_pb2.HOST_STATUS_FENCED
    assert "storage" not in restart.reason and any("fenced" in e for e in restart.evidence)
    # With its store down the VM cannot open its volume anywhere: each start fails (a
    # definite failure, retried with backoff), until the store is back.
    wait_until(lambda: any(a.action == "restart-failed" for a in audit(node)), 15,
               message="a failed HA start")
    for proc in store:
        proc.set_fault(mds_pb2.SIM_MDS_FAULT_MODE_OK)
    vm = wait_until(lambda: (v := get_vm(node)).state == "Running" and v.host_id == h1 and v,
                    30, message="VM Running on h1 once the store is back")
    assert all("storage" not in a.reason for a in audit(node) if a.action == "restart")
    on_h1 = agent.stub().ListVms(agent_pb2.AgentServiceListVmsRequest(host_id=h1), timeout=2)
    assert [(v.vm_id, v.generation) for v in on_h1.vms] == [("db", vm.generation)]
    # h0's session (its keepalives stopped with the power) expires in the store
    wait_until(lambda: live_clients(store) == [h1], 3 * SESSION_TIMEOUT,
               message="only h1 holds the volume")


def test_an_expired_session_is_blocklisted(store) -> None:
    mds = store[0]
    mds.set_session_timeout(0.3)
    stub = mds.stub()
    stub.AttachVolume(mds_pb2.AttachVolumeRequest(volume_id=VOLUME, client_id="h9",
                                                  session_id="s1"), timeout=5)
    # the other MDS of the store sees the session (shared metadata)
    assert [cl.client_id for cl in store[1].stub().GetVolumeClients(
        mds_pb2.StorageMdsServiceGetVolumeClientsRequest(volume_id=VOLUME),
        timeout=5).clients] == ["h9"]
    wait_until(lambda: not [cl for cl in stub.GetVolumeClients(
        mds_pb2.StorageMdsServiceGetVolumeClientsRequest(volume_id=VOLUME), timeout=5).clients],
        5, message="session expired")
    with pytest.raises(grpc.RpcError) as err:
        store[1].stub().KeepAliveVolume(mds_pb2.KeepAliveVolumeRequest(
            volume_id=VOLUME, client_id="h9", session_id="s1"), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "blocklisted" in err.value.details()
    mds.set_session_timeout(SESSION_TIMEOUT)


def test_a_migrated_vm_holds_its_volume_from_the_target_so_a_partition_never_restarts_it(
        etcd, nodes, agents, store) -> None:
    """Found when live migration met storage-proven HA: the migration moved the VM but not
    its volume session, so the storage named no client on the VM's new host, and cutting
    that host off from the nodes read as "dead" and restarted a running VM elsewhere. The
    target now opens the sessions before its copy exists, the source closes its own after
    the switchover."""
    node, agent, h0, h1 = rig(etcd, nodes, agents, store, {"host.pingFailures": "1"})
    moved = c.vms(node).MigrateVm(vm_pb2.MigrateVmRequest(vm_id="db", host_id=h1, wait=True),
                                  timeout=30).vm
    assert (moved.state, moved.host_id, moved.generation) == ("Running", h1, 2), moved
    assert live_clients(store) == [h1]  # the source's session is closed, not left to expire
    set_condition(agent, h1, agent_pb2.HOST_CONDITION_PARTITIONED)
    wait_until(lambda: get_host(node, h1).status == host_pb2.HOST_STATUS_DISCONNECTED, 15,
               message="the target host is seen unreachable")
    calls = clients_calls(store)
    wait_until(lambda: clients_calls(store) >= calls + 2, 15,
               message="HA asked the store twice")
    vm = get_vm(node)
    assert (vm.host_id, vm.generation) == (h1, 2), vm
    assert not [a for a in audit(node) if a.action == "restart"], audit(node)
    set_condition(agent, h1, agent_pb2.HOST_CONDITION_UP)  # healed: still the one copy
    wait_until(lambda: get_host(node, h1).status == host_pb2.HOST_STATUS_CONNECTED, 15,
               message="the target host is back")
    assert vm_copies([agent]).get("db") == [(h1, 2)]
    assert (get_vm(node).host_id, get_vm(node).generation) == (h1, 2)


def h0_session(store: list[MdsProcess], h0: str) -> mds_pb2.MdsSession:
    (session,) = [s for s in store[0].sessions() if s.volume_id == VOLUME and s.client_id == h0]
    return session


def test_a_restarted_agent_re_opens_its_sessions_so_a_partition_never_restarts_the_vm(
        etcd, nodes, agents, store) -> None:
    """Found after section 1: the sessions lived in the agent's memory only, so an agent
    restart (its VMs kept running) stopped their keepalives, the store blocklisted them, and
    cutting that host off from the nodes then read as "dead": a second copy of a running VM.
    The agent keeps what it holds on disk and re-opens it at start."""
    node, agent, h0, _ = rig(etcd, nodes, agents, store, {"host.pingFailures": "1"},
                             persistent=True)
    before = h0_session(store, h0)
    agent.kill()  # kill -9: no goodbye, the VM keeps running (the sim's state file)
    agent.restart().wait_ready(timeout=20)
    back = time.monotonic()
    # re-attached (same session id: refreshed, not a new one)
    refreshed = wait_until(
        lambda: (s := h0_session(store, h0)).last_keepalive.ToNanoseconds()
        > before.last_keepalive.ToNanoseconds() and s, 3 * SESSION_TIMEOUT,
        message="the session refreshed by the restarted agent")
    print(f"agent ready -> its session refreshed: {time.monotonic() - back:.2f}s (keepalive "
          f"period {SESSION_TIMEOUT / 4}s)")
    # and kept alive from then on, for longer than a session timeout
    wait_until(lambda: (h0_session(store, h0).last_keepalive.ToNanoseconds()
                        - refreshed.last_keepalive.ToNanoseconds()) / 1e9
               > 1.5 * SESSION_TIMEOUT, 4 * SESSION_TIMEOUT,
               message="keepalives for 1.5 session timeouts")
    session = h0_session(store, h0)
    assert (session.session_id, session.blocklisted) == (before.session_id, False)
    assert live_clients(store) == [h0]
    # the partition: HA asks the store, which names h0, so the VM is never restarted
    set_condition(agent, h0, agent_pb2.HOST_CONDITION_PARTITIONED)
    wait_until(lambda: get_host(node, h0).status == host_pb2.HOST_STATUS_DISCONNECTED, 10,
               message="h0 disconnected")
    calls = clients_calls(store)
    wait_until(lambda: clients_calls(store) >= calls + 6, 20, message="storage checked")
    vm = get_vm(node)
    assert (vm.host_id, vm.generation) == (h0, 1), vm
    assert not [a for a in audit(node) if a.action == "restart"], audit(node)
    assert live_clients(store) == [h0]
    set_condition(agent, h0, agent_pb2.HOST_CONDITION_UP)
    wait_until(lambda: get_vm(node).state == "Running", 10, message="Running again on h0")
    assert vm_copies([agent]) == {"db": [(h0, 1)]}


def test_an_agent_down_longer_than_the_session_timeout_finds_its_session_fenced(
        etcd, nodes, agents, store) -> None:
    """The store's fence did its job while the agent was away: the restarted agent says so
    (an error log naming VM, volume and host, and a metric), and does not hold the session."""
    metrics_port = free_port()
    node, agent, h0, _ = rig(etcd, nodes, agents, store, persistent=True,
                             extra_args=["--metrics-port", str(metrics_port)])
    before = h0_session(store, h0)
    agent.kill()
    wait_until(lambda: h0_session(store, h0).blocklisted, 4 * SESSION_TIMEOUT,
               message="h0's session blocklisted while its agent is down")
    agent.restart().wait_ready(timeout=20)
    pattern = re.compile(rf"host {h0} vm db: volume {VOLUME} session {before.session_id} was "
                         r"blocklisted by the store while the agent was down")
    wait_until(lambda: pattern.search(Path(agent.log_path).read_text()), 10,
               message="the restarted agent logs the fenced session")
    wait_until(lambda: 'controlplane_agent_volume_sessions_fenced_total{when="restart"} 1.0'
               in c.scrape_metrics(metrics_port), 10, message="the fenced session counted")
    assert 'controlplane_agent_volume_sessions 0.0' in c.scrape_metrics(metrics_port)
    assert live_clients(store) == []  # nothing revived it
