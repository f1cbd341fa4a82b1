"""The system-program installer: what counts as missing, and what --check says."""

from __future__ import annotations

import pytest

from controlplane.devtools import sysdeps


def test_missing_names_each_absent_program_with_its_package() -> None:
    progs = {"sh": "dash", "no-such-program-xyz": "xyz-utils"}
    assert sysdeps.missing(progs) == {"no-such-program-xyz": "xyz-utils"}


def test_install_is_a_no_op_when_nothing_is_missing() -> None:
    assert sysdeps.install({"sh": "dash"}) == []


def test_check_exits_1_and_names_what_is_missing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sysdeps, "PROGRAMS", {"no-such-program-xyz": "xyz-utils"})
    monkeypatch.setattr(sysdeps.missing, "__defaults__", (sysdeps.PROGRAMS,))
    assert sysdeps.main(["--check"]) == 1
    assert "no-such-program-xyz (Debian package xyz-utils)" in capsys.readouterr().out


def test_the_storage_programs_are_installed_here() -> None:
    # The test command runs 'python3 -m controlplane.devtools.sysdeps' before pytest.
    assert sysdeps.missing() == {}
