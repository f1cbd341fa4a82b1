"""Waiting on a condition with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["WaitTimeout", "wait_until"]

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time (an AssertionError so pytest reports it as a failure)."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    message: str = "",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Exceptions from ``predicate`` count as "not yet" (the thing being waited for is often not
    reachable yet) but the last one is reported on timeout, because it usually says why.
    """
    start = time.monotonic()
    deadline = start + timeout
    last_value: object = None
    last_exc: BaseException | None = None
    calls = 0
    while True:
        calls += 1
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - remembered and reported below
            last_exc = exc
        else:
            if value:
                return value
            last_value = value
            last_exc = None
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(interval, max(0.0, deadline - now)))
    elapsed = time.monotonic() - start
    name = getattr(predicate, "__qualname__", repr(predicate))
    parts = [message or f"condition {name} not met"]
    if last_exc is not None:
        parts.append(f"last exception: {type(last_exc).__name__}: {last_exc}")
    else:
        parts.append(f"last value: {last_value!r}")
    parts.append(f"after {elapsed:.2f}s ({calls} calls, timeout {timeout}s)")
    raise WaitTimeout("; ".join(parts)) from last_exc
