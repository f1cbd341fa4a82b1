"""Pages of a List answer, Google AIP-158 style, over items in key order.

A page token is the last key of the previous page (URL-safe base64, opaque to clients), so a
listing over a cache that changes between pages never repeats an item and never skips one
that existed, unchanged, through the whole listing (a new item sorted before the cursor is
missed, as AIP-158 allows). Pure: the services hand in their sorted items.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Callable, Sequence
from typing import TypeVar

from controlplane import errors

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000
_PREFIX = b"k1:"


def token_for(key: str) -> str:
    """The page token that continues after `key`."""
    return base64.urlsafe_b64encode(_PREFIX + key.encode()).decode()


def after_key(token: str) -> str:
    """The key a token continues after ("" for the first page); Invalid for a forged one."""
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token.encode())
        if not raw.startswith(_PREFIX):
            raise ValueError
        return raw[len(_PREFIX):].decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise errors.Invalid("page_token is not a token this API handed out") from None


def page(items: Sequence[T], key: Callable[[T], str], page_size: int,
         page_token: str) -> tuple[list[T], str]:
    """(the items of this page, next_page_token or "" on the last page).

    `items` must be sorted by `key`, keys unique. page_size 0 means DEFAULT_PAGE_SIZE; above
    MAX_PAGE_SIZE it is capped (AIP-158: coerce, not refuse); negative is Invalid.
    """
    if page_size < 0:
        raise errors.Invalid(f"page_size must be >= 0, got {page_size}")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    start = 0
    after = after_key(page_token)
    if page_token:
        keys = [key(i) for i in items]
        start = bisect.bisect_right(keys, after)
    chunk = list(items[start:start + size])
    more = start + size < len(items)
    return chunk, token_for(key(chunk[-1])) if more and chunk else ""
