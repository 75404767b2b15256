"""POST /v1/memes/automatic: the template whose voice best explains a caption, chosen by the model's `score`."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.app import create_app
from gateway.backends.embedded import EmbeddedBackend
from gateway.template_picker import TemplatePicker, split_into_boxes
from gateway.templates import TemplateStore
from tests.support import MODEL_NAME, embedded_settings


@pytest.mark.parametrize(
    ("text", "boxes", "expected"),
    [
        ("one does not simply walk into mordor", 2, ["one does not simply", "walk into mordor"]),
        ("top line\nbottom line", 2, ["top line", "bottom line"]),
        ("a\nb\nc", 2, ["a", "b c"]),
        ("just one", 1, ["just one"]),
        ("one two three four five six", 3, ["one two", "three four", "five six"]),
        ("word", 2, ["word"]),
    ],
)
def test_text_is_split_across_the_templates_boxes(text: str, boxes: int, expected: list[str]) -> None:
    assert split_into_boxes(text, boxes) == expected


@pytest.fixture(scope="module")
def client(model_base_path: Path) -> Iterator[TestClient]:
    settings = embedded_settings(model_base_path)
    with TestClient(create_app(settings)) as client:
        yield client


def test_automatic_draws_the_text_on_the_best_template_and_lists_the_top_five(
    client: TestClient, model_base_path: Path, data_folder: Path
) -> None:
    text = "y u no make memes"
    response = client.post("/v1/memes/automatic", json={"text": text}, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    body = response.json()
    scores = [t["score"] for t in body["templates"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert body["template"] == body["templates"][0]["id"]
    assert " ".join(body["captions"][0]["boxes"]) == text
    backend = EmbeddedBackend(model_base_path, MODEL_NAME)
    picker = TemplatePicker(backend, TemplateStore(data_folder).all(), backend.load_metadata().contract.styles)
    assert [t.template for t in picker.pick(text)] == [t["id"] for t in body["templates"]]
    # The winner is the template under which the model finds the text most likely.
    log_probs = picker.log_probs([text])[0]
    assert picker.templates[int(np.argmax(log_probs))].id == body["template"]

    image = client.post("/v1/memes/automatic", json={"text": text})
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.headers["x-memefly-template"] == body["template"]
    template = TemplateStore(data_folder).get(body["template"])
    assert Image.open(io.BytesIO(image.content)).size == (template.width, template.height)


@pytest.mark.parametrize("body", [{"text": ""}, {}, {"text": "x" * 501}, {"text": 5}])
def test_automatic_without_usable_text_is_a_422(client: TestClient, body: dict) -> None:
    response = client.post("/v1/memes/automatic", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"]
