"""The PKI's pure pieces (security/x509.py), its files (security/pki.py), the identity read
back from a certificate (security/identity.py) and the transport rules (security/tls.py):
names per kind, SANs, usages, validity, file modes, reload decisions. No network here; the
handshakes themselves are tested with real processes in tests/integration/test_tls.py."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controlplane import channels
from controlplane.security import pki, tls
from controlplane.security import x509 as cx509
from controlplane.security.identity import Identity, identity_of
from controlplane.v1 import cluster_pb2_grpc

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> cx509.Issued:
    return cx509.build_ca(NOW)


def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in ext]


def usages(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_the_ca_signs_leaves_only(ca: cx509.Issued) -> None:
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    ca.cert.verify_directly_issued_by(ca.cert)  # self-signed
    assert ca.cert.not_valid_after_utc - NOW == dt.timedelta(days=cx509.CA_DAYS)


@pytest.mark.parametrize(("kind", "name", "role", "cn", "o"), [
    ("node", "node-0", None, "node:node-0", "node"),
    ("agent", "host-1", None, "agent:host-1", "agent"),
    ("mds", "m1", None, "mds:m1", "mds"),
    ("user", "alice", "operator", "alice", "operator"),
])
def test_names_per_kind_and_the_identity_read_back(ca, kind, name, role, cn, o) -> None:
    leaf = cx509.issue(ca, kind, name, NOW, role=role)
    assert cx509.subject_of(leaf.cert) == (cn, o)
    assert identity_of(cn, o) == Identity(kind, name, o)
    leaf.cert.verify_directly_issued_by(ca.cert)
    assert leaf.cert.not_valid_before_utc == NOW - cx509.BACKDATE
    assert leaf.cert.not_valid_after_utc == NOW + dt.timedelta(days=cx509.LEAF_DAYS)
    assert not leaf.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_sans_default_to_loopback_plus_the_given_ones(ca) -> None:
    leaf = cx509.issue(ca, "node", "n", NOW, sans=["10.0.0.5", "node-1.svc", "127.0.0.1"])
    assert sans(leaf.cert) == ["127.0.0.1", "::1", "localhost", "10.0.0.5", "node-1.svc"]
    ext = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.0.0.5") in ext.get_values_for_type(x509.IPAddress)
    with pytest.raises(ValueError, match="SAN"):
        cx509.issue(ca, "node", "n", NOW, sans=["a b"])


def test_servers_serve_and_users_only_call(ca) -> None:
    both = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    for kind in ("node", "agent", "mds"):
        assert usages(cx509.issue(ca, kind, "x", NOW).cert) == both
    user = cx509.issue(ca, "user", "bob", NOW, role="reader").cert
    assert usages(user) == {ExtendedKeyUsageOID.CLIENT_AUTH}


@pytest.mark.parametrize(("kind", "name", "role", "words"), [
    ("user", "bob", None, "needs a role"),
    ("user", "bob", "root", "needs a role"),
    ("node", "n", "admin", "for users"),
    ("user", "node:x", "admin", "must not contain ':'"),
    ("vm", "x", None, "kind"),
    ("node", "", None, "name"),
    ("node", "a b", None, "name"),
])
def test_bad_names_are_refused(ca, kind, name, role, words) -> None:
    with pytest.raises(ValueError, match=words):
        cx509.issue(ca, kind, name, NOW, role=role)


@pytest.mark.parametrize(("cn", "o"), [
    ("node-0", "node"),        # no kind prefix
    ("agent:h", "node"),       # another kind's prefix
    ("node:", "node"),         # no name
    ("alice", "root"),         # not a role
    ("node:x", "admin"),       # a user name with ':'
    ("alice", ""),
])
def test_a_certificate_that_names_no_identity_of_ours_is_none(cn, o) -> None:
    assert identity_of(cn, o) is None


def test_expired_and_not_yet_valid_certificates_can_be_made_for_tests(ca) -> None:
    expired = cx509.issue(ca, "user", "old", NOW, role="admin", days=-1,
                          not_before=NOW - dt.timedelta(days=2)).cert
    assert expired.not_valid_after_utc < NOW
    future = cx509.issue(ca, "user", "new", NOW, role="admin",
                         not_before=NOW + dt.timedelta(days=1)).cert
    assert future.not_valid_before_utc > NOW


def test_load_ca_checks_the_pair(ca) -> None:
    other = cx509.build_ca(NOW)
    with pytest.raises(ValueError, match="does not belong"):
        cx509.load_ca(cx509.pem_cert(ca.cert), cx509.pem_key(other.key))
    leaf = cx509.issue(ca, "node", "n", NOW)
    with pytest.raises(ValueError, match="not a CA"):
        cx509.load_ca(cx509.pem_cert(leaf.cert), cx509.pem_key(leaf.key))


# -- files ---------------------------------------------------------------------------------

def test_files_in_the_secret_layout_with_restrictive_modes(tmp_path) -> None:
    pki.init_ca(tmp_path)
    out = pki.issue_identity(tmp_path, "node", "node-0", sans=["10.1.2.3"])
    assert out == tmp_path / "node-node-0"
    assert sorted(os.listdir(out)) == ["ca.crt", "tls.crt", "tls.key"]
    assert stat.S_IMODE(os.stat(out / "tls.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "tls.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    assert (out / "ca.crt").read_bytes() == (tmp_path / "ca" / "tls.crt").read_bytes()
    cert = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    assert "10.1.2.3" in sans(cert)
    assert pki.issue_identity(tmp_path, "user", "admin", role="admin") == tmp_path / "admin"
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporary left


def test_a_second_init_refuses_and_issue_needs_a_ca(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="certs init"):
        pki.issue_identity(tmp_path, "node", "n")
    pki.init_ca(tmp_path)
    before = (tmp_path / "ca" / "tls.crt").read_bytes()
    with pytest.raises(FileExistsError):
        pki.init_ca(tmp_path)
    assert (tmp_path / "ca" / "tls.crt").read_bytes() == before


# -- the transport -------------------------------------------------------------------------

def test_transport_from_the_environment() -> None:
    assert tls.transport_from_env({"CONTROLPLANE_TLS_DIR": "/d"}) == tls.TlsFiles.from_dir("/d")
    assert tls.transport_from_env({"CONTROLPLANE_INSECURE": "true"}) is tls.PLAINTEXT
    assert tls.transport_from_env({"CONTROLPLANE_CA": "/a", "CONTROLPLANE_CERT": "/b",
                                   "CONTROLPLANE_KEY": "/c"}) == tls.TlsFiles("/a", "/b", "/c")
    with pytest.raises(tls.TlsMissing, match="--insecure"):
        tls.transport_from_env({})
    with pytest.raises(tls.TlsMissing, match="not both"):
        tls.transport_from_env({"CONTROLPLANE_INSECURE": "1", "CONTROLPLANE_TLS_DIR": "/d"})


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path) -> None:
    pki.init_ca(tmp_path)
    a = pki.issue_identity(tmp_path, "node", "a")
    b = pki.issue_identity(tmp_path, "node", "b")
    files = tls.TlsFiles(str(a / "ca.crt"), str(a / "tls.crt"), str(b / "tls.key"))
    with pytest.raises(RuntimeError, match="does not belong"):
        tls.load_pair(files)
    with pytest.raises(RuntimeError, match="cannot read"):
        tls.load_pair(tls.TlsFiles.from_dir(tmp_path / "nowhere"))


def test_the_server_fetcher_counts_handshakes_and_reloads_only_a_changed_good_pair(
        tmp_path) -> None:
    pki.init_ca(tmp_path)
    out = pki.issue_identity(tmp_path, "node", "a")
    counted: list[int] = []
    fetcher = tls.ReloadingServerConfig(tls.TlsFiles.from_dir(out),
                                        on_handshake=lambda: counted.append(1))
    assert fetcher.fetch() is None and fetcher.fetch() is None  # unchanged
    assert len(counted) == 2
    pki.issue_identity(tmp_path, "node", "a")  # a rotation
    assert fetcher.fetch() is not None and fetcher.reloads == 1
    assert fetcher.fetch() is None
    # a half-rotated pair (the new key beside the old certificate) is kept out
    other = pki.issue_identity(tmp_path, "node", "b")
    (out / "tls.key").write_bytes((other / "tls.key").read_bytes())
    assert fetcher.fetch() is None and fetcher.reloads == 1


def test_a_pool_reopens_its_channels_after_a_rotation(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(channels, "ROTATION_CHECK", 0.0)
    pki.init_ca(tmp_path)
    out = pki.issue_identity(tmp_path, "user", "admin", role="admin")
    pool = channels.ChannelPool(tls=tls.TlsFiles.from_dir(out))
    try:
        first = pool.stub(cluster_pb2_grpc.ClusterServiceStub, "127.0.0.1:1")
        assert pool.stub(cluster_pb2_grpc.ClusterServiceStub, "127.0.0.1:1") is first
        pki.issue_identity(tmp_path, "user", "admin", role="admin")
        assert pool.stub(cluster_pb2_grpc.ClusterServiceStub, "127.0.0.1:1") is not first
        assert pool.rotations == 1
    finally:
        pool.close()


def _expired_into(base, out, kind="user", name="admin", role="admin") -> None:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    pki.issue_identity(base, kind, name, role=role, out=out, now=now, days=-1,
                       not_before=now - dt.timedelta(days=2))


def _not_yet_valid_into(base, out, kind="user", name="admin", role="admin") -> None:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    pki.issue_identity(base, kind, name, role=role, out=out, now=now + dt.timedelta(days=3),
                       days=30, not_before=now + dt.timedelta(days=2))


def test_a_pool_keeps_its_channels_through_a_half_rotated_or_invalid_set(
        tmp_path, monkeypatch, caplog) -> None:
    """Mid-replacement (the new key beside the old certificate) and an expired or not yet
    valid certificate are refused by the pool's check: the channels stay, no call sees a
    RuntimeError; the invalid set is logged once, with the file, subject and dates as
    fields. The next good set is taken."""
    monkeypatch.setattr(channels, "ROTATION_CHECK", 0.0)
    pki.init_ca(tmp_path)
    out = pki.issue_identity(tmp_path, "user", "admin", role="admin")
    pool = channels.ChannelPool(tls=tls.TlsFiles.from_dir(out))
    stub = cluster_pb2_grpc.ClusterServiceStub
    try:
        first = pool.stub(stub, "127.0.0.1:1")
        other = pki.issue_identity(tmp_path, "user", "other", role="admin")
        (out / "tls.key").write_bytes((other / "tls.key").read_bytes())  # half rotated
        assert pool.stub(stub, "127.0.0.1:1") is first and pool.rotations == 0
        for make in (_expired_into, _not_yet_valid_into):
            caplog.clear()
            make(tmp_path, out)
            with caplog.at_level("ERROR"):
                for _ in range(3):
                    assert pool.stub(stub, "127.0.0.1:1") is first
            assert pool.rotations == 0
            refused = [r for r in caplog.records if getattr(r, "tls_file", None)]
            assert len(refused) == 1, caplog.text  # once per change, not per look
            assert refused[0].tls_file == str(out / "tls.crt")
            assert "CN=admin" in refused[0].subject and refused[0].not_after
            assert "keep" in refused[0].getMessage()
        assert pool.credentials is not None and pool.credentials.refusals == 2
        pki.issue_identity(tmp_path, "user", "admin", role="admin")
        assert pool.stub(stub, "127.0.0.1:1") is not first and pool.rotations == 1
    finally:
        pool.close()


def test_the_server_fetcher_refuses_an_invalid_rotation_and_keeps_its_pair(
        tmp_path, caplog) -> None:
    pki.init_ca(tmp_path)
    out = pki.issue_identity(tmp_path, "node", "a")
    fetcher = tls.ReloadingServerConfig(tls.TlsFiles.from_dir(out), on_handshake=lambda: None)
    serial = fetcher.serial
    _expired_into(tmp_path, out, "node", "a", None)
    with caplog.at_level("ERROR"):
        assert fetcher.fetch() is None and fetcher.fetch() is None
    assert fetcher.reloads == 0 and fetcher.refusals == 1 and fetcher.serial == serial
    (line,) = [r for r in caplog.records if getattr(r, "tls_file", None)]
    assert "expired at" in line.getMessage() and "CN=node:a" in line.subject
    pki.issue_identity(tmp_path, "node", "a")
    assert fetcher.fetch() is not None and fetcher.reloads == 1 and fetcher.serial != serial


@pytest.mark.parametrize("make", [_expired_into, _not_yet_valid_into])
def test_an_invalid_own_certificate_is_refused_at_start(tmp_path, make) -> None:  # type: ignore[no-untyped-def]
    """A server's start (the fetcher's first load, `check_own`) refuses it with the file,
    subject and dates; a client's first dial only logs it (the server is the judge)."""
    pki.init_ca(tmp_path)
    out = tmp_path / "bad"
    make(tmp_path, out, "node", "a", None)
    files = tls.TlsFiles.from_dir(out)
    with pytest.raises(tls.CertificateNotValid) as err:
        tls.check_own(files)
    text = str(err.value)
    assert str(out / "tls.crt") in text and "CN=node:a" in text
    assert ("expired at" if make is _expired_into else "not valid before") in text
    assert err.value.fields()["tls_file"] == str(out / "tls.crt")
    with pytest.raises(tls.CertificateNotValid):
        tls.ReloadingServerConfig(files)
    tls.check_own(tls.PLAINTEXT)
    assert tls.load_pair(files)[1] == (out / "tls.crt").read_bytes()


def test_an_agent_speaks_for_its_named_host_and_its_host_sans(ca) -> None:
    """NodeRestriction's names: CN agent:<host> (one certificate per host, libvirt) and URI
    SANs for ids or prefixes (a sim agent); no other kind speaks for any host."""
    own = cx509.issue(ca, "agent", "h-1", NOW).cert
    assert cx509.speaks_for(own, "h-1")
    assert not cx509.speaks_for(own, "h-0") and not cx509.speaks_for(own, "h-10")
    assert cx509.hosts_of(own) == ()
    sim = cx509.issue(ca, "agent", "sim", NOW, hosts=["rack1-*", "db-7"]).cert
    assert cx509.hosts_of(sim) == ("rack1-*", "db-7")
    assert cx509.speaks_for(sim, "rack1-0") and cx509.speaks_for(sim, "rack1-999")
    assert cx509.speaks_for(sim, "db-7")
    assert not cx509.speaks_for(sim, "db-70") and not cx509.speaks_for(sim, "rack2-0")
    assert "urn:controlplane:host:db-7" in [
        str(v) for v in sim.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier)]
    assert not cx509.speaks_for(cx509.issue(ca, "node", "h-1", NOW).cert, "h-1")
    for bad in ("", "a*b", "has space", "**"):
        with pytest.raises(ValueError):
            cx509.host_uri(bad)
    with pytest.raises(ValueError, match="agent"):
        cx509.issue(ca, "node", "n", NOW, hosts=["h-*"])
