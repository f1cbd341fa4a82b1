"""`controlplane vm list|get|create|start|stop|reboot|pause|resume|destroy|migrate|watch|audit`.

Any node answers; operations run on the VM's owner, which records them in etcd before
calling the agent. With `--wait` an operation that did not complete (it failed, its outcome
is unknown, or it was still in flight at the deadline) exits 1 after printing the VM, and
says why through the one error printer (with --json, the JSON error object on stderr; its
code DEADLINE_EXCEEDED when still in flight, UNKNOWN when the outcome is unknown, ABORTED
when it failed): scripts chaining `vm start --wait && ...` must not go on with a VM that is
not running.

`vm create` without an ID makes the id here (the server's format, `vm-` and 12 hex digits)
rather than leaving it to the node: the client library retries a call that found no node
serving, and a retried create without an id would define a second VM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable

import grpc

from controlplane import names, wiretime
from controlplane.cli import argtypes, common
from controlplane.v1 import vm_pb2

HA_LEVELS = {"none": vm_pb2.HA_LEVEL_UNSPECIFIED, "never-stop": vm_pb2.HA_LEVEL_NEVER_STOP}
_HA_NAMES = {value: name for name, value in HA_LEVELS.items()}
HEADER = ("VM", "STATE", "HOST", "GENERATION", "HA", "OPERATION")

_WAIT_TIMEOUT_HELP = (f"call deadline in seconds (default {common.DEFAULT_TIMEOUT:g}, "
                      f"{common.WAIT_TIMEOUT:g} with --wait)")
_WAIT_HELP = ("wait until the operation finished; exit 1 if it failed, its outcome is unknown "
              "or it is still in flight at the deadline")


def ha_name(level: int) -> str:
    return _HA_NAMES.get(level, str(level))


def vm_row(vm: vm_pb2.Vm) -> list[str]:
    """id, state, host, generation, ha; plus the operation in flight, when there is one."""
    row = [vm.vm_id, vm.state or "-", f"host={vm.host_id or '-'}", f"gen={vm.generation}",
           f"ha={ha_name(vm.ha)}"]
    if vm.op.op_id:
        row.append(f"op={vm.op.kind}")
    return row


def audit_row(record: vm_pb2.HaAudit) -> list[str]:
    decided = time.strftime("%Y-%m-%d %H:%M:%S",
                            time.localtime(wiretime.seconds(record.decided_at)))
    return [decided, record.action, f"{record.from_host or '-'} -> {record.to_host or '-'}",
            f"gen={record.generation}", f"node={record.node_id or '-'}", record.reason,
            "evidence: " + ("; ".join(record.evidence) or "-")]


AUDIT_HEADER = ("DECIDED", "ACTION", "MOVE", "GENERATION", "NODE", "REASON", "EVIDENCE")


def event_line(event: vm_pb2.WatchVmsResponse) -> str:
    """A watch line. Lines are printed as events come, so they cannot be aligned on each
    other: the kind and the state get fixed widths instead (the longest of each)."""
    kind = names.short(vm_pb2.WatchVmsResponse.Kind, event.kind).ljust(6)
    if event.kind == vm_pb2.WatchVmsResponse.KIND_SYNCED:
        return f"{kind}  rev={event.revision}"
    vm_id, state, *rest = vm_row(event.vm)
    return "  ".join([kind, vm_id, state.ljust(16), *rest, f"rev={event.revision}"])


def add_parsers(sub: argparse._SubParsersAction) -> None:
    vm = sub.add_parser("vm", help="virtual machines: list, get, create, operations, watch",
                        description="Virtual machines. Any node answers; operations run on "
                        "the VM's owner, which records them in etcd before calling the agent.")
    vs = vm.add_subparsers(dest="vm_command", required=True, metavar="SUBCOMMAND")
    p = common.command(vs, "list", "VMs: id, state, host, generation, HA level",
                       "Every VM (or those on --host / in --state), one line each, from the "
                       "asked node's watch-fed cache.", cmd_vm_list)
    p.add_argument("--host", metavar="H", help="only VMs placed on host H")
    p.add_argument("--state", metavar="S", help="only VMs in state S (e.g. Running)")
    p = common.command(vs, "get", "one VM", "One VM, read from etcd: id, state, host, "
                       "generation, HA level, and the operation in flight if any.", cmd_vm_get)
    p.add_argument("vm_id", metavar="ID")

    p = common.command(
        vs, "create", "define a VM (and optionally start it)",
        "Define a VM. Its root disk is --root-disk-offering-size, else the larger of the "
        "image's virtual and actual sizes (both needed then). Sizes are bytes with an "
        "optional K/M/G/T suffix (powers of 1024).", cmd_vm_create, timeout=None,
        timeout_help=_WAIT_TIMEOUT_HELP)
    p.add_argument("vm_id", metavar="ID", nargs="?",
                   help="VM id (default: a new vm-<12 hex digits>, made by this command)")
    p.add_argument("--name", help="display name (default: the id)")
    p.add_argument("--image-id", metavar="IMG", help="image id (informational)")
    p.add_argument("--image-virtual-size", type=argtypes.size_bytes, metavar="BYTES",
                   help="the image's virtual size")
    p.add_argument("--image-actual-size", type=argtypes.size_bytes, metavar="BYTES",
                   help="the image's actual (allocated) size")
    p.add_argument("--root-disk-offering-size", type=argtypes.size_bytes, default=0,
                   metavar="BYTES",
                   help="root disk size from an offering (default: sized from the image)")
    p.add_argument("--disk", action="append", default=[], metavar="STORAGE/VOLUME[:root]",
                   help="a disk on primary storage (repeatable; ':root' marks the root disk, "
                        "sized by its volume); HA asks the store who holds it")
    p.add_argument("--cpus", type=argtypes.non_negative_int, default=0, metavar="N",
                   help="virtual CPUs (default: the server's, 1)")
    p.add_argument("--memory-mb", type=argtypes.non_negative_int, default=0, metavar="N",
                   help="memory in MiB (default: the server's, 512)")
    p.add_argument("--ha", choices=sorted(HA_LEVELS), default="none",
                   help="never-stop: restart it elsewhere when its host is lost (default none)")
    p.add_argument("--host", metavar="H", help="with --start: start it on host H (default: "
                   "placement picks: connected, enabled, fits; spread or pack)")
    p.add_argument("--start", action="store_true", help="start it right away")
    p.add_argument("--wait", action="store_true", help="with --start: " + _WAIT_HELP)

    ops = (
        ("start", "StartVm", "start a VM", "Start VM ID, on --host or where it was (else the "
         "least loaded connected host)."),
        ("stop", "StopVm", "stop a VM", "Stop VM ID gracefully (--force: power it off)."),
        ("reboot", "RebootVm", "reboot a running VM", "Reboot VM ID."),
        ("pause", "PauseVm", "pause a running VM", "Pause VM ID."),
        ("resume", "ResumeVm", "resume a paused VM", "Resume VM ID."),
        ("destroy", "DestroyVm", "destroy a VM", "Destroy VM ID (its record stays, Destroyed)."),
    )
    for name, method, summary, description in ops:
        p = common.command(vs, name, summary, description + " Refused with "
                           "FAILED_PRECONDITION, naming the state, when not allowed in the "
                           "VM's state or while another operation is in flight.", cmd_vm_op,
                           timeout=None, timeout_help=_WAIT_TIMEOUT_HELP, method=method)
        p.add_argument("vm_id", metavar="ID")
        p.add_argument("--wait", action="store_true", help=_WAIT_HELP)
        if name == "start":
            p.add_argument("--host", metavar="H", help="start it on host H")
        if name in ("stop", "destroy"):
            p.add_argument("--force", action="store_true", help="power it off at once")

    p = common.command(
        vs, "migrate", "live-migrate a running VM to another host",
        "Live-migrate VM ID to --host H (default: one placement picks, never its own host). "
        "With --wait, the phases are printed (stderr) as the owner reaches them and the "
        "command ends when the migration is settled: exit 0 when the VM moved, 1 when it "
        "stayed on its host (failed or aborted) or is still in flight at the deadline.",
        cmd_vm_migrate, timeout=None, timeout_help=_WAIT_TIMEOUT_HELP)
    p.add_argument("vm_id", metavar="ID")
    p.add_argument("--host", metavar="H", help="migrate it to host H")
    p.add_argument("--wait", action="store_true", help=_WAIT_HELP)

    p = common.command(
        vs, "watch", "stream VM changes, one line (or JSON object) per event",
        "Print every change of the matching VMs as the asked node's cache sees it: one line "
        "per event (PUT, DELETE; SYNCED ends the --initial listing), or one JSON object per "
        "line with --json. Runs until Ctrl-C (exit 0), --count events, or --timeout. The "
        "first endpoint that answers serves the whole watch; if it ends the stream (it is "
        "stopping), exit 1.", cmd_vm_watch, timeout=None,
        timeout_help="stop after this many seconds (exit 0; exit 1 if --count events were "
        "not all seen by then; default: no limit)")
    p.add_argument("vm_id", metavar="ID", nargs="?", help="only this VM (default: every VM)")
    p.add_argument("--host", metavar="H", help="only VMs placed on host H")
    p.add_argument("--initial", action="store_true",
                   help="first send every matching VM as it is now, then SYNCED")
    p.add_argument("--count", type=argtypes.count, metavar="N",
                   help="stop after N events (SYNCED counts), for scripts")
    p = common.command(vs, "audit", "a VM's HA audit trail",
                       "Every HA decision about VM ID (restart elsewhere, stop a stray copy) "
                       "with the evidence it rested on.", cmd_vm_audit)
    p.add_argument("vm_id", metavar="ID")


def new_vm_id() -> str:
    """A fresh VM id in the format the server gives an unnamed VM (vm/service.py CreateVm):
    made here, once per command, so that every attempt of a retried create names the same VM
    (a repeat is ALREADY_EXISTS, never a second VM)."""
    return f"vm-{uuid.uuid4().hex[:12]}"


def not_completed(vm: vm_pb2.Vm) -> tuple[str, str] | None:
    """(code, details) when the operation waited for did not complete, else None."""
    if vm.op.op_id:
        return ("DEADLINE_EXCEEDED",
                f"vm {vm.vm_id}: operation {vm.op.kind} {vm.op.op_id} still in flight at "
                "the deadline (see `vm get`; a longer --timeout waits longer)")
    last = vm.last_op
    if last.outcome == "completed":
        return None
    detail = f": {last.detail}" if last.detail else ""
    code = "UNKNOWN" if last.outcome == "unknown" else "ABORTED"
    return (code, f"vm {vm.vm_id}: operation {last.kind or '?'} {last.op_id or '?'} "
            f"{last.outcome or 'did not complete'} (state {vm.state}){detail}")


def _show_vm(args: argparse.Namespace, waited: bool) -> Callable[[vm_pb2.Vm, str], int]:
    """Print the VM; when the caller waited, exit 1 unless the operation completed (the
    reason reported by the one error printer, naming the endpoint that answered)."""
    def show(vm: vm_pb2.Vm, endpoint: str) -> int:
        common.show(args, [vm], vm_row, HEADER, one=True)
        problem = not_completed(vm) if waited else None
        if problem is None:
            return 0
        return common.report_error(args, endpoint, *problem)

    return show


def cmd_vm_list(args: argparse.Namespace) -> int:
    request = vm_pb2.ListVmsRequest(host_id=args.host or "", state=args.state or "")
    return common.call(args, "vms", "ListVms", request,
                       lambda reply: common.show(args, reply.vms, vm_row, HEADER), pages="vms")


def cmd_vm_get(args: argparse.Namespace) -> int:
    return common.call_at(args, "vms", "GetVm", vm_pb2.GetVmRequest(vm_id=args.vm_id),
                          _show_vm(args, waited=False), unwrap="vm")


def cmd_vm_create(args: argparse.Namespace) -> int:
    if not args.start:
        # CreateVm only uses host_id and wait for the start; without it both are ignored.
        if args.wait:
            raise common.UsageError("--wait needs --start (there is nothing to wait for)")
        if args.host:
            raise common.UsageError("--host needs --start (a VM is placed when it starts)")
    image = vm_pb2.ImageInfo(image_id=args.image_id or "")
    if args.image_virtual_size is not None:
        image.virtual_size = args.image_virtual_size
    if args.image_actual_size is not None:
        image.actual_size = args.image_actual_size
    request = vm_pb2.CreateVmRequest(
        vm_id=args.vm_id or new_vm_id(), name=args.name or "", ha=HA_LEVELS[args.ha],
        cpus=args.cpus, memory_mb=args.memory_mb, image=image,
        root_disk_offering_size=args.root_disk_offering_size, host_id=args.host or "",
        start=args.start, wait=args.wait, disks=[_disk(text) for text in args.disk])
    return common.call_at(args, "vms", "CreateVm", request,
                          _show_vm(args, waited=args.start and args.wait), unwrap="vm")


def _disk(text: str) -> vm_pb2.VmDisk:
    """STORAGE/VOLUME[:root] as a VmDisk (a usage error otherwise)."""
    spec, _, flag = text.partition(":")
    storage, _, volume = spec.partition("/")
    if not storage or not volume or flag not in ("", "root"):
        raise common.UsageError(f"--disk {text!r}: expected STORAGE/VOLUME or "
                                "STORAGE/VOLUME:root")
    return vm_pb2.VmDisk(primary_storage_id=storage, volume_id=volume, root=flag == "root")


def cmd_vm_op(args: argparse.Namespace) -> int:
    """start, stop, reboot, pause, resume, destroy: `args.method` names the RPC."""
    request = getattr(vm_pb2, f"{args.method}Request")(vm_id=args.vm_id, wait=args.wait)
    if hasattr(args, "force"):
        request.force = args.force
    if getattr(args, "host", None):
        request.host_id = args.host
    return common.call_at(args, "vms", args.method, request,
                          _show_vm(args, waited=args.wait), unwrap="vm")


def cmd_vm_migrate(args: argparse.Namespace) -> int:
    """Begin the migration, then (--wait) follow its op's phase until it is settled."""
    request = vm_pb2.MigrateVmRequest(vm_id=args.vm_id, host_id=args.host or "")
    timeout = common.call_timeout(args) or common.WAIT_TIMEOUT
    deadline = time.monotonic() + timeout
    with common.make_client(args) as client:
        try:
            vm = client.vms.MigrateVm(request, timeout=timeout).vm
            began = time.monotonic()
            if args.wait:
                print(f"migrating {vm.vm_id}: {vm.host_id} -> {vm.op.target_host_id} "
                      f"(generation {vm.op.target_generation})", file=sys.stderr, flush=True)
            phase = ""
            while args.wait and vm.op.op_id and time.monotonic() < deadline:
                if vm.op.phase != phase:
                    phase = vm.op.phase
                    print(f"  {time.monotonic() - began:7.2f}s  {phase}", file=sys.stderr,
                          flush=True)
                time.sleep(0.2)
                vm = client.vms.GetVm(vm_pb2.GetVmRequest(vm_id=args.vm_id),
                                      timeout=max(1.0, deadline - time.monotonic())).vm
            if args.wait and not vm.op.op_id:
                print(f"  {time.monotonic() - began:7.2f}s  {vm.last_op.outcome}: "
                      f"{vm.last_op.detail}", file=sys.stderr, flush=True)
        except grpc.RpcError as exc:
            return common.rpc_error(args, exc, client.endpoint)
        return _show_vm(args, waited=args.wait)(vm, client.endpoint)


def cmd_vm_audit(args: argparse.Namespace) -> int:
    return common.call(args, "vms", "ListHaAudit", vm_pb2.ListHaAuditRequest(vm_id=args.vm_id),
                       lambda reply: common.show(args, reply.records, audit_row,
                                                 AUDIT_HEADER), pages="records")


def cmd_vm_watch(args: argparse.Namespace) -> int:
    """Print events until Ctrl-C (exit 0), --count events (exit 0) or --timeout.

    At --timeout the watch simply ends (exit 0), unless --count events were asked for and
    not all seen: then the deadline is the RPC error it is (exit 1), so a script waiting for
    N events learns that they did not come. A stream the node ends (it is stopping) is also
    exit 1."""
    request = vm_pb2.WatchVmsRequest(vm_id=args.vm_id or "", host_id=args.host or "",
                                     initial=args.initial)
    seen = 0
    with common.make_client(args) as client:
        # the client opens it on the first endpoint that connects (a stream is not retried)
        stream = client.vms.WatchVms(request, timeout=args.timeout)
        try:
            for event in stream:
                if args.json:
                    print(json.dumps(common.to_dict(event), sort_keys=True), flush=True)
                else:
                    print(event_line(event), flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return 0
        except KeyboardInterrupt:
            return 0
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and args.count is None:
                return 0
            return common.rpc_error(args, exc, client.endpoint)
        finally:
            stream.cancel()
        return common.report_error(args, client.endpoint, None,
                                   f"the node ended the watch after {seen} events "
                                   "(stopping?)")
