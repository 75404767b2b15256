"""Graceful shutdown: once it starts, new requests get 503 and the ones in flight are waited for."""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import error_response

ALWAYS_ANSWERED = frozenset({"/healthz", "/readyz", "/metrics"})
"""Still answered while draining: the process is alive, /readyz says it is draining, metrics are scraped."""


class Drain:
    """The draining flag and the count of requests in flight. Lives in the app's event loop."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0

    def start(self) -> None:
        """Safe from a signal handler: it only sets a flag."""
        self.draining = True

    async def wait_idle(self, timeout_seconds: float) -> bool:
        """Wait until no request is in flight; False if some still are after `timeout_seconds`."""
        deadline = time.monotonic() + timeout_seconds
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.in_flight


class DrainingMiddleware:
    """Counts requests in flight, and refuses new ones (503, Retry-After, Connection: close) while draining."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["path"] not in ALWAYS_ANSWERED:
            response = error_response(
                503,
                "shutting_down",
                "this gateway is shutting down; retry, another instance will answer",
                {"Retry-After": "1", "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1
