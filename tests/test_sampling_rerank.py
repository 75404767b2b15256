"""Sampling keeps the most image-specific of several draws: log P(c | image) − log P(c | blank image).

The pure ranking is checked on its own; the whole path runs on the session's tiny model, in-process and
over gRPC to the local serving tier, and the kept captions are checked against plain samples drawn with
the same seed and scored independently through the model's `score` signature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.backends import Condition
from gateway.backends.embedded import EmbeddedBackend
from gateway.backends.tfserving import TfServingBackend
from gateway.captioner import ModelSession
from gateway.rerank import blank_image_jpeg, most_specific, specificity
from gateway.search import SamplingSettings
from memefly.text import caption_text
from tests.support import MODEL_NAME, assert_scores_as_in_process, photo_jpeg


def test_most_specific_keeps_the_highest_scores_with_distinct_texts_best_first() -> None:
    scores = np.array([0.5, 3.0, 3.0, -1.0, 2.0])
    texts = ["a", "b", "b", "c", "d"]

    assert most_specific(scores, texts, 3) == [1, 4, 0]
    assert most_specific(scores, texts, 10) == [1, 4, 0, 3]


def test_specificity_is_the_log_probability_gained_from_the_image() -> None:
    assert specificity(np.array([-3.0, -10.0]), np.array([-5.0, -4.0])).tolist() == [2.0, -6.0]


def test_the_blank_image_is_one_grey_square() -> None:
    from io import BytesIO

    from PIL import Image

    image = Image.open(BytesIO(blank_image_jpeg()))
    assert image.format == "JPEG"
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.min() >= 126 and pixels.max() <= 130


def _plain_samples_ranked(backend, image: bytes, settings: SamplingSettings) -> list[tuple[str, float]]:
    """The same draws without re-ranking, scored here through `score`, most specific first."""
    session = ModelSession(backend)
    try:
        plain = session.captioner().caption(
            image, SamplingSettings(**{**settings.__dict__, "n": settings.n * settings.rerank, "rerank": 1})
        )
        texts = [caption_text(c.boxes) for c in plain.captions]
        # The blank image is scored in the style the image's caption took.
        encoding = backend.encode_rows([image], [Condition(0)])
        context = encoding.contexts
        blank = backend.encode_rows([blank_image_jpeg()], [Condition(0, "", encoding.styles[0])]).contexts
        with_image = backend.score(np.repeat(context, len(texts), axis=0), texts)
        blanked = backend.score(np.repeat(blank, len(texts), axis=0), texts)
    finally:
        session.close()
    scores = specificity(with_image, blanked)
    return [(texts[i], float(scores[i])) for i in most_specific(scores, texts, settings.n)]


@pytest.mark.parametrize("transport", ["embedded", "grpc"])
def test_sampling_returns_the_most_image_specific_of_its_draws(
    transport: str, model_base_path: Path, serving_target: str
) -> None:
    image = photo_jpeg("astronaut")
    settings = SamplingSettings(n=3, rerank=4, max_length=12, seed=17)
    expected = _plain_samples_ranked(EmbeddedBackend(model_base_path, MODEL_NAME), image, settings)
    backend = (
        EmbeddedBackend(model_base_path, MODEL_NAME)
        if transport == "embedded"
        else TfServingBackend(serving_target, MODEL_NAME, 30)
    )
    session = ModelSession(backend)
    try:
        captioner = session.captioner()
        first = captioner.caption(image, settings)
        second = captioner.caption(image, settings)
        draws = captioner.caption(
            image, SamplingSettings(**{**settings.__dict__, "n": settings.n * settings.rerank, "rerank": 1})
        )
    finally:
        session.close()

    got = [(caption_text(c.boxes), c.specificity) for c in first.captions]
    assert [text for text, _ in got] == [text for text, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-3)
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    assert all(c.specificity is None for c in draws.captions)
    # The blank image's context is encoded once per model version; each re-ranked request adds one `score`.
    assert second.captions == first.captions
    assert first.model_calls - draws.model_calls == 2
    assert second.model_calls - draws.model_calls == 1


def test_score_over_grpc_equals_the_in_process_score(model_base_path: Path, serving_target: str) -> None:
    remote = TfServingBackend(serving_target, MODEL_NAME, 30)
    try:
        assert_scores_as_in_process(remote, model_base_path)
    finally:
        remote.close()
