"""The live config schema: defaults, strict parsing, canonical text, the fallback reader."""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.config.live import (
    SETTINGS,
    Entry,
    LiveConfig,
    Setting,
    UnknownSetting,
    format_value,
    normalize,
    setting,
)

REQUIRED = {
    # key: (kind, default, minimum, maximum), as the design asks for them
    "vm.orphanedSkipTimeout": (float, 600.0, 0.1, 86400.0),
    "vm.syncInterval": (float, 60.0, 0.1, 3600.0),
    "host.pingFailures": (int, 3, 1, 100),
    "host.pingTimeout": (float, 10.0, 0.1, 300.0),
    "vm.opTimeout": (float, 600.0, 1.0, 86400.0),
    "vm.migrateTimeout": (float, 600.0, 1.0, 86400.0),
    "ha.enabled": (bool, True, None, None),
}
NUMERIC = sorted(key for key, item in SETTINGS.items() if item.kind in (int, float))


def _stored(values: dict[str, str]) -> LiveConfig:
    return LiveConfig(values.get)


# --- the schema -----------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_required_settings(key: str) -> None:
    item = SETTINGS[key]
    assert (item.kind, item.default, item.minimum, item.maximum) == REQUIRED[key]
    assert type(item.default) is item.kind
    assert item.key == key and item.help


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_every_default_parses_back_and_is_in_range(key: str) -> None:
    item = SETTINGS[key]
    text = format_value(item, item.default)
    assert item.parse(text) == item.default
    assert type(item.parse(text)) is item.kind
    if item.kind in (int, float):
        assert item.minimum <= item.default <= item.maximum


def test_canonical_text() -> None:
    timeout, failures, ha = (SETTINGS[k] for k in ("vm.orphanedSkipTimeout",
                                                   "host.pingFailures", "ha.enabled"))
    assert format_value(timeout, 600.0) == "600"
    assert format_value(timeout, 600) == "600"
    assert format_value(timeout, 0.5) == "0.5"
    assert format_value(timeout, 0.1) == "0.1"
    assert format_value(failures, 3) == "3"
    assert format_value(ha, True) == "true"
    assert format_value(ha, False) == "false"
    with pytest.raises(TypeError):
        format_value(ha, 1)
    with pytest.raises(TypeError):
        format_value(failures, True)
    with pytest.raises(TypeError):
        format_value(timeout, "600")  # type: ignore[arg-type]


def test_accepted_spellings() -> None:
    timeout, failures, ha = (SETTINGS[k] for k in ("vm.orphanedSkipTimeout",
                                                   "host.pingFailures", "ha.enabled"))
    assert timeout.parse("600") == 600.0
    assert timeout.parse("0.5") == 0.5
    assert timeout.parse(".5") == 0.5
    assert timeout.parse("1e3") == 1000.0
    assert timeout.parse(" 30\n") == 30.0  # surrounding whitespace, as from a file
    assert failures.parse("7") == 7 and type(failures.parse("7")) is int
    assert ha.parse("true") is True and ha.parse("false") is False


# --- refusals -------------------------------------------------------------------------------

REFUSED = [
    ("vm.syncInterval", "0", "out of range"),
    ("vm.syncInterval", "0.05", "out of range"),
    ("vm.syncInterval", "3600.5", "out of range"),
    ("vm.syncInterval", "-1", "out of range"),
    ("vm.syncInterval", "nan", "not a number"),
    ("vm.syncInterval", "NaN", "not a number"),
    ("vm.syncInterval", "inf", "not a number"),
    ("vm.syncInterval", "-Infinity", "not a number"),
    ("vm.syncInterval", "1e999", "not a finite number"),
    ("vm.syncInterval", "", "not a number"),
    ("vm.syncInterval", "   ", "not a number"),
    ("vm.syncInterval", "60s", "not a number"),
    ("vm.syncInterval", "60 0", "not a number"),
    ("vm.syncInterval", "1_0", "not a number"),
    ("vm.syncInterval", "0x10", "not a number"),
    ("vm.syncInterval", "true", "not a number"),
    ("host.pingFailures", "0", "out of range"),
    ("host.pingFailures", "101", "out of range"),
    ("host.pingFailures", "3.0", "not an integer"),
    ("host.pingFailures", "3.5", "not an integer"),
    ("host.pingFailures", "1e1", "not an integer"),
    ("host.pingFailures", "3x", "not an integer"),
    ("host.pingFailures", "\u0663", "not an integer"),  # an Arabic-Indic 3: int() takes it
    ("host.pingFailures", "", "not an integer"),
    ("host.pingTimeout", "300.01", "out of range"),
    ("vm.opTimeout", "0.5", "out of range"),
    ("vm.orphanedSkipTimeout", "86401", "out of range"),
    ("ha.enabled", "yes", "not a boolean"),
    ("ha.enabled", "1", "not a boolean"),
    ("ha.enabled", "True", "not a boolean"),
    ("ha.enabled", "truex", "not a boolean"),
    ("ha.enabled", "", "not a boolean"),
]


@pytest.mark.parametrize(("key", "text", "why"), REFUSED)
def test_refused_with_a_message_naming_key_value_and_range(key: str, text: str,
                                                           why: str) -> None:
    item = SETTINGS[key]
    with pytest.raises(ValueError) as info:
        item.parse(text)
    message = str(info.value)
    assert key in message
    assert repr(text) in message
    assert why in message
    if item.kind is bool:
        assert "true or false" in message
    elif item.kind is str:
        assert "one of" in message
    else:
        low, high = format_value(item, item.minimum), format_value(item, item.maximum)
        assert f"[{low}, {high}]" in message


def test_wrong_type_is_refused() -> None:
    with pytest.raises(ValueError, match="vm.syncInterval.*not text"):
        SETTINGS["vm.syncInterval"].parse(b"60")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ha.enabled"):
        SETTINGS["ha.enabled"].parse(None)  # type: ignore[arg-type]


def test_a_setting_with_a_bad_schema_is_refused() -> None:
    with pytest.raises(TypeError):
        Setting("x", str, "a", None, None, "")
    with pytest.raises(TypeError):
        Setting("x", int, 1.5, 0, 10, "")
    with pytest.raises(ValueError, match="out of range"):
        Setting("x", float, 20.0, 0.0, 10.0, "")
    with pytest.raises(ValueError):
        Setting("x", float, 1.0, 10.0, 0.0, "")
    with pytest.raises(ValueError):
        Setting("x", float, math.nan, 0.0, 10.0, "")
    assert type(Setting("x", float, 5, 0, 10, "").default) is float
    with pytest.raises(TypeError):
        Setting("x", str, "c", None, None, "", choices=("a", "b"))  # default not a choice
    with pytest.raises(TypeError):
        Setting("x", int, 1, 0, 10, "", choices=("a",))


def test_a_choice_setting() -> None:
    weigher = SETTINGS["placement.weigher"]
    assert weigher.default == "spread"
    assert weigher.parse(" pack\n") == "pack"
    assert format_value(weigher, "pack") == "pack"
    with pytest.raises(ValueError, match="placement.weigher.*one of spread, pack"):
        weigher.parse("Pack")
    with pytest.raises(TypeError):
        format_value(weigher, "fill")
    assert SETTINGS["host.maintenancePolicy"].default == "migrate"


# --- round trip -----------------------------------------------------------------------------

@st.composite
def in_range(draw: st.DrawFn) -> tuple[Setting, object]:
    item = SETTINGS[draw(st.sampled_from(sorted(SETTINGS)))]
    if item.kind is bool:
        return item, draw(st.booleans())
    if item.kind is str:
        return item, draw(st.sampled_from(item.choices))
    if item.kind is int:
        return item, draw(st.integers(item.minimum, item.maximum))
    value = draw(st.one_of(
        st.floats(item.minimum, item.maximum, allow_nan=False, allow_infinity=False),
        st.integers(math.ceil(item.minimum), math.floor(item.maximum)).map(float),
        st.sampled_from([item.minimum, item.maximum, item.default]),
    ))
    return item, value


@given(in_range())
@settings(max_examples=500)
def test_format_then_parse_round_trips(pair: tuple[Setting, object]) -> None:
    item, value = pair
    text = format_value(item, value)  # type: ignore[arg-type]
    parsed = item.parse(text)
    assert parsed == value and type(parsed) is item.kind
    assert format_value(item, parsed) == text  # canonical: one text per value
    assert not text.endswith(".0")
    assert normalize(item.key, text) == text


@given(st.sampled_from(NUMERIC), st.text(max_size=12))
@settings(max_examples=400)
def test_parse_of_any_text_is_a_value_in_range_or_a_named_refusal(key: str, text: str) -> None:
    item = SETTINGS[key]
    try:
        value = item.parse(text)
    except ValueError as error:
        assert key in str(error) and repr(text) in str(error)
    else:
        assert type(value) is item.kind
        assert math.isfinite(value)
        assert item.minimum <= value <= item.maximum


# --- unknown keys ---------------------------------------------------------------------------

def test_unknown_key_lists_the_known_keys() -> None:
    with pytest.raises(UnknownSetting) as info:
        setting("vm.syncIntervall")
    message = str(info.value)
    assert "'vm.syncIntervall'" in message
    for key in SETTINGS:
        assert key in message
    assert isinstance(info.value, KeyError)
    assert info.value.key == "vm.syncIntervall"
    with pytest.raises(UnknownSetting):
        _stored({}).get("nope")
    with pytest.raises(UnknownSetting):
        normalize("nope", "1")


def test_normalize_canonicalizes_or_refuses() -> None:
    assert normalize("vm.syncInterval", " 30.0 ") == "30"
    assert normalize("vm.syncInterval", "1.5e1") == "15"
    with pytest.raises(ValueError, match="vm.syncInterval"):
        normalize("vm.syncInterval", "0")


# --- the reader -----------------------------------------------------------------------------

def test_live_config_reads_stored_values_and_defaults() -> None:
    stored = {"vm.syncInterval": "5", "ha.enabled": "false"}
    config = _stored(stored)
    assert config.get("vm.syncInterval") == 5.0
    assert type(config.get("vm.syncInterval")) is float
    assert config.get("ha.enabled") is False
    assert config.get("host.pingFailures") == 3
    stored["vm.syncInterval"] = "7.5"  # no caching here: the next read sees the update
    assert config.get("vm.syncInterval") == 7.5
    assert config.value_text("vm.syncInterval") == "7.5"
    assert config.value_text("vm.opTimeout") == "600"


def test_live_config_falls_back_to_the_default_and_logs_each_bad_value_once(
        caplog: pytest.LogCaptureFixture) -> None:
    stored = {"vm.orphanedSkipTimeout": "nan"}
    config = _stored(stored)
    with caplog.at_level(logging.WARNING, logger="controlplane.config.live"):
        for _ in range(5):
            assert config.get("vm.orphanedSkipTimeout") == 600.0
        assert config.value_text("vm.orphanedSkipTimeout") == "600"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "vm.orphanedSkipTimeout" in warnings[0].getMessage()
        assert "'nan'" in warnings[0].getMessage()

        stored["vm.orphanedSkipTimeout"] = "0"  # another bad value: logged once more
        assert config.get("vm.orphanedSkipTimeout") == 600.0
        assert config.get("vm.orphanedSkipTimeout") == 600.0
        stored["vm.orphanedSkipTimeout"] = "nan"  # seen before: not again
        assert config.get("vm.orphanedSkipTimeout") == 600.0
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2

        stored["vm.orphanedSkipTimeout"] = "120"  # fixed: used at once
        assert config.get("vm.orphanedSkipTimeout") == 120.0


def test_entries_for_list_config() -> None:
    config = _stored({"vm.syncInterval": "30", "host.pingFailures": "3",
                      "vm.opTimeout": "junk"})
    entries = config.entries()
    assert [e.key for e in entries] == sorted(SETTINGS)
    by_key = {e.key: e for e in entries}
    assert by_key["vm.syncInterval"] == Entry("vm.syncInterval", "30", "60", False,
                                              SETTINGS["vm.syncInterval"].help)
    # stored but equal to the default, a bad stored value, and nothing stored: all default
    assert by_key["host.pingFailures"][1:4] == ("3", "3", True)
    assert by_key["vm.opTimeout"][1:4] == ("600", "600", True)
    assert by_key["ha.enabled"][1:4] == ("true", "true", True)
    assert set(Entry._fields) == {"key", "value", "default_value", "is_default", "help"}
    assert config.entry("vm.syncInterval") == by_key["vm.syncInterval"]
