"""A trained model saved as a small bundle and assembled again gives the same model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from export.bundle import CONFIG, CURVES, HISTORY, VOCABULARY, WEIGHTS, assemble, save_bundle
from memefly.contract import DECODE_STEP, ENCODE, METADATA
from tests.support import MODEL_NAME


def test_bundle_holds_only_small_files_and_assembles_to_the_same_model(
    tiny_training, model_base_path: Path, tmp_path: Path, chelsea_jpeg: bytes
) -> None:
    bundle = tmp_path / "bundle"
    save_bundle(tiny_training, bundle)
    assert sorted(p.name for p in bundle.iterdir()) == sorted([CONFIG, VOCABULARY, WEIGHTS, HISTORY, CURVES])
    assert json.loads((bundle / HISTORY).read_text())["loss"]
    assert (bundle / CURVES).read_bytes().startswith(b"\x89PNG")

    version_dir = assemble(bundle, tmp_path / "models", version=3)
    assert version_dir == tmp_path / "models" / MODEL_NAME / "3"
    original = tf.saved_model.load(str(model_base_path / MODEL_NAME / "1")).signatures
    rebuilt = tf.saved_model.load(str(version_dir)).signatures

    assert original[METADATA]()["contract"].numpy() == rebuilt[METADATA]()["contract"].numpy()
    np.testing.assert_array_equal(original[METADATA]()["vocabulary"], rebuilt[METADATA]()["vocabulary"])
    context = original[ENCODE](image_bytes=tf.constant([chelsea_jpeg]))["context"]
    np.testing.assert_allclose(context, rebuilt[ENCODE](image_bytes=tf.constant([chelsea_jpeg]))["context"], rtol=1e-5)
    inputs = {
        "tokens": tf.constant([1, 5]),
        "state": tf.zeros([2, tiny_training.contract.state_size]),
        "context": context,
        "context_index": tf.constant([0, 0]),
        "k": tf.constant(5),
    }
    a, b = original[DECODE_STEP](**inputs), rebuilt[DECODE_STEP](**inputs)
    # float16 weights: the same ranking and nearly the same log-probabilities.
    np.testing.assert_allclose(a["top_log_probs"], b["top_log_probs"], atol=0.05)
    assert a["top_ids"].numpy()[:, :2].tolist() == b["top_ids"].numpy()[:, :2].tolist()
