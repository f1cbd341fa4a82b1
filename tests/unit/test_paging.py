"""Pages concatenate to the whole listing, also while items come and go between pages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane import errors, paging

keys = st.lists(st.text(min_size=1, max_size=8), unique=True).map(sorted)


def walk(items: list[str], size: int) -> list[str]:
    out: list[str] = []
    token = ""
    for _ in range(len(items) + 2):
        chunk, token = paging.page(items, lambda k: k, size, token)
        out.extend(chunk)
        if not token:
            return out
    raise AssertionError("did not end")


@given(keys, st.integers(min_value=0, max_value=1200))
def test_pages_concatenate_to_everything(items: list[str], size: int) -> None:
    assert walk(items, size) == items


@given(keys, st.integers(min_value=1, max_value=5), st.data())
def test_changes_between_pages_never_repeat_or_skip_the_unchanged(
        items: list[str], size: int, data: st.DataObject) -> None:
    current = list(items)
    seen: list[str] = []
    token = ""
    stable = set(items)
    for _ in range(len(items) + 50):
        chunk, token = paging.page(current, lambda k: k, size, token)
        seen.extend(chunk)
        if not token:
            break
        if current and data.draw(st.booleans()):
            gone = data.draw(st.sampled_from(current))
            current.remove(gone)
            stable.discard(gone)
        new = data.draw(st.text(min_size=1, max_size=8))
        if new not in current:
            current = sorted([*current, new])
    assert len(seen) == len(set(seen))
    assert stable <= set(seen)


def test_page_size_is_capped_and_defaults() -> None:
    items = [f"k{i:05d}" for i in range(2500)]
    assert len(paging.page(items, lambda k: k, 0, "")[0]) == paging.DEFAULT_PAGE_SIZE
    assert len(paging.page(items, lambda k: k, 10**6, "")[0]) == paging.MAX_PAGE_SIZE


@pytest.mark.parametrize("token", ["x", "!!!", paging.token_for("a")[:-2] + "@@"])
def test_a_forged_token_is_invalid(token: str) -> None:
    with pytest.raises(errors.Invalid, match="page_token"):
        paging.page(["a", "b"], lambda k: k, 1, token)


def test_negative_page_size_is_invalid() -> None:
    with pytest.raises(errors.Invalid, match="page_size"):
        paging.page(["a"], lambda k: k, -1, "")
