"""The house rules, read from the import graph of controlplane/ (ast only: nothing imported).

- no import cycle between modules;
- layers point down: a module imports only modules of its own layer or below (LAYERS);
- only testing/ and devtools/ import the harness (controlplane.testing);
- only store/ imports the etcd client.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "controlplane"

# Lowest first. A module belongs to the first entry that is its name or a package above it.
LAYERS: list[tuple[str, ...]] = [
    ("controlplane", "controlplane.v1", "controlplane.errors", "controlplane.metadata",
     "controlplane.metrics",
     "controlplane.logs", "controlplane.channels", "controlplane.procs",
     "controlplane.serving", "controlplane.store", "controlplane.security"),
    ("controlplane.rpc", "controlplane.config", "controlplane.agentclient"),
    ("controlplane.cluster",),
    ("controlplane.owner",),
    ("controlplane.vm", "controlplane.host", "controlplane.storage"),
    ("controlplane.agent", "controlplane.mds", "controlplane.client"),
    ("controlplane.server",),
    ("controlplane.testing",),
    # the command wires `controlplane bench` from devtools; devtools runs the harness
    ("controlplane.cli", "controlplane.devtools"),
    ("controlplane.__main__",),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[1:2] == ["v1"]:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in the file (TYPE_CHECKING blocks excepted)."""
    tree = ast.parse(path.read_text())
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        else:
            todo.extend(ast.iter_child_nodes(node))
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> int:
    best, rank = -1, 0
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_layers_point_down() -> None:
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in sorted(graph().items()) for d in sorted(deps)
              if layer(d) > layer(m)]
    assert upward == []


def test_only_testing_and_devtools_import_the_harness() -> None:
    users = [f"{m} imports {d}" for m, deps in sorted(graph().items()) for d in sorted(deps)
             if d.startswith("controlplane.testing")
             and not m.startswith(("controlplane.testing", "controlplane.devtools"))]
    assert users == []


def test_only_store_imports_the_etcd_client() -> None:
    leaks = []
    for name, path in modules().items():
        if name.startswith("controlplane.store"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            leaks += [f"{name} imports {m}" for m in mods if m.split(".")[0] in ("pyetcd", "etcd3")]
    assert leaks == []


def test_the_checks_see_what_they_check() -> None:
    """The graph is not empty and the rules would catch a break (a check that cannot fail
    is no check)."""
    g = graph()
    assert "controlplane.store.client" in g["controlplane.cluster.registration"] or any(
        d.startswith("controlplane.store") for d in g["controlplane.cluster.registration"])
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert layer("controlplane.server") > layer("controlplane.vm.service") > layer(
        "controlplane.cluster.ring") > layer("controlplane.store.client")
