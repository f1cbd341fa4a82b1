"""The `controlplane host|vm|config|storage|image ...` commands: an operator's gRPC client
of any node.

The parser wiring lives in cli.py; this module holds what the commands do, the argument
types they share (sizes, counts) and the output formats:

- text: one aligned line per item (a primary storage: one per MDS; an image's chain: one
  per volume), with self-describing `name=value` columns where a bare value would be
  ambiguous (`gen=3`, `ha=never-stop`), so a line read alone (grep, logs) still says what
  it is, and no header line, so `| wc -l` counts items (image commands first print what
  they changed as `change: ...` lines, and reconcile `no change` when nothing was);
- `--json`: the protobuf messages as `json_format.MessageToDict(preserving_proto_field_name=
  True)` (lists as one JSON array, watch events as one object per line), i.e. the canonical
  proto3 JSON mapping: int64 fields are strings and fields at their default are omitted.

Exit codes: 0 done; 2 bad arguments or an RPC error (`error from ENDPOINT: CODE: details`
on stderr, like `status`); 1 an operation waited for (`--wait`) that did not complete: it
failed, its outcome is unknown, or it was still in flight at the deadline; also 1 for a block
job (`image live-snapshot|live-merge|job|resume-job`) whose phase is FAILED, printed first.
Scripts chaining `vm start --wait && ...` must not go on with a VM that is not running.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from controlplane.cluster.service import valid_address
from controlplane.v1 import (
    cluster_pb2,
    config_pb2,
    host_pb2,
    mds_pb2,
    storage_pb2,
    vm_pb2,
    volume_pb2,
)
from controlplane.v1 import config_pb2_grpc as config_grpc
from controlplane.v1 import host_pb2_grpc as host_grpc
from controlplane.v1 import storage_pb2_grpc as storage_grpc
from controlplane.v1 import vm_pb2_grpc as vm_grpc
from controlplane.v1 import volume_pb2_grpc as volume_grpc

__all__ = [
    "HA_LEVELS",
    "IMAGE_TIMEOUT",
    "LIVE_TIMEOUT",
    "STORAGE_TIMEOUT",
    "WAIT_TIMEOUT",
    "absolute_path",
    "count",
    "host_port",
    "non_negative_int",
    "positive_size",
    "size_bytes",
]

DEFAULT_TIMEOUT = 5.0
# --wait keeps the call open until the operation finished: a real VM start can take a while,
# and the server answers "still in flight" (exit 1) a little before the deadline anyway.
WAIT_TIMEOUT = 120.0
# Storage calls that reach the MDS (add and check probe every MDS, clients tries them in
# turn) last up to the live storage.mdsAttemptTimeout (default 30 s) per attempt: a hung MDS
# must show up as UNHEALTHY in the answer, not as a client-side DEADLINE_EXCEEDED.
STORAGE_TIMEOUT = 60.0
# Image changes run qemu-img on the node (a merge copies a volume's data into its parent):
# far longer than a metadata call. A deadline that runs out does not stop the operation.
IMAGE_TIMEOUT = 120.0
# A live snapshot or merge answers when its block job ended: the whole disk is copied (or
# committed) while the guest keeps writing. A deadline that runs out does not stop the job.
LIVE_TIMEOUT = 600.0

HA_LEVELS = {"none": vm_pb2.HA_NONE, "never-stop": vm_pb2.NEVER_STOP}
_HA_NAMES = {value: name for name, value in HA_LEVELS.items()}

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# 1073741824, 1G, 1GB, 1GiB, 512M, 10b; case-insensitive (matched on the upper-cased text).
_SIZE = re.compile(r"([0-9]+)(?:([KMGT])(?:I?B)?|B)?")
_INT64_MAX = (1 << 63) - 1

# A `vm list` of a large fleet is bigger than gRPC's default 4 MiB receive limit (about 200
# bytes per VM: 20,000 VMs).
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]


# -- argument types -----------------------------------------------------------------------

def size_bytes(text: str) -> int:
    """A byte count with an optional K/M/G/T suffix (powers of 1024): typing 1073741824 for
    an image size is error-prone. Refuses negatives, fractions and junk (argparse error)."""
    match = _SIZE.fullmatch(text.strip().upper())
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"must be >= 0 bytes, got {text!r}")
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; expected bytes >= 0, optionally with a K, M, G or T "
            "suffix (powers of 1024), e.g. 1073741824 or 1G")
    value = int(match.group(1)) * _UNITS[match.group(2) or ""]
    if value > _INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is too large (at most {_INT64_MAX} bytes)")
    return value


def positive_size(text: str) -> int:
    """A size_bytes that is at least one byte (an image of 0 bytes holds nothing): refused
    here with the argument named rather than by the server after a round trip."""
    value = size_bytes(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def host_port(text: str) -> str:
    """HOST:PORT with a port in 1..65535, the check the server applies to an MDS address,
    so a typo is a usage error naming the flag instead of an INVALID_ARGUMENT."""
    if not valid_address(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (port 1..65535)")
    return text


def non_negative_int(text: str) -> int:
    """An integer >= 0 (0 leaves the choice to the server, e.g. its default CPU count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def absolute_path(text: str) -> str:
    """A path the node can use as it is: it resolves nothing against the client's directory
    (the node may run elsewhere), so a relative path is refused here (argparse error)."""
    if not os.path.isabs(text):
        raise argparse.ArgumentTypeError(f"not an absolute path: {text!r}")
    return text


def count(text: str) -> int:
    """An integer >= 1 (`vm watch --count`)."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


# -- output -------------------------------------------------------------------------------

def to_dict(message: Message) -> dict[str, Any]:
    """The documented --json shape of one message."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells -> lines with every column padded to its widest cell (the last column
    is not padded, so lines carry no trailing blanks)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows if i < len(row))
              for i in range(max(len(row) for row in rows))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + list(row[-1:])
        lines.append("  ".join(cells).rstrip())
    return lines


def human_size(size: int) -> str:
    """Bytes in the largest K/M/G/T unit that divides them exactly (the form size_bytes
    reads back), else plain bytes: a rounded size would hide a one-byte difference."""
    for suffix in ("T", "G", "M", "K"):
        unit = _UNITS[suffix]
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def ha_name(level: int) -> str:
    return _HA_NAMES.get(level, str(level))


def vm_row(vm: vm_pb2.Vm) -> list[str]:
    """id, state, host, generation, ha; plus the operation in flight, when there is one."""
    row = [vm.vm_id, vm.state or "-", f"host={vm.host_id or '-'}", f"gen={vm.generation}",
           f"ha={ha_name(vm.ha)}"]
    if vm.op.op_id:
        row.append(f"op={vm.op.kind}")
    return row


def host_row(host: host_pb2.Host) -> list[str]:
    """id, status, agent address, owner."""
    return [host.host_id, host_pb2.HostStatus.Name(host.status), host.address or "-",
            f"owner={host.owner or '-'}"]


def config_row(entry: config_pb2.ConfigEntry) -> list[str]:
    """key, value, and the default when the value differs from it."""
    default = "(default)" if entry.is_default else f"(default {entry.default_value})"
    return [entry.key, entry.value, default]


def audit_row(record: vm_pb2.HaAudit) -> list[str]:
    decided = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.decided_at))
    return [decided, record.action, f"{record.from_host or '-'} -> {record.to_host or '-'}",
            f"gen={record.generation}", f"node={record.node_id or '-'}", record.reason,
            "evidence: " + ("; ".join(record.evidence) or "-")]


def event_row(event: vm_pb2.VmEvent) -> list[str]:
    """A watch line. Lines are printed as events come, so they cannot be aligned on each
    other: the kind and the state get fixed widths instead (the longest of each)."""
    kind = vm_pb2.VmEvent.Kind.Name(event.kind).ljust(6)
    if event.kind == vm_pb2.VmEvent.SYNCED:
        return [kind, f"rev={event.revision}"]
    vm_id, state, *rest = vm_row(event.vm)
    return [kind, vm_id, state.ljust(16), *rest, f"rev={event.revision}"]


def mds_rows(storage: storage_pb2.PrimaryStorage) -> list[list[str]]:
    """One row per MDS of a primary storage: storage id, address, health, failed checks in
    a row, owner node, and what the last failed check saw (last: it holds blanks)."""
    return [[storage.storage_id, m.address,
             storage_pb2.MdsHealth.Name(m.health).removeprefix("MDS_"),
             f"failures={m.failures}", f"owner={storage.owner or '-'}",
             f"error={m.last_error or '-'}"] for m in storage.mds]


def volume_row(image_id: str, volume: volume_pb2.Volume, role: str) -> list[str]:
    """image, volume, parent, legality, virtual size, role (leaf, in-chain, outside-chain)
    and the file path (last: a path may hold blanks)."""
    return [image_id, volume.volume_id, f"parent={volume.parent_id or '-'}",
            volume_pb2.VolumeLegality.Name(volume.legality),
            f"virtual={human_size(volume.virtual_size)}", role, volume.path]


def chain_rows(chain: volume_pb2.VolumeChain) -> list[list[str]]:
    """The chain base first, then the volumes outside it (ILLEGAL leftovers of a merge or
    reconcile, waiting for cleanup) so nothing of the image is hidden."""
    rows = [volume_row(chain.image_id, v, "leaf" if v.volume_id == chain.leaf_id
                       else "in-chain") for v in chain.chain]
    return rows + [volume_row(chain.image_id, v, "outside-chain") for v in chain.outside]


def image_row(image: volume_pb2.Image) -> list[str]:
    """id, VM, leaf, number of volumes, directory."""
    return [image.image_id, f"vm={image.vm_id or '-'}", f"leaf={image.leaf_id}",
            f"volumes={len(image.volumes)}", image.directory]


def block_job_rows(job: volume_pb2.BlockJob) -> list[list[str]]:
    """The job line (id, kind, phase, image, VM, node, bytes copied), then one `name=value`
    line per path (top, base; output and error when set): paths may hold blanks."""
    rows = [[job.job_id, job.kind or "-", job.phase or "-", f"image={job.image_id or '-'}",
             f"vm={job.vm_id or '-'}", f"node={job.node_id or '-'}",
             f"copied={human_size(job.bytes_copied)}"]]
    rows += [[f"top={job.top or '-'}"], [f"base={job.base or '-'}"]]
    rows += [[f"{name}={value}"] for name, value in (("output", job.output),
                                                      ("error", job.error)) if value]
    return rows


def _show(args: argparse.Namespace, items: Iterable[Message],
          row: Callable[[Any], list[str]], one: bool = False) -> None:
    _show_rows(args, items, lambda item: [row(item)], one)


def _show_rows(args: argparse.Namespace, items: Iterable[Message],
               rows: Callable[[Any], list[list[str]]], one: bool = False) -> None:
    """Like _show, for items printed as several lines (a storage: one per MDS)."""
    items = list(items)
    if args.json:
        docs = [to_dict(item) for item in items]
        _print_json(docs[0] if one else docs)
        return
    for line in aligned([r for item in items for r in rows(item)]):
        print(line)


# -- calls --------------------------------------------------------------------------------

def rpc_error(exc: grpc.RpcError, endpoint: str) -> int:
    """The same report as `status`: `error from ENDPOINT: CODE: details`, exit code 2."""
    print(f"error from {endpoint}: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 2


def _timeout(args: argparse.Namespace) -> float:
    if args.timeout is not None:
        return args.timeout
    return WAIT_TIMEOUT if getattr(args, "wait", False) else DEFAULT_TIMEOUT


def _call(args: argparse.Namespace, stub_class: type, method: str, request: Message,
          show: Callable[[Any], int | None]) -> int:
    """One unary call to --endpoint; `show` prints the answer and may return an exit code."""
    with grpc.insecure_channel(args.endpoint, options=CHANNEL_OPTIONS) as channel:
        try:
            answer = getattr(stub_class(channel), method)(request, timeout=_timeout(args))
        except grpc.RpcError as exc:
            return rpc_error(exc, args.endpoint)
    return show(answer) or 0


# -- host ---------------------------------------------------------------------------------

def cmd_host_list(args: argparse.Namespace) -> int:
    return _call(args, host_grpc.HostServiceStub, "ListHosts", host_pb2.ListHostsRequest(),
                 lambda reply: _show(args, reply.hosts, host_row))


def _one_host(args: argparse.Namespace) -> Callable[[host_pb2.Host], None]:
    return lambda host: _show(args, [host], host_row, one=True)


def cmd_host_get(args: argparse.Namespace) -> int:
    return _call(args, host_grpc.HostServiceStub, "GetHost",
                 host_pb2.HostRef(host_id=args.host_id), _one_host(args))


def cmd_host_add(args: argparse.Namespace) -> int:
    return _call(args, host_grpc.HostServiceStub, "AddHost",
                 host_pb2.AddHostRequest(host_id=args.host_id, address=args.address),
                 _one_host(args))


def cmd_host_remove(args: argparse.Namespace) -> int:
    return _call(args, host_grpc.HostServiceStub, "RemoveHost",
                 host_pb2.RemoveHostRequest(host_id=args.host_id, force=args.force),
                 _one_host(args))


def cmd_host_reconnect(args: argparse.Namespace) -> int:
    return _call(args, host_grpc.HostServiceStub, "ReconnectHost",
                 host_pb2.HostRef(host_id=args.host_id), _one_host(args))


# -- vm -----------------------------------------------------------------------------------

def _show_vm(args: argparse.Namespace, waited: bool) -> Callable[[vm_pb2.Vm], int]:
    """Print the VM; when the caller waited, exit 1 unless the operation completed."""
    def show(vm: vm_pb2.Vm) -> int:
        _show(args, [vm], vm_row, one=True)
        if not waited:
            return 0
        if vm.op.op_id:
            print(f"vm {vm.vm_id}: operation {vm.op.kind} {vm.op.op_id} still in flight at "
                  "the deadline (see `vm get`; a longer --timeout waits longer)",
                  file=sys.stderr)
            return 1
        last = vm.last_op
        if last.outcome != "completed":
            detail = f": {last.detail}" if last.detail else ""
            print(f"vm {vm.vm_id}: operation {last.kind or '?'} {last.op_id or '?'} "
                  f"{last.outcome or 'did not complete'} (state {vm.state}){detail}",
                  file=sys.stderr)
            return 1
        return 0

    return show


def cmd_vm_list(args: argparse.Namespace) -> int:
    request = vm_pb2.ListVmsRequest(host_id=args.host or "", state=args.state or "")
    return _call(args, vm_grpc.VmServiceStub, "ListVms", request,
                 lambda reply: _show(args, reply.vms, vm_row))


def cmd_vm_get(args: argparse.Namespace) -> int:
    return _call(args, vm_grpc.VmServiceStub, "GetVm", vm_pb2.VmRef(vm_id=args.vm_id),
                 _show_vm(args, waited=False))


def cmd_vm_create(args: argparse.Namespace) -> int:
    image = vm_pb2.ImageInfo(image_id=args.image_id or "")
    if args.image_virtual_size is not None:
        image.virtual_size = args.image_virtual_size
    if args.image_actual_size is not None:
        image.actual_size = args.image_actual_size
    request = vm_pb2.CreateVmRequest(
        vm_id=args.vm_id or "", name=args.name or "", ha=HA_LEVELS[args.ha], cpus=args.cpus,
        memory_mb=args.memory_mb, image=image,
        root_disk_offering_size=args.root_disk_offering_size, host_id=args.host or "",
        start=args.start, wait=args.wait)
    return _call(args, vm_grpc.VmServiceStub, "CreateVm", request,
                 _show_vm(args, waited=args.start and args.wait))


def cmd_vm_op(args: argparse.Namespace) -> int:
    """start, stop, reboot, pause, resume, destroy: `args.method` names the RPC."""
    request = vm_pb2.VmOpRequest(vm_id=args.vm_id, wait=args.wait,
                                 force=getattr(args, "force", False),
                                 host_id=getattr(args, "host", None) or "")
    return _call(args, vm_grpc.VmServiceStub, args.method, request,
                 _show_vm(args, waited=args.wait))


def cmd_vm_audit(args: argparse.Namespace) -> int:
    return _call(args, vm_grpc.VmServiceStub, "ListHaAudit", vm_pb2.VmRef(vm_id=args.vm_id),
                 lambda reply: _show(args, reply.records, audit_row))


def _quiet_stdout() -> None:
    """After a broken pipe (`vm watch | head -3`): send the rest to /dev/null, so the
    interpreter's final flush does not fail again with a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def cmd_vm_watch(args: argparse.Namespace) -> int:
    """Print events until Ctrl-C (exit 0), --count events (exit 0) or --timeout.

    At --timeout the watch simply ends (exit 0), unless --count events were asked for and
    not all seen: then the deadline is an error (exit 2), so a script waiting for N events
    learns that they did not come. A stream the node ends (it is stopping) is exit 1."""
    request = vm_pb2.WatchVmsRequest(vm_id=args.vm_id or "", host_id=args.host or "",
                                     initial=args.initial)
    seen = 0
    with grpc.insecure_channel(args.endpoint, options=CHANNEL_OPTIONS) as channel:
        stream = vm_grpc.VmServiceStub(channel).WatchVms(request, timeout=args.timeout)
        try:
            for event in stream:
                if args.json:
                    print(json.dumps(to_dict(event), sort_keys=True), flush=True)
                else:
                    print(aligned([event_row(event)])[0], flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return 0
        except KeyboardInterrupt:
            return 0
        except BrokenPipeError:
            _quiet_stdout()
            return 0
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and args.count is None:
                return 0
            return rpc_error(exc, args.endpoint)
        finally:
            stream.cancel()
    print(f"error from {args.endpoint}: the node ended the watch after {seen} events "
          "(stopping?)", file=sys.stderr)
    return 1


# -- config -------------------------------------------------------------------------------

def cmd_config_list(args: argparse.Namespace) -> int:
    return _call(args, config_grpc.ConfigServiceStub, "ListConfig",
                 config_pb2.ListConfigRequest(),
                 lambda reply: _show(args, reply.entries, config_row))


def cmd_config_get(args: argparse.Namespace) -> int:
    return _call(args, config_grpc.ConfigServiceStub, "GetConfig",
                 config_pb2.ConfigKey(key=args.key),
                 lambda entry: _show(args, [entry], config_row, one=True))


def cmd_config_set(args: argparse.Namespace) -> int:
    return _call(args, config_grpc.ConfigServiceStub, "UpdateConfig",
                 config_pb2.ConfigEntry(key=args.key, value=args.value),
                 lambda entry: _show(args, [entry], config_row, one=True))


# -- storage ------------------------------------------------------------------------------

def _one_storage(args: argparse.Namespace) -> Callable[[storage_pb2.PrimaryStorage], None]:
    return lambda storage: _show_rows(args, [storage], mds_rows, one=True)


def _storage_ref(args: argparse.Namespace) -> storage_pb2.PrimaryStorageRef:
    return storage_pb2.PrimaryStorageRef(storage_id=args.storage_id)


def cmd_storage_add(args: argparse.Namespace) -> int:
    request = storage_pb2.AddPrimaryStorageRequest(storage_id=args.storage_id,
                                                   mds_addresses=args.mds)
    return _call(args, storage_grpc.StorageServiceStub, "AddPrimaryStorage", request,
                 _one_storage(args))


def cmd_storage_get(args: argparse.Namespace) -> int:
    return _call(args, storage_grpc.StorageServiceStub, "GetPrimaryStorage",
                 _storage_ref(args), _one_storage(args))


def cmd_storage_list(args: argparse.Namespace) -> int:
    return _call(args, storage_grpc.StorageServiceStub, "ListPrimaryStorages",
                 storage_pb2.ListPrimaryStoragesRequest(),
                 lambda reply: _show_rows(args, reply.storages, mds_rows))


def cmd_storage_remove(args: argparse.Namespace) -> int:
    return _call(args, storage_grpc.StorageServiceStub, "RemovePrimaryStorage",
                 _storage_ref(args), _one_storage(args))


def cmd_storage_check(args: argparse.Namespace) -> int:
    return _call(args, storage_grpc.StorageServiceStub, "CheckPrimaryStorage",
                 _storage_ref(args), _one_storage(args))


def cmd_storage_clients(args: argparse.Namespace) -> int:
    """Who has a volume open. The answer is one message (the volume and its clients), so
    --json prints it whole; text is one line per client, none when nobody has it open."""
    def show(reply: mds_pb2.MdsGetVolumeClientsResponse) -> None:
        if args.json:
            _print_json(to_dict(reply))
            return
        for line in aligned([[args.storage_id, reply.volume_id or args.volume_id,
                              client.client_id, f"address={client.address or '-'}"]
                             for client in reply.clients]):
            print(line)

    request = storage_pb2.StorageVolumeRef(storage_id=args.storage_id,
                                           volume_id=args.volume_id)
    return _call(args, storage_grpc.StorageServiceStub, "GetVolumeClients", request, show)


# -- image --------------------------------------------------------------------------------

def _show_chain(args: argparse.Namespace, always_changes: bool = False
                ) -> Callable[[volume_pb2.VolumeChain], None]:
    """The changes the call made (`change: ...`; `no change` when always_changes and there
    were none: a reconcile that found the metadata right says so), then the chain."""
    def show(chain: volume_pb2.VolumeChain) -> None:
        if args.json:
            _print_json(to_dict(chain))
            return
        for change in chain.changes:
            print(f"change: {change}")
        if always_changes and not chain.changes:
            print("no change")
        for line in aligned(chain_rows(chain)):
            print(line)

    return show


def cmd_image_create(args: argparse.Namespace) -> int:
    request = volume_pb2.CreateImageRequest(image_id=args.image_id, size_bytes=args.size,
                                            vm_id=args.vm or "", volume_id=args.volume or "")
    return _call(args, volume_grpc.VolumeServiceStub, "CreateImage", request,
                 _show_chain(args))


def cmd_image_chain(args: argparse.Namespace) -> int:
    return _call(args, volume_grpc.VolumeServiceStub, "GetVolumeChain",
                 volume_pb2.ImageRef(image_id=args.image_id), _show_chain(args))


def cmd_image_list(args: argparse.Namespace) -> int:
    return _call(args, volume_grpc.VolumeServiceStub, "ListImages",
                 volume_pb2.ListImagesRequest(),
                 lambda reply: _show(args, reply.images, image_row))


def cmd_image_snapshot(args: argparse.Namespace) -> int:
    request = volume_pb2.CreateSnapshotRequest(image_id=args.image_id,
                                               volume_id=args.volume_id)
    return _call(args, volume_grpc.VolumeServiceStub, "CreateSnapshot", request,
                 _show_chain(args))


def cmd_image_merge(args: argparse.Namespace) -> int:
    request = volume_pb2.MergeSnapshotsRequest(image_id=args.image_id,
                                               volume_id=args.volume_id)
    return _call(args, volume_grpc.VolumeServiceStub, "MergeSnapshots", request,
                 _show_chain(args))


def cmd_image_reconcile(args: argparse.Namespace) -> int:
    request = volume_pb2.ReconcileVolumeChainRequest(image_id=args.image_id,
                                                     leaf_id=args.leaf or "")
    return _call(args, volume_grpc.VolumeServiceStub, "ReconcileVolumeChain", request,
                 _show_chain(args, always_changes=True))


# -- live block jobs ----------------------------------------------------------------------

def _show_job(args: argparse.Namespace) -> Callable[[volume_pb2.BlockJob], int]:
    """The job (its line is not aligned with the path lines under it), then exit 1 when it
    FAILED: `image live-snapshot ... && ...` must not go on without the copy."""
    def show(job: volume_pb2.BlockJob) -> int:
        if args.json:
            _print_json(to_dict(job))
        else:
            first, *paths = block_job_rows(job)
            for line in aligned([first]) + [row[0] for row in paths]:
                print(line)
        return 1 if job.phase == "FAILED" else 0

    return show


def cmd_image_live_snapshot(args: argparse.Namespace) -> int:
    request = volume_pb2.LiveSnapshotRequest(image_id=args.image_id, job_id=args.job or "",
                                             output_path=args.output or "")
    return _call(args, volume_grpc.VolumeServiceStub, "LiveSnapshot", request,
                 _show_job(args))


def cmd_image_live_merge(args: argparse.Namespace) -> int:
    request = volume_pb2.LiveMergeRequest(image_id=args.image_id, volume_id=args.volume_id,
                                          job_id=args.job or "")
    return _call(args, volume_grpc.VolumeServiceStub, "LiveMerge", request, _show_job(args))


def cmd_image_job(args: argparse.Namespace) -> int:
    return _call(args, volume_grpc.VolumeServiceStub, "GetBlockJob",
                 volume_pb2.BlockJobRef(job_id=args.job_id), _show_job(args))


def cmd_image_resume_job(args: argparse.Namespace) -> int:
    return _call(args, volume_grpc.VolumeServiceStub, "ResumeBlockJob",
                 volume_pb2.BlockJobRef(job_id=args.job_id), _show_job(args))


def ring_to_dict(ring: cluster_pb2.GetRingResponse) -> dict:
    """GetRingResponse -> the documented `status --json` shape."""
    return {
        "node_id": ring.node_id,
        "incarnation": ring.incarnation,
        "ring_epoch": ring.epoch,
        "lease_ttl": ring.lease_ttl,
        "fenced": ring.fenced,
        "vnodes": ring.vnodes,
        "members": [
            {"node_id": m.node_id, "address": m.address, "incarnation": m.incarnation,
             "version": m.version}
            for m in ring.members
        ],
        "shares": dict(sorted(ring.shares.items())),
        "suspects": list(ring.suspects),
    }
