"""The transformer decoder trains, exports through the same code as the GRU, and keeps the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from export.bundle import load_bundle, save_bundle
from export.model import CaptionModelConfig, build_decoder
from export.saved_model import export_saved_model
from memefly.contract import DECODE_STEP, ENCODE, METADATA, SCORE, TOKENIZE, ModelContract
from tests.support import (
    MODEL_NAME,
    assert_encode_and_decode_step_follow_the_contract,
    assert_score_equals_summed_decode_step_log_probs,
    assert_signatures_follow_the_contract,
    encode_kwargs,
    photo_jpeg,
)


@pytest.fixture(scope="module")
def trained(tiny_transformer_training):
    return tiny_transformer_training


@pytest.fixture(scope="module")
def loaded(trained, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("transformer-models")
    version_dir = export_saved_model(trained.module, base / MODEL_NAME, version=1)
    return tf.saved_model.load(str(version_dir))


@pytest.fixture(scope="module")
def contract(loaded) -> ModelContract:
    return ModelContract.from_json(loaded.signatures[METADATA]()["contract"].numpy())


@pytest.fixture(scope="module")
def vocabulary(loaded) -> list[str]:
    return [w.decode() for w in loaded.signatures[METADATA]()["vocabulary"].numpy()]


def _full_distribution(step: dict[str, tf.Tensor], vocab_size: int) -> np.ndarray:
    """A decode_step run with k = vocabulary size, back in vocabulary order."""
    rows = np.full((step["top_ids"].shape[0], vocab_size), np.nan, np.float32)
    np.put_along_axis(rows, step["top_ids"].numpy(), step["top_log_probs"].numpy(), axis=1)
    return rows


def test_the_contract_carries_the_encoded_feature_map_with_topic_and_style_rows_and_a_prefix_sized_state(
    contract: ModelContract, trained
) -> None:
    config = trained.model_config
    assert contract.decoder == "transformer" and contract.conditioned and contract.styles
    assert contract.context_shape == (49 + 2, config.d_model)
    assert contract.state_size == 1 + config.max_length


def test_every_signature_follows_the_contract(loaded, contract: ModelContract) -> None:
    assert_signatures_follow_the_contract(loaded, contract)


def test_encode_decode_step_tokenize_and_score_run_with_contract_shapes(
    loaded, contract: ModelContract, vocabulary: list[str], chelsea_jpeg: bytes
) -> None:
    images = [chelsea_jpeg, photo_jpeg("coffee")]
    context = assert_encode_and_decode_step_follow_the_contract(loaded, contract, images)

    text = f"{vocabulary[7]} {vocabulary[9]}\n{vocabulary[8]}"
    tokenized = loaded.signatures[TOKENIZE](text=tf.constant([text, ""]))
    assert tokenized["lengths"].numpy().tolist() == [4, 0]
    scored = loaded.signatures[SCORE](context=context, text=tf.constant([text, text]))
    assert scored["log_prob"].shape == (2,) and np.all(scored["log_prob"].numpy() < 0)
    assert scored["num_tokens"].numpy().tolist() == [5, 5]


def test_score_equals_summed_decode_step_log_probs(
    loaded, contract: ModelContract, vocabulary: list[str], chelsea_jpeg: bytes
) -> None:
    context = loaded.signatures[ENCODE](**encode_kwargs([chelsea_jpeg]))["context"]
    assert_score_equals_summed_decode_step_log_probs(
        loaded, contract, context, f"{vocabulary[7]} {vocabulary[9]}\n{vocabulary[8]}"
    )


def test_stepping_from_the_zero_state_gives_the_teacher_forced_distribution_at_every_position(
    trained, vocabulary: list[str], chelsea_jpeg: bytes
) -> None:
    module, contract = trained.module, trained.contract
    context = module.encode(**encode_kwargs([photo_jpeg("coffee"), chelsea_jpeg]))["context"]
    texts = [" ".join(vocabulary[5:12]), f"{vocabulary[20]}\n{vocabulary[6]} {vocabulary[30]}"]
    ids = module.tokenize(text=tf.constant(texts))["ids"]
    inputs = tf.concat([tf.fill([2, 1], contract.start_id), ids], axis=1)
    teacher = tf.nn.log_softmax(module.decoder.decode(inputs, context) + module.banned_mask).numpy()
    allowed = module.banned_mask.numpy() == 0

    # Beams of two images in one call, as the gateway sends them; both start from zeros and `<start>`.
    state = tf.zeros([2, contract.state_size])
    for position in range(inputs.shape[1]):
        step = module.decode_step(
            tokens=inputs[:, position],
            state=state,
            context=context,
            context_index=tf.constant([0, 1]),
            k=tf.constant(contract.vocab_size),
        )
        stepped = _full_distribution(step, contract.vocab_size)
        np.testing.assert_allclose(stepped[:, allowed], teacher[:, position, allowed], atol=1e-4)
        state = step["state"]
    final = state.numpy()
    assert final[:, 0].tolist() == [inputs.shape[1]] * 2
    np.testing.assert_array_equal(final[:, 1 : 1 + inputs.shape[1]], inputs.numpy())


def test_bundle_round_trips_the_transformer(trained, tmp_path: Path, chelsea_jpeg: bytes) -> None:
    save_bundle(trained, tmp_path / "bundle")
    rebuilt = load_bundle(tmp_path / "bundle")
    assert rebuilt.contract == trained.contract
    contexts = [m.encode(**encode_kwargs([chelsea_jpeg]))["context"] for m in (trained.module, rebuilt)]
    # float16 weights: nearly the same context and log-probabilities, and the same ranking.
    np.testing.assert_allclose(contexts[0], contexts[1], atol=0.05)
    inputs = {
        "tokens": tf.constant([1, 5]),
        "state": tf.zeros([2, trained.contract.state_size]),
        "context": contexts[0],
        "context_index": tf.constant([0, 0]),
        "k": tf.constant(5),
    }
    a, b = trained.module.decode_step(**inputs), rebuilt.decode_step(**inputs)
    np.testing.assert_allclose(a["top_log_probs"], b["top_log_probs"], atol=0.05)
    assert a["top_ids"].numpy()[:, :2].tolist() == b["top_ids"].numpy()[:, :2].tolist()
    np.testing.assert_array_equal(a["state"], b["state"])


def test_an_unknown_decoder_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown decoder 'lstm'; choose gru or transformer"):
        build_decoder(CaptionModelConfig(encoder="tiny_cnn", decoder="lstm"), 50, (32,))


def test_topic_and_style_reach_the_transformer_through_their_own_context_rows(
    loaded, contract: ModelContract, vocabulary: list[str], chelsea_jpeg: bytes
) -> None:
    """The same image in two styles, and with a topic word: the image rows' neighbours in attention differ,
    so the encoded context and the next-word distribution differ; encode names what each row used."""
    from export.conditioning import stop_words

    topic_word = next(w for w in vocabulary[10:] if w.isalpha() and len(w) > 3 and w not in stop_words())
    styles = [contract.styles[0], contract.styles[1], contract.styles[0]]
    encoded = loaded.signatures[ENCODE](
        image_bytes=tf.constant([chelsea_jpeg]),
        image_index=tf.constant([0, 0, 0]),
        topic=tf.constant(["", "", topic_word]),
        style=tf.constant(styles),
        style_rank=tf.constant([0, 0, 0]),
    )
    context = encoded["context"].numpy()
    assert [s.decode() for s in encoded["style"].numpy()] == styles
    assert encoded["topic"].numpy()[2].decode() == topic_word
    assert not np.allclose(context[0], context[1]) and not np.allclose(context[0], context[2])
    step = loaded.signatures[DECODE_STEP](
        tokens=tf.fill([3], contract.start_id),
        state=tf.zeros([3, contract.state_size]),
        context=encoded["context"],
        context_index=tf.constant([0, 1, 2]),
        k=tf.constant(contract.vocab_size),
    )
    distributions = _full_distribution(step, contract.vocab_size)
    assert not np.allclose(distributions[0], distributions[1], atol=1e-4)
    assert not np.allclose(distributions[0], distributions[2], atol=1e-4)
