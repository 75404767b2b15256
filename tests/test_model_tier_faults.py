"""The serving tier killed and restarted under a request loop: 503 with Retry-After inside the deadline,
never a 500 or a hang, /readyz flips to not ready and back, and requests recover on their own."""

from __future__ import annotations

import base64
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.support import MODEL_NAME, free_port, photo_jpeg, serving_process, wait_for_model_status

REQUEST_TIMEOUT_SECONDS = 8.0
RPC_TIMEOUT_SECONDS = 2.0


@dataclass
class LoopRecord:
    statuses: Counter = field(default_factory=Counter)
    slowest_seconds: float = 0.0
    missing_retry_after: int = 0
    errors_503: set[str] = field(default_factory=set)


def _request_loop(client: TestClient, body: dict, stop: threading.Event, record: LoopRecord) -> None:
    while not stop.is_set():
        started = time.monotonic()
        response = client.post("/v1/memes", json=body, headers={"Accept": "application/json"})
        record.slowest_seconds = max(record.slowest_seconds, time.monotonic() - started)
        record.statuses[response.status_code] += 1
        if response.status_code == 503:
            record.errors_503.add(response.json()["error"]["code"])
            if "retry-after" not in response.headers:
                record.missing_retry_after += 1
        if response.status_code != 200:
            time.sleep(0.05)


def _wait_for(condition, timeout: float, what: str) -> float:
    """Seconds until `condition()` held; fails the test past `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen within {timeout} s")


def test_serving_tier_killed_and_restarted_under_load(model_base_path: Path, tmp_path: Path) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    args = [f"--port={port}", f"--model_name={MODEL_NAME}", f"--model_base_path={model_base_path / MODEL_NAME}"]
    settings = Settings(
        backend="tfserving",
        tfserving_target=target,
        model_name=MODEL_NAME,
        rpc_timeout_seconds=RPC_TIMEOUT_SECONDS,
        request_timeout_seconds=REQUEST_TIMEOUT_SECONDS,
        meme_store_dir=tmp_path / "memes",
        beam_width=2,
        n_best=1,
    )
    body = {"image": base64.b64encode(photo_jpeg("astronaut")).decode(), "max_length": 8}
    record = LoopRecord()
    stop = threading.Event()
    with serving_process(args, tmp_path / "serving-1.log") as first:
        wait_for_model_status(target, MODEL_NAME, first)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            ready = lambda: client.get("/readyz").status_code == 200  # noqa: E731
            _wait_for(ready, 30, "the gateway getting ready")
            loops = [
                threading.Thread(target=_request_loop, args=(client, body, stop, record), daemon=True) for _ in range(2)
            ]
            for loop in loops:
                loop.start()
            try:
                _wait_for(lambda: record.statuses[200] >= 2, 60, "memes while the tier is up")

                first.kill()
                first.wait()
                _wait_for(lambda: client.get("/readyz").status_code == 503, 10, "/readyz going not ready")
                _wait_for(lambda: record.statuses[503] >= 3, 20, "503s while the tier is down")
                readyz = client.get("/readyz")
                assert readyz.json()["error"]["code"] == "model_unavailable"
                assert "retry-after" in readyz.headers

                with serving_process(args, tmp_path / "serving-2.log") as second:
                    wait_for_model_status(target, MODEL_NAME, second)
                    back = _wait_for(ready, 15, "/readyz going ready again")
                    served = record.statuses[200]
                    _wait_for(lambda: record.statuses[200] >= served + 3, 30, "memes again after the restart")

                    # A hung tier (stopped, not dead): calls time out instead of failing fast.
                    second.send_signal(signal.SIGSTOP)
                    try:
                        probe_started = time.monotonic()
                        assert client.get("/readyz").status_code == 503
                        assert time.monotonic() - probe_started < 4, "/readyz answers even when the tier hangs"
                        failed = record.statuses[503] + record.statuses[504]
                        _wait_for(lambda: record.statuses[503] + record.statuses[504] > failed, 20, "hung-tier errors")
                    finally:
                        second.send_signal(signal.SIGCONT)
                    served = record.statuses[200]
                    _wait_for(lambda: record.statuses[200] >= served + 3, 30, "memes again after the hang")
                    stop.set()
                    for loop in loops:
                        loop.join(timeout=REQUEST_TIMEOUT_SECONDS + 5)
                        assert not loop.is_alive(), "a request hung past its deadline"
            finally:
                stop.set()
    assert back < 5, "reconnected within grpc's capped reconnect backoff (2 s), not its default (up to 120 s)"
    assert set(record.statuses) <= {200, 503, 504}, f"only memes, 503s and 504s: {dict(record.statuses)}"
    assert record.statuses[503] >= 3
    assert record.errors_503 == {"model_unavailable"}
    assert record.missing_retry_after == 0
    assert record.slowest_seconds < REQUEST_TIMEOUT_SECONDS + 1, "every request answered within its deadline"
