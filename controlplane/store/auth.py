"""etcd authentication: the control plane as an etcd user whose role may touch only its own
key prefix (the way etcd's RBAC is meant to be used), and the one-time setup that makes it.

- `EtcdLogin`: user and password (from `--etcd-user` and `--etcd-password-file` or
  CONTROLPLANE_ETCD_PASSWORD; config/settings.py).
- `TokenCredentials`: gRPC call credentials that put the etcd token on every call and
  stream of the store's channels. The token comes from Authenticate over a channel of its
  own (no call credentials, so no recursion), is fetched on first use, and is dropped by
  `invalidate` when etcd answers "invalid auth token" or "auth store is old" (a token
  expired while idle, or users/roles changed): the store's retry then authenticates again.
  Passwords only cross TLS: gRPC sends call credentials on secure channels only.
- `enable_auth`: root user, a role with readwrite on [prefix, prefix_end), a user with that
  role, auth on. Run once per etcd cluster by whoever holds root (the harness with a `root`
  client certificate: with --client-cert-auth etcd takes the certificate's CN as the user).

Without a login, a store on a TLS etcd with auth enabled acts as the user its certificate's
CN names (etcd's certificate authentication).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from pyetcd import etcdrpc
from pyetcd import utils as etcd_utils

from controlplane.channels import open_channel

__all__ = ["ROOT", "EtcdLogin", "TokenCredentials", "add_user", "enable_auth", "stale_token"]

log = logging.getLogger(__name__)

ROOT = "root"
# etcd's answers that a token no longer holds (store.client retries after invalidate)
_STALE = ("invalid auth token", "revision of auth store is old")


@dataclass(frozen=True)
class EtcdLogin:
    user: str
    password: str

    def __repr__(self) -> str:  # never the password in a log line
        return f"EtcdLogin({self.user!r})"


def stale_token(details: str) -> bool:
    return any(s in details for s in _STALE)


class TokenCredentials(grpc.AuthMetadataPlugin):
    """The etcd token of `login` on every call (see the module docstring)."""

    def __init__(self, login: EtcdLogin, targets: Sequence[str],
                 credentials: grpc.ChannelCredentials, timeout: float = 3.0) -> None:
        self.login = login
        self.targets = list(targets)
        self.credentials = credentials
        self.timeout = timeout
        self.authentications = 0
        self._token: str | None = None
        self._lock = threading.Lock()

    def __call__(self, context: grpc.AuthMetadataContext,
                 callback: grpc.AuthMetadataPluginCallback) -> None:
        try:
            callback((("token", self.token()),), None)
        except Exception as exc:  # noqa: BLE001 - the call fails (UNAVAILABLE) and is retried
            callback((), exc)

    def token(self) -> str:
        with self._lock:
            if self._token is None:
                self._token = self._authenticate()
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _authenticate(self) -> str:
        request = etcdrpc.AuthenticateRequest(name=self.login.user,
                                              password=self.login.password)
        last: Exception | None = None
        for target in self.targets:
            with open_channel(target, credentials=self.credentials) as channel:
                try:
                    reply = etcdrpc.AuthStub(channel).Authenticate(request,
                                                                   timeout=self.timeout)
                except grpc.RpcError as exc:
                    last = exc
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.DEADLINE_EXCEEDED):
                        break  # a wrong password is wrong on every member
                    continue
            self.authentications += 1
            return reply.token
        details = last.details() if isinstance(last, grpc.RpcError) else str(last)
        raise RuntimeError(f"etcd authentication as {self.login.user!r} failed: {details}")


def _ignore_exists(call, request, timeout: float) -> None:  # type: ignore[no-untyped-def]
    try:
        call(request, timeout=timeout)
    except grpc.RpcError as exc:
        if "already exists" not in (exc.details() or "") and "already granted" not in (
                exc.details() or ""):
            raise


def add_user(channel: grpc.Channel, login: EtcdLogin, roles: Sequence[str] = (),
             timeout: float = 5.0) -> None:
    """An etcd user with `roles` (none: it may read and write nothing); as root once auth is
    on. An existing user keeps its password and gets the roles."""
    auth = etcdrpc.AuthStub(channel)
    _ignore_exists(auth.UserAdd, etcdrpc.AuthUserAddRequest(
        name=login.user, password=login.password), timeout)
    for role in roles:
        _ignore_exists(auth.UserGrantRole, etcdrpc.AuthUserGrantRoleRequest(
            user=login.user, role=role), timeout)


def enable_auth(channel: grpc.Channel, prefix: str, login: EtcdLogin,
                timeout: float = 5.0) -> None:
    """Make `login` an etcd user limited to `prefix` and turn auth on (idempotent while
    auth is still off). `channel` must act as root: before auth is on anyone may."""
    auth = etcdrpc.AuthStub(channel)
    raw = prefix.encode()
    role = login.user
    add_user(channel, EtcdLogin(ROOT, secrets.token_urlsafe(24)), [ROOT], timeout)
    _ignore_exists(auth.RoleAdd, etcdrpc.AuthRoleAddRequest(name=role), timeout)
    auth.RoleGrantPermission(etcdrpc.AuthRoleGrantPermissionRequest(
        name=role, perm=etcdrpc.Permission(
            permType=etcdrpc.Permission.READWRITE, key=raw,
            range_end=etcd_utils.prefix_range_end(raw))), timeout=timeout)
    add_user(channel, login, [role], timeout)
    auth.AuthEnable(etcdrpc.AuthEnableRequest(), timeout=timeout)
    log.info("etcd auth enabled: user %r limited to %s", login.user, prefix)


def enable_auth_at(endpoint: str, root_credentials: grpc.ChannelCredentials, prefix: str,
                   login: EtcdLogin, timeout: float = 5.0) -> None:
    """`enable_auth` over a channel of its own to `endpoint` (store/ is the one place a
    channel to etcd is opened)."""
    with open_channel(endpoint, credentials=root_credentials) as channel:
        enable_auth(channel, prefix, login, timeout)
