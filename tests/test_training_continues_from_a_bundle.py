"""A finished bundle trains on from its weights and last epoch (`memefly train --continue-from`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from export.bundle import TRAINING, save_bundle, warm_start_from
from export.train import PRESETS, train


def test_training_continues_from_a_bundle_where_it_ended(tiny_training, data_folder: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    save_bundle(tiny_training, bundle)
    start = warm_start_from(bundle)
    assert start.epochs_trained == tiny_training.epochs_trained == len(tiny_training.history["loss"])
    assert json.loads((bundle / TRAINING).read_text())["epochs_trained"] == start.epochs_trained

    model_config, train_config = PRESETS["tiny"]
    more = train(
        model_config, replace(train_config, epochs=start.epochs_trained + 2), data_folder, tmp_path / "work", start
    )

    assert more.epochs_trained == start.epochs_trained + 2
    assert more.history["loss"][: start.epochs_trained] == tiny_training.history["loss"]
    assert len(more.history["val_perplexity"]) == start.epochs_trained + 2
    # It starts from trained weights, not from scratch.
    assert more.history["loss"][start.epochs_trained] < tiny_training.history["loss"][0]
    continued = more.history["val_loss"][start.epochs_trained :]
    final = [w.numpy() for w in more.module.decoder.weights]
    if min(continued) >= start.best_val_loss:
        assert all(np.array_equal(a, b) for a, b in zip(final, start.weights, strict=True))


def test_a_warm_start_from_other_captions_is_refused(tiny_training, data_folder: Path, tmp_path: Path) -> None:
    save_bundle(tiny_training, tmp_path / "bundle")
    start = warm_start_from(tmp_path / "bundle")
    other = replace(start, vocabulary=[*start.vocabulary[:-1], "notaword"])
    model_config, train_config = PRESETS["tiny"]
    with pytest.raises(ValueError, match="vocabulary"):
        train(model_config, train_config, data_folder, tmp_path / "work", other)


def test_continue_from_a_bundle_of_another_preset_is_a_usage_error(tiny_training, tmp_path: Path) -> None:
    save_bundle(tiny_training, tmp_path / "bundle")
    result = CliRunner().invoke(
        app, ["train", "--preset", "tiny-transformer", "--continue-from", str(tmp_path / "bundle")]
    )
    assert result.exit_code == 2
    assert "not a 'tiny-transformer' bundle" in result.output
