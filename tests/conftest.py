"""Shared fixtures: a tiny model trained in seconds on real captions, and real photos."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import MODEL_NAME, TRANSFORMER_MODEL_NAME, photo_jpeg, serving_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def chelsea_jpeg() -> bytes:
    return photo_jpeg("chelsea")


CORPUS_REQUIRED_ENV = "MEMEFLY_REQUIRE_CORPUS"
"""Set by .ci/run, which has the corpus: a missing corpus then fails the run instead of skipping tests."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks every test that uses the data set (the `data_folder` fixture, also through the trained-model
    fixtures) as `corpus`, and skips the `corpus` tests, saying why, when the corpus is absent."""
    from export.data import DataMissingError, data_dir

    try:
        data_dir()
        reason = None
    except DataMissingError as error:
        reason = f"needs the caption corpus: {error}"
    for item in items:
        if "data_folder" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.corpus)
    needing = [item for item in items if item.get_closest_marker("corpus")]
    if reason and needing:
        if os.environ.get(CORPUS_REQUIRED_ENV):
            raise pytest.UsageError(f"{CORPUS_REQUIRED_ENV} is set and {len(needing)} tests {reason}")
        for item in needing:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def data_folder() -> Path:
    """The data set; a test that reaches it only at run time (`request.getfixturevalue`) is skipped here."""
    from export.data import DataMissingError, data_dir

    try:
        return data_dir()
    except DataMissingError as error:
        if os.environ.get(CORPUS_REQUIRED_ENV):
            raise
        pytest.skip(f"needs the caption corpus: {error}")


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


@pytest.fixture(scope="session")
def two_models(model_base_path: Path, tiny_transformer_training, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<base>/memefly/1/` (the tiny GRU) and `<base>/memefly-transformer/1/` (the tiny transformer)."""
    from export.saved_model import export_saved_model

    base = tmp_path_factory.mktemp("two-models")
    shutil.copytree(model_base_path / MODEL_NAME, base / MODEL_NAME)
    export_saved_model(tiny_transformer_training.module, base / TRANSFORMER_MODEL_NAME, version=1)
    return base
