"""The `controlplane` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import grpc

from controlplane import __version__
from controlplane.agent.main import add_agent_parser, run_agent
from controlplane.cli import commands as cc
from controlplane.cli.commands import ring_to_dict
from controlplane.config.settings import (
    EnvArgumentParser,
    add_serve_arguments,
    settings_from_args,
)

DEFAULT_ENDPOINT = "127.0.0.1:7070"


def _client_args(parser: argparse.ArgumentParser, timeout: float | None = 5.0,
                 timeout_help: str = "call deadline in seconds") -> None:
    """--endpoint, --json, --timeout: every command that asks a node takes them."""
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                        help=f"any management node, HOST:PORT (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=float, default=timeout, help=timeout_help)


def _command(subparsers: argparse._SubParsersAction, name: str, summary: str,
             description: str, run: object, timeout: float | None = 5.0,
             timeout_help: str = "call deadline in seconds", **defaults: object
             ) -> argparse.ArgumentParser:
    """A client sub-command: help, description, the client flags and what runs it."""
    parser = subparsers.add_parser(name, help=summary, description=description)
    _client_args(parser, timeout, timeout_help)
    parser.set_defaults(run=run, **defaults)
    return parser


_WAIT_TIMEOUT_HELP = (f"call deadline in seconds (default {cc.DEFAULT_TIMEOUT:g}, "
                      f"{cc.WAIT_TIMEOUT:g} with --wait)")
_WAIT_HELP = ("wait until the operation finished; exit 1 if it failed, its outcome is unknown "
              "or it is still in flight at the deadline")


def _add_host_parsers(sub: argparse._SubParsersAction) -> None:
    host = sub.add_parser("host", help="hypervisor hosts: list, get, add, remove, reconnect",
                          description="Hypervisor hosts, each served by a host agent. Any "
                          "node answers; changes run on the host's owner on the ring.")
    hs = host.add_subparsers(dest="host_command", required=True, metavar="SUBCOMMAND")
    _command(hs, "list", "every host: id, status, agent address, owner node",
             "Every host, one line each: id, status (CONNECTED, DISCONNECTED, FENCED), the "
             "address of its agent and the node that owns it now.", cc.cmd_host_list)
    p = _command(hs, "get", "one host", "One host: id, status, agent address, owner node.",
                 cc.cmd_host_get)
    p.add_argument("host_id", metavar="ID")
    p = _command(hs, "add", "register a host served by an agent",
                 "Register host ID served by the agent at --address. The owner pings the "
                 "agent first: FAILED_PRECONDITION when the agent does not serve ID, "
                 "UNAVAILABLE when it cannot be reached, ALREADY_EXISTS for a known id.",
                 cc.cmd_host_add)
    p.add_argument("host_id", metavar="ID")
    p.add_argument("--address", required=True, metavar="HOST:PORT",
                   help="the agent serving the host")
    p = _command(hs, "remove", "forget a host",
                 "Forget host ID. Refused (FAILED_PRECONDITION) while VMs are placed on it, "
                 "unless --force.", cc.cmd_host_remove)
    p.add_argument("host_id", metavar="ID")
    p.add_argument("--force", action="store_true", help="remove it even with VMs placed on it")
    p = _command(hs, "reconnect", "ping a host now and, if it answers, mark it connected",
                 "Ping host ID now; on success mark it CONNECTED and sync its VMs (also brings "
                 "back a FENCED host an operator repaired). UNAVAILABLE if still unreachable.",
                 cc.cmd_host_reconnect)
    p.add_argument("host_id", metavar="ID")


def _add_vm_parsers(sub: argparse._SubParsersAction) -> None:
    vm = sub.add_parser("vm", help="virtual machines: list, get, create, operations, watch",
                        description="Virtual machines. Any node answers; operations run on "
                        "the VM's owner, which records them in etcd before calling the agent.")
    vs = vm.add_subparsers(dest="vm_command", required=True, metavar="SUBCOMMAND")
    p = _command(vs, "list", "VMs: id, state, host, generation, HA level",
                 "Every VM (or those on --host / in --state), one line each, from the asked "
                 "node's watch-fed cache.", cc.cmd_vm_list)
    p.add_argument("--host", metavar="H", help="only VMs placed on host H")
    p.add_argument("--state", metavar="S", help="only VMs in state S (e.g. Running)")
    p = _command(vs, "get", "one VM", "One VM, read from etcd: id, state, host, generation, "
                 "HA level, and the operation in flight if any.", cc.cmd_vm_get)
    p.add_argument("vm_id", metavar="ID")

    p = _command(vs, "create", "define a VM (and optionally start it)",
                 "Define a VM. Its root disk is --root-disk-offering-size, else the larger "
                 "of the image's virtual and actual sizes (both needed then). Sizes are bytes "
                 "with an optional K/M/G/T suffix (powers of 1024).", cc.cmd_vm_create,
                 timeout=None, timeout_help=_WAIT_TIMEOUT_HELP)
    p.add_argument("vm_id", metavar="ID", nargs="?", help="VM id (default: the node picks one)")
    p.add_argument("--name", help="display name (default: the id)")
    p.add_argument("--image-id", metavar="IMG", help="image id (informational)")
    p.add_argument("--image-virtual-size", type=cc.size_bytes, metavar="BYTES",
                   help="the image's virtual size")
    p.add_argument("--image-actual-size", type=cc.size_bytes, metavar="BYTES",
                   help="the image's actual (allocated) size")
    p.add_argument("--root-disk-offering-size", type=cc.size_bytes, default=0, metavar="BYTES",
                   help="root disk size from an offering (default: sized from the image)")
    p.add_argument("--cpus", type=cc.non_negative_int, default=0, metavar="N",
                   help="virtual CPUs (default: the server's, 1)")
    p.add_argument("--memory-mb", type=cc.non_negative_int, default=0, metavar="N",
                   help="memory in MiB (default: the server's, 512)")
    p.add_argument("--ha", choices=sorted(cc.HA_LEVELS), default="none",
                   help="never-stop: restart it elsewhere when its host is lost (default none)")
    p.add_argument("--host", metavar="H", help="with --start: start it on host H (default: "
                   "the connected host with the fewest VMs)")
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
        p = _command(vs, name, summary, description + " Refused with FAILED_PRECONDITION, "
                     "naming the state, when not allowed in the VM's state or while another "
                     "operation is in flight.", cc.cmd_vm_op, timeout=None,
                     timeout_help=_WAIT_TIMEOUT_HELP, method=method)
        p.add_argument("vm_id", metavar="ID")
        p.add_argument("--wait", action="store_true", help=_WAIT_HELP)
        if name == "start":
            p.add_argument("--host", metavar="H", help="start it on host H")
        if name in ("stop", "destroy"):
            p.add_argument("--force", action="store_true", help="power it off at once")

    p = _command(vs, "watch", "stream VM changes, one line (or JSON object) per event",
                 "Print every change of the matching VMs as the asked node's cache sees it: "
                 "one line per event (PUT, DELETE; SYNCED ends the --initial listing), or one "
                 "JSON object per line with --json. Runs until Ctrl-C (exit 0), --count "
                 "events, or --timeout.", cc.cmd_vm_watch, timeout=None,
                 timeout_help="stop after this many seconds (exit 0; exit 2 if --count events "
                 "were not all seen by then; default: no limit)")
    p.add_argument("vm_id", metavar="ID", nargs="?", help="only this VM (default: every VM)")
    p.add_argument("--host", metavar="H", help="only VMs placed on host H")
    p.add_argument("--initial", action="store_true",
                   help="first send every matching VM as it is now, then SYNCED")
    p.add_argument("--count", type=cc.count, metavar="N",
                   help="stop after N events (SYNCED counts), for scripts")
    p = _command(vs, "audit", "a VM's HA audit trail",
                 "Every HA decision about VM ID (restart elsewhere, stop a stray copy) with "
                 "the evidence it rested on.", cc.cmd_vm_audit)
    p.add_argument("vm_id", metavar="ID")


def _add_config_parsers(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="live global settings: list, get, set",
                            description="Live settings stored in etcd: a change takes effect "
                            "on every node without a restart.")
    cs = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    _command(cs, "list", "every setting with its value",
             "Every setting: key, value, and its default when the value differs (--json "
             "adds the help of each).", cc.cmd_config_list)
    p = _command(cs, "get", "one setting", "One setting: key, value, default.",
                 cc.cmd_config_get)
    p.add_argument("key", metavar="KEY")
    p = _command(cs, "set", "change a setting cluster-wide",
                 "Set KEY to VALUE on every node. An unknown key or a value that does not "
                 "parse or is out of range is refused (INVALID_ARGUMENT), nothing written.",
                 cc.cmd_config_set)
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")


_STORAGE_TIMEOUT_HELP = (f"call deadline in seconds (default {cc.STORAGE_TIMEOUT:g}: the "
                         "node waits up to storage.mdsAttemptTimeout for each MDS)")
_IMAGE_TIMEOUT_HELP = (f"call deadline in seconds (default {cc.IMAGE_TIMEOUT:g}: qemu-img "
                       "runs on the node; a deadline that runs out does not stop it, see "
                       "`image chain`)")
_LIVE_TIMEOUT_HELP = (f"call deadline in seconds (default {cc.LIVE_TIMEOUT:g}: the call "
                      "answers when the block job ended; a deadline that runs out does not "
                      "stop it, see `image job`)")
_LIVE_REFUSALS = (" The image's VM must be Running: FAILED_PRECONDITION when it is not (or the "
                  "image has no VM), or when its disk does not run on the image's leaf (run "
                  "`image reconcile`); ABORTED while another operation holds the image lock "
                  "(retry); ALREADY_EXISTS when the job id is taken; NOT_FOUND for an unknown "
                  "image.")
_JOB_OUTPUT = (" Prints the job line (id, kind, phase, image, VM, node, bytes copied), then "
               "top=, base=, output= and error= lines (the last two when set); exits 1 when "
               "the job FAILED.")
_IMAGE_REFUSALS = (" FAILED_PRECONDITION while the image's VM is running (or has an "
                   "operation in flight); ABORTED while another operation holds the image "
                   "lock (retry); NOT_FOUND for an unknown image.")


def _add_storage_parsers(sub: argparse._SubParsersAction) -> None:
    storage = sub.add_parser(
        "storage", help="primary storages and their MDS: add, get, list, remove, check, clients",
        description="Primary storages: block stores reached through their metadata servers "
        "(MDS). The owner of a storage id checks its MDS every storage.mdsCheckInterval; text "
        "output is one line per MDS: storage, address, HEALTHY/UNHEALTHY, failed checks in a "
        "row, owner node, the last check's error.")
    ss = storage.add_subparsers(dest="storage_command", required=True, metavar="SUBCOMMAND")
    p = _command(ss, "add", "register a primary storage and check its MDS",
                 "Register primary storage ID reached through the MDS at each --mds, and "
                 "check every MDS at once (the answer shows the result). ALREADY_EXISTS for "
                 "a known id; INVALID_ARGUMENT for a bad id or an MDS listed twice.",
                 cc.cmd_storage_add, timeout=cc.STORAGE_TIMEOUT,
                 timeout_help=_STORAGE_TIMEOUT_HELP)
    p.add_argument("storage_id", metavar="ID")
    p.add_argument("--mds", action="append", required=True, type=cc.host_port,
                   metavar="HOST:PORT", help="an MDS of the store (repeat for each)")
    p = _command(ss, "get", "one primary storage with the health of its MDS",
                 "Primary storage ID as last stored: each MDS with its health from the last "
                 "check. NOT_FOUND for an unknown id.", cc.cmd_storage_get)
    p.add_argument("storage_id", metavar="ID")
    _command(ss, "list", "every primary storage, one line per MDS",
             "Every primary storage, one line per MDS, from the asked node's cache.",
             cc.cmd_storage_list)
    p = _command(ss, "remove", "forget a primary storage",
                 "Forget primary storage ID (the store and its volumes are not touched). "
                 "NOT_FOUND for an unknown id; ABORTED when the record changed meanwhile "
                 "(a check stored a result): retry.", cc.cmd_storage_remove)
    p.add_argument("storage_id", metavar="ID")
    p = _command(ss, "check", "check every MDS of a primary storage now",
                 "Probe every MDS of primary storage ID now (OK or NOT_FOUND from the MDS is "
                 "healthy; a refusal, an error or a timeout is not), store and print the "
                 "result. NOT_FOUND for an unknown id; UNAVAILABLE when the result could not "
                 "be stored.", cc.cmd_storage_check, timeout=cc.STORAGE_TIMEOUT,
                 timeout_help=_STORAGE_TIMEOUT_HELP)
    p.add_argument("storage_id", metavar="ID")
    p = _command(ss, "clients", "who has a volume of the store open",
                 "The clients (hosts) that have VOLUME of primary storage ID open, one line "
                 "each, asked of the store's healthy MDS in turn. NOT_FOUND for an unknown "
                 "storage or a volume the store does not have; UNAVAILABLE when every MDS "
                 "failed (the message names each MDS and its error).",
                 cc.cmd_storage_clients, timeout=cc.STORAGE_TIMEOUT,
                 timeout_help=_STORAGE_TIMEOUT_HELP)
    p.add_argument("storage_id", metavar="ID")
    p.add_argument("volume_id", metavar="VOLUME")


def _add_image_parsers(sub: argparse._SubParsersAction) -> None:
    image = sub.add_parser(
        "image", help="images and their qcow2 volume chains: create, chain, list, snapshot, "
        "merge, reconcile, live-snapshot, live-merge, job, resume-job",
        description="Images: a chain of qcow2 volumes on file storage every node mounts. "
        "Changes run on the image's owner under an exclusive image lock: snapshot, merge and "
        "reconcile offline only (refused while the image's VM runs), live-snapshot and "
        "live-merge only while it runs (block jobs on its disk, recorded in etcd: `image "
        "job`). Chain output is one line per volume, base first: image, volume, parent, "
        "legality, virtual size, leaf/in-chain, path; then the volumes outside the chain, "
        "marked outside-chain.")
    ims = image.add_subparsers(dest="image_command", required=True, metavar="SUBCOMMAND")
    p = _command(ims, "create", "a new image with one empty base volume",
                 "Create image ID with one empty qcow2 base volume of --size. ALREADY_EXISTS "
                 "for a known id; INVALID_ARGUMENT for a bad id or size; FAILED_PRECONDITION "
                 "when the node has no qemu-img; ABORTED while another operation holds the "
                 "image lock.", cc.cmd_image_create, timeout=cc.IMAGE_TIMEOUT,
                 timeout_help=_IMAGE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID")
    p.add_argument("--size", required=True, type=cc.positive_size, metavar="SIZE",
                   help="virtual size: bytes with an optional K/M/G/T suffix (powers of "
                   "1024), e.g. 64M or 1G")
    p.add_argument("--vm", metavar="VM", help="the VM using the image (changes are refused "
                   "while it runs)")
    p.add_argument("--volume", metavar="BASE", help="id of the base volume (default: base)")
    p = _command(ims, "chain", "an image's volume chain, base first",
                 "Image ID's volume chain as stored, base first, then the volumes outside it. "
                 "NOT_FOUND for an unknown image.", cc.cmd_image_chain)
    p.add_argument("image_id", metavar="ID")
    _command(ims, "list", "every image: id, VM, leaf, volumes, directory",
             "Every image, one line each, from the asked node's cache.", cc.cmd_image_list)
    p = _command(ims, "snapshot", "a new empty leaf on top of the chain",
                 "Offline snapshot: a new empty qcow2 leaf VOLUME on top of image ID's chain "
                 "(the old leaf becomes read-only history)." + _IMAGE_REFUSALS + " Also "
                 "ALREADY_EXISTS when the image has a volume VOLUME; FAILED_PRECONDITION when "
                 "the leaf is ILLEGAL (run `image reconcile`).", cc.cmd_image_snapshot,
                 timeout=cc.IMAGE_TIMEOUT, timeout_help=_IMAGE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID")
    p.add_argument("volume_id", metavar="VOLUME", help="id of the new leaf")
    p = _command(ims, "merge", "commit a volume into its parent",
                 "Offline merge: commit VOLUME of image ID into its parent and take it out of "
                 "the chain (its file is deleted)." + _IMAGE_REFUSALS + " Also NOT_FOUND for "
                 "an unknown volume; FAILED_PRECONDITION for the base, a volume outside the "
                 "chain or a chain with an ILLEGAL volume (run `image reconcile`); ABORTED "
                 "when the image changed under the merge (run `image reconcile`).",
                 cc.cmd_image_merge, timeout=cc.IMAGE_TIMEOUT,
                 timeout_help=_IMAGE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID")
    p.add_argument("volume_id", metavar="VOLUME", help="the volume to merge (not the base)")
    p = _command(ims, "reconcile", "bring the stored chain in line with the files",
                 "Read image ID's real chain from its files (one qemu-img info from the leaf) "
                 "and fix the stored chain to match: print each change (or `no change`), "
                 "then the chain. The way back after an interrupted merge." + _IMAGE_REFUSALS
                 + " Also FAILED_PRECONDITION when the files name volumes the image does not "
                 "have or no file of the chain exists.",
                 cc.cmd_image_reconcile, timeout=cc.IMAGE_TIMEOUT,
                 timeout_help=_IMAGE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID")
    p.add_argument("--leaf", metavar="VOLUME",
                   help="read the chain from this volume (default: the image's leaf)")
    p = _command(ims, "live-snapshot", "a flat copy of a running image's disk",
                 "Live snapshot: copy image ID's disk, while its VM runs and writes, to a new "
                 "flat qcow2 file (a mirror job, cancelled once READY: a point-in-time copy); "
                 "the VM stays on its disk and the chain is unchanged. Answers when the job "
                 "ended." + _LIVE_REFUSALS + " Also ALREADY_EXISTS when the output file "
                 "exists." + _JOB_OUTPUT, cc.cmd_image_live_snapshot,
                 timeout=cc.LIVE_TIMEOUT, timeout_help=_LIVE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID")
    p.add_argument("--job", metavar="JOB", help="id of the block job (default: generated)")
    p.add_argument("--output", type=cc.absolute_path, metavar="PATH",
                   help="the flat copy to write: absolute, on the node, must not exist "
                   "(default: JOB.qcow2 in the image's directory)")
    p = _command(ims, "live-merge", "commit a volume into its parent on the running disk",
                 "Live merge: commit VOLUME of image ID into its parent on the running disk "
                 "(a commit job; for the leaf the VM pivots to the parent once the job is "
                 "READY) and take it out of the chain (its file is deleted). Answers when the "
                 "job ended." + _LIVE_REFUSALS + " Also NOT_FOUND for an unknown volume; "
                 "FAILED_PRECONDITION for the base." + _JOB_OUTPUT, cc.cmd_image_live_merge,
                 timeout=cc.LIVE_TIMEOUT, timeout_help=_LIVE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID")
    p.add_argument("volume_id", metavar="VOLUME", help="the volume to merge (not the base)")
    p.add_argument("--job", metavar="JOB", help="id of the block job (default: generated)")
    p = _command(ims, "job", "a live block job as recorded",
                 "Block job JOB of a live snapshot or merge, as recorded in etcd at its last "
                 "phase change (STARTING, RUNNING, READY, FINISHING, COMPLETED, FAILED). The "
                 "live operations need the image's VM Running; this only reads the record. "
                 "NOT_FOUND for an unknown job." + _JOB_OUTPUT, cc.cmd_image_job)
    p.add_argument("job_id", metavar="JOB")
    p = _command(ims, "resume-job", "finish a live block job whose node left",
                 "Finish block job JOB, left unfinished by a node that left the cluster, from "
                 "its record: a merge still READY is pivoted, one whose job vanished is judged "
                 "by the disk's chain; a snapshot interrupted after its cancel is FAILED (the "
                 "copy is not trusted); a job already ended is printed as it is. The image's "
                 "VM must be Running: FAILED_PRECONDITION when it is not, while a live node "
                 "still runs the job, or when the merged volume left the image (run `image "
                 "reconcile`); ABORTED while the dead node's image lock lasts, i.e. until its "
                 "lease expires (retry); NOT_FOUND for an unknown job."
                 + _JOB_OUTPUT, cc.cmd_image_resume_job,
                 timeout=cc.LIVE_TIMEOUT, timeout_help=_LIVE_TIMEOUT_HELP)
    p.add_argument("job_id", metavar="JOB")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="controlplane",
        description="A distributed control plane for VM clouds: management nodes that "
        "coordinate through etcd leases and a consistent hash ring, and answer gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"controlplane {__version__}")
    # EnvArgumentParser: the flags of serve/agent/mds also read CONTROLPLANE_* variables
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=EnvArgumentParser)

    up = sub.add_parser(
        "up",
        help="run a local cluster: an embedded etcd and N management nodes",
        description="Start an embedded single-member etcd (unless --etcd is given) and N "
        "management node processes (node-0.. listening on 127.0.0.1:BASE_PORT+i), show a live "
        "status, and stop everything cleanly on Ctrl-C or SIGTERM. With --hosts H, also one sim "
        "agent serving host-0..host-{H-1}; once a node is ready the hosts are registered and "
        "--vms V VMs (vm-0000..) created and started, round-robin over the hosts, HA "
        "never-stop for every other one.",
    )
    up.add_argument("--nodes", type=int, default=3, help="management nodes to start (default 3)")
    up.add_argument("--base-port", type=int, default=7070,
                    help="node i listens on 127.0.0.1:BASE_PORT+i (default 7070)")
    up.add_argument("--data-dir", default=None,
                    help="etcd data and node logs (default: a temporary directory, removed at "
                    "exit)")
    up.add_argument("--etcd", default=None,
                    help="use this etcd (comma-separated HOST:PORT) instead of an embedded one")
    up.add_argument("--etcd-port", type=int, default=None,
                    help="embedded etcd client port (default BASE_PORT+1000; peer port +1)")
    up.add_argument("--lease-ttl", type=int, default=10, help="membership lease TTL, seconds")
    up.add_argument("--metrics-base-port", type=int, default=None,
                    help="node i serves metrics on METRICS_BASE_PORT+i (default BASE_PORT+100)")
    up.add_argument("--duration", type=float, default=None,
                    help="stop by itself after this many seconds (for scripts and demos)")
    up.add_argument("--hosts", type=int, default=0, metavar="H",
                    help="also start one sim agent serving H hosts and register them "
                    "(default 0; at most 10000)")
    up.add_argument("--vms", type=int, default=0, metavar="V",
                    help="create and start V VMs on those hosts (needs --hosts; at most 100000)")
    up.add_argument("--agent-port", type=int, default=None,
                    help="the sim agent listens on 127.0.0.1:AGENT_PORT (default BASE_PORT+200)")

    serve = sub.add_parser(
        "serve",
        help="run one management node (what a Kubernetes pod runs)",
        description="Run one management node until SIGTERM. Every flag can also be set by the "
        "environment variable named in its help. On SIGTERM: readiness goes NOT_SERVING, the "
        "lease is revoked, in-flight calls drain for --drain-grace seconds.",
    )
    add_serve_arguments(serve)

    add_agent_parser(sub)
    from controlplane.mds.main import add_mds_parser

    add_mds_parser(sub)

    status = sub.add_parser("status", help="the cluster as one node sees it",
                            description="Members, ring epoch, lease TTL and ring shares as seen "
                            "by the node asked.")
    _client_args(status)

    _add_host_parsers(sub)
    _add_vm_parsers(sub)
    _add_config_parsers(sub)
    _add_storage_parsers(sub)
    _add_image_parsers(sub)

    ring = sub.add_parser("ring", help="ring questions")
    ring_sub = ring.add_subparsers(dest="ring_command", required=True, metavar="SUBCOMMAND")
    owner = ring_sub.add_parser("owner", help="which node owns a resource id")
    owner.add_argument("resource_id")
    owner.add_argument("--locate", action="store_true",
                       help="route the question to the owner (exercises forwarding)")
    _client_args(owner)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="SUITE")
    cluster = bench_sub.add_parser(
        "cluster", help="ring lookups/s, ring balance, failover and graceful leave times",
        description="Measures on this machine: ring lookups per second on one core and the "
        "busiest member's share; then, on a real embedded etcd with real node processes, the "
        "time from kill -9 of a node until the last survivor's ring drops it (median of "
        "--runs, next to the lease TTL) and the graceful leave time (SIGTERM).",
    )
    cluster.add_argument("--runs", type=int, default=5)
    cluster.add_argument("--lease-ttl", type=int, default=2)
    cluster.add_argument("--lookups", type=int, default=300_000)
    cluster.add_argument("--json", action="store_true")
    from controlplane.devtools.bench.fleet import add_fleet_parser

    add_fleet_parser(bench_sub)
    from controlplane.devtools.bench.storage import add_storage_parser

    add_storage_parser(bench_sub)
    return parser


def _fail(exc: grpc.RpcError, endpoint: str) -> int:
    print(f"error from {endpoint}: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 2


def cmd_status(args: argparse.Namespace) -> int:
    from controlplane.v1 import cluster_pb2 as pb
    from controlplane.v1 import cluster_pb2_grpc as pb_grpc

    with grpc.insecure_channel(args.endpoint) as channel:
        try:
            ring = pb_grpc.ClusterServiceStub(channel).GetRing(pb.GetRingRequest(),
                                                               timeout=args.timeout)
        except grpc.RpcError as exc:
            return _fail(exc, args.endpoint)
    doc = ring_to_dict(ring)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(f"asked {doc['node_id']} (incarnation {doc['incarnation']}"
          f"{', FENCED' if doc['fenced'] else ''}): ring epoch {doc['ring_epoch']}, "
          f"lease ttl {doc['lease_ttl']}s, {len(doc['members'])} members")
    for m in doc["members"]:
        share = doc["shares"].get(m["node_id"], 0.0)
        print(f"  {m['node_id']:<16} {m['address']:<22} incarnation {m['incarnation']:<8} "
              f"share {share:6.1%}")
    if doc["suspects"]:
        print(f"  suspected (missing from the last list): {', '.join(doc['suspects'])}")
    return 0


def cmd_ring_owner(args: argparse.Namespace) -> int:
    from controlplane.v1 import cluster_pb2 as pb
    from controlplane.v1 import cluster_pb2_grpc as pb_grpc

    with grpc.insecure_channel(args.endpoint) as channel:
        stub = pb_grpc.ClusterServiceStub(channel)
        try:
            if args.locate:
                loc = stub.Locate(pb.LocateRequest(resource_id=args.resource_id),
                                  timeout=args.timeout)
                doc = {"resource_id": loc.resource_id, "owner": loc.served_by,
                       "epoch": loc.epoch, "forwarded": loc.forwarded, "retries": loc.retries}
            else:
                who = stub.WhoOwns(pb.WhoOwnsRequest(resource_id=args.resource_id),
                                   timeout=args.timeout)
                doc = {"resource_id": who.resource_id, "owner": who.owner,
                       "owner_address": who.owner_address, "epoch": who.epoch,
                       "answered_by": who.node_id}
        except grpc.RpcError as exc:
            return _fail(exc, args.endpoint)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"{doc['resource_id']} -> {doc['owner']} (epoch {doc['epoch']})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("host", "vm", "config", "storage", "image"):
        if getattr(args, "vm_command", None) == "create" and not args.start:
            # CreateVm only uses host_id and wait for the start; without it both are ignored.
            if args.wait:
                parser.error("vm create: --wait needs --start (there is nothing to wait for)")
            if args.host:
                parser.error("vm create: --host needs --start (a VM is placed when it starts)")
        return args.run(args)
    if args.command == "serve":
        from controlplane import logs
        from controlplane.server import serve

        settings = settings_from_args(args)
        context = logs.setup(settings.log_format, settings.log_level, settings.node_id)
        return serve(settings, context)
    if args.command == "agent":
        return run_agent(args)
    if args.command == "mds":
        from controlplane.mds.main import run_mds

        return run_mds(args)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "ring":
        return cmd_ring_owner(args)
    if args.command == "up":
        from controlplane.cli.up.supervisor import run_up

        return run_up(args)
    if args.command == "bench":
        if args.bench_command == "fleet":
            from controlplane.devtools.bench.fleet import run_fleet_bench

            return run_fleet_bench(args)
        if args.bench_command == "storage":
            from controlplane.devtools.bench.storage import run_storage_bench

            return run_storage_bench(args)
        from controlplane.devtools.bench.cluster import run_cluster_bench

        return run_cluster_bench(args)
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
