"""The exported SavedModel loads with plain TensorFlow and every signature follows the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from memefly.contract import DECODE_STEP, ENCODE, METADATA, SPECIAL_TOKENS, TOKENIZE, ModelContract
from tests.support import (
    MODEL_NAME,
    assert_encode_and_decode_step_follow_the_contract,
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
    assert_encode_and_decode_step_follow_the_contract(loaded, contract, [chelsea_jpeg, photo_jpeg("coffee")])


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
