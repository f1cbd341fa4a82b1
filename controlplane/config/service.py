"""ConfigService: live global settings in etcd (config/<key>), read from every node's cache.

Not routed: a setting has no owner. A write is one put of the canonical text after the
schema (`controlplane.config.live`) accepted it, so a refused value writes nothing.
"""

from __future__ import annotations

import grpc

from controlplane import errors
from controlplane.config.live import LiveConfig, UnknownSetting, normalize
from controlplane.store import Keys, Store, StoreError
from controlplane.store.cache import PrefixCache
from controlplane.v1 import config_pb2 as pb
from controlplane.v1 import config_pb2_grpc as pb_grpc


def live_config(cache: PrefixCache[str], keys: Keys) -> LiveConfig:
    """A LiveConfig over the config/ cache."""

    def lookup(name: str) -> str | None:
        entry = cache.get(keys.config_key(name))
        return entry.value if entry else None

    return LiveConfig(lookup)


class ConfigServicer(pb_grpc.ConfigServiceServicer):
    def __init__(self, store: Store, keys: Keys, cache: PrefixCache[str],
                 config: LiveConfig) -> None:
        self.store = store
        self.keys = keys
        self.cache = cache
        self.config = config

    def _entry(self, key: str, context: grpc.ServicerContext) -> pb.ConfigEntry:
        try:
            return pb.ConfigEntry(**self.config.entry(key)._asdict())
        except UnknownSetting as exc:
            raise errors.Invalid(str(exc)) from None

    def GetConfig(self, request: pb.GetConfigRequest, context: grpc.ServicerContext
                  ) -> pb.GetConfigResponse:
        return pb.GetConfigResponse(entry=self._entry(request.key, context))

    def ListConfig(self, request: pb.ListConfigRequest, context: grpc.ServicerContext
                   ) -> pb.ListConfigResponse:
        return pb.ListConfigResponse(
            entries=[pb.ConfigEntry(**e._asdict()) for e in self.config.entries()])

    def UpdateConfig(self, request: pb.UpdateConfigRequest, context: grpc.ServicerContext
                     ) -> pb.UpdateConfigResponse:
        try:
            text = normalize(request.key, request.value)
        except UnknownSetting as exc:
            raise errors.Invalid(str(exc)) from None
        except ValueError as exc:
            raise errors.Invalid(str(exc)) from None
        try:
            revision = self.store.put(self.keys.config_key(request.key), text.encode())
        except StoreError as exc:
            raise errors.Unreachable(f"cannot write the setting: {exc}") from exc
        self.cache.wait_for_revision(revision, 2.0)  # answer what this node now uses
        return pb.UpdateConfigResponse(entry=self._entry(request.key, context))
