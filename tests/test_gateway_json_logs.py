"""The gateway logs one JSON object a line, and every line of a request carries that request's id."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from tests.support import embedded_settings


@pytest.fixture
def client(model_base_path: Path) -> Iterator[TestClient]:
    settings = embedded_settings(model_base_path, beam_width=2)
    with TestClient(create_app(settings)) as client:
        yield client


def _log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    for handler in logging.getLogger("gateway").handlers:
        handler.flush()
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_every_log_line_of_a_meme_request_is_json_with_the_callers_request_id(
    client: TestClient, chelsea_jpeg: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    response = client.post(
        "/v1/memes",
        files={"image": ("chelsea.jpg", chelsea_jpeg, "image/jpeg")},
        headers={"X-Request-ID": "trace-42.a", "Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "trace-42.a"
    lines = _log_lines(capsys)
    mine = [line for line in lines if line.get("request_id") == "trace-42.a"]
    messages = {line["message"] for line in mine}
    assert {"captioned", "request"} <= messages, lines
    [access] = [line for line in mine if line["message"] == "request"]
    assert (access["method"], access["route"], access["status"]) == ("POST", "/v1/memes", 200)
    assert access["duration_ms"] > 0
    [captioned] = [line for line in mine if line["message"] == "captioned"]
    assert captioned["version"] == 1 and captioned["rpcs"] >= 2
    assert all({"time", "level", "logger"} <= line.keys() for line in lines)


@pytest.mark.parametrize("incoming", [None, "", "has spaces", "x" * 65, "semi;colon"])
def test_a_missing_or_malformed_request_id_is_replaced_by_a_fresh_one(
    client: TestClient, incoming: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    headers = {} if incoming is None else {"X-Request-ID": incoming}
    first = client.get("/v1/templates?limit=1", headers=headers).headers["x-request-id"]
    second = client.get("/v1/templates?limit=1", headers=headers).headers["x-request-id"]
    assert first != second and first != incoming
    assert len(first) == 32 and int(first, 16) >= 0
    statuses = {line["request_id"]: line["status"] for line in _log_lines(capsys) if line["message"] == "request"}
    assert first in statuses and second in statuses


def test_error_responses_carry_the_request_id_too(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    response = client.post("/v1/memes", content=b"not an image", headers={"X-Request-ID": "bad-1"})
    assert 400 <= response.status_code < 500
    assert response.headers["x-request-id"] == "bad-1"
    [access] = [line for line in _log_lines(capsys) if line.get("request_id") == "bad-1"]
    assert access["status"] == response.status_code
