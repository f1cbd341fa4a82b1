"""`controlplane image create|chain|list|snapshot|merge|reconcile|live-snapshot|live-merge|
job|resume-job`: images, each a chain of qcow2 volumes on file storage every node mounts.

Text output of a chain: first what the call changed (`change: ...` lines; reconcile says
`no change` when nothing was), then one line per volume, base first. A block job: its line,
then one `name=value` line per path (paths may hold blanks); exit 1 when the job FAILED,
printed first: `image live-snapshot ... && ...` must not go on without the copy.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from controlplane import names
from controlplane.cli import argtypes, common
from controlplane.rpc import MAX_NAME, NAME_CHARS
from controlplane.v1 import volume_pb2

# Image changes run qemu-img on the node (a merge copies a volume's data into its parent):
# far longer than a metadata call. A deadline that runs out does not stop the operation.
IMAGE_TIMEOUT = 120.0
# A live snapshot or merge answers when its block job ended: the whole disk is copied (or
# committed) while the guest keeps writing. A deadline that runs out does not stop the job.
LIVE_TIMEOUT = 600.0

CHAIN_HEADER = ("IMAGE", "VOLUME", "PARENT", "LEGALITY", "VIRTUAL", "ROLE", "PATH")
IMAGE_HEADER = ("IMAGE", "VM", "LEAF", "VOLUMES", "DIRECTORY")
JOB_HEADER = ("JOB", "KIND", "PHASE", "IMAGE", "VM", "NODE", "COPIED")

# Image and volume ids name directories and files on the node: the servers' name rule.
_NAME_HELP = f"a name: 1-{MAX_NAME} of {NAME_CHARS}, not starting with . or -"
_IMAGE_TIMEOUT_HELP = (f"call deadline in seconds (default {IMAGE_TIMEOUT:g}: qemu-img "
                       "runs on the node; a deadline that runs out does not stop it, see "
                       "`image chain`)")
_LIVE_TIMEOUT_HELP = (f"call deadline in seconds (default {LIVE_TIMEOUT:g}: the call "
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


def human_size(size: int) -> str:
    """Bytes in the largest K/M/G/T unit that divides them exactly (the form size_bytes
    reads back), else plain bytes: a rounded size would hide a one-byte difference."""
    for suffix in ("T", "G", "M", "K"):
        unit = argtypes.UNITS[suffix]
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def volume_row(image_id: str, volume: volume_pb2.Volume, role: str) -> list[str]:
    """image, volume, parent, legality, virtual size, role (leaf, in-chain, outside-chain)
    and the file path (last: a path may hold blanks)."""
    return [image_id, volume.volume_id, f"parent={volume.parent_id or '-'}",
            names.short(volume_pb2.VolumeLegality, volume.legality),
            f"virtual={human_size(volume.virtual_size)}", role, volume.path]


def chain_rows(chain: volume_pb2.GetVolumeChainResponse) -> list[list[str]]:
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    p = common.command(ims, "create", "a new image with one empty base volume",
                 "Create image ID with one empty qcow2 base volume of --size. ALREADY_EXISTS "
                 "for a known id; INVALID_ARGUMENT for a bad id or size; FAILED_PRECONDITION "
                 "when the node has no qemu-img; ABORTED while another operation holds the "
                 "image lock.", cmd_image_create, timeout=IMAGE_TIMEOUT,
                 timeout_help=_IMAGE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID", help=_NAME_HELP)
    p.add_argument("--size", required=True, type=argtypes.positive_size, metavar="SIZE",
                   help="virtual size: bytes with an optional K/M/G/T suffix (powers of "
                   "1024), e.g. 64M or 1G")
    p.add_argument("--vm", metavar="VM", help="the VM using the image (changes are refused "
                   "while it runs)")
    p.add_argument("--volume", metavar="BASE", help="id of the base volume (default: base)")
    p = common.command(ims, "chain", "an image's volume chain, base first",
                 "Image ID's volume chain as stored, base first, then the volumes outside it. "
                 "NOT_FOUND for an unknown image.", cmd_image_chain)
    p.add_argument("image_id", metavar="ID")
    common.command(ims, "list", "every image: id, VM, leaf, volumes, directory",
             "Every image, one line each, from the asked node's cache.", cmd_image_list)
    p = common.command(ims, "snapshot", "a new empty leaf on top of the chain",
                 "Offline snapshot: a new empty qcow2 leaf VOLUME on top of image ID's chain "
                 "(the old leaf becomes read-only history)." + _IMAGE_REFUSALS + " Also "
                 "ALREADY_EXISTS when the image has a volume VOLUME; FAILED_PRECONDITION when "
                 "the leaf is ILLEGAL (run `image reconcile`).", cmd_image_snapshot,
                 timeout=IMAGE_TIMEOUT, timeout_help=_IMAGE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID")
    p.add_argument("volume_id", metavar="VOLUME", help="id of the new leaf; " + _NAME_HELP)
    p = common.command(ims, "merge", "commit a volume into its parent",
                 "Offline merge: commit VOLUME of image ID into its parent and take it out of "
                 "the chain (its file is deleted)." + _IMAGE_REFUSALS + " Also NOT_FOUND for "
                 "an unknown volume; FAILED_PRECONDITION for the base, a volume outside the "
                 "chain or a chain with an ILLEGAL volume (run `image reconcile`); ABORTED "
                 "when the image changed under the merge (run `image reconcile`).",
                 cmd_image_merge, timeout=IMAGE_TIMEOUT,
                 timeout_help=_IMAGE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID")
    p.add_argument("volume_id", metavar="VOLUME", help="the volume to merge (not the base)")
    p = common.command(ims, "reconcile", "bring the stored chain in line with the files",
                 "Read image ID's real chain from its files (one qemu-img info from the leaf) "
                 "and fix the stored chain to match: print each change (or `no change`), "
                 "then the chain. The way back after an interrupted merge." + _IMAGE_REFUSALS
                 + " Also FAILED_PRECONDITION when the files name volumes the image does not "
                 "have or no file of the chain exists.",
                 cmd_image_reconcile, timeout=IMAGE_TIMEOUT,
                 timeout_help=_IMAGE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID")
    p.add_argument("--leaf", metavar="VOLUME",
                   help="read the chain from this volume (default: the image's leaf)")
    p = common.command(ims, "live-snapshot", "a flat copy of a running image's disk",
                 "Live snapshot: copy image ID's disk, while its VM runs and writes, to a new "
                 "flat qcow2 file (a mirror job, cancelled once READY: a point-in-time copy); "
                 "the VM stays on its disk and the chain is unchanged. Answers when the job "
                 "ended." + _LIVE_REFUSALS + " Also ALREADY_EXISTS when the output file "
                 "exists." + _JOB_OUTPUT, cmd_image_live_snapshot,
                 timeout=LIVE_TIMEOUT, timeout_help=_LIVE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID")
    p.add_argument("--job", metavar="JOB", help="id of the block job (default: generated)")
    p.add_argument("--output", type=argtypes.output_file, metavar="FILE",
                   help="the flat copy to write, always directly in the image's own "
                   "directory on the node: a file name, or an absolute path in that "
                   "directory; must not exist (default: JOB.qcow2); INVALID_ARGUMENT for "
                   "anything else")
    p = common.command(ims, "live-merge", "commit a volume into its parent on the running disk",
                 "Live merge: commit VOLUME of image ID into its parent on the running disk "
                 "(a commit job; for the leaf the VM pivots to the parent once the job is "
                 "READY) and take it out of the chain (its file is deleted). Answers when the "
                 "job ended." + _LIVE_REFUSALS + " Also NOT_FOUND for an unknown volume; "
                 "FAILED_PRECONDITION for the base." + _JOB_OUTPUT, cmd_image_live_merge,
                 timeout=LIVE_TIMEOUT, timeout_help=_LIVE_TIMEOUT_HELP)
    p.add_argument("image_id", metavar="ID")
    p.add_argument("volume_id", metavar="VOLUME", help="the volume to merge (not the base)")
    p.add_argument("--job", metavar="JOB", help="id of the block job (default: generated)")
    p = common.command(ims, "job", "a live block job as recorded",
                 "Block job JOB of a live snapshot or merge, as recorded in etcd at its last "
                 "phase change (STARTING, RUNNING, READY, FINISHING, COMPLETED, FAILED). The "
                 "live operations need the image's VM Running; this only reads the record. "
                 "NOT_FOUND for an unknown job." + _JOB_OUTPUT, cmd_image_job)
    p.add_argument("job_id", metavar="JOB")
    p = common.command(ims, "resume-job", "finish a live block job whose node left",
                 "Finish block job JOB, left unfinished by a node that left the cluster, from "
                 "its record: a merge still READY is pivoted, one whose job vanished is judged "
                 "by the disk's chain; a snapshot interrupted after its cancel is FAILED (the "
                 "copy is not trusted); a job already ended is printed as it is. The image's "
                 "VM must be Running: FAILED_PRECONDITION when it is not, while a live node "
                 "still runs the job, or when the merged volume left the image (run `image "
                 "reconcile`); ABORTED while the dead node's image lock lasts, i.e. until its "
                 "lease expires (retry); NOT_FOUND for an unknown job."
                 + _JOB_OUTPUT, cmd_image_resume_job,
                 timeout=LIVE_TIMEOUT, timeout_help=_LIVE_TIMEOUT_HELP)
    p.add_argument("job_id", metavar="JOB")


def _show_chain(args: argparse.Namespace, always_changes: bool = False
                ) -> Callable[[volume_pb2.GetVolumeChainResponse], None]:
    """The changes the call made (`change: ...`; `no change` when always_changes and there
    were none: a reconcile that found the metadata right says so), then the chain."""
    def show(chain: volume_pb2.GetVolumeChainResponse) -> None:
        if args.json:
            common.print_json(common.to_dict(chain))
            return
        for change in chain.changes:
            print(f"change: {change}")
        if always_changes and not chain.changes:
            print("no change")
        common.print_table(chain_rows(chain), CHAIN_HEADER)

    return show


def cmd_image_create(args: argparse.Namespace) -> int:
    request = volume_pb2.CreateImageRequest(image_id=args.image_id, size_bytes=args.size,
                                            vm_id=args.vm or "", volume_id=args.volume or "")
    return common.call(args, "volumes", "CreateImage", request, _show_chain(args))


def cmd_image_chain(args: argparse.Namespace) -> int:
    return common.call(args, "volumes", "GetVolumeChain",
                       volume_pb2.GetVolumeChainRequest(image_id=args.image_id), _show_chain(args))


def cmd_image_list(args: argparse.Namespace) -> int:
    return common.call(args, "volumes", "ListImages", volume_pb2.ListImagesRequest(),
                       lambda reply: common.show(args, reply.images, image_row, IMAGE_HEADER),
                       pages="images")


def cmd_image_snapshot(args: argparse.Namespace) -> int:
    request = volume_pb2.CreateSnapshotRequest(image_id=args.image_id,
                                               volume_id=args.volume_id)
    return common.call(args, "volumes", "CreateSnapshot", request, _show_chain(args))


def cmd_image_merge(args: argparse.Namespace) -> int:
    request = volume_pb2.MergeSnapshotsRequest(image_id=args.image_id,
                                               volume_id=args.volume_id)
    return common.call(args, "volumes", "MergeSnapshots", request, _show_chain(args))


def cmd_image_reconcile(args: argparse.Namespace) -> int:
    request = volume_pb2.ReconcileVolumeChainRequest(image_id=args.image_id,
                                                     leaf_id=args.leaf or "")
    return common.call(args, "volumes", "ReconcileVolumeChain", request,
                       _show_chain(args, always_changes=True))


# -- live block jobs ----------------------------------------------------------------------

def _show_job(args: argparse.Namespace) -> Callable[[volume_pb2.BlockJob], int]:
    """The job (its line is a table of its own: the path lines under it are not aligned
    with it), then exit 1 when it FAILED."""
    def show(job: volume_pb2.BlockJob) -> int:
        if args.json:
            common.print_json(common.to_dict(job))
        else:
            first, *paths = block_job_rows(job)
            common.print_table([first], JOB_HEADER)
            for row in paths:
                print(row[0])
        return 1 if job.phase == "FAILED" else 0

    return show


def cmd_image_live_snapshot(args: argparse.Namespace) -> int:
    request = volume_pb2.LiveSnapshotRequest(image_id=args.image_id, job_id=args.job or "",
                                             output_path=args.output or "")
    return common.call(args, "volumes", "LiveSnapshot", request, _show_job(args), unwrap="job")


def cmd_image_live_merge(args: argparse.Namespace) -> int:
    request = volume_pb2.LiveMergeRequest(image_id=args.image_id, volume_id=args.volume_id,
                                          job_id=args.job or "")
    return common.call(args, "volumes", "LiveMerge", request, _show_job(args), unwrap="job")


def cmd_image_job(args: argparse.Namespace) -> int:
    return common.call(args, "volumes", "GetBlockJob",
                       volume_pb2.GetBlockJobRequest(job_id=args.job_id), _show_job(args),
                       unwrap="job")


def cmd_image_resume_job(args: argparse.Namespace) -> int:
    return common.call(args, "volumes", "ResumeBlockJob",
                       volume_pb2.ResumeBlockJobRequest(job_id=args.job_id), _show_job(args),
                       unwrap="job")
