"""uvicorn for the gateway, with a graceful stop.

On SIGTERM or SIGINT uvicorn stops accepting connections, lets the requests in flight finish (up to
`timeout_graceful_shutdown`), then runs the app's lifespan shutdown. Marking the app as draining the
moment the signal arrives also makes /readyz answer 503 and refuses (503, Retry-After) any request that
still comes in on an open connection.
"""

from __future__ import annotations

from types import FrameType

import uvicorn
from fastapi import FastAPI

from gateway.draining import Drain

_GRACE_BEYOND_DEADLINE_SECONDS = 5.0


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.drain.start()
        super().handle_exit(sig, frame)


def gateway_server(app: FastAPI, host: str, port: int, request_timeout_seconds: float) -> GatewayServer:
    """A server whose graceful stop waits for the longest a request may take, and a little more."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        timeout_graceful_shutdown=int(request_timeout_seconds + _GRACE_BEYOND_DEADLINE_SECONDS),
        log_config=None,  # the gateway configures its own logging (gateway/logs.py)
    )
    return GatewayServer(config, app.state.drain)
