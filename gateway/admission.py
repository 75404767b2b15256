"""Admission control: at most `max_active` memes in the works and `max_queued` waiting; the rest get 429.

Bounding the queue bounds the latency of the requests that are admitted: one waits behind at most
`max_queued` others, instead of all of them missing their deadlines together. Waiters are served in
arrival order. Everything here runs in the app's event loop, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.errors import ApiError

_MAX_RETRY_AFTER_SECONDS = 30


class Overloaded(ApiError):
    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(429, "overloaded", message, {"Retry-After": str(retry_after_seconds)})


class Admission:
    def __init__(self, max_active: int, max_queued: int, registry: CollectorRegistry | None = None) -> None:
        self.max_active = max_active
        self.max_queued = max_queued
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._mean_service_seconds = 1.0
        self._rejected = Counter(
            "memefly_admission_rejected",
            "Meme requests refused with 429 (queue full, or no slot before the deadline).",
            registry=registry,
        )
        Gauge("memefly_admission_active", "Meme requests being worked on.", registry=registry).set_function(
            lambda: self.active
        )
        Gauge("memefly_admission_queued", "Meme requests waiting for a slot.", registry=registry).set_function(
            lambda: len(self._waiters)
        )

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def retry_after_seconds(self) -> int:
        """How long until a slot is likely free: the queue ahead, served `max_active` at a time."""
        rounds = (len(self._waiters) + 1) / self.max_active
        return max(1, min(_MAX_RETRY_AFTER_SECONDS, math.ceil(rounds * self._mean_service_seconds)))

    @asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """Hold one slot for the body of the `async with`; waits in line until `deadline` (monotonic)."""
        await self._acquire(deadline)
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            self._mean_service_seconds += 0.2 * (elapsed - self._mean_service_seconds)
            self._release()

    async def _acquire(self, deadline: float) -> None:
        if self.active < self.max_active and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.max_queued:
            self._rejected.inc()
            raise Overloaded(
                f"the gateway is at capacity ({self.max_active} memes in the works, {self.max_queued} waiting)",
                self.retry_after_seconds(),
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout=max(deadline - time.monotonic(), 0.0))
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as this request gave up: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            if isinstance(error, TimeoutError):
                self._rejected.inc()
                raise Overloaded(
                    "waited for a free slot until the request's deadline", self.retry_after_seconds()
                ) from error
            raise

    def _release(self) -> None:
        """Hand the slot to the first live waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1
