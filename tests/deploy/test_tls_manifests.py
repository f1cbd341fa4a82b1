"""Transport security in the rendered manifests: the cert-manager and Prometheus Operator
objects (whose CRDs kubernetes-validate does not know) checked against a schema of the
fields used, and the references a cluster would only reveal one failed pod at a time:
mounted Secrets that some Certificate writes, issuers that exist, DNS names that cover what
is dialed, certificate directories that are mounted, https etcd endpoints that are the etcd
members, NetworkPolicy and ServiceMonitor selectors that select something.

Each check is a function returning its problems, so a test can also show it fails: the
last test breaks a copy of the rendered overlay once per check (a renamed Secret, a dropped
DNS name, ...) and expects that check, and only through that, to complain. The certificates
themselves are built from the rendered specs (controlplane/testing/certmanager.py) and held
against the code that reads them: identity, usages, and gRPC's own hostname check in a real
TLS handshake.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_manifests import (
    CUSTOM_GROUPS,
    DEPLOY,
    ETCD,
    MN,
    OVERLAYS,
    TARGETS,
    Doc,
    container_ports,
    custom_resource,
    find,
    flag,
    main_container,
    pod_environment,
    render,
    selects,
    serve_settings,
    workloads,
)

from controlplane.rpc import RpcServer
from controlplane.security import pki
from controlplane.security.identity import identity_of
from controlplane.security.tls import channel_credentials
from controlplane.security.x509 import subject_of
from controlplane.store.client import parse_endpoints
from controlplane.testing.certmanager import (
    EXTENDED_USAGES,
    KEY_USAGES,
    KNOWN_SPEC_FIELDS,
    issue_as_cert_manager,
)
from controlplane.testing.ports import free_port

Problems = list[str]


@pytest.fixture(scope="module", name="rendered")
def rendered_targets() -> dict[str, list[Doc]]:
    """Every target as kubectl kustomize renders it (cached per session by render)."""
    return {target: render(DEPLOY / target) for target in TARGETS}

# -- a schema of the custom resources' fields used -------------------------------------------
# A schema is a dict of field -> schema (nested object, unknown fields refused), a type, a
# callable returning an error or None, or a one-element list (a list of that schema).


def _one_of(*values: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in values else f"{v!r} not one of {values}"


def _duration(v: Any) -> str | None:
    return None if isinstance(v, str) and re.fullmatch(r"(\d+(h|m|s))+", v) else \
        f"{v!r} is not a Go duration"


def _ip(v: Any) -> str | None:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"{v!r} is not an IP address"
    return None


def _dns(v: Any) -> str | None:
    ok = isinstance(v, str) and re.fullmatch(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?", v)
    return None if ok else f"{v!r} is not a DNS name"


LABELS = {"*": str}
METADATA = {"name": str, "namespace": str, "labels": LABELS, "annotations": LABELS}
ISSUER_REF = {"name": str, "kind": _one_of("Issuer", "ClusterIssuer"),
              "group": _one_of("cert-manager.io")}
CERTIFICATE_SPEC = {
    "secretName": str, "issuerRef": ISSUER_REF,
    "commonName": lambda v: None if isinstance(v, str) and 0 < len(v) <= 64 else
    f"commonName {v!r}: 1-64 characters (X.509 ub-common-name)",
    "subject": {"organizations": [str]},
    "dnsNames": [_dns], "ipAddresses": [_ip], "uris": [str],
    "usages": [_one_of(*KEY_USAGES, *EXTENDED_USAGES)],
    "duration": _duration, "renewBefore": _duration, "isCA": bool,
    "privateKey": {"algorithm": _one_of("RSA", "ECDSA", "Ed25519"), "size": int,
                   "encoding": _one_of("PKCS1", "PKCS8"),
                   "rotationPolicy": _one_of("Never", "Always")},
}
assert set(CERTIFICATE_SPEC) <= KNOWN_SPEC_FIELDS
SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Certificate"): {"apiVersion": str, "kind": str,
                                            "metadata": METADATA, "spec": CERTIFICATE_SPEC},
    ("cert-manager.io/v1", "Issuer"): {
        "apiVersion": str, "kind": str, "metadata": METADATA,
        "spec": {"selfSigned": {}, "ca": {"secretName": str}}},
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "apiVersion": str, "kind": str, "metadata": METADATA,
        "spec": {"selector": {"matchLabels": LABELS},
                 "namespaceSelector": {"matchNames": [str], "any": bool},
                 "endpoints": [{"port": str, "path": str, "scheme": _one_of("http", "https"),
                                "interval": _duration, "scrapeTimeout": _duration}]}},
}
REQUIRED = {"Certificate": ("secretName", "issuerRef"), "ServiceMonitor": ("selector",
                                                                           "endpoints")}


def _schema_problems(value: Any, schema: Any, path: str) -> Problems:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        if set(schema) == {"*"}:
            return [p for k, v in value.items() for p in _schema_problems(v, schema["*"],
                                                                          f"{path}.{k}")]
        out = [f"{path}.{k}: unknown field" for k in value if k not in schema]
        return out + [p for k, v in value.items() if k in schema
                      for p in _schema_problems(v, schema[k], f"{path}.{k}")]
    if isinstance(schema, list):
        if not isinstance(value, list) or not value:
            return [f"{path}: expected a non-empty list"]
        return [p for i, v in enumerate(value) for p in _schema_problems(v, schema[0],
                                                                         f"{path}[{i}]")]
    if isinstance(schema, type):
        return [] if isinstance(value, schema) else [
            f"{path}: expected {schema.__name__}, got {value!r}"]
    error = schema(value)
    return [f"{path}: {error}"] if error else []


def check_custom_resources(docs: list[Doc]) -> Problems:
    """apiVersion/kind known, fields as the schema says, required fields present, an Issuer
    of exactly one type."""
    out: Problems = []
    for doc in (d for d in docs if custom_resource(d)):
        name = f"{doc['kind']}/{doc.get('metadata', {}).get('name')}"
        schema = SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is None:
            out.append(f"{name}: {doc['apiVersion']} {doc['kind']} has no schema here")
            continue
        out += _schema_problems(doc, schema, name)
        spec = doc.get("spec", {})
        out += [f"{name}: spec.{f} missing" for f in REQUIRED.get(doc["kind"], ())
                if f not in spec]
        if doc["kind"] == "Issuer" and len(spec) != 1:
            out.append(f"{name}: an Issuer has exactly one type, got {sorted(spec)}")
    return out


# -- cross-references ---------------------------------------------------------------------


def certificates(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] == "Certificate"]


def certificate_for_secret(docs: list[Doc], secret: str) -> Doc | None:
    found = [c for c in certificates(docs) if c["spec"]["secretName"] == secret]
    return found[0] if len(found) == 1 else None


def _pod_spec(workload: Doc) -> Doc:
    return workload["spec"]["template"]["spec"]


def check_secrets_exist(docs: list[Doc]) -> Problems:
    """Every Secret a pod mounts is written by exactly one Certificate (or is a Secret in the
    output); every Issuer's CA Secret is a CA Certificate's."""
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    written = [c["spec"]["secretName"] for c in certificates(docs)]
    out = [f"Secret {s} is written by {written.count(s)} Certificates" for s in set(written)
           if written.count(s) > 1]
    for workload in workloads(docs):
        for volume in _pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                if name not in written and name not in secrets:
                    out.append(f"{workload['metadata']['name']} mounts Secret {name}: no "
                               "Certificate writes it")
    for issuer in (d for d in docs if d["kind"] == "Issuer" and "ca" in d["spec"]):
        cert = certificate_for_secret(docs, issuer["spec"]["ca"]["secretName"])
        if cert is None or not cert["spec"].get("isCA"):
            out.append(f"Issuer {issuer['metadata']['name']}: its CA Secret "
                       f"{issuer['spec']['ca']['secretName']} is no CA Certificate's")
    return out


def check_issuers_exist(docs: list[Doc]) -> Problems:
    """Every issuerRef names an Issuer of the output; CA Certificates are signed by the
    self-signed Issuer, leaves by a CA Issuer."""
    issuers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Issuer"}
    out = []
    for cert in certificates(docs):
        ref = cert["spec"]["issuerRef"]
        name = cert["metadata"]["name"]
        issuer = issuers.get(ref["name"])
        if ref.get("kind", "Issuer") != "Issuer" or issuer is None:
            out.append(f"Certificate {name}: issuerRef {ref} names no Issuer of the output")
        elif ("selfSigned" in issuer["spec"]) != bool(cert["spec"].get("isCA")):
            out.append(f"Certificate {name}: a {'CA' if cert['spec'].get('isCA') else 'leaf'}"
                       f" signed by Issuer {ref['name']} {sorted(issuer['spec'])}")
    return out


def _mounted_secret_dir(workload: Doc, container: Doc, path: str) -> str | None:
    """The Secret mounted read-only exactly at `path` in `container` (None if none)."""
    volumes = {v["name"]: v for v in _pod_spec(workload).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"].rstrip("/") == path.rstrip("/") and "secret" in volumes.get(
                mount["name"], {}) and mount.get("readOnly") and not mount.get("subPath"):
            return str(volumes[mount["name"]]["secret"]["secretName"])
    return None


def tls_dirs(docs: list[Doc]) -> dict[str, str]:
    """--tls-dir and --etcd-tls-dir of the MN pod as `serve` parses them."""
    settings = serve_settings(docs, f"{MN}-0")
    return {"--tls-dir": str(Path(settings["tls"]["cert"]).parent),
            "--etcd-tls-dir": str(Path(settings["etcd_tls"]["cert"]).parent)}


def check_tls_dirs_mounted(docs: list[Doc]) -> Problems:
    """--tls-dir/--etcd-tls-dir (parsed by the real parser) are read-only mounts of the
    node and etcd-client Secrets; etcd's --*-file flags and the Job's TLS dir are in mounted
    Secrets too."""
    out = []
    mn = find(docs, "StatefulSet", MN)
    container = main_container(mn)
    expect = {"--tls-dir": ("node",), "--etcd-tls-dir": ("etcd",)}
    for option, path in tls_dirs(docs).items():
        secret = _mounted_secret_dir(mn, container, path)
        cert = certificate_for_secret(docs, secret) if secret else None
        if cert is None:
            out.append(f"{option} {path}: no Certificate's Secret is mounted read-only there")
        elif cert["spec"]["subject"]["organizations"] != list(expect[option]):
            out.append(f"{option} {path}: mounts {secret}, O "
                       f"{cert['spec']['subject']['organizations']}")
    etcd = find(docs, "StatefulSet", ETCD)
    args = main_container(etcd)["args"]
    for name in ("cert-file", "key-file", "trusted-ca-file", "peer-cert-file", "peer-key-file",
                 "peer-trusted-ca-file"):
        path = Path(flag(args, name))
        if _mounted_secret_dir(etcd, main_container(etcd), str(path.parent)) is None:
            out.append(f"etcd --{name}={path}: its directory is no mounted Secret")
    job = find(docs, "Job", "etcd-auth")
    job_container = _pod_spec(job)["containers"][0]
    env = pod_environment(docs, job, job_container, "etcd-auth-x")
    secret = _mounted_secret_dir(job, job_container, env.get("CONTROLPLANE_TLS_DIR", "?"))
    root = certificate_for_secret(docs, secret) if secret else None
    if root is None or root["spec"].get("commonName") != "root":
        out.append(f"Job etcd-auth: CONTROLPLANE_TLS_DIR is no mounted CN=root certificate "
                   f"({secret})")
    return out


def _covers(names: list[str], host: str) -> bool:
    """Does a certificate naming `names` pass a hostname check for `host` (one leftmost
    wildcard label, as gRPC's check)?"""
    for name in names:
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def dialed_names(docs: list[Doc]) -> dict[str, list[str]]:
    """Certificate name -> the host names something dials it by, from the output: each MN
    pod's advertised address, the MN Services (<svc>, <svc>.<ns>, <svc>.<ns>.svc), each
    pod's <pod>.<headless>.<ns>.svc; the etcd endpoints the nodes get, each member's
    --initial-cluster peer URL and pod DNS name, the etcd Service."""
    out: dict[str, list[str]] = {}
    for sts_name in (MN, ETCD):
        sts = find(docs, "StatefulSet", sts_name)
        namespace = sts["metadata"].get("namespace", "default")
        container = main_container(sts)
        (secret,) = [v["secret"]["secretName"] for v in _pod_spec(sts)["volumes"]
                     if "secret" in v and _mounted_secret_dir(
                         sts, container, next(m["mountPath"] for m in container["volumeMounts"]
                                              if m["name"] == v["name"]))
                     and certificate_for_secret(docs, v["secret"]["secretName"]) and
                     certificate_for_secret(docs, v["secret"]["secretName"])["spec"].get(
                         "dnsNames")]
        cert = certificate_for_secret(docs, secret)
        assert cert is not None
        hosts = [f"{sts_name}-{i}.{sts['spec']['serviceName']}.{namespace}.svc"
                 for i in range(sts["spec"]["replicas"])]
        for service in (d for d in docs if d["kind"] == "Service"
                        and selects(d["spec"]["selector"],
                                    sts["spec"]["template"]["metadata"]["labels"])
                        and d["spec"].get("clusterIP") != "None"):
            svc = service["metadata"]["name"]
            hosts += [svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc"]
        if sts_name == MN:
            hosts += [serve_settings(docs, f"{MN}-{i}")["advertise"].rpartition(":")[0]
                      for i in range(sts["spec"]["replicas"])]
        else:
            mn = find(docs, "StatefulSet", MN)
            env = pod_environment(docs, mn, main_container(mn), f"{MN}-0")
            hosts += [h for h, _ in parse_endpoints(env["CONTROLPLANE_ETCD"])]
            hosts += [u.split("://", 1)[1].rpartition(":")[0] for u in re.findall(
                r"=(https?://[^,]+)", flag(container["args"], "initial-cluster"))]
        out[cert["metadata"]["name"]] = list(dict.fromkeys(hosts))
    return out


def check_dns_names(docs: list[Doc]) -> Problems:
    """Every host name a node or etcd is dialed by is covered by the certificate it
    serves; etcd's names are explicit (peer SAN checks resolve them: no wildcard)."""
    out = []
    for cert_name, hosts in dialed_names(docs).items():
        cert = find(docs, "Certificate", cert_name)
        names = cert["spec"].get("dnsNames", [])
        out += [f"Certificate {cert_name} does not cover {h} (dnsNames {names})"
                for h in hosts if not _covers(names, h)]
    out += [f"Certificate etcd-member: wildcard {n}" for n in
            find(docs, "Certificate", "etcd-member")["spec"]["dnsNames"] if "*" in n]
    return out


def check_etcd_endpoints(docs: list[Doc]) -> Problems:
    """The nodes' etcd endpoints are https:// URLs of exactly the etcd members, at the port
    the etcd Services serve as `client`, and etcd listens and advertises https with
    client certificates required on both ports."""
    out = []
    mn = find(docs, "StatefulSet", MN)
    etcd = find(docs, "StatefulSet", ETCD)
    env = pod_environment(docs, mn, main_container(mn), f"{MN}-0")
    items = env["CONTROLPLANE_ETCD"].split(",")
    out += [f"CONTROLPLANE_ETCD {i}: not https://" for i in items if not i.startswith("https://")]
    client_port = next(p["port"] for p in find(docs, "Service", ETCD)["spec"]["ports"]
                       if p["name"] == "client")
    members = {(f"{ETCD}-{i}.{etcd['spec']['serviceName']}", client_port)
               for i in range(etcd["spec"]["replicas"])}
    if set(parse_endpoints(items)) != members:
        out.append(f"CONTROLPLANE_ETCD {items} is not the members {sorted(members)}")
    args = main_container(etcd)["args"]
    for name in ("listen-client-urls", "advertise-client-urls", "listen-peer-urls",
                 "initial-advertise-peer-urls"):
        if not flag(args, name).startswith("https://"):
            out.append(f"etcd --{name} is not https")
    out += [f"etcd: {f} missing" for f in ("--client-cert-auth", "--peer-client-cert-auth")
            if f not in args]
    return out


def _policy_port(workload: Doc, port: Any) -> bool:
    ports = container_ports(workload)
    return port in ports or port in ports.values()


def check_network_policies(docs: list[Doc]) -> Problems:
    """Each policy selects exactly the pods of one workload; etcd's client port admits the
    nodes and the etcd-auth Job and nothing else, its peer port only etcd; every port named
    is a declared container port; metrics only from the monitoring namespace."""
    out: Problems = []
    pods = {w["metadata"]["name"]: w for w in workloads(docs)}
    labels = {n: w["spec"]["template"]["metadata"]["labels"] for n, w in pods.items()}
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        name = policy["metadata"]["name"]
        selected = [n for n, lab in labels.items()
                    if selects(policy["spec"]["podSelector"]["matchLabels"], lab)]
        if len(selected) != 1:
            out.append(f"NetworkPolicy {name} selects {selected}")
            continue
        target = pods[selected[0]]
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if not _policy_port(target, port["port"]):
                    out.append(f"NetworkPolicy {name}: port {port['port']} is not a port of "
                               f"{selected[0]}")
                sources = [n for peer in rule.get("from", []) if "podSelector" in peer
                           for n, lab in labels.items()
                           if selects(peer["podSelector"]["matchLabels"], lab)]
                namespaces = [peer["namespaceSelector"]["matchLabels"] for peer in
                              rule.get("from", []) if "namespaceSelector" in peer]
                if port["port"] == "metrics" and namespaces != [
                        {"kubernetes.io/metadata.name": "monitoring"}]:
                    out.append(f"NetworkPolicy {name}: metrics from {namespaces}")
                if selected[0] == ETCD and port["port"] == "client" and sorted(sources) != \
                        sorted([MN, "etcd-auth"]):
                    out.append(f"NetworkPolicy {name}: etcd client port from {sources}")
                if selected[0] == ETCD and port["port"] == "peer" and sources != [ETCD]:
                    out.append(f"NetworkPolicy {name}: etcd peer port from {sources}")
                for peer in rule.get("from", []):
                    if "podSelector" in peer and not any(
                            selects(peer["podSelector"]["matchLabels"], lab)
                            for lab in labels.values()):
                        out.append(f"NetworkPolicy {name}: a source selects no pod")
    guarded = {policy_target for policy in docs if policy["kind"] == "NetworkPolicy"
               for policy_target, lab in labels.items()
               if selects(policy["spec"]["podSelector"]["matchLabels"], lab)}
    out += [f"no NetworkPolicy guards {n}" for n in labels if n not in guarded]
    return out


def check_service_monitor(docs: list[Doc]) -> Problems:
    """The ServiceMonitor selects exactly one Service, which has each endpoint's port, and
    that port reaches the MN metrics port (where `serve` serves /metrics)."""
    out = []
    mn = find(docs, "StatefulSet", MN)
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        services = [d for d in docs if d["kind"] == "Service" and selects(
            monitor["spec"]["selector"]["matchLabels"], d["metadata"].get("labels", {}))]
        if len(services) != 1:
            out.append(f"ServiceMonitor selects {[s['metadata']['name'] for s in services]}")
            continue
        ports = {p["name"]: p for p in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            port = ports.get(endpoint["port"])
            if port is None or port.get("targetPort") not in (
                    "metrics", container_ports(mn)["metrics"]):
                out.append(f"ServiceMonitor port {endpoint['port']} is not the metrics port "
                           f"of Service {services[0]['metadata']['name']}")
            if endpoint.get("scheme", "http") != "http":
                out.append("ServiceMonitor: the metrics port is plain HTTP")
    return out


CHECKS: list[Callable[[list[Doc]], Problems]] = [
    check_custom_resources, check_secrets_exist, check_issuers_exist, check_tls_dirs_mounted,
    check_dns_names, check_etcd_endpoints, check_network_policies, check_service_monitor]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("target", OVERLAYS)
def test_the_rendered_overlay_passes(rendered: dict[str, list[Doc]], target: str,
                                     check: Callable[[list[Doc]], Problems]) -> None:
    assert check(rendered[target]) == []


def test_custom_resources_are_the_groups_we_check(rendered: dict[str, list[Doc]]) -> None:
    kinds = {(d["apiVersion"], d["kind"]) for d in rendered["overlays/prod"]
             if d["apiVersion"].startswith(CUSTOM_GROUPS)}
    assert kinds == set(SCHEMAS)


# -- each check can fail ---------------------------------------------------------------------


def _edit(kind: str, name: str, change: Callable[[Doc], None]) -> Callable[[list[Doc]], None]:
    def apply(docs: list[Doc]) -> None:
        change(find(docs, kind, name))
    return apply


def _set_env(name: str, value: str) -> Callable[[Doc], None]:
    def change(sts: Doc) -> None:
        for var in main_container(sts)["env"]:
            if var["name"] == name:
                var["value"] = value
    return change


BREAKS: list[tuple[str, Callable[[list[Doc]], None], Callable[[list[Doc]], Problems], str]] = [
    ("misspelt field", _edit("Certificate", "controlplane-node",
                             lambda d: d["spec"].update(dnsName=["x"])),
     check_custom_resources, "unknown field"),
    ("bad usage", _edit("Certificate", "etcd-client",
                        lambda d: d["spec"].update(usages=["client-auth"])),
     check_custom_resources, "not one of"),
    ("long CN", _edit("Certificate", "etcd-root", lambda d: d["spec"].update(
        commonName="x" * 65)), check_custom_resources, "1-64"),
    ("monitor scheme", _edit("ServiceMonitor", MN, lambda d: d["spec"]["endpoints"][0].update(
        scheme="tcp")), check_custom_resources, "not one of"),
    ("renamed secret", _edit("Certificate", "controlplane-node", lambda d: d["spec"].update(
        secretName="controlplane-node-tls2")), check_secrets_exist, "no Certificate writes"),
    ("CA secret", _edit("Issuer", "controlplane-ca", lambda d: d["spec"]["ca"].update(
        secretName="nope")), check_secrets_exist, "no CA Certificate"),
    ("missing issuer", _edit("Certificate", "etcd-member", lambda d: d["spec"][
        "issuerRef"].update(name="controlplane-issuer")), check_issuers_exist, "names no"),
    ("leaf self-signed", _edit("Certificate", "etcd-member", lambda d: d["spec"][
        "issuerRef"].update(name="controlplane-selfsigned")), check_issuers_exist, "leaf"),
    ("tls dir moved", _edit("StatefulSet", MN, _set_env("CONTROLPLANE_TLS_DIR",
                                                        "/etc/controlplane/tls")),
     check_tls_dirs_mounted, "--tls-dir"),
    ("etcd tls dir is the node's", _edit("StatefulSet", MN, _set_env(
        "CONTROLPLANE_ETCD_TLS_DIR", "/var/run/controlplane/tls")),
     check_tls_dirs_mounted, "--etcd-tls-dir"),
    ("etcd key elsewhere", _edit("StatefulSet", ETCD, lambda d: main_container(d)[
        "args"].__setitem__(next(i for i, a in enumerate(main_container(d)["args"])
                                 if a.startswith("--key-file=")), "--key-file=/tls/k")),
     check_tls_dirs_mounted, "--key-file"),
    ("dropped wildcard", _edit("Certificate", "controlplane-node", lambda d: d["spec"][
        "dnsNames"].pop(0)), check_dns_names, "does not cover"),
    ("advertise pod IP", _edit("StatefulSet", MN, _set_env("CONTROLPLANE_ADVERTISE",
                                                           "10.0.0.1:7070")),
     check_dns_names, "10.0.0.1"),
    ("etcd member missing", _edit("Certificate", "etcd-member", lambda d: d["spec"][
        "dnsNames"].remove("etcd-2.etcd-headless")), check_dns_names, "etcd-2"),
    ("plaintext etcd", _edit("ConfigMap", "controlplane-config", lambda d: d["data"].update(
        CONTROLPLANE_ETCD=d["data"]["CONTROLPLANE_ETCD"].replace("https://", "http://"))),
     check_etcd_endpoints, "not https"),
    ("etcd without client-cert-auth", _edit("StatefulSet", ETCD, lambda d: main_container(
        d)["args"].remove("--client-cert-auth")), check_etcd_endpoints, "--client-cert-auth"),
    ("relabelled pods", _edit("NetworkPolicy", ETCD, lambda d: d["spec"]["ingress"][0][
        "from"][0]["podSelector"]["matchLabels"].update({
            "app.kubernetes.io/component": "mn"})), check_network_policies, "client port"),
    ("policy port", _edit("NetworkPolicy", MN, lambda d: d["spec"]["ingress"][0]["ports"][
        0].update(port="gprc")), check_network_policies, "gprc"),
    ("metrics open", _edit("NetworkPolicy", ETCD, lambda d: d["spec"]["ingress"][2].update(
        {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "etcd"}}}]})),
     check_network_policies, "metrics from"),
    ("monitor label", _edit("Service", "controlplane-headless", lambda d: d["metadata"][
        "labels"].pop("controlplane.io/metrics")), check_service_monitor, "selects []"),
    ("monitor port", _edit("ServiceMonitor", MN, lambda d: d["spec"]["endpoints"][0].update(
        port="grpc")), check_service_monitor, "not the metrics port"),
]


@pytest.mark.parametrize(("what", "brk", "check", "expected"), BREAKS,
                         ids=[b[0] for b in BREAKS])
def test_each_check_fails_on_a_broken_copy(
        rendered: dict[str, list[Doc]], what: str, brk: Callable[[list[Doc]], None],
        check: Callable[[list[Doc]], Problems], expected: str) -> None:
    docs = copy.deepcopy(rendered["overlays/dev"])
    assert check(docs) == []
    brk(docs)
    problems = check(docs)
    assert any(expected in p for p in problems), (what, problems)


def test_every_check_is_shown_to_fail() -> None:
    assert {b[2] for b in BREAKS} == set(CHECKS)


# -- the certificates cert-manager would issue, against the code that reads them ------------


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory, rendered: dict[str, list[Doc]]
           ) -> dict[str, Any]:
    """The prod overlay's leaf Certificates issued from their rendered specs by a CA of our
    own, as cert-manager's CA Issuer would."""
    base = tmp_path_factory.mktemp("cm-pki")
    pki.init_ca(base)
    return {c["metadata"]["name"]: issue_as_cert_manager(base, c["spec"], base / c[
        "metadata"]["name"]) for c in certificates(rendered["overlays/prod"])
        if not c["spec"].get("isCA")}


def _subject(files: Any) -> tuple[str, str]:
    from cryptography import x509
    return subject_of(x509.load_pem_x509_certificate(Path(files.cert).read_bytes()))


def test_certificates_name_the_identities_the_code_reads(issued: dict[str, Any]) -> None:
    """CN/O as identity.py reads them: the nodes' certificate is a node (may forward and
    call agents); the etcd client identities name nobody on the control plane's API, the
    members' the kind `etcd` (x509.py: no method accepts it)."""
    node = identity_of(*_subject(issued["controlplane-node"]))
    assert node is not None and (node.kind, node.name) == ("node", MN)
    for name in ("etcd-client", "etcd-root"):
        assert identity_of(*_subject(issued[name])) is None, name
    member = identity_of(*_subject(issued["etcd-member"]))  # the kind no method accepts
    assert member is not None and member.kind == "etcd"
    # etcd takes the client certificate's CN as its user: the Job's --user and root
    assert _subject(issued["etcd-client"])[0] == "controlplane"
    assert _subject(issued["etcd-root"])[0] == "root"


def test_grpc_accepts_the_certificates_under_the_names_they_are_dialed_by(
        issued: dict[str, Any], rendered: dict[str, list[Doc]]) -> None:
    """A real mutual-TLS handshake per dialed name: the server presents the certificate
    built from the rendered spec, the client (the nodes' certificate, as in the cluster)
    checks it against that name with gRPC's own hostname check; a name the certificate does
    not carry is refused, so the check is real."""
    dialed = dialed_names(rendered["overlays/prod"])
    client = channel_credentials(issued["controlplane-node"])
    for cert_name, hosts in dialed.items():
        server = RpcServer(f"127.0.0.1:{free_port()}", tls=issued[cert_name])
        port = server.start()
        try:
            for host in [*hosts, "not-dialed.example"]:
                with grpc.secure_channel(f"127.0.0.1:{port}", client, options=[
                        ("grpc.ssl_target_name_override", host)]) as channel:
                    try:
                        health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=3)
                        ok = True
                    except grpc.RpcError:
                        ok = False
                assert ok == (host != "not-dialed.example"), (cert_name, host)
        finally:
            server.stop(0)
