"""The exported SavedModel loads with plain TensorFlow and every signature follows the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from memefly.contract import DECODE_STEP, ENCODE, METADATA, SPECIAL_TOKENS, TOKENIZE, ModelContract
from tests.support import (
    MODEL_NAME,
    assert_score_equals_summed_decode_step_log_probs,
    assert_signatures_follow_the_contract,
    encode_kwargs,
    photo_jpeg,
)


@pytest.fixture(scope="module")
def loaded(model_base_path: Path):
    return tf.saved_model.load(str(model_base_path / MODEL_NAME / "1"))


@pytest.fixture(scope="module")
def contract(loaded) -> ModelContract:
    return ModelContract.from_json(loaded.signatures[METADATA]()["contract"].numpy())


def test_version_directory_is_what_tf_serving_loads(model_base_path: Path) -> None:
    version_dir = model_base_path / MODEL_NAME / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables" / "variables.index").is_file()
    assert [p.name for p in (model_base_path / MODEL_NAME).iterdir() if not p.name.startswith(".")] == ["1"]


def test_signature_defs_match_the_contract(loaded, contract: ModelContract) -> None:
    assert_signatures_follow_the_contract(loaded, contract)


def test_metadata_gives_vocabulary_with_special_tokens_first(loaded, contract: ModelContract) -> None:
    vocabulary = [w.decode() for w in loaded.signatures[METADATA]()["vocabulary"].numpy()]
    assert vocabulary[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert len(vocabulary) == contract.vocab_size == len(set(vocabulary))
    assert contract.model_name == MODEL_NAME


def test_encode_and_decode_step_run_with_contract_shapes(loaded, contract: ModelContract, chelsea_jpeg: bytes) -> None:

    context = loaded.signatures[ENCODE](**encode_kwargs([chelsea_jpeg, photo_jpeg("coffee")]))["context"]
    assert context.shape == (2, *contract.context_shape)
    assert context.dtype == tf.float32
    assert not np.allclose(context[0], context[1]), "different photos must give different contexts"

    n, k = 5, 7
    outputs = loaded.signatures[DECODE_STEP](
        tokens=tf.fill([n], contract.start_id),
        state=tf.zeros([n, contract.state_size], contract.state_dtype),
        context=context,
        context_index=tf.constant([0, 0, 1, 1, 1]),
        k=tf.constant(k),
    )
    assert outputs["top_log_probs"].shape == (n, k)
    assert outputs["top_ids"].shape == (n, k)
    assert outputs["top_ids"].dtype == tf.int32
    assert outputs["state"].shape == (n, contract.state_size)
    log_probs = outputs["top_log_probs"].numpy()
    assert np.all(np.diff(log_probs, axis=1) <= 0), "top-k comes sorted"
    assert np.all(log_probs <= 0)
    # Rows of the same image and state agree; rows of different images differ.
    np.testing.assert_allclose(log_probs[0], log_probs[1], rtol=1e-5)
    assert not np.allclose(log_probs[0], log_probs[2])
    never = {contract.pad_id, contract.start_id}
    assert never.isdisjoint(outputs["top_ids"].numpy().ravel().tolist())


def test_decode_step_k_is_clipped_to_the_vocabulary(loaded, contract: ModelContract, chelsea_jpeg: bytes) -> None:
    context = loaded.signatures[ENCODE](**encode_kwargs([chelsea_jpeg]))["context"]
    outputs = loaded.signatures[DECODE_STEP](
        tokens=tf.constant([contract.start_id]),
        state=tf.zeros([1, contract.state_size], contract.state_dtype),
        context=context,
        context_index=tf.constant([0]),
        k=tf.constant(contract.vocab_size + 50),
    )
    assert outputs["top_ids"].shape == (1, contract.vocab_size)
    probabilities = np.exp(outputs["top_log_probs"].numpy()[0])
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-3)


def test_tokenize_signature_uses_the_models_vocabulary(loaded, contract: ModelContract) -> None:
    vocabulary = [w.decode() for w in loaded.signatures[METADATA]()["vocabulary"].numpy()]
    known = vocabulary[len(SPECIAL_TOKENS) : len(SPECIAL_TOKENS) + 3]
    outputs = loaded.signatures[TOKENIZE](text=tf.constant([" ".join(known).upper() + "\nqwertyuiopzz", ""]))
    ids = outputs["ids"].numpy()
    assert outputs["lengths"].numpy().tolist() == [5, 0]
    assert [vocabulary[i] for i in ids[0, :3]] == known
    assert ids[0, 3:5].tolist() == [contract.sep_id, contract.special_tokens["<unk>"]]


def test_score_equals_summed_decode_step_log_probs(loaded, contract: ModelContract, chelsea_jpeg: bytes) -> None:
    """Teacher-forced `score` and the step-by-step `decode_step` (k = vocabulary) are one model."""
    context = loaded.signatures[ENCODE](**encode_kwargs([chelsea_jpeg]))["context"]
    vocabulary = [w.decode() for w in loaded.signatures[METADATA]()["vocabulary"].numpy()]
    assert_score_equals_summed_decode_step_log_probs(
        loaded, contract, context, f"{vocabulary[7]} {vocabulary[9]}\n{vocabulary[8]}"
    )
