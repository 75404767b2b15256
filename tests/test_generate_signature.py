"""`generate` runs the gateway's beam search in-graph: the same captions as the gateway's step loop.

The reference is the gateway's own `BeamSearch` (gateway/search.py) driven step by step with the
model's `decode_step`, as the scheduler drives it. The GRU is checked through the exported SavedModel,
the transformer through the module the export wraps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from gateway.backends.base import Condition, encode_inputs
from gateway.search import BeamSearch, Hypothesis, SearchSettings
from memefly.contract import DECODE_STEP, ENCODE, GENERATE, METADATA, TOKENIZE, ModelContract
from memefly.text import ids_to_boxes
from tests.support import MODEL_NAME, photo_jpeg

# Every test here runs a model trained on the caption corpus (some reach it through request.getfixturevalue).
pytestmark = pytest.mark.corpus


@dataclass(frozen=True)
class Model:
    """The signatures of one model, called with NumPy arrays."""

    signatures: Callable[[str], Callable[..., dict[str, tf.Tensor]]]
    contract: ModelContract
    vocabulary: list[str]

    def call(self, name: str, **inputs) -> dict[str, np.ndarray]:
        return {key: value.numpy() for key, value in self.signatures(name)(**inputs).items()}

    def tokenize(self, text: str) -> tuple[int, ...]:
        outputs = self.call(TOKENIZE, text=tf.constant([text]))
        return tuple(outputs["ids"][0, : outputs["lengths"][0]].tolist())

    def generate(self, images: list[bytes], prefixes: list[str], settings: SearchSettings) -> dict[str, np.ndarray]:
        return self.call(
            GENERATE,
            image_bytes=tf.constant(images),
            prefix=tf.constant(prefixes),
            beam_width=tf.constant(settings.beam_width),
            n_best=tf.constant(settings.n_best),
            max_length=tf.constant(settings.max_length),
            length_penalty=tf.constant(settings.length_penalty, tf.float32),
            no_repeat_ngram_size=tf.constant(settings.no_repeat_ngram_size),
        )

    def gateway_search(self, image: bytes, prefix: str, settings: SearchSettings) -> list[Hypothesis]:
        """The gateway's loop: encode once, then decode_step for the live beams until the search is done.

        With conditioning, the gateway's rule: caption i takes the i-th best fitting style, one search a caption.
        """
        if not self.contract.conditioned:
            context = self.call(ENCODE, image_bytes=tf.constant([image]))["context"]
            return self._search(context, prefix, settings)
        conditions = [Condition(0, "", "", rank) for rank in range(settings.n_best)]
        inputs = encode_inputs(self.contract.encode, [image], conditions)
        contexts = self.call(ENCODE, **{name: tf.constant(value) for name, value in inputs.items()})["context"]
        one = replace(settings, n_best=1)
        return [hypothesis for row in contexts for hypothesis in self._search(row[None], prefix, one)]

    def _search(self, context: np.ndarray, prefix: str, settings: SearchSettings) -> list[Hypothesis]:
        contract = self.contract
        search = BeamSearch.for_contract(settings, contract, self.tokenize(prefix) if prefix.strip() else ())
        while True:
            step = self.call(
                DECODE_STEP,
                tokens=tf.constant(search.tokens),
                state=tf.constant(search.state, contract.state_dtype),
                context=tf.constant(context),
                context_index=tf.zeros([search.num_live], tf.int32),
                k=tf.constant(search.k),
            )
            search.advance(step["top_log_probs"], step["top_ids"], step["state"])
            if search.done:
                return search.results()


def _model(signatures: Callable[[str], Callable[..., dict[str, tf.Tensor]]]) -> Model:
    metadata = signatures(METADATA)()
    vocabulary = [word.decode() for word in metadata["vocabulary"].numpy()]
    return Model(signatures, ModelContract.from_json(metadata["contract"].numpy()), vocabulary)


@pytest.fixture(scope="module")
def gru(model_base_path: Path) -> Model:
    loaded = tf.saved_model.load(str(model_base_path / MODEL_NAME / "1"))
    return _model(lambda name: loaded.signatures[name])


@pytest.fixture(scope="module")
def transformer(tiny_transformer_training) -> Model:
    module = tiny_transformer_training.module

    def signature(name: str) -> Callable[..., dict[str, tf.Tensor]]:
        return getattr(module, name)

    return _model(signature)


@pytest.fixture(scope="module", params=["gru", "transformer"])
def model(request: pytest.FixtureRequest) -> Model:
    return request.getfixturevalue(request.param)


def _f32(value: float) -> float:
    """The length penalty as the float32 input carries it, so both searches divide by the same number."""
    return float(np.float32(value))


SETTINGS = [
    pytest.param(SearchSettings(beam_width=4, n_best=3, max_length=16), "", id="defaults"),
    pytest.param(
        SearchSettings(beam_width=3, n_best=3, max_length=5, length_penalty=0.0, no_repeat_ngram_size=0),
        "",
        id="short-max-length-no-penalty",
    ),
    pytest.param(
        SearchSettings(beam_width=5, n_best=2, max_length=12, length_penalty=_f32(1.7), no_repeat_ngram_size=1),
        "",
        id="wide-unigram-ban",
    ),
    pytest.param(SearchSettings(beam_width=1, n_best=1, max_length=16, no_repeat_ngram_size=0), "", id="greedy"),
    # One beam whose two candidates can both be banned: the search may end with no caption at all.
    pytest.param(SearchSettings(beam_width=1, n_best=1, max_length=16, no_repeat_ngram_size=2), "", id="greedy-stuck"),
    pytest.param(SearchSettings(beam_width=4, n_best=4, max_length=1), "", id="max-length-1"),
    pytest.param(SearchSettings(beam_width=3, n_best=2, max_length=9), "when you\n", id="prefix-closing-a-box"),
]


def _assert_same_captions(model: Model, found: dict[str, np.ndarray], row: int, expected: list[Hypothesis]) -> None:
    lengths = found["lengths"][row]
    got = [tuple(found["ids"][row, i, : lengths[i]].tolist()) for i in range(len(lengths)) if lengths[i] > 0]
    assert got == [h.ids for h in expected]
    count = len(expected)
    np.testing.assert_allclose(found["scores"][row, :count], [h.score for h in expected], atol=1e-4)
    np.testing.assert_allclose(found["log_probs"][row, :count], [h.log_prob for h in expected], atol=1e-4)
    texts = [text.decode() for text in found["text"][row, :count]]
    assert texts == ["\n".join(ids_to_boxes(h.ids, model.vocabulary, model.contract)) for h in expected]
    assert np.all(np.isneginf(found["scores"][row, count:])) and not found["text"][row, count:].any()


@pytest.mark.parametrize(("settings", "prefix"), SETTINGS)
def test_generate_gives_the_gateways_captions(
    model: Model, settings: SearchSettings, prefix: str, chelsea_jpeg: bytes
) -> None:
    expected = model.gateway_search(chelsea_jpeg, prefix, settings)
    found = model.generate([chelsea_jpeg], [prefix], settings)

    assert found["ids"].shape == (1, settings.n_best, settings.max_length)
    _assert_same_captions(model, found, 0, expected)


def test_default_settings_caption_the_photo(model: Model, chelsea_jpeg: bytes) -> None:
    found = model.generate([chelsea_jpeg], [""], SearchSettings())

    assert np.all(found["lengths"][0] > 0) and all(found["text"][0])
    if not model.contract.conditioned:  # conditioned, captions come in style order (one style a caption)
        assert np.all(np.diff(found["scores"][0]) <= 0), "best first"


def test_a_batch_of_images_gives_each_image_its_own_captions(model: Model, chelsea_jpeg: bytes) -> None:
    """Rows of one call do not interact: a prefixed and an unprefixed image stop at different steps."""
    settings = SearchSettings(beam_width=3, n_best=3, max_length=10)
    images, prefixes = [chelsea_jpeg, photo_jpeg("coffee")], ["", "me"]
    found = model.generate(images, prefixes, settings)

    for row, (image, prefix) in enumerate(zip(images, prefixes, strict=True)):
        _assert_same_captions(model, found, row, model.gateway_search(image, prefix, settings))
    assert found["ids"][1, 0, 0] == model.tokenize("me")[0]


@pytest.mark.parametrize(
    ("beam_width", "n_best", "max_length", "message"),
    [(2, 40, 8, "n_best must be between 1 and"), (0, 1, 8, "beam_width must be between"), (2, 1, 0, "max")],
)
def test_settings_out_of_range_are_refused(
    gru: Model, chelsea_jpeg: bytes, beam_width: int, n_best: int, max_length: int, message: str
) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        gru.call(
            GENERATE,
            image_bytes=tf.constant([chelsea_jpeg]),
            prefix=tf.constant([""]),
            beam_width=tf.constant(beam_width),
            n_best=tf.constant(n_best),
            max_length=tf.constant(max_length),
            length_penalty=tf.constant(1.0),
            no_repeat_ngram_size=tf.constant(3),
        )


def test_a_prefix_for_each_image_is_required(gru: Model, chelsea_jpeg: bytes) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match="prefix needs one entry per image"):
        gru.generate([chelsea_jpeg], ["", "me"], SearchSettings())
