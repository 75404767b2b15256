"""Captions about the photo: concepts from the encoder, topics and styles folded into `encode`'s context.

The tiny model is trained with conditioning on real captions; its captions are poor, so these tests check
what the model tier and the gateway do with topics and styles, not how funny the result is (that is
`make evaluate`'s photo section).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from export.concepts.build_words import CAT_RANGE, DOG_RANGE, read_classes, read_words
from gateway.app import create_app
from gateway.backends import Condition
from gateway.backends.embedded import EmbeddedBackend
from gateway.backends.tfserving import TfServingBackend
from tests.support import MODEL_NAME, embedded_settings, photo_jpeg


def test_every_imagenet_class_has_an_everyday_word_or_none() -> None:
    classes, words = read_classes(), read_words()
    assert len(classes) == len(words) == 1000
    by_name = {lemmas[0]: word for (_, _, lemmas), word in zip(classes, words, strict=True)}
    assert by_name["tabby"] == by_name["Egyptian cat"] == "cat"
    assert by_name["espresso"] == "coffee" and by_name["space shuttle"] == "rocket"
    assert by_name["suit"] == by_name["military uniform"] == "guy", "clothing means a person"
    assert {words[i] for i in DOG_RANGE} == {"dog"} and {words[i] for i in CAT_RANGE} == {"cat"}
    assert all(word == "" or word.isalpha() and word.islower() for word in words)
    assert 400 < sum(bool(word) for word in words) < 1000


def test_the_committed_mapping_is_what_the_script_makes(data_folder: Path, tmp_path: Path) -> None:
    from export.concepts import build_words

    counts = build_words.caption_word_counts(data_folder)
    made = [build_words.class_word(index, lemmas, counts) for index, _, lemmas in read_classes()]
    made = [word if counts[word] >= build_words.MIN_COUNT or word == build_words.PERSON_WORD else "" for word in made]
    assert made == read_words()


@pytest.fixture(scope="module")
def backend(model_base_path: Path) -> Iterator[EmbeddedBackend]:
    backend = EmbeddedBackend(model_base_path, MODEL_NAME)
    backend.load_metadata()
    yield backend
    backend.close()


def test_encode_names_what_the_photo_shows_and_what_each_row_used(backend: EmbeddedBackend) -> None:
    contract = backend.load_metadata().contract
    assert contract.conditioned and contract.styles and contract.concept_words
    style = contract.styles[-1]
    encoding = backend.encode_rows(
        [photo_jpeg("chelsea"), photo_jpeg("coffee")],
        [Condition(0), Condition(0, "", "", 1), Condition(1, "", style), Condition(1, "zzqqxx")],
    )
    assert encoding.contexts.shape == (4, *contract.context_shape)
    assert len(encoding.concepts) == 2 and all(0 < len(c) <= contract.concepts_per_image for c in encoding.concepts)
    for concepts in encoding.concepts:
        assert all(word in contract.concept_words for word, _ in concepts)
        assert [p for _, p in concepts] == sorted((p for _, p in concepts), reverse=True)
    assert encoding.styles[2] == style
    assert encoding.styles[0] != encoding.styles[1], "the next style down for rank 1"
    assert set(encoding.styles) <= set(contract.styles)
    # A topic with no word the model knows falls back to what the photo shows.
    assert encoding.topics[3] == backend.encode_rows([photo_jpeg("coffee")], [Condition(0)]).topics[0]
    # Topic and style change the context; the same row twice gives the same context.
    assert not np.allclose(encoding.contexts[0], encoding.contexts[1])
    again = backend.encode_rows([photo_jpeg("chelsea")], [Condition(0)])
    np.testing.assert_allclose(again.contexts[0], encoding.contexts[0], atol=1e-5)


def test_a_topic_is_tokenized_in_graph_and_a_plural_falls_back_to_its_singular(backend: EmbeddedBackend) -> None:
    info = backend.load_metadata()
    from export.conditioning import content_word_mask

    content = content_word_mask(list(info.vocabulary))
    word = next(w for i, w in enumerate(info.vocabulary) if content[i] and w + "s" not in info.vocabulary)
    rows = [Condition(0, f"the {word}"), Condition(0, f"My {word.upper()}S!")]
    topics = backend.encode_rows([photo_jpeg("rocket")], rows).topics
    assert topics[0] == topics[1] == word


@pytest.fixture(scope="module")
def client(model_base_path: Path) -> Iterator[TestClient]:
    settings = embedded_settings(model_base_path)
    with TestClient(create_app(settings)) as client:
        yield client


def test_each_default_caption_takes_its_own_style_and_says_so(client: TestClient, chelsea_jpeg: bytes) -> None:
    response = client.post(
        "/v1/memes", files={"image": ("c.jpg", chelsea_jpeg, "image/jpeg")}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["concepts"] and all(0 <= c["probability"] <= 1 for c in body["concepts"])
    styles = [caption["style"] for caption in body["captions"]]
    assert all(styles) and len(set(styles)) == len(styles)
    assert len({caption["text"] for caption in body["captions"]}) == len(body["captions"])


def test_topic_and_style_reach_every_caption(client: TestClient, chelsea_jpeg: bytes) -> None:
    style = client.get("/v1/styles").json()[0]["id"]
    response = client.post(
        "/v1/memes",
        files={"image": ("c.jpg", chelsea_jpeg, "image/jpeg")},
        data={"style": style, "n": "2"},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert {caption["style"] for caption in response.json()["captions"]} == {style}


def test_the_styles_route_lists_the_served_models_styles(client: TestClient, model_base_path: Path) -> None:
    styles = client.get("/v1/styles").json()
    contract = EmbeddedBackend(model_base_path, MODEL_NAME).load_metadata().contract
    assert [s["id"] for s in styles] == list(contract.styles)
    assert all(s["name"] for s in styles)


def test_an_unknown_style_is_a_422_naming_the_styles_route(client: TestClient, chelsea_jpeg: bytes) -> None:
    response = client.post(
        "/v1/memes", files={"image": ("c.jpg", chelsea_jpeg, "image/jpeg")}, data={"style": "no-such-template"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unknown_style"
    assert "/v1/styles" in response.json()["error"]["message"]


def test_the_openapi_schema_documents_topic_style_and_concepts(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/memes"]["post"]["requestBody"]["content"]
    for media in ("multipart/form-data", "application/json"):
        options = body[media]["schema"]["properties"]
        assert "topic" in options and "style" in options, media
    assert "concepts" in schema["components"]["schemas"]["MemeResponse"]["properties"]
    assert "/v1/styles" in schema["paths"]


@pytest.fixture(scope="module")
def unconditioned_base_path(tmp_path_factory: pytest.TempPathFactory, data_folder: Path) -> Path:
    """The tiny preset as models were exported before conditioning."""
    from export.saved_model import export_saved_model
    from export.train import PRESETS, train

    model_config, train_config = PRESETS["tiny"]
    result = train(replace(model_config, conditioned=False), train_config, data_folder, tmp_path_factory.mktemp("old"))
    base = tmp_path_factory.mktemp("old-models")
    export_saved_model(result.module, base / MODEL_NAME, version=1)
    return base


def test_a_model_exported_before_conditioning_still_captions_with_the_old_behaviour(
    unconditioned_base_path: Path, chelsea_jpeg: bytes
) -> None:
    backend = EmbeddedBackend(unconditioned_base_path, MODEL_NAME)
    contract = backend.load_metadata().contract
    assert not contract.conditioned and not contract.styles
    assert "image_index" not in backend.signatures["encode"].structured_input_signature[1]
    encoding = backend.encode_rows([chelsea_jpeg, photo_jpeg("coffee")], [Condition(1, "cats"), Condition(0)])
    np.testing.assert_allclose(encoding.contexts, backend.encode([photo_jpeg("coffee"), chelsea_jpeg]), atol=1e-5)
    assert encoding.concepts == ((), ())
    settings = embedded_settings(unconditioned_base_path)
    with TestClient(create_app(settings)) as client:
        files = {"image": ("c.jpg", chelsea_jpeg, "image/jpeg")}
        response = client.post("/v1/memes", files=files, headers={"Accept": "application/json"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["captions"] and body["concepts"] == []
        assert all(c["style"] is None and c["topic"] is None for c in body["captions"])
        assert client.get("/v1/styles").json() == []
        for asked in ({"style": "buzz"}, {"topic": "mondays"}):
            refused = client.post("/v1/memes", files=files, data=asked)
            assert refused.status_code == 422, "never silently ignored"
            error = refused.json()["error"]
            assert error["code"] == "unsupported_by_model" and next(iter(asked)) in error["message"]


def test_conditioned_encode_over_grpc_equals_in_process(
    backend: EmbeddedBackend, serving_target: str, chelsea_jpeg: bytes
) -> None:
    remote = TfServingBackend(serving_target, MODEL_NAME, 30)
    try:
        remote.load_metadata()
        rows = [Condition(0), Condition(0, "cats and dogs", "", 2), Condition(1, "", remote_style(backend))]
        images = [chelsea_jpeg, photo_jpeg("astronaut")]
        here, there = backend.encode_rows(images, rows), remote.encode_rows(images, rows)
    finally:
        remote.close()
    np.testing.assert_allclose(there.contexts, here.contexts, atol=1e-5)
    assert (there.topics, there.styles) == (here.topics, here.styles)
    assert [[w for w, _ in c] for c in there.concepts] == [[w for w, _ in c] for c in here.concepts]


def remote_style(backend: EmbeddedBackend) -> str:
    return backend.load_metadata().contract.styles[0]
