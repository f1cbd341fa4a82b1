"""The two waits of `up`, on tenacity, both cut short by Ctrl-C/SIGTERM.

`up` waits for things that come up in their own time (etcd's /health, a ready node) and
retries fleet calls while the nodes and the agent start. Every wait sleeps on the `stopping`
event instead of time.sleep, so a signal ends it at once rather than after a retry budget.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_delay,
    stop_when_event_set,
    wait_fixed,
)

__all__ = ["retry_call", "wait_for"]

T = TypeVar("T")


def wait_for(check: Callable[[], bool], timeout: float, interval: float,
             stopping: threading.Event) -> bool:
    """Call check() every `interval` s until it is true: True then; False after `timeout`
    or once `stopping` is set. An exception from check() ends the wait (it is not retried)."""
    retrying = Retrying(
        stop=stop_after_delay(timeout) | stop_when_event_set(stopping),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda ok: not ok),
        sleep=stopping.wait,
        retry_error_callback=lambda _state: False,
    )
    return bool(retrying(check))


def retry_call(call: Callable[[], T], retryable: Callable[[BaseException], bool],
               budget: float, interval: float, stopping: threading.Event) -> T:
    """call() until it returns, retrying the exceptions `retryable` accepts for `budget`
    seconds; then the last one is raised. The sleep between tries ends when `stopping` is
    set: call() itself should then give up (raise something not retryable)."""
    retrying = Retrying(
        stop=stop_after_delay(budget),
        wait=wait_fixed(interval),
        retry=retry_if_exception(retryable),
        sleep=stopping.wait,
        reraise=True,
    )
    return retrying(call)
