"""The name rule (`rpc.check_name`) and path confinement (`paths.confined`): whatever a caller
sends, a path built from it is inside its directory after realpath, or it is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane import errors, rpc
from controlplane.paths import check_absolute, confined, inside

# Parts that have led out of a directory somewhere, and the links planted in `base`.
HOSTILE = ["..", ".", "", "a/b", "/abs", "x\0y", "../x", "out", "up", "self", "abs", "in",
           "sub", "loop", "dangling", "file-out", "a" * 300]
parts = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=20)),
                 min_size=1, max_size=4)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with symlinks that lead out (to a sibling, to /, to itself, up), and
    some that stay in."""
    root = tmp_path_factory.mktemp("confine")
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    base = root / "base"
    (base / "sub").mkdir(parents=True)
    (base / "out").symlink_to(outside)
    (base / "up").symlink_to("..")
    (base / "self").symlink_to(".")
    (base / "abs").symlink_to("/")
    (base / "in").symlink_to("sub")
    (base / "loop").symlink_to("loop")
    (base / "dangling").symlink_to(outside / "nothing-yet")
    (base / "sub" / "file-out").symlink_to(outside / "secret")
    return base


def strictly_inside(base: Path, path: Path) -> bool:
    root = os.path.realpath(base)
    resolved = os.path.realpath(path)
    return resolved.startswith(root + os.sep)


@given(parts=parts)
def test_a_confined_path_stays_inside_or_is_refused(base: Path, parts: list[str]) -> None:
    try:
        path = confined(base, *parts, field="f")
    except errors.Invalid as exc:
        assert str(exc).startswith("f ") and len(str(exc)) < 400
        return
    assert strictly_inside(base, path)
    assert str(path).startswith(os.path.realpath(base) + os.sep)
    # ...and so is every directory on the way (no link back to base itself).
    for i in range(1, len(parts)):
        assert strictly_inside(base, Path(os.path.realpath(base), *parts[:i]))


@given(name=st.one_of(st.sampled_from(HOSTILE), st.text(max_size=200)))
def test_a_name_is_a_single_file_inside(base: Path, name: str) -> None:
    try:
        rpc.check_name(name, "image_id")
    except errors.Invalid as exc:
        assert "image_id" in str(exc) and len(str(exc)) < 300
        return
    assert name not in (".", "..") and "/" not in name and "\0" not in name
    assert 0 < len(name) <= rpc.MAX_NAME and not name.startswith(("-", "."))
    assert os.path.dirname(os.path.join(base, name)) == str(base)


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "/abs", "x\0y", "", ".hidden", "-rf",
                                 "a b", "a:b", "a,b", "é", "a" * (rpc.MAX_NAME + 1)])
def test_names_refused(bad: str) -> None:
    with pytest.raises(errors.Invalid, match="^volume_id "):
        rpc.check_name(bad, "volume_id")


@pytest.mark.parametrize("good", ["img", "base", "s1", "vol-1", "a..b", "v1.2_x",
                                  "__controlplane-health-probe__", "a" * rpc.MAX_NAME])
def test_names_accepted(good: str) -> None:
    assert rpc.check_name(good, "volume_id") == good


@pytest.mark.parametrize("parts", [("..",), (".",), ("a/b",), ("/abs",), ("x\0y",),
                                   ("out",), ("out", "x"), ("up",), ("up", "x"), ("self",),
                                   ("self", "x"), ("abs", "etc"), ("dangling",),
                                   ("sub", "file-out"), ("in", "file-out"), ("sub", "..")])
def test_escapes_refused(base: Path, parts: tuple[str, ...]) -> None:
    with pytest.raises(errors.Invalid, match="^image_id "):
        confined(base, *parts, field="image_id")


def test_inside_paths_and_links_that_stay_in(base: Path) -> None:
    root = os.path.realpath(base)
    assert str(confined(base, "img", "base.qcow2", field="f")) == f"{root}/img/base.qcow2"
    # A link to a directory inside resolves on the way; a last part is left as given.
    assert str(confined(base, "in", "x", field="f")) == f"{root}/sub/x"
    assert str(confined(base, "in", field="f")) == f"{root}/in"
    assert inside(base, base / "sub") and not inside(base, base)
    assert not inside(base, base / "out" / "secret")


def test_check_absolute() -> None:
    assert check_absolute("/images/img/base.qcow2", "path") == "/images/img/base.qcow2"
    for bad in ("rel", "/a/../b", "/a/./b", "//a", "/a//b", "/a/", "/a\0b", "/" + "a" * 5000):
        with pytest.raises(errors.Invalid, match="^path "):
            check_absolute(bad, "path")


def test_shown_bounds_what_a_message_echoes() -> None:
    assert errors.shown("abc") == "'abc'"
    text = errors.shown("x" * (1 << 20))
    assert text == f"'{'x' * 64}...' (1048576 characters)"
    with pytest.raises(errors.Invalid) as info:
        rpc.check_name("/" * (1 << 20), "image_id")
    assert len(str(info.value)) < 100
    with pytest.raises(errors.Invalid) as info:
        rpc.check_id("\0" * 200, "vm_id")
    assert len(str(info.value)) < 400
