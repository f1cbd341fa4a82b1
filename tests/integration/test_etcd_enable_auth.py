"""etcd auth the Kubernetes way (deploy/base/job-etcd-auth.yaml): `controlplane etcd
enable-auth` run as root through a CN=root certificate, then nodes acting as the etcd user
`controlplane` through their etcd client certificate's CN alone, no password. The
certificates are built from the manifests' own Certificate specs (as cert-manager would
issue them: controlplane/testing/certmanager.py) by the CA the harness's etcd trusts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controlplane.store import Keys, Store
from controlplane.store.errors import StoreError
from controlplane.testing.certmanager import issue_as_cert_manager
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pki import harness_pki
from controlplane.testing.pytest_plugin import NodeFactory

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/k8s-auth"


def manifest_certificates() -> dict[str, dict]:
    docs = yaml.safe_load_all((ROOT / "deploy/base/certificates.yaml").read_text())
    return {d["metadata"]["name"]: d["spec"] for d in docs if d}


def enable_auth(etcd: EtcdCluster, root_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    # what the Job's pod gets: CONTROLPLANE_ETCD and _PREFIX from the ConfigMap, the root
    # certificate's directory as CONTROLPLANE_TLS_DIR
    env.update(CONTROLPLANE_ETCD=etcd.urls, CONTROLPLANE_PREFIX=PREFIX,
               CONTROLPLANE_TLS_DIR=str(root_dir))
    return subprocess.run([sys.executable, "-m", "controlplane", "etcd", "enable-auth",
                           "--user", "controlplane", "--wait", "20"],
                          env=env, capture_output=True, text=True, timeout=60)


def test_the_job_turns_auth_on_and_nodes_act_by_certificate(
        tmp_path: Path, nodes: NodeFactory) -> None:
    specs = manifest_certificates()
    ca = harness_pki().base
    root = issue_as_cert_manager(ca, specs["etcd-root"], tmp_path / "etcd-root")
    client = issue_as_cert_manager(ca, specs["etcd-client"], tmp_path / "etcd-client")
    etcd = EtcdCluster(str(tmp_path / "etcd"))
    etcd.start()
    try:
        first = enable_auth(etcd, Path(root.cert).parent)
        assert first.returncode == 0, first.stderr
        assert "user 'controlplane' limited to /k8s-auth" in first.stdout
        again = enable_auth(etcd, Path(root.cert).parent)  # every apply runs the Job again
        assert again.returncode == 0, again.stderr

        node = nodes.start("k8s-0", etcd.urls, extra_args=(
            "--prefix", PREFIX, "--etcd-tls-dir", str(Path(client.cert).parent)))
        assert node.health() == "SERVING"
        store = Store(etcd.urls, tls=client)
        try:
            members, _ = store.list_prefix(Keys(PREFIX).members)
            assert [Keys.last_segment(kv.key) for kv in members] == ["k8s-0"]
        finally:
            store.close()
        # the same certificate outside the prefix, and a certificate naming no etcd user
        for tls, key in ((client, "/elsewhere/k"), (harness_pki().node("k8s-0"),
                                                     f"{PREFIX}/k")):
            refused = Store(etcd.urls, tls=tls, budget=1.0)
            try:
                with pytest.raises(StoreError, match="permission denied"):
                    refused.put(key, b"x")
            finally:
                refused.close()
        # only root may set auth up: the nodes' certificate is refused, not retried
        denied = enable_auth(etcd, Path(client.cert).parent)
        assert denied.returncode == 1 and "permission denied" in denied.stderr, denied.stderr
    finally:
        etcd.stop()
