"""Crash safety of live migration on real guests: the source agent, the target agent or the
VM's owner killed -9 in the middle of a libvirt migration (real etcd, nodes, libvirt agents,
session daemons, TCG guests).

The transfer is held open by a bandwidth limit set on the source domain through its daemon
(`virDomainMigrateSetMaxSpeed`, which a migration without an explicit bandwidth uses), and
lifted after the fault so the migration can finish quickly. Afterwards exactly one domain
runs (asked of both daemons directly, not only of the agents), the VM record names the host
it runs on with the generation in that domain's metadata, and HA never acted (its audit
trail is empty). One guest per test; the hosts are the session's shared daemons.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt")

from controlplane.agent.domainxml import NAMESPACE, parse_metadata  # noqa: E402
from controlplane.testing import cluster as c  # noqa: E402
from controlplane.testing.agents import vm_copies  # noqa: E402
from controlplane.testing.libvirt import LibvirtAgent, LibvirtHost, LibvirtHosts  # noqa: E402
from controlplane.testing.ports import free_port  # noqa: E402
from controlplane.testing.waiting import wait_until  # noqa: E402
from controlplane.v1 import agent_pb2, cluster_pb2, config_pb2, host_pb2, vm_pb2  # noqa: E402

TTL = 2.0
IMAGE = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)
SLOW_MIB_S = 1  # the transfer's bandwidth until the fault (MiB/s)
FAST_MIB_S = 8192
HOLD = 3.0  # seconds the transfer is held open after the fault (10 sync rounds)


def get_vm(node, vm_id: str) -> vm_pb2.Vm:  # type: ignore[no-untyped-def]
    return c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm


def daemon_copies(hosts: list[LibvirtHost], vm_id: str) -> list[tuple[int, int, int, int]]:
    """(host index, libvirt state, reason, generation in the metadata) of every active
    domain named ``vm_id`` on the hosts' daemons."""
    out = []
    for i, host in enumerate(hosts):
        dom = host.domains().get(vm_id)
        if dom is None or not dom.isActive():
            continue
        state, reason = dom.state()
        meta = parse_metadata(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, 0))
        out.append((i, state, reason, meta.generation))
    return out


def incoming_on(host: LibvirtHost, vm_id: str) -> bool:
    dom = host.domains().get(vm_id)
    if dom is None or not dom.isActive():
        return False
    try:
        return dom.state()[1] == libvirt.VIR_DOMAIN_PAUSED_MIGRATION or \
            dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
    except libvirt.libvirtError:
        return False


def transferring(host: LibvirtHost, vm_id: str) -> bool:
    """The source domain's migration job has sent memory."""
    try:
        stats = host.domains()[vm_id].jobStats()
    except (KeyError, libvirt.libvirtError):
        return False
    return stats.get("type", 0) != libvirt.VIR_DOMAIN_JOB_NONE and \
        stats.get("memory_processed", 0) > 0


def set_speed(host: LibvirtHost, vm_id: str, mib_s: int) -> None:
    try:
        host.domains()[vm_id].migrateSetMaxSpeed(mib_s, 0)
    except (KeyError, libvirt.libvirtError):
        pass  # gone from here already (moved or failed): nothing to speed up


def owner_is(node, resource_id: str) -> bool:  # type: ignore[no-untyped-def]
    return c.stub(node).WhoOwns(cluster_pb2.WhoOwnsRequest(resource_id=resource_id),
                                timeout=2).owner == node.node_id


def hold_and_check(node, hosts: list[LibvirtHost], vm_id: str,  # type: ignore[no-untyped-def]
                   agents: list[LibvirtAgent], rounds: float = HOLD) -> None:
    """For ``rounds`` seconds of sync rounds with the transfer still running: the VM stays
    Migrating and both domains exist (the source's running, the target's incoming)."""
    until = time.monotonic() + rounds
    while time.monotonic() < until:
        vm = get_vm(node, vm_id)
        assert vm.state == "Migrating" and vm.op.kind == "migrate", vm
        assert incoming_on(hosts[1], vm_id), "the incoming domain is gone mid-transfer"
        assert transferring(hosts[0], vm_id), "the transfer ended while held"
        time.sleep(0.2)


@pytest.fixture
def fleet(etcd, nodes, libvirt_hosts: LibvirtHosts, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two nodes, two libvirt agents (hosts 0 and 1), one running HA guest on host 0 owned
    by the first node."""
    hosts = libvirt_hosts.hosts(2)
    for host in hosts:
        host.cleanup()
    agents: list[LibvirtAgent] = []
    try:
        mns = [nodes.start(f"mn-{i}", etcd.endpoints, lease_ttl=TTL) for i in range(2)]
        for i, host in enumerate(hosts):
            # a fresh state dir per test: a host keeps its abort fences there, and every
            # test reuses the VM id with a new cluster
            state = libvirt_hosts.shared_dir(f"lmc{i}-{uuid.uuid4().hex[:8]}")
            agents.append(LibvirtAgent(f"lmc{i}", free_port(), str(tmp_path), f"lmc-h{i}", host,
                                       state, boot_timeout=60).start())
        for agent in agents:
            agent.wait_ready(30)
        wait_until(lambda: all(len(c.ring(n).members) == 2 for n in mns), 10)
        # pingFailures high: an agent restart must not look like a lost host (fence)
        for key, value in {"vm.syncInterval": "0.3", "host.pingTimeout": "2",
                           "host.pingFailures": "30", "vm.orphanedSkipTimeout": "600",
                           "vm.migrateTimeout": "120"}.items():
            c.config(mns[0]).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                          timeout=5)
        for agent in agents:
            c.hosts(mns[0]).AddHost(host_pb2.AddHostRequest(host_id=agent.host_id,
                                                            address=agent.address), timeout=10)
        wait_until(lambda: all(h.status == host_pb2.HOST_STATUS_CONNECTED for h in c.hosts(
            mns[0]).ListHosts(host_pb2.ListHostsRequest(), timeout=5).hosts), 20)

        def owner(resource_id: str) -> str:
            return c.stub(mns[0]).WhoOwns(cluster_pb2.WhoOwnsRequest(resource_id=resource_id),
                                          timeout=2).owner

        vm_id = next(f"lmc-{i}" for i in range(1000) if owner(f"lmc-{i}") == mns[0].node_id)
        vm = c.vms(mns[0]).CreateVm(vm_pb2.CreateVmRequest(
            vm_id=vm_id, image=IMAGE, ha=vm_pb2.HA_LEVEL_NEVER_STOP, host_id=agents[0].host_id,
            cpus=1, memory_mb=128, start=True, wait=True), timeout=90).vm
        assert (vm.state, vm.generation) == ("Running", 1), vm
        yield mns, agents, hosts, vm_id
    finally:
        for agent in agents:
            agent.kill()
        for host in hosts:
            host.cleanup()


# The source agent's case in the default suite; the other two (about 15 s each with real
# guests) in the slow tier, to keep the default suite near 15 minutes on 2 cores.
CASES = ["source-agent", pytest.param("target-agent", marks=pytest.mark.slow),
         pytest.param("owner-node", marks=pytest.mark.slow)]


@pytest.mark.parametrize("case", CASES)
def test_kill_9_mid_transfer_leaves_exactly_one_domain(case, fleet) -> None:  # type: ignore[no-untyped-def]
    mns, agents, hosts, vm_id = fleet
    src, dst = agents
    set_speed(hosts[0], vm_id, SLOW_MIB_S)
    began = c.vms(mns[0]).MigrateVm(vm_pb2.MigrateVmRequest(vm_id=vm_id, host_id=dst.host_id),
                                    timeout=10).vm
    assert (began.state, began.op.target_generation) == ("Migrating", 2)
    wait_until(lambda: incoming_on(hosts[1], vm_id) and transferring(hosts[0], vm_id), 20,
               message="the transfer is under way")
    watcher = mns[0]
    if case == "owner-node":
        mns[0].kill()
        watcher = mns[1]
        # the survivor finds the op orphaned (lease TTL, then a sync round) while the
        # transfer still runs: it must wait for libvirt's job, not settle from a paused
        # incoming copy
        wait_until(lambda: get_vm(watcher, vm_id).op.node_id == mns[0].node_id and
                   owner_is(mns[1], vm_id), 10, message="the survivor owns the VM")
        hold_and_check(mns[1], hosts, vm_id, agents)
    elif case == "target-agent":
        dst.kill()
        assert incoming_on(hosts[1], vm_id)  # libvirt's transfer goes on without it
        dst.restart()
        dst.wait_ready(30)
        # the restarted agent reports the incoming domain as such (read from libvirtd)
        listing = [(v.vm_id, v.state, v.generation, v.incoming) for v in dst.stub().ListVms(
            agent_pb2.AgentServiceListVmsRequest(host_id=dst.host_id), timeout=5).vms]
        assert listing == [(vm_id, agent_pb2.AGENT_VM_STATE_PAUSED, 2, True)], listing
        hold_and_check(mns[0], hosts, vm_id, agents)
    else:
        src.kill()  # libvirtd ends the migration its client drove
        src.restart()
        src.wait_ready(30)
    set_speed(hosts[0], vm_id, FAST_MIB_S)
    vm = wait_until(lambda: (v := get_vm(watcher, vm_id)).state != "Migrating"
                    and not v.op.op_id and v, 60, message="the migration is settled")
    print(f"\n{case}: {vm.last_op.outcome}: {vm.last_op.detail}")
    where = 0 if vm.host_id == src.host_id else 1
    copies = wait_until(lambda: len(d := daemon_copies(hosts, vm_id)) == 1 and d, 20,
                        message=f"one domain: {daemon_copies(hosts, vm_id)}")
    assert copies == [(where, libvirt.VIR_DOMAIN_RUNNING, copies[0][2], vm.generation)], copies
    assert vm.state == "Running" and vm.generation == (1 if where == 0 else 2), vm
    assert vm_copies(agents) == {vm_id: [(vm.host_id, vm.generation)]}
    audit = c.vms(watcher).ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id=vm_id), timeout=5).records
    assert not audit, [str(r) for r in audit]
