"""Shared fixtures: a tiny model trained in seconds on real captions, and real photos."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import MODEL_NAME, photo_jpeg, serving_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def chelsea_jpeg() -> bytes:
    return photo_jpeg("chelsea")


@pytest.fixture(scope="session")
def data_folder() -> Path:
    from export.data import data_dir

    return data_dir()


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory: pytest.TempPathFactory, data_folder: Path):
    """The tiny preset trained on real captions in seconds (a `TrainResult`)."""
    from export.train import PRESETS, train

    model_config, train_config = PRESETS["tiny"]
    return train(model_config, train_config, data_folder, tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="session")
def tiny_transformer_training(tmp_path_factory: pytest.TempPathFactory, data_folder: Path):
    """The tiny-transformer preset trained on real captions in seconds (a `TrainResult`)."""
    from export.train import PRESETS, train

    model_config, train_config = PRESETS["tiny-transformer"]
    return train(model_config, train_config, data_folder, tmp_path_factory.mktemp("transformer-train"))


@pytest.fixture(scope="session")
def model_base_path(tmp_path_factory: pytest.TempPathFactory, tiny_training) -> Path:
    """`<base>/memefly/1/`: the tiny model exported through the real export code."""
    from export.saved_model import export_saved_model

    base = tmp_path_factory.mktemp("models")
    export_saved_model(tiny_training.module, base / MODEL_NAME, version=1)
    return base


@pytest.fixture(scope="session")
def serving_target(model_base_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local serving tier, as a subprocess on a free port, serving the tiny model."""
    with serving_model(model_base_path, tmp_path_factory.mktemp("serving") / "server.log") as target:
        yield target
