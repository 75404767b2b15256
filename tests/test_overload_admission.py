"""Past the admission queue, requests get 429 with Retry-After at once; the admitted ones succeed in
bounded time."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.admission import Admission, Overloaded
from gateway.app import create_app
from tests.support import embedded_settings, photo_jpeg

CONCURRENT = 1
QUEUED = 1
CLIENTS = 8


@pytest.fixture(scope="module")
def client(model_base_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = embedded_settings(
        model_base_path,
        tmp_path_factory.mktemp("memes"),
        max_concurrent_memes=CONCURRENT,
        max_queued_memes=QUEUED,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_more_clients_than_slots_get_429_with_retry_after_and_admitted_ones_succeed(client: TestClient) -> None:
    body = {"image": base64.b64encode(photo_jpeg("astronaut")).decode(), "beam_width": 8, "n": 3}
    started = time.monotonic()
    alone = client.post("/v1/memes", json=body, headers={"Accept": "application/json"})
    single_seconds = time.monotonic() - started
    assert alone.status_code == 200

    barrier = threading.Barrier(CLIENTS)

    def call(_: int) -> tuple[int, dict[str, str], dict, float]:
        barrier.wait()
        began = time.monotonic()
        response = client.post("/v1/memes", json=body, headers={"Accept": "application/json"})
        return response.status_code, dict(response.headers), response.json(), time.monotonic() - began

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(call, range(CLIENTS)))

    statuses = [status for status, *_ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= CONCURRENT + QUEUED
    assert statuses.count(429) >= 1
    for status, headers, body_json, seconds in results:
        if status == 429:
            assert body_json["error"]["code"] == "overloaded"
            assert int(headers["retry-after"]) >= 1
            assert seconds < 2.0, "refused at once, not after waiting"
        else:
            assert body_json["captions"]
            # Each waited behind at most CONCURRENT + QUEUED others: bounded, not CLIENTS × single.
            assert seconds < (CONCURRENT + QUEUED + 2) * single_seconds + 2.0
    metrics = client.get("/metrics").text
    rejected = next(line for line in metrics.splitlines() if line.startswith("memefly_admission_rejected_total"))
    assert float(rejected.split()[-1]) >= statuses.count(429)


def test_template_memes_are_admitted_through_the_same_queue(client: TestClient) -> None:
    admission = client.app.state.memes.admission
    assert (admission.active, admission.queued) == (0, 0)
    response = client.post("/v1/templates/drake/memes", json={"text": ["a", "b"]})
    assert response.status_code == 200, response.text
    assert (admission.active, admission.queued) == (0, 0), "the slot was given back"


def test_waiting_past_the_deadline_gives_429_and_slots_pass_in_order() -> None:
    async def scenario() -> None:
        admission = Admission(max_active=1, max_queued=2)
        order: list[str] = []
        now = time.monotonic()

        async def hold(name: str, seconds: float, deadline: float) -> None:
            async with admission.slot(deadline):
                order.append(name)
                await asyncio.sleep(seconds)

        first = asyncio.create_task(hold("first", 0.3, now + 10))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(hold("second", 0.0, now + 10))
        late = asyncio.create_task(hold("late", 0.0, now + 0.1))
        await asyncio.sleep(0.01)
        assert (admission.active, admission.queued) == (1, 2)
        with pytest.raises(Overloaded):
            await hold("over", 0.0, now + 10)  # the queue is full
        with pytest.raises(Overloaded) as waited:
            await late
        assert waited.value.status == 429 and int(waited.value.headers["Retry-After"]) >= 1
        third = asyncio.create_task(hold("third", 0.0, now + 10))
        await asyncio.gather(first, second, third)
        assert order == ["first", "second", "third"]
        assert (admission.active, admission.queued) == (0, 0)

        # A waiter cancelled (its client went away) gives up its place without leaking a slot.
        blocker = asyncio.create_task(hold("blocker", 0.1, time.monotonic() + 10))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(hold("gone", 0.0, time.monotonic() + 10))
        await asyncio.sleep(0.01)
        gone.cancel()
        await blocker
        await asyncio.sleep(0)
        assert (admission.active, admission.queued) == (0, 0)

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
