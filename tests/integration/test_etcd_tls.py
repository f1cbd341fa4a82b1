"""etcd behind TLS with client certificates required (the harness's etcd, as `up`'s):
a node works against it, given as https:// or bare host:port; a client without a
certificate, or with one from another CA, reads nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.security import pki
from controlplane.security.tls import TlsFiles
from controlplane.store import DEFAULT_PREFIX, Keys, Store, StoreError
from controlplane.store.client import etcd_transport
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pytest_plugin import NodeFactory


def test_a_node_works_against_a_tls_etcd(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    assert etcd.urls.startswith("https://")
    node = nodes.start("tls-etcd-0", etcd.urls)  # waits for readiness: registered in etcd
    assert node.health() == "SERVING"
    store = Store(etcd.urls)  # the admin identity (CONTROLPLANE_TLS_DIR)
    try:
        members, _ = store.list_prefix(Keys(DEFAULT_PREFIX).members)
        assert [kv.key.rsplit("/", 1)[-1] for kv in members] == ["tls-etcd-0"]
    finally:
        store.close()


def test_a_client_without_a_certificate_cannot_read(etcd: EtcdCluster) -> None:
    store = Store(etcd.urls)
    store.put("/tls-test/k", b"secret")
    store.close()
    plain = Store("http://" + etcd.endpoints, budget=1.0)
    try:
        with pytest.raises(StoreError):
            plain.get("/tls-test/k")
    finally:
        plain.close()


def test_a_certificate_from_another_ca_is_refused(etcd: EtcdCluster, tmp_path: Path) -> None:
    pki.init_ca(tmp_path, name="other")
    other = TlsFiles.from_dir(pki.issue_identity(tmp_path, "user", "admin", role="admin"))
    store = Store(etcd.urls, budget=1.0, tls=other)
    try:
        with pytest.raises(StoreError):
            store.get("/tls-test/k")
    finally:
        store.close()


def test_the_transport_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = TlsFiles(str(tmp_path / "ca"), str(tmp_path / "c"), str(tmp_path / "k"))
    assert etcd_transport("http://h:1", files) is None
    assert etcd_transport("h:1", files) is files
    assert etcd_transport("https://h:1,https://g:2", files) is files
    with pytest.raises(ValueError, match="mix"):
        etcd_transport("https://h:1,http://g:2", files)
    for name in ("CONTROLPLANE_TLS_DIR", "CONTROLPLANE_CA", "CONTROLPLANE_CERT",
                 "CONTROLPLANE_KEY", "CONTROLPLANE_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    assert etcd_transport("h:1", None) is None  # no certificate at hand: plaintext
    with pytest.raises(ValueError, match="need a client certificate"):
        etcd_transport("https://h:1", None)
