"""etcd behind TLS with client certificates required (the harness's etcd, as `up`'s):
a node works against it, given as https:// or bare host:port; a client without a
certificate, or with one from another CA, reads nothing."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from controlplane.security import pki
from controlplane.security import x509 as cx509
from controlplane.security.tls import TlsFiles, channel_credentials
from controlplane.store import DEFAULT_PREFIX, Keys, Store, StoreError
from controlplane.store.auth import EtcdLogin, add_user
from controlplane.store.client import etcd_transport
from controlplane.store.watch import PrefixWatch
from controlplane.testing.etcd import TEST_ETCD_ARGS, EtcdCluster
from controlplane.testing.pki import SecretDir, harness_pki
from controlplane.testing.pytest_plugin import NodeFactory
from controlplane.testing.waiting import wait_until


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


# --------------------------------------------------------------------------- etcd auth


@pytest.fixture
def etcd_auth(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(str(tmp_path / "etcd-auth"), auth=True)
    cluster.start()
    yield cluster
    cluster.stop()


def _refused(store: Store, call: Callable[[Store], object]) -> str:
    try:
        with pytest.raises(StoreError) as err:
            call(store)
        return str(err.value)
    finally:
        store.close()


def test_a_node_logs_in_to_etcd_with_a_role_limited_to_its_prefix(
        etcd_auth: EtcdCluster, nodes: NodeFactory) -> None:
    assert etcd_auth.login is not None
    node = nodes.start("auth-0", etcd_auth.urls, extra_args=etcd_auth.node_args())
    assert node.health() == "SERVING"
    store = Store(etcd_auth.urls, login=etcd_auth.login)
    try:
        members, _ = store.list_prefix(Keys(DEFAULT_PREFIX).members)
        assert [Keys.last_segment(kv.key) for kv in members] == ["auth-0"]
        assert store.auth is not None and store.auth.authentications == 1
    finally:
        store.close()
    # the same user outside its prefix
    outside = _refused(Store(etcd_auth.urls, login=etcd_auth.login, budget=1.0),
                       lambda s: s.put("/elsewhere/k", b"x"))
    assert "permission denied" in outside


def test_users_without_the_role_are_refused(etcd_auth: EtcdCluster) -> None:
    # a certificate alone: etcd takes its CN (admin) as the user, and there is none
    assert "admin" in str(Path(os.environ["CONTROLPLANE_TLS_DIR"]))
    _refused(Store(etcd_auth.urls, budget=1.0), lambda s: s.get(Keys(DEFAULT_PREFIX).members))
    # a user with a password but no role
    assert etcd_auth.login is not None
    login = EtcdLogin("norole", "pw-norole")
    root = harness_pki().files("user", "root", "admin")
    with grpc.secure_channel(etcd_auth.members[0].endpoint, channel_credentials(root)) as ch:
        add_user(ch, login)
    text = _refused(Store(etcd_auth.urls, login=login, budget=1.0),
                    lambda s: s.get(Keys(DEFAULT_PREFIX).members + "x"))
    assert "permission denied" in text
    # a wrong password
    wrong = EtcdLogin(etcd_auth.login.user, "not-the-password")
    assert "authentication" in _refused(Store(etcd_auth.urls, login=wrong, budget=1.0),
                                        lambda s: s.get(Keys(DEFAULT_PREFIX).members))


def test_an_expired_token_is_renewed(tmp_path: Path) -> None:
    """etcd drops a simple token after --auth-token-ttl idle seconds; the store's next call
    is answered "invalid auth token", and the retry logs in again."""
    cluster = EtcdCluster(str(tmp_path / "etcd-ttl"), auth=True,
                          extra_args=(*TEST_ETCD_ARGS, "--auth-token-ttl=1"))
    cluster.start()
    assert cluster.login is not None
    store = Store(cluster.urls, login=cluster.login)
    try:
        store.put(Keys(DEFAULT_PREFIX).collection("t") + "k", b"1")
        assert store.auth is not None and store.auth.authentications == 1
        time.sleep(2.5)  # the idle time under test (not a wait for a condition)
        assert store.get(Keys(DEFAULT_PREFIX).collection("t") + "k") is not None
        assert store.auth.authentications == 2
    finally:
        store.close()
        cluster.stop()


# --------------------------------------------------------------------------- rotation


def test_the_store_takes_a_rotated_client_certificate(etcd_auth: EtcdCluster,
                                                      tmp_path: Path) -> None:
    """The store's etcd client certificate rotates without a restart: a thread reads and
    writes without a pause and no call fails; an expired set in its place is refused (the
    channels stay); the good set is in use afterwards, which etcd shows by the user it
    takes from the certificate's CN (auth on, no password login): `root` reaches outside
    the prefix, `controlplane` (the role limited to the prefix) no longer does. A watch open
    before the rotation keeps delivering."""
    ca = pki.read_ca(harness_pki().base)
    bundle = cx509.pem_cert(ca.cert)
    secret = SecretDir(tmp_path / "etcd-client")

    def publish(name: str, days: int = 30, start: dt.datetime | None = None) -> None:
        now = dt.datetime.now(dt.UTC)
        secret.write(bundle, cx509.issue(ca, "user", name, now, role="admin", days=days,
                                         not_before=start))

    publish("root")
    keys = Keys(etcd_auth.auth_prefix).collection("rot")
    store = Store(etcd_auth.urls, tls=secret.files)
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                store.put(f"{keys}k{i % 5}", str(i).encode())
                store.get(f"{keys}k{i % 5}")
            except StoreError as exc:
                failures.append(repr(exc))

    try:
        store.put("/outside/k", b"root may")
        _, revision = store.list_prefix(keys)
        watch = PrefixWatch(store, keys, revision + 1,
                            lambda events, _rev: seen.extend(e.kv.key for e in events),
                            lambda rev: None, name="rot-watch").start()
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        now = dt.datetime.now(dt.UTC)
        publish("controlplane", days=-1, start=now - dt.timedelta(days=2))  # expired
        assert store.credentials is not None
        wait_until(lambda: store.credentials.refusals == 1, 10,
                   message="the store looks at the expired set and refuses it")
        assert store.rotations == 0
        store.put("/outside/k", b"still root")
        publish("controlplane")  # the good rotation
        wait_until(lambda: store.rotations == 1, 10, message="the store takes the new set")
        with pytest.raises(StoreError, match="permission denied"):
            store.put("/outside/k", b"controlplane may not", budget=1.0)
        before = len(seen)
        store.put(f"{keys}after", b"1")
        wait_until(lambda: f"{keys}after" in seen[before:], 10,
                   message="the watch opened before the rotation delivers after it")
        assert watch.streams_opened == 1  # the same stream, on the old channel
        stop.set()
        thread.join(10)
        watch.stop()
    finally:
        stop.set()
        store.close()
    assert failures == [], failures[:5]
