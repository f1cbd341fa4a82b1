"""Lease keepalive over ONE reused bidirectional stream.

Why one stream: the client's refresh_lease opens a new LeaseKeepAlive stream per refresh,
which costs 4-6x as much. Here one thread holds one stream, sends a keepalive every
`interval` and reads the answers. Each answer acknowledges the keepalive sent at a known
time, which is what self-fencing needs: 'etcd extended my lease from the moment I sent
that request', a lower bound on how long the lease surely lives.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc
from pyetcd import etcdrpc

from controlplane.store.client import Store
from controlplane.store.errors import StoreError

log = logging.getLogger(__name__)

# on_ack(sent_at_monotonic, granted_ttl, round_trip_seconds)
AckCallback = Callable[[float, int, float], None]


class KeepAlive:
    """Keeps one lease alive until stop() or until etcd says the lease is gone.

    on_lost() is called once, from the keepalive thread, when etcd answers TTL <= 0
    (the lease expired or was revoked). Stream errors are not loss: the stream is reopened
    and the owner of this object decides, from the ack times, whether it must fence itself.
    """

    def __init__(
        self,
        store: Store,
        lease_id: int,
        interval: float,
        on_ack: AckCallback,
        on_lost: Callable[[], None],
        name: str = "keepalive",
    ) -> None:
        self.store = store
        self.lease_id = lease_id
        self.interval = interval
        self._on_ack = on_ack
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._call: grpc.Future | None = None
        self._call_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.streams_opened = 0

    def start(self) -> KeepAlive:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._cancel_call()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _cancel_call(self) -> None:
        with self._call_lock:
            if self._call is not None:
                self._call.cancel()

    def _requests(self, sent: collections.deque[float], wake: queue.Queue) -> Iterator:
        """Yield a keepalive now and every interval; if answers stop coming (a black-holed
        connection gives silence, not an error), cancel the stream so it is reopened."""
        request = etcdrpc.LeaseKeepAliveRequest(ID=self.lease_id)
        while not self._stop.is_set():
            if sent and time.monotonic() - sent[0] > max(2 * self.interval, 1.0):
                log.warning("keepalive unanswered for %.1fs: reopening the stream",
                            time.monotonic() - sent[0])
                self._cancel_call()
                return
            sent.append(time.monotonic())
            yield request
            try:
                wake.get(timeout=self.interval)
            except queue.Empty:
                pass

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            sent: collections.deque[float] = collections.deque()
            wake: queue.Queue = queue.Queue()
            try:
                stub = self.store.lease_stub()
                call = stub.LeaseKeepAlive(self._requests(sent, wake))
                self.streams_opened += 1
                with self._call_lock:
                    self._call = call
                if self._stop.is_set():
                    call.cancel()
                for resp in call:
                    now = time.monotonic()
                    sent_at = sent.popleft() if sent else now
                    if resp.TTL <= 0:
                        log.warning("lease %x is gone (expired or revoked)", self.lease_id)
                        self._stop.set()
                        self._on_lost()
                        return
                    backoff = 0.05
                    self._on_ack(sent_at, resp.TTL, now - sent_at)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                code = exc.code() if hasattr(exc, "code") else None
                if code is not grpc.StatusCode.CANCELLED:
                    err = self.store.translate(exc)
                    log.info("keepalive stream broke (%s); reopening", err)
                    if "lease not found" in str(exc.details() or ""):
                        self._stop.set()
                        self._on_lost()
                        return
            except StoreError as exc:
                log.info("keepalive cannot open a stream: %s", exc)
            finally:
                wake.put(None)
                with self._call_lock:
                    self._call = None
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, max(self.interval / 2, 0.1))
