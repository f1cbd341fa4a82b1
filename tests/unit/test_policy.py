"""The access policy table (controlplane.security.policy): every method of every service the
servers register has a level, and the ladder reader < operator < admin, node-only methods,
and agent/mds certificates that call nothing hold."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

import controlplane.v1
from controlplane.security.identity import Identity
from controlplane.security.policy import POLICY, decide, level_of


def _services() -> list:
    out = [health_pb2.DESCRIPTOR.services_by_name["Health"],
           reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]]
    for info in pkgutil.iter_modules(controlplane.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"controlplane.v1.{info.name}")
            out += list(module.DESCRIPTOR.services_by_name.values())
    return out


METHODS = [f"/{service.full_name}/{method.name}"
           for service in _services() for method in service.methods]


def test_the_walk_sees_every_service() -> None:
    services = {m.split("/")[1] for m in METHODS}
    assert {"controlplane.v1.VmService", "controlplane.v1.AgentService",
            "controlplane.v1.StorageMdsService", "grpc.health.v1.Health"} <= services
    assert len(METHODS) > 70


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_a_policy(method: str) -> None:
    assert level_of(method) is not None, f"{method} is missing from the policy table"


def test_no_entry_names_a_method_that_does_not_exist() -> None:
    services = {m.rsplit("/", 1)[0] for m in METHODS}
    known = set(METHODS)
    for key in POLICY:
        if key.startswith("/grpc.reflection.v1.ServerReflection/"):  # newer grpcio-reflection
            continue
        assert key in known or (key.endswith("/*") and key[:-2] in services), key


ADMIN = Identity("user", "alice", "admin")
OPERATOR = Identity("user", "olga", "operator")
READER = Identity("user", "rita", "reader")
NODE = Identity("node", "n1", "node")
AGENT = Identity("agent", "a1", "agent")
MDS = Identity("mds", "m1", "mds")


@pytest.mark.parametrize(("who", "method", "allowed"), [
    (READER, "/controlplane.v1.VmService/GetVm", True),
    (READER, "/controlplane.v1.VmService/WatchVms", True),
    (READER, "/controlplane.v1.VmService/DestroyVm", False),
    (OPERATOR, "/controlplane.v1.VmService/DestroyVm", True),
    (OPERATOR, "/controlplane.v1.HostService/ReconnectHost", True),
    (OPERATOR, "/controlplane.v1.HostService/RemoveHost", False),
    (OPERATOR, "/controlplane.v1.ConfigService/UpdateConfig", False),
    (ADMIN, "/controlplane.v1.ConfigService/UpdateConfig", True),
    (ADMIN, "/controlplane.v1.StorageService/AddPrimaryStorage", True),
    (READER, "/controlplane.v1.ClusterService/GetRing", True),
    (READER, "/grpc.health.v1.Health/Check", True),
    (ADMIN, "/controlplane.v1.AgentService/Fence", False),
    (ADMIN, "/controlplane.v1.AgentBlockJobsService/StartMirror", False),
    (ADMIN, "/controlplane.v1.StorageMdsService/DeleteVolume", False),
    (NODE, "/controlplane.v1.AgentService/Fence", True),
    (NODE, "/controlplane.v1.StorageMdsService/DeleteVolume", True),
    (NODE, "/controlplane.v1.VmService/DestroyVm", True),
    (AGENT, "/controlplane.v1.VmService/GetVm", False),
    (AGENT, "/controlplane.v1.AgentService/ListVms", False),
    (MDS, "/controlplane.v1.HostService/ListHosts", False),
    (ADMIN, "/controlplane.v1.SimControlService/CrashVm", True),
    (OPERATOR, "/controlplane.v1.SimControlService/CrashVm", False),
    (ADMIN, "/controlplane.v1.NoSuchService/Method", False),
])
def test_decide(who: Identity, method: str, allowed: bool) -> None:
    reason = decide(who, method)
    assert (reason is None) is allowed, reason
    if reason is not None:
        assert method in reason


def test_caller_header_round_trips() -> None:
    for who in (ADMIN, READER, NODE, AGENT):
        assert Identity.from_header(who.header()) == who
    assert Identity.from_header("user root alice") is None  # not a role
    assert Identity.from_header("node admin n1") is None  # a node's role is its kind
    assert Identity.from_header("user admin") is None
    assert Identity.from_header("") is None
