"""Graceful shutdown under real uvicorn: the request in flight finishes, new ones are refused with 503,
/readyz says not ready, and the listener closes."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import time
from pathlib import Path

import uvicorn
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.draining import Drain
from gateway.server import GatewayServer
from tests.live_gateway import read_http_response, running_gateway
from tests.support import embedded_settings, photo_jpeg


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
        return read_http_response(sock)


def test_stop_signal_lets_the_request_in_flight_finish_and_refuses_new_ones(
    model_base_path: Path, tmp_path: Path
) -> None:
    settings = embedded_settings(model_base_path, tmp_path)
    app = create_app(settings)
    body = json.dumps({"image": base64.b64encode(photo_jpeg("chelsea")).decode()}).encode()
    with running_gateway(app) as (server, port):
        assert _get(port, "/readyz")[0] == 200
        # The middleware counts a request out after its answer is sent: wait for /readyz to be counted out,
        # so the count below is the upload's.
        deadline = time.monotonic() + 10
        while app.state.drain.in_flight:
            assert time.monotonic() < deadline, "/readyz never finished"
            time.sleep(0.01)
        in_flight = socket.create_connection(("127.0.0.1", port), timeout=30)
        in_flight.sendall(
            b"POST /v1/memes HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            + b"Accept: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        deadline = time.monotonic() + 10
        while app.state.drain.in_flight < 1:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.01)

        app.state.drain.start()  # what the signal handler does first
        status, headers, answer = _get(port, "/v1/templates")
        assert status == 503
        assert json.loads(answer)["error"]["code"] == "shutting_down"
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        status, _, answer = _get(port, "/readyz")
        assert status == 503 and json.loads(answer)["error"]["code"] == "shutting_down"
        assert _get(port, "/healthz")[0] == 200, "still alive while draining"

        server.handle_exit(signal.SIGTERM, None)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the listener stayed open"
            time.sleep(0.05)

        in_flight.sendall(body[len(body) // 2 :])
        status, _, answer = read_http_response(in_flight, timeout=30)
        in_flight.close()
        assert status == 200, answer
        assert json.loads(answer)["captions"]


def test_the_stop_signal_marks_the_app_draining_at_once() -> None:
    drain = Drain()
    server = GatewayServer(uvicorn.Config(app=lambda *_: None), drain)
    server.handle_exit(signal.SIGTERM, None)
    assert drain.draining and server.should_exit


def test_lifespan_shutdown_waits_for_requests_in_flight_up_to_a_limit() -> None:
    async def scenario() -> None:
        drain = Drain()
        drain.in_flight = 1
        assert not await drain.wait_idle(0.2), "still busy after the limit"

        async def finish_soon() -> None:
            await asyncio.sleep(0.1)
            drain.in_flight -= 1

        finishing = asyncio.create_task(finish_soon())
        started = time.monotonic()
        assert await drain.wait_idle(5)
        assert time.monotonic() - started < 1
        await finishing

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_health_and_metrics_are_answered_while_draining(model_base_path: Path, tmp_path: Path) -> None:
    settings = embedded_settings(model_base_path, tmp_path)
    with TestClient(create_app(settings)) as client:
        client.app.state.drain.start()
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/readyz").status_code == 503
        assert client.post("/v1/memes", json={"template_id": "drake", "text": ["a"]}).status_code == 503
