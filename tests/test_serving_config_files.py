"""The files handed to the real tensorflow_model_server parse as its own config protos."""

from __future__ import annotations

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from memefly.paths import DEFAULT_MODEL_NAME, REPO_ROOT


def test_models_config_is_a_valid_model_server_config() -> None:
    config = text_format.Parse(
        (REPO_ROOT / "serving" / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (model,) = config.model_config_list.config
    assert model.name == DEFAULT_MODEL_NAME
    assert model.base_path == f"/models/{DEFAULT_MODEL_NAME}"
    assert model.model_platform == "tensorflow"


def test_compose_mounts_the_model_directory_and_config() -> None:
    compose = (REPO_ROOT / "docker-compose.yml").read_text()
    assert "./models:/models:ro" in compose
    assert "--model_config_file=/config/models.config" in compose
    assert "MEMEFLY_TFSERVING_TARGET: tfserving:8500" in compose
