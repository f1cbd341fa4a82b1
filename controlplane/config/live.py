"""The schema of live global config: which keys exist, their types, ranges and defaults.

Live settings are stored in etcd as text under config/<key> and read by every management node
from a watch-fed cache, so a change takes effect cluster-wide without a restart. This module
is pure: it knows the keys and how to read their text; the config service and the cache (the
only code that talks to etcd) hand it a lookup function.

Why parsing is strict (no NaN, inf, "1_000", trailing junk; bool only true/false): the text in
etcd is the one copy every node reads, so there must be one reading of it. Why a bad stored
value falls back to the default instead of raising: it is read inside VM sync and HA loops,
and a typo written to etcd must not stop them (UpdateConfig refuses it in the first place).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

log = logging.getLogger(__name__)

Value = int | float | bool | str

_INT = re.compile(r"[+-]?[0-9]+")
# Plain decimal, optional exponent: float() alone would also take "nan", "inf", "1_0", " 1".
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOLS = {"true": True, "false": False}


@dataclass(frozen=True)
class Setting:
    """One live setting. Numbers are bounded on both ends: a live value cannot be checked
    by a restart, so a nonsense one (a 0 s sync interval) is refused at the door."""

    key: str
    kind: type  # int, float, bool or str (a str setting is one of `choices`)
    default: Value
    minimum: int | float | None = None
    maximum: int | float | None = None
    help: str = ""
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in (int, float, bool, str):
            raise TypeError(f"{self.key}: kind must be int, float, bool or str, not "
                            f"{self.kind!r}")
        if self.kind is str:
            # a word from a fixed list (spread|pack): free text has no one reading
            if (not self.choices or self.minimum is not None or self.maximum is not None
                    or self.default not in self.choices):
                raise TypeError(f"{self.key}: a str setting needs choices holding its "
                                "default, and no range")
            return
        if self.choices:
            raise TypeError(f"{self.key}: only a str setting has choices")
        default = self.default
        if self.kind is float and type(default) is int:
            object.__setattr__(self, "default", float(default))
        elif type(default) is not self.kind:
            raise TypeError(f"{self.key}: default {default!r} is not a {self.kind.__name__}")
        if self.kind is bool:
            if self.minimum is not None or self.maximum is not None:
                raise TypeError(f"{self.key}: a bool setting has no range")
        else:
            if self.minimum is None or self.maximum is None or self.minimum > self.maximum:
                raise ValueError(f"{self.key}: needs a range minimum <= maximum")
            self._check_range(self.default, repr(self.default))

    def describe_range(self) -> str:
        """The allowed values, as error messages and help show them."""
        if self.kind is str:
            return "one of " + ", ".join(self.choices)
        if self.minimum is None or self.maximum is None:  # bool (__post_init__ checks)
            return "true or false"
        low, high = format_value(self, self.minimum), format_value(self, self.maximum)
        what = "an integer" if self.kind is int else "a number"
        return f"{what} in [{low}, {high}]"

    def parse(self, text: str) -> Value:
        """The typed value of `text`; ValueError naming the key, the text and the range.

        Surrounding whitespace is ignored (a value written from a file ends in a newline);
        anything else that is not exactly a number of the kind (or true/false) is refused.
        """
        if not isinstance(text, str):
            raise ValueError(f"{self.key}: value {text!r} is not text; "
                             f"expected {self.describe_range()}")
        stripped = text.strip()
        value: Value
        if self.kind is str:
            if stripped not in self.choices:
                raise ValueError(f"{self.key}: {text!r} is not a choice; expected "
                                 f"{self.describe_range()}")
            return stripped
        if self.kind is bool:
            if stripped not in _BOOLS:
                raise ValueError(f"{self.key}: {text!r} is not a boolean; expected true or false")
            return _BOOLS[stripped]
        if self.kind is int:
            if not _INT.fullmatch(stripped):
                raise ValueError(f"{self.key}: {text!r} is not an integer; "
                                 f"expected {self.describe_range()}")
            value = int(stripped)
        else:
            if not _FLOAT.fullmatch(stripped):
                raise ValueError(f"{self.key}: {text!r} is not a number; "
                                 f"expected {self.describe_range()}")
            value = float(stripped)
            if not math.isfinite(value):  # "1e999" matches the pattern and overflows
                raise ValueError(f"{self.key}: {text!r} is not a finite number; "
                                 f"expected {self.describe_range()}")
        self._check_range(value, repr(text))
        return value

    def _check_range(self, value: int | float, shown: str) -> None:
        assert self.minimum is not None and self.maximum is not None
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"{self.key}: {shown} is out of range; "
                             f"expected {self.describe_range()}")


def format_value(setting: Setting, value: Value) -> str:
    """The canonical text of a value: what defaults and answers show, and what parse reads
    back to the same value (600.0 -> "600", 0.5 -> "0.5", True -> "true")."""
    if setting.kind is str:
        if value not in setting.choices:
            raise TypeError(f"{setting.key}: {value!r} is not one of {setting.choices}")
        return str(value)
    if setting.kind is bool:
        if type(value) is not bool:
            raise TypeError(f"{setting.key}: {value!r} is not a bool")
        return "true" if value else "false"
    if type(value) is bool or not isinstance(value, int | float):
        raise TypeError(f"{setting.key}: {value!r} is not a number")
    if setting.kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise TypeError(f"{setting.key}: {value!r} is not an integer")
        return str(int(value))
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{setting.key}: {value!r} is not a finite number")
    if number.is_integer() and abs(number) < 1e16:
        return str(int(number))  # exact below 2**53, and repr would add ".0"
    return repr(number)  # the shortest text that reads back to the same float


def _settings(*items: Setting) -> Mapping[str, Setting]:
    return MappingProxyType({item.key: item for item in items})


SETTINGS: Mapping[str, Setting] = _settings(
    Setting(
        "vm.orphanedSkipTimeout", float, 600.0, 0.1, 86400.0,
        "Seconds. How long VM sync keeps skipping a VM whose operation belongs to a "
        "management node that left the cluster (unless the agent resolves it sooner).",
    ),
    Setting(
        "vm.syncInterval", float, 60.0, 0.1, 3600.0,
        "Seconds. How often the owner of a host pulls its VM states; the pull is also the "
        "host's ping.",
    ),
    Setting(
        "host.pingFailures", int, 3, 1, 100,
        "Failed pulls in a row before a host is Disconnected and its VMs Unknown.",
    ),
    Setting(
        "host.events", bool, True, None, None,
        "Whether the owner of a host keeps a WatchHostEvents stream open to its agent and "
        "pulls the host at once on each event (a crash seen in about a second); false: "
        "periodic pulls only.",
    ),
    Setting(
        "host.pingTimeout", float, 10.0, 0.1, 300.0,
        "Seconds. Deadline of one pull (ping) of a host agent.",
    ),
    Setting(
        "vm.opTimeout", float, 600.0, 1.0, 86400.0,
        "Seconds. Deadline of one VM operation (start, stop, reboot, pause, resume, destroy).",
    ),
    Setting(
        "vm.migrateTimeout", float, 600.0, 1.0, 86400.0,
        "Seconds. Deadline of one live migration (MigrateVm's op): until then a migration "
        "either agent still works on, or whose target does not answer, is waited for; "
        "after it an answering target settles it (aborted unless it switched over).",
    ),
    Setting(
        "ha.enabled", bool, True, None, None,
        "Whether HA restarts lost VMs elsewhere (false: a lost HA VM is only recorded "
        "Stopped, Crashed or Unknown, never restarted).",
    ),
    Setting(
        "ha.retryDelay", float, 10.0, 0.1, 3600.0,
        "Seconds. After an HA attempt failed (no connected host, or the start failed) the "
        "next waits this long, doubling with each further failure up to ha.retryMaxDelay; "
        "attempts are also at most one per vm.syncInterval.",
    ),
    Setting(
        "ha.retryMaxDelay", float, 300.0, 0.1, 86400.0,
        "Seconds. The longest wait between failed HA attempts of one VM (the cap of the "
        "exponential backoff): HA keeps retrying at least this often until the VM is placed.",
    ),
    Setting(
        "storage.mdsAttemptTimeout", float, 30.0, 0.1, 600.0,
        "Seconds. Deadline of one call to one storage metadata server before the MDS client "
        "tries the next (idempotent calls only).",
    ),
    Setting(
        "storage.mdsCheckInterval", float, 10.0, 0.2, 3600.0,
        "Seconds between health checks of each primary storage's MDS (by the storage's "
        "owner); an MDS that fails one check is skipped by calls until one passes.",
    ),
    Setting(
        "host.cpuAllocationRatio", float, 4.0, 0.1, 64.0,
        "Virtual cpus placement may reserve per physical cpu of a host (Nova's "
        "cpu_allocation_ratio): a host of 8 cpus takes VMs of 32 cpus in all at 4.",
    ),
    Setting(
        "host.memoryAllocationRatio", float, 1.0, 0.1, 16.0,
        "Memory placement may reserve per MB of a host's memory (after "
        "host.reservedMemoryMb); above 1 over-commits memory.",
    ),
    Setting(
        "host.reservedMemoryMb", int, 512, 0, 1 << 26,
        "MB of each host's memory kept for the host itself: never reserved by VMs.",
    ),
    Setting(
        "placement.weigher", str, "spread", None, None,
        "Which host placement picks among those that fit: spread (the most free cpus and "
        "memory, Nova's default) or pack (the least: fill hosts one by one).",
        choices=("spread", "pack"),
    ),
    Setting(
        "placement.hostSubsetSize", int, 3, 1, 100,
        "Placement picks among this many best hosts (by a stable hash of the VM id, Nova's "
        "host_subset_size): concurrent starts then spread over them instead of all racing "
        "for the one best host's allocation record. 1: always the best.",
    ),
    Setting(
        "host.maintenancePolicy", str, "migrate", None, None,
        "What a host maintenance does with each VM when the call names no policy: migrate "
        "(to a host placement picks; stopped when none fits) or stop.",
        choices=("migrate", "stop"),
    ),
    Setting(
        "audit.maxRecords", int, 10000, 10, 1_000_000,
        "Audit records of mutating calls kept in etcd; past this count the oldest are "
        "dropped (every node trims after its writes).",
    ),
)


class UnknownSetting(KeyError):
    """A key that is not in SETTINGS; the message lists the known keys."""

    def __init__(self, key: str, known: Mapping[str, Setting] = SETTINGS) -> None:
        self.key = key
        self.known = tuple(sorted(known))
        super().__init__(f"unknown setting {key!r}; known settings: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


def setting(key: str, known: Mapping[str, Setting] = SETTINGS) -> Setting:
    """The Setting for `key`; UnknownSetting (a KeyError) listing the known keys otherwise."""
    try:
        return known[key]
    except (KeyError, TypeError):
        raise UnknownSetting(key, known) from None


def normalize(key: str, text: str) -> str:
    """The canonical text to store for `text` (what UpdateConfig writes); UnknownSetting or
    ValueError when it must be refused."""
    item = setting(key)
    return format_value(item, item.parse(text))


class Entry(NamedTuple):
    """One row of ListConfig; the field names are ConfigEntry's, so Entry._asdict() fits it."""

    key: str
    value: str
    default_value: str
    is_default: bool
    help: str


class LiveConfig:
    """Typed reads of live settings over a lookup into the watch-fed cache.

    `lookup(key)` gets the setting key (e.g. "vm.syncInterval") and returns the stored text or
    None; the cache maps it to config/<key>. Nothing is cached here: every get() reads the
    cache, so an update is seen on the next read. The only mutable state is the memory of
    which bad values were already logged, touched only when a stored value is bad.
    """

    _MAX_REMEMBERED = 1024

    def __init__(self, lookup: Callable[[str], str | None],
                 settings: Mapping[str, Setting] = SETTINGS) -> None:
        self._lookup = lookup
        self._settings = settings
        self._warned: set[tuple[str, str]] = set()
        self._warned_lock = threading.Lock()

    def setting(self, key: str) -> Setting:
        return setting(key, self._settings)

    def get(self, key: str) -> Value:
        """The stored value if it parses, else the default (a bad one is logged once)."""
        item = self.setting(key)
        return self._value(item)

    def value_text(self, key: str) -> str:
        """The canonical text of the value in effect (the default's when none or a bad one
        is stored)."""
        item = self.setting(key)
        value = self._value(item)
        return format_value(item, value)

    def entries(self) -> list[Entry]:
        """Every setting with its value in effect, sorted by key (for ListConfig)."""
        return [self.entry(key) for key in sorted(self._settings)]

    def entry(self, key: str) -> Entry:
        """One row, as GetConfig answers it."""
        item = self.setting(key)
        value = self._value(item)
        return Entry(key, format_value(item, value), format_value(item, item.default),
                     value == item.default, item.help)

    def _value(self, item: Setting) -> Value:
        text = self._lookup(item.key)
        if text is None:
            return item.default
        try:
            return item.parse(text)
        except ValueError as error:
            self._warn_once(item, text, error)
            return item.default

    def _warn_once(self, item: Setting, text: object, error: ValueError) -> None:
        mark = (item.key, repr(text))
        with self._warned_lock:
            if mark in self._warned:
                return
            if len(self._warned) >= self._MAX_REMEMBERED:  # bounded: forget, log again later
                self._warned.clear()
            self._warned.add(mark)
        log.warning("ignoring the stored value of %s, using the default %s: %s",
                    item.key, format_value(item, item.default), error)
