"""Templates, permalinks that survive a restart, the content filter and the metrics endpoint."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.app import create_app
from gateway.content_filter import ContentFilter
from gateway.settings import Settings
from gateway.templates import THUMBNAIL_SIDE
from tests.support import MODEL_NAME, embedded_settings

JSON = {"Accept": "application/json"}


def make_settings(model_base_path: Path, store: Path, **overrides) -> Settings:
    return embedded_settings(model_base_path, store, **overrides)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("memes")


@pytest.fixture(scope="module")
def client(model_base_path: Path, store: Path):
    with TestClient(create_app(make_settings(model_base_path, store))) as client:
        yield client


def test_templates_are_listed_with_layouts_and_images(client: TestClient) -> None:
    listing = client.get("/v1/templates").json()
    assert len(listing) == 200
    drake = client.get("/v1/templates/drake").json()
    assert drake["name"] and drake["boxes"] == len(drake["text_boxes"]) >= 2
    image = client.get(drake["image_url"])
    assert image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (drake["width"], drake["height"])
    missing = client.get("/v1/templates/no-such-template")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "template_not_found"


def test_user_text_on_a_template_lands_inside_its_boxes(client: TestClient) -> None:
    detail = client.get("/v1/templates/drake").json()
    response = client.post("/v1/templates/drake/memes", json={"text": ["writing tests", "shipping bugs"]})
    assert response.status_code == 200, response.text
    meme = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), int)
    blank = np.asarray(Image.open(io.BytesIO(client.get(detail["image_url"]).content)).convert("RGB"), int)
    changed = np.abs(meme - blank).max(axis=-1) > 40
    inside = np.zeros(changed.shape, bool)
    for box in detail["text_boxes"][:2]:
        left, top = int(box["anchor_x"] * detail["width"]), int(box["anchor_y"] * detail["height"])
        right, bottom = left + int(box["scale_x"] * detail["width"]), top + int(box["scale_y"] * detail["height"])
        inside[max(top - 2, 0) : bottom + 2, max(left - 2, 0) : right + 2] = True
        assert changed[top:bottom, left:right].any()
    assert changed[~inside].mean() < 0.002, "no text outside the template's boxes (JPEG noise aside)"
    too_many = client.post("/v1/templates/drake/memes", json={"text": ["a", "b", "c", "d", "e", "f", "g"]})
    assert too_many.status_code == 422


def test_model_captions_a_template_by_id(client: TestClient) -> None:
    response = client.post("/v1/memes", json={"template_id": "buzz", "n": 2}, headers=JSON)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["captions"] and body["model"]["name"] == MODEL_NAME
    assert client.post("/v1/memes", json={"template_id": "nope"}).status_code == 404


def test_permalink_serves_the_same_bytes_after_a_restart(
    client: TestClient, model_base_path: Path, store: Path, chelsea_jpeg: bytes
) -> None:
    response = client.post("/v1/memes", files={"image": ("c.jpg", chelsea_jpeg, "image/jpeg")})
    assert response.status_code == 200
    permalink = response.headers["location"]
    assert client.get(permalink).content == response.content
    with TestClient(create_app(make_settings(model_base_path, store))) as restarted:
        again = restarted.get(permalink)
        assert again.status_code == 200 and again.content == response.content
        assert again.headers["content-type"] == "image/png"
    assert not list(store.glob(".incoming-*")), "no half-written files left"
    assert client.get("/v1/memes/0123456789abcdef0123456789abcdef.png").status_code == 404
    assert client.get("/v1/memes/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_filtered_captions_are_replaced_by_the_next_beam(
    client: TestClient, model_base_path: Path, store: Path, tmp_path: Path, chelsea_jpeg: bytes
) -> None:
    files = {"image": ("c.jpg", chelsea_jpeg, "image/jpeg")}
    first = client.post("/v1/memes", files=files, data={"n": "1", "beam_width": "6"}, headers=JSON).json()
    blocked_word = first["captions"][0]["text"].split()[0]
    words = tmp_path / "blocked.txt"
    words.write_text(blocked_word + "\n")
    settings = make_settings(model_base_path, store, blocked_words_file=words)
    with TestClient(create_app(settings)) as filtered:
        body = filtered.post("/v1/memes", files=files, data={"n": "1", "beam_width": "6"}, headers=JSON).json()
    for caption in body["captions"]:
        assert ContentFilter([blocked_word]).allows(caption["text"])
    assert ContentFilter(["bad"]).allows("a good caption") and not ContentFilter(["bad"]).allows("so BAD!")


def test_metrics_exist_with_their_names(client: TestClient, chelsea_jpeg: bytes) -> None:
    client.post("/v1/memes", files={"image": ("c.jpg", chelsea_jpeg, "image/jpeg")})
    text = client.get("/metrics").text
    for name in (
        "memefly_http_requests_total",
        "memefly_http_request_duration_seconds_bucket",
        "memefly_memes_generated_total",
        "memefly_model_rpcs_per_meme_bucket",
        "memefly_decode_batch_beams_bucket",
        "memefly_backend_errors_total",
    ):
        assert name in text
    assert 'route="/v1/memes",status="200"' in text


def test_n_best_setting_is_how_many_captions_a_request_gets_by_default(
    model_base_path: Path, store: Path, chelsea_jpeg: bytes
) -> None:
    files = {"image": ("c.jpg", chelsea_jpeg, "image/jpeg")}
    varied = {"decoding": "sample", "temperature": "5", "seed": "7"}  # the tiny model's beams all agree
    for n_best in (1, 2):
        with TestClient(create_app(make_settings(model_base_path, store, n_best=n_best))) as client:
            body = client.post("/v1/memes", files=files, data=varied, headers=JSON).json()
            asked = client.post("/v1/memes", files=files, data={**varied, "n": "4"}, headers=JSON).json()
        assert len(body["captions"]) == n_best
        assert len(asked["captions"]) == 4


def test_template_thumbnails_are_small_jpegs_of_the_same_shape(client: TestClient) -> None:
    for template in client.get("/v1/templates").json()[:5]:
        response = client.get(template["thumbnail_url"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        thumbnail = Image.open(io.BytesIO(response.content))
        assert max(thumbnail.size) == min(THUMBNAIL_SIDE, max(template["width"], template["height"]))
        assert thumbnail.width / thumbnail.height == pytest.approx(template["width"] / template["height"], rel=0.05)
    assert client.get("/v1/templates/no-such-template/thumbnail").json()["error"]["code"] == "template_not_found"
