"""A small renderer for the subset of kustomize that deploy/ uses.

Why: the tests must check the manifests as a cluster would receive them (after overlays and
patches), offline and without a kustomize binary. When `kubectl` is on PATH a test compares
this renderer with `kubectl kustomize`, so the subset stays honest.

Supported kustomization.yaml fields, applied per level in kustomize's order
(resources, patches, namespace, labels, images):

- resources: YAML files (several documents each) and directories holding a kustomization.yaml;
- patches: entries with `path:` only, each file holding strategic-merge patches; a patch's
  target is the object with the same kind and metadata.name (and namespace, when given);
- namespace: set on every object except the cluster-scoped kinds in CLUSTER_SCOPED;
- labels: `pairs` with includeSelectors/includeTemplates false (metadata.labels only);
- images: `name` with `newName` and/or `newTag`, on containers and initContainers.

Strategic merge here: maps merge recursively, `key: null` deletes the key, lists named in
MERGE_KEYS merge item by item on their key, every other list is replaced. A merged list holds
the patch's items first, in the patch's order, then the base items the patch does not name,
as kustomize does (so a patched env var can end up before a variable it expands).

Limits (an error, never a silent difference, when a kustomization uses them): generators
(configMapGenerator, secretGenerator), JSON 6902 and inline patches, patch `target:`,
strategic-merge directives ($patch, $setElementOrder, $retainKeys, ...), commonLabels,
labels on selectors/templates, name prefixes/suffixes, replicas, replacements, components,
remote resources, image digests. Merge keys come from the fixed MERGE_KEYS table rather than
from the OpenAPI schema.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {
    "apiVersion", "kind", "resources", "namespace", "patches", "labels", "images",
}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "RuntimeClass",
}
# Field name -> merge key, as in the Kubernetes API's patchMergeKey. `ports` depends on where
# it is: containerPort in a container, port in a Service (see _merge_key).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ports": "port",
}


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement, or is wrong."""


def render(directory: str | Path) -> list[Doc]:
    """Render the kustomization in `directory` to a list of objects."""
    return _build(Path(directory).resolve(), stack=())


def resource_id(doc: Doc) -> tuple[str, str, str]:
    """(kind, namespace, name): what kustomize calls a resource's id."""
    meta = doc.get("metadata") or {}
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def _build(directory: Path, stack: tuple[Path, ...]) -> list[Doc]:
    if directory in stack:
        raise KustomizeError(f"cycle through {directory}")
    kustomization = _load_kustomization(directory)
    docs: list[Doc] = []
    for entry in kustomization.get("resources") or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            docs.extend(_build(path, stack + (directory,)))
        elif path.is_file():
            docs.extend(_load_yaml(path))
        else:
            raise KustomizeError(f"{directory}: resource {entry!r} not found")
    _check_unique(docs, directory)
    for entry in kustomization.get("patches") or []:
        _apply_patch_file(docs, directory, entry)
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    for entry in kustomization.get("labels") or []:
        _apply_labels(docs, entry)
    for entry in kustomization.get("images") or []:
        _apply_image(docs, entry)
    _check_unique(docs, directory)
    return docs


def _load_kustomization(directory: Path) -> Doc:
    for name in KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            unknown = set(data) - SUPPORTED_FIELDS
            if unknown:
                raise KustomizeError(f"{path}: unsupported fields {sorted(unknown)}")
            return data
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def _load_yaml(path: Path) -> list[Doc]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "name" not in doc.get(
                "metadata", {}):
            raise KustomizeError(f"{path}: every document needs kind and metadata.name")
    return docs


def _check_unique(docs: list[Doc], directory: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for doc in docs:
        rid = resource_id(doc)
        if rid in seen:
            raise KustomizeError(f"{directory}: {rid} defined twice")
        seen.add(rid)


def _apply_patch_file(docs: list[Doc], directory: Path, entry: Any) -> None:
    if not isinstance(entry, dict) or set(entry) != {"path"}:
        raise KustomizeError(f"{directory}: only `patches: - path: FILE` is supported: {entry}")
    path = (directory / entry["path"]).resolve()
    if not path.is_relative_to(directory):
        # kustomize's default load restrictor refuses files outside the kustomization root.
        raise KustomizeError(f"{path} is outside {directory}")
    for patch in _load_yaml(path):
        if patch.get("kind") == "Kustomization" or "op" in patch:
            raise KustomizeError(f"{path}: not a strategic-merge patch")
        kind, namespace, name = resource_id(patch)
        targets = [doc for doc in docs if doc["kind"] == kind
                   and doc["metadata"]["name"] == name
                   and (not namespace or doc["metadata"].get("namespace") == namespace)]
        if len(targets) != 1:
            raise KustomizeError(f"{path}: patch for {kind}/{name} matches {len(targets)} "
                                 "objects")
        target = targets[0]
        merged = strategic_merge(target, patch)
        target.clear()
        target.update(merged)


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """Merge `patch` into a copy of `base` the way a strategic-merge patch does (see module
    docstring for the subset)."""
    if isinstance(patch, dict):
        for key in patch:
            if isinstance(key, str) and key.startswith("$"):
                raise KustomizeError(f"strategic-merge directive {key} is not supported")
        if not isinstance(base, dict):
            return _drop_nulls(patch)
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = _drop_nulls(value)
        return out
    if isinstance(patch, list) and isinstance(base, list):
        key = _merge_key(field, base + patch)
        if key is None:
            return copy.deepcopy(patch)
        # Patch items first, in patch order, then the base items the patch does not name
        # (what kustomize does): a patched env var can move before the ones it refers to.
        merged: list[Any] = []
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise KustomizeError(f"{field}: item without merge key {key!r}: {item}")
            old = next((o for o in base if isinstance(o, dict) and o.get(key) == item[key]),
                       None)
            merged.append(_drop_nulls(item) if old is None else strategic_merge(old, item))
        named = {item[key] for item in patch}
        return merged + [copy.deepcopy(o) for o in base
                         if not (isinstance(o, dict) and o.get(key) in named)]
    return copy.deepcopy(patch)


def _merge_key(field: str, items: list[Any]) -> str | None:
    key = MERGE_KEYS.get(field)
    if field == "ports" and any(isinstance(i, dict) and "containerPort" in i for i in items):
        return "containerPort"
    return key


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _apply_labels(docs: list[Doc], entry: Doc) -> None:
    if entry.get("includeSelectors") or entry.get("includeTemplates") or \
            set(entry) - {"pairs", "includeSelectors", "includeTemplates"}:
        raise KustomizeError(f"labels: only pairs on metadata.labels are supported: {entry}")
    for doc in docs:
        labels = doc["metadata"].setdefault("labels", {})
        labels.update({str(k): str(v) for k, v in entry["pairs"].items()})


def _apply_image(docs: list[Doc], entry: Doc) -> None:
    if set(entry) - {"name", "newName", "newTag"}:
        raise KustomizeError(f"images: only name/newName/newTag are supported: {entry}")
    for container in _containers(docs):
        image = container.get("image", "")
        if "@" in image:
            raise KustomizeError(f"image digests are not supported: {image}")
        name, tag = _split_image(image)
        if name != entry["name"]:
            continue
        name = entry.get("newName", name)
        tag = str(entry["newTag"]) if "newTag" in entry else tag
        container["image"] = f"{name}:{tag}" if tag else name


def _split_image(image: str) -> tuple[str, str]:
    """'host:5000/repo:tag' -> ('host:5000/repo', 'tag'): a colon after the last slash."""
    head, _, last = image.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
    else:
        tag = ""
    return (f"{head}/{last}" if head else last), tag


def _containers(value: Any) -> Iterator[Doc]:
    """Every container and init container, wherever a pod spec sits in the object."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key in ("containers", "initContainers") and isinstance(child, list):
                yield from (c for c in child if isinstance(c, dict))
            else:
                yield from _containers(child)
    elif isinstance(value, list):
        for child in value:
            yield from _containers(child)


def main(argv: list[str]) -> int:
    """`python tests/deploy/kustomize_lite.py deploy/overlays/dev` prints the rendered YAML."""
    if len(argv) != 1:
        print("usage: kustomize_lite.py DIRECTORY", file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(render(argv[0]), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
