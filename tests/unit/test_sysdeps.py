"""The system-dependency installer: what counts as missing, and what --check says."""

from __future__ import annotations

import pytest

from controlplane.devtools import sysdeps


def test_missing_names_each_absent_program_with_its_package() -> None:
    progs = {"sh": "dash", "no-such-program-xyz": "xyz-utils"}
    assert sysdeps.missing(progs) == {"no-such-program-xyz": "xyz-utils"}


def test_missing_covers_files_and_python_modules() -> None:
    gone = sysdeps.missing({}, files={"/no/such/*/file.h": "nope-dev", "/bin/s*": "coreutils"},
                           modules={"no_such_module_xyz": "xyz>=1", "json": "json"})
    assert gone == {"/no/such/*/file.h": "nope-dev",
                    "python module no_such_module_xyz": "xyz>=1"}


def test_install_is_a_no_op_when_nothing_is_missing() -> None:
    assert sysdeps.install({"sh": "dash"}) == []


def test_check_exits_1_and_names_what_is_missing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = sysdeps.missing
    monkeypatch.setattr(sysdeps, "missing", lambda: real(
        {"no-such-program-xyz": "xyz-utils"}, files={}, modules={"no_such_mod": "nsm>=1"}))
    assert sysdeps.main(["--check", "--no-guest"]) == 1
    out = capsys.readouterr().out
    assert "no-such-program-xyz (Debian package xyz-utils)" in out
    assert "python module no_such_mod (pip requirement nsm>=1)" in out


def test_a_failed_step_names_itself_and_quotes_its_output() -> None:
    with pytest.raises(RuntimeError, match=r"the step failed \(exit 3\).*said this"):
        sysdeps._run("the step", ["sh", "-c", "echo said this; exit 3"], timeout=10)
    with pytest.raises(RuntimeError, match="no answer after 0s"):
        sysdeps._run("the step", ["sleep", "5"], timeout=0.2)


def test_the_libvirt_extra_is_what_sysdeps_pip_installs() -> None:
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert list(sysdeps.PYTHON.values()) == project["project"]["optional-dependencies"][
        "libvirt"]


def test_everything_is_installed_here() -> None:
    # The test command runs 'python3 -m controlplane.devtools.sysdeps' before pytest.
    assert sysdeps.missing() == {}
