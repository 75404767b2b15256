"""The gateway end to end on both backends, with a real photo: upload in, meme out."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.app import create_app
from gateway.settings import Settings
from tests.support import MODEL_NAME

BACKENDS = ["embedded", "tfserving"]


@pytest.fixture(scope="module")
def clients(model_base_path: Path, serving_target: str) -> Iterator[dict[str, TestClient]]:
    common = {"model_name": MODEL_NAME, "model_base_path": model_base_path, "beam_width": 4, "n_best": 3}
    apps = {
        "embedded": create_app(Settings(backend="embedded", **common)),
        "tfserving": create_app(Settings(backend="tfserving", tfserving_target=serving_target, **common)),
    }
    with TestClient(apps["embedded"]) as embedded, TestClient(apps["tfserving"]) as tfserving:
        yield {"embedded": embedded, "tfserving": tfserving}


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).max(axis=-1) > 48


@pytest.mark.parametrize("backend", BACKENDS)
def test_upload_returns_png_of_input_size_with_text_in_top_and_bottom_bands(
    clients: dict[str, TestClient], backend: str, chelsea_jpeg: bytes
) -> None:
    response = clients[backend].post("/v1/memes", files={"image": ("chelsea.jpg", chelsea_jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    meme = Image.open(io.BytesIO(response.content))
    original = Image.open(io.BytesIO(chelsea_jpeg)).convert("RGB")
    assert meme.format == "PNG"
    assert meme.size == original.size
    changed = _changed(np.asarray(meme.convert("RGB")), np.asarray(original))
    height = changed.shape[0]
    top, middle, bottom = changed[: height // 4], changed[height * 3 // 8 : height * 5 // 8], changed[height * 3 // 4 :]
    assert top.mean() > 0.01, "caption text drawn in the top band"
    assert bottom.mean() > 0.01, "caption text drawn in the bottom band"
    boxes = unquote(response.headers["x-memefly-caption"]).split(" / ")
    if len(boxes) <= 2:
        assert middle.mean() < 0.001, "with top and bottom text only, the middle of the photo is left alone"
    assert int(response.headers["x-memefly-rpcs"]) >= 2


def _assert_best_first(captions: list[dict], measure: str) -> None:
    """Captions that name their topic first, then by `measure`, highest first."""

    def words(text: str) -> set[str]:
        return set(re.findall(r"[\w']+", text.lower()))

    keys = [(not (c["topic"] and words(c["topic"]) & words(c["text"])), -c[measure]) for c in captions]
    assert keys == sorted(keys)


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_mode_gives_captions_scores_model_and_rpc_count(
    clients: dict[str, TestClient], backend: str, chelsea_jpeg: bytes
) -> None:
    response = clients[backend].post(
        "/v1/memes",
        files={"image": ("chelsea.jpg", chelsea_jpeg, "image/jpeg")},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["captions"], "at least one caption"
    assert all(caption["text"].strip() and caption["boxes"] for caption in body["captions"])
    _assert_best_first(body["captions"], "score")
    assert len({caption["text"] for caption in body["captions"]}) == len(body["captions"])
    assert body["model"] == {"name": MODEL_NAME, "version": 1, "backend": backend}
    max_length = clients[backend].app.state.session.captioner().info.contract.max_length
    assert 2 <= body["rpcs"] <= max_length + 1
    assert (body["width"], body["height"]) == Image.open(io.BytesIO(chelsea_jpeg)).size


def test_both_backends_give_the_same_captions(clients: dict[str, TestClient], chelsea_jpeg: bytes) -> None:
    results = {}
    for backend, client in clients.items():
        response = client.post(
            "/v1/memes",
            json={"image": base64.b64encode(chelsea_jpeg).decode(), "n": 3, "beam_width": 5},
            headers={"Accept": "application/json"},
        )
        assert response.status_code == 200, response.text
        results[backend] = response.json()
    embedded, tfserving = results["embedded"], results["tfserving"]
    assert [c["boxes"] for c in embedded["captions"]] == [c["boxes"] for c in tfserving["captions"]]
    np.testing.assert_allclose(
        [c["score"] for c in embedded["captions"]], [c["score"] for c in tfserving["captions"]], rtol=1e-4
    )
    assert embedded["rpcs"] == tfserving["rpcs"]


def test_sampled_captions_come_most_image_specific_first_unless_rerank_is_one(
    clients: dict[str, TestClient], chelsea_jpeg: bytes
) -> None:
    image = base64.b64encode(chelsea_jpeg).decode()
    answers = {}
    for rerank in (None, 1):
        response = clients["tfserving"].post(
            "/v1/memes",
            json={"image": image, "n": 3, "decoding": "sample", "seed": 5, "rerank": rerank},
            headers={"Accept": "application/json"},
        )
        assert response.status_code == 200, response.text
        answers[rerank] = response.json()["captions"]
    assert len(answers[None]) == 3
    _assert_best_first(answers[None], "specificity")
    assert all(c["specificity"] is None for c in answers[1])

    response = clients["tfserving"].post(
        "/v1/memes", json={"image": image, "decoding": "sample", "rerank": 9}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 422


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_image_upload_gets_a_4xx_json_error(clients: dict[str, TestClient], backend: str) -> None:
    response = clients[backend].post(
        "/v1/memes", files={"image": ("notes.png", b"just some text, not a PNG", "image/png")}
    )
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "invalid_image"


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"files": {"image": ("empty.jpg", b"", "image/jpeg")}}, 400, "empty_image"),
        ({"files": {"photo": ("x.jpg", b"abc", "image/jpeg")}}, 422, "invalid_request"),
        ({"json": {"image": "not base64 at all!"}}, 422, "invalid_request"),
        ({"json": {"picture": "AAAA"}}, 422, "invalid_request"),
        ({"content": b"raw bytes", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"json": {"image": "AAAA", "beam_width": 0}}, 422, "invalid_request"),
    ],
)
def test_malformed_requests_get_json_errors(
    clients: dict[str, TestClient], request_kwargs: dict, status: int, code: str
) -> None:
    response = clients["embedded"].post("/v1/memes", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize("backend", BACKENDS)
def test_ready_after_the_model_answered(clients: dict[str, TestClient], backend: str) -> None:
    assert clients[backend].get("/healthz").json() == {"status": "ok"}
    ready = clients[backend].get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": MODEL_NAME, "version": 1, "models": {MODEL_NAME: 1}}


def test_not_ready_while_the_serving_tier_is_down(model_base_path: Path) -> None:
    from tests.support import free_port

    settings = Settings(backend="tfserving", tfserving_target=f"127.0.0.1:{free_port()}", rpc_timeout_seconds=2)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "model_unavailable"
        assert "retry-after" in ready.headers
