"""Regenerate controlplane/v1 from proto/ with the pinned grpcio-tools.

The generated code is committed (users need no protoc); a test regenerates it into a
temporary directory and fails on any difference, so the wire truth cannot drift.

third_party/ holds the protos ours import that no wheel ships as a .proto: buf.validate
(protovalidate's rules). Its generated module lives under controlplane/v1/buf/ and the
imports of it are rewritten there, so no top-level `buf` package is installed beside ours.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
THIRD_PARTY = ROOT / "third_party"
VENDORED = "from buf.validate import validate_pb2"
VENDORED_AT = "from controlplane.v1.buf.validate import validate_pb2"


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc for every .proto under proto/ into out_dir; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    vendored = sorted(str(p.relative_to(THIRD_PARTY)) for p in THIRD_PARTY.rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{THIRD_PARTY}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
        *vendored,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    gen_dir = out_dir / "controlplane" / "v1"
    # The vendored modules move under controlplane/v1/ (a package each level).
    moved = gen_dir / "buf"
    for path in sorted((out_dir / "buf").rglob("*_pb2.py*")):
        target = moved / path.relative_to(out_dir / "buf")
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)
    for level in (moved, moved / "validate"):
        (level / "__init__.py").write_text("")
    for leftover in sorted((out_dir / "buf").rglob("*"), reverse=True):
        leftover.rmdir() if leftover.is_dir() else leftover.unlink()
    (out_dir / "buf").rmdir()
    suffixes = ("_pb2.py", "_pb2.pyi", "_grpc.py")
    written = [p for p in gen_dir.rglob("*") if p.name.endswith(suffixes)]
    for path in written:
        text = path.read_text()
        if VENDORED in text:
            path.write_text(text.replace(VENDORED, VENDORED_AT))
    return sorted(written)


def main() -> int:
    written = generate(ROOT)
    for path in written:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
