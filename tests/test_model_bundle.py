"""A trained model saved as a small bundle and assembled again gives the same model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from export.bundle import (
    CONDITIONING,
    CONFIG,
    CURVES,
    HISTORY,
    TRAINING,
    VOCABULARY,
    WEIGHTS,
    assemble,
    load_train_config,
    save_bundle,
)
from memefly.contract import DECODE_STEP, ENCODE, METADATA
from tests.support import MODEL_NAME, encode_kwargs


def test_bundle_holds_only_small_files_and_assembles_to_the_same_model(
    tiny_training, model_base_path: Path, tmp_path: Path, chelsea_jpeg: bytes
) -> None:
    bundle = tmp_path / "bundle"
    save_bundle(tiny_training, bundle)
    expected = [CONFIG, VOCABULARY, WEIGHTS, HISTORY, TRAINING, CURVES, CONDITIONING]
    assert sorted(p.name for p in bundle.iterdir()) == sorted(expected)
    assert json.loads((bundle / HISTORY).read_text())["loss"]
    assert (bundle / CURVES).read_bytes().startswith(b"\x89PNG")
    assert load_train_config(bundle) == tiny_training.train_config

    version_dir = assemble(bundle, tmp_path / "models", version=3)
    assert version_dir == tmp_path / "models" / MODEL_NAME / "3"
    original = tf.saved_model.load(str(model_base_path / MODEL_NAME / "1")).signatures
    rebuilt = tf.saved_model.load(str(version_dir)).signatures

    assert original[METADATA]()["contract"].numpy() == rebuilt[METADATA]()["contract"].numpy()
    np.testing.assert_array_equal(original[METADATA]()["vocabulary"], rebuilt[METADATA]()["vocabulary"])
    encoded = original[ENCODE](**encode_kwargs([chelsea_jpeg]))
    context = encoded["context"]
    # The context is projected by decoder weights, which the bundle holds in float16.
    rebuilt_encoded = rebuilt[ENCODE](**encode_kwargs([chelsea_jpeg]))
    rebuilt_context = rebuilt_encoded["context"]
    for name in ("concepts", "topic"):
        np.testing.assert_array_equal(encoded[name], rebuilt_encoded[name])
    np.testing.assert_allclose(context, rebuilt_context, atol=0.01)
    inputs = {
        "tokens": tf.constant([1, 5]),
        "state": tf.zeros([2, tiny_training.contract.state_size], tiny_training.contract.state_dtype),
        "context": context,
        "context_index": tf.constant([0, 0]),
        "k": tf.constant(5),
    }
    a, b = original[DECODE_STEP](**inputs), rebuilt[DECODE_STEP](**inputs)
    # float16 weights: the same ranking and nearly the same log-probabilities.
    np.testing.assert_allclose(a["top_log_probs"], b["top_log_probs"], atol=0.05)
    assert a["top_ids"].numpy()[:, :2].tolist() == b["top_ids"].numpy()[:, :2].tolist()


def test_evaluation_report_has_every_metric(tiny_training, tmp_path: Path, data_folder: Path) -> None:
    from evaluation.evaluate import EvaluationSettings, distinct_n, evaluate, write_reports

    assert distinct_n([["a", "b", "a", "b"]], 2) == 2 / 3
    bundle = tmp_path / "bundle"
    save_bundle(tiny_training, bundle)
    report = evaluate(
        bundle,
        data_folder,
        EvaluationSettings(
            samples_per_template=4, max_validation_captions=200, retrieval_min_captions=50, decoding_templates=2
        ),
        contact_sheet=tmp_path / "contact_sheet.png",
    )
    assert 1 < report["perplexity_with_image"] < tiny_training.contract.vocab_size
    assert report["perplexity_image_blanked"] > 1
    assert 0 < report["distinct_1"] <= 1 and 0 < report["distinct_2"] <= 1
    assert 0 <= report["verbatim_copy_share"] <= 1
    assert 0 <= report["template_retrieval_top1"] <= 1 and report["template_retrieval_captions"] > 0
    assert report["templates_sampled"] == 8
    assert 0 <= report["template_retrieval_top1_human_captions"] <= 1
    assert report["sampling_rerank"] == 4
    assert set(report["by_decoding"]) == {
        "sampling T=1.0, no re-ranking",
        "sampling T=0.7, no re-ranking",
        "sampling T=0.5, no re-ranking",
        "beam search, n-best",
    }
    assert all(
        0 <= r["template_retrieval_top1"] <= 1 and 0 < r["distinct_2"] <= 1 for r in report["by_decoding"].values()
    )
    # The photo section: default captions of photos and templates, adherence to styles and topics.
    for part in ("photos", "templates"):
        assert 0 <= report[f"{part}_subject_named_share"] <= 1
        assert 0 <= report[f"{part}_best_caption_shared_pairs"] <= 1
        assert 0 <= report[f"{part}_distinct_2_across_photos"] <= 1
    assert set(report["photo_examples"]) == {"chelsea", "astronaut", "coffee", "rocket"}
    assert dict(report["photo_examples"]["chelsea"]["concepts"]), "what the encoder saw, as words"
    assert "one context, beam n-best (the rule before styles)" in report["photo_decoding"]
    assert 0 <= report["style_adherence"] <= 1 and report["style_adherence_captions"] > 0
    assert 0 <= report["topic_adherence"] <= 1 and 0 <= report["topic_known_share"] <= 1
    assert report["perplexity_with_own_topic_words"] > 1 and report["perplexity_without_topic_words"] > 1
    # Text to template: the model's choice against TF-IDF on held-out human captions.
    assert report["automatic_captions"] > 0 and report["automatic_candidates"] == 8
    for top1, top5 in [
        ("automatic_top1", "automatic_top5"),
        ("automatic_tfidf_top1", "automatic_tfidf_top5"),
        ("automatic_top1_with_bias_correction", "automatic_top5_with_bias_correction"),
    ]:
        assert 0 <= report[top1] <= report[top5] <= 1
    assert 0 < report["automatic_most_picked_share"] <= 1
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.size[1] == 4 * 240 and sheet.size[0] == 240 * len(report["contact_sheet_styles"])
    write_reports(report, tmp_path / "report")
    written = (tmp_path / "report" / "EVALUATION.md").read_text()
    assert "| perplexity_ratio |" in written and "| style_adherence |" in written and "## Photos" in written


def test_model_card_is_written_from_the_bundles_own_records(tiny_training, tmp_path: Path) -> None:
    import json

    from evaluation.model_card import write_model_card

    bundle = tmp_path / "bundle"
    save_bundle(tiny_training, bundle)
    report = {"model": "memefly", "validation_captions": 123, "perplexity_ratio": 0.5, "distinct_2": 0.4}
    report["examples"] = {"buzz": ["memes / memes everywhere"]}
    (bundle / "evaluation.json").write_text(json.dumps(report))
    card = write_model_card(bundle).read_text()
    val_loss = tiny_training.history["val_loss"]
    assert f"{min(val_loss):.3f} nats/token" in card
    assert f"| state_size | `{tiny_training.model_config.state_size}` |" in card
    assert "| perplexity_ratio | 0.500 | ≤ 0.8 | yes |" in card
    assert "| distinct_2 | 0.400 | ≥ 0.6 | no |" in card
    assert "“memes / memes everywhere”" in card
