"""The committed generated code is exactly what the pinned grpcio-tools makes of proto/."""

from __future__ import annotations

import importlib.metadata
import pathlib

import pytest

from controlplane.devtools import protogen

PINNED = "1.85.1"


def test_generated_code_matches_proto(tmp_path: pathlib.Path) -> None:
    installed = importlib.metadata.version("grpcio-tools")
    if installed != PINNED:
        pytest.fail(f"grpcio-tools {installed} installed; the generated code is pinned to "
                    f"{PINNED} (pip install -e '.[test]')")
    fresh = protogen.generate(tmp_path)
    committed_dir = protogen.ROOT / "controlplane" / "v1"
    suffixes = ("_pb2.py", "_pb2.pyi", "_grpc.py")
    fresh_dir = tmp_path / "controlplane" / "v1"
    committed = sorted(str(p.relative_to(committed_dir)) for p in committed_dir.rglob("*")
                       if p.name.endswith(suffixes))
    names = [str(p.relative_to(fresh_dir)) for p in fresh]
    assert names == committed
    stale = [n for n in names if (fresh_dir / n).read_text() != (committed_dir / n).read_text()]
    assert not stale, f"regenerate with `python -m controlplane.devtools.protogen`: {stale} differ"
