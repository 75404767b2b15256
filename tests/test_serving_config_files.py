"""The files handed to the real tensorflow_model_server: docker-compose.yml and what it mounts.

They parse as TF Serving's own config protos, agree with each other and with where the export writes,
and the compose command, given to the local stand-in, loads an export and serves every signature.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

from memefly.contract import GENERATE
from memefly.paths import DEFAULT_MODEL_BASE_PATH, DEFAULT_MODEL_NAME, REPO_ROOT
from serving.batching_options import BatchingParameters
from tests.support import MODEL_NAME, TRANSFORMER_MODEL_NAME, free_port, grpc_predict, prediction_stub

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
TFSERVING = COMPOSE["services"]["tfserving"]
GATEWAY = COMPOSE["services"]["gateway"]


def flags(service: dict) -> dict[str, str]:
    """`--name=value` arguments by name."""
    return dict(re.fullmatch(r"--([a-z_]+)=(.*)", argument).groups() for argument in service["command"])


def mounts(service: dict) -> dict[PurePosixPath, Path]:
    """Container path → host path, for each `host:container[:ro]` volume."""
    found = {}
    for volume in service["volumes"]:
        host, container, *_ = volume.split(":")
        found[PurePosixPath(container)] = (REPO_ROOT / host).resolve()
    return found


def on_host(container_path: str, volumes: dict[PurePosixPath, Path]) -> Path:
    path = PurePosixPath(container_path)
    for mount, host in volumes.items():
        if path == mount or mount in path.parents:
            return host / path.relative_to(mount)
    raise AssertionError(f"{container_path} is not inside any volume of the tfserving service")


def monitoring_config_class() -> type[message.Message]:
    """tensorflow_serving/config/monitoring_config.proto; tensorflow-serving-api does not ship its module."""
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    fields = descriptor_pb2.FieldDescriptorProto
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=fields.LABEL_OPTIONAL, type=fields.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=fields.LABEL_OPTIONAL, type=fields.TYPE_STRING)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        label=fields.LABEL_OPTIONAL,
        type=fields.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def models_config() -> model_server_config_pb2.ModelServerConfig:
    text = (REPO_ROOT / "serving" / "models.config").read_text()
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_models_config_is_a_valid_model_server_config_naming_the_gru_and_the_transformer() -> None:
    models = models_config().model_config_list.config
    assert [model.name for model in models] == [DEFAULT_MODEL_NAME, TRANSFORMER_MODEL_NAME]
    for model in models:
        assert model.base_path == f"/models/{model.name}"
        assert model.model_platform == "tensorflow"


def test_compose_runs_tf_serving_and_the_gateway_on_its_grpc_port() -> None:
    assert set(COMPOSE["services"]) == {"tfserving", "gateway"}
    assert TFSERVING["image"].startswith("tensorflow/serving:${COMPOSE_TFSERVING_VERSION:?")
    served = flags(TFSERVING)
    assert TFSERVING["ports"] == [f"{served['port']}:8500", f"{served['rest_api_port']}:8501"]
    assert GATEWAY["build"] == "."
    assert GATEWAY["environment"] == {
        "MEMEFLY_BACKEND": "tfserving",
        "MEMEFLY_TFSERVING_TARGET": f"tfserving:{served['port']}",
        "MEMEFLY_MODEL_NAME": TRANSFORMER_MODEL_NAME,
        "MEMEFLY_MODELS": f'["{DEFAULT_MODEL_NAME}"]',
    }
    assert GATEWAY["ports"] == ["8000:8000"] and GATEWAY["depends_on"] == ["tfserving"]


def test_every_config_flag_names_a_mounted_repository_file() -> None:
    served, volumes = flags(TFSERVING), mounts(TFSERVING)
    files = {name: on_host(served[name], volumes) for name in served if name.endswith("_file")}

    assert files == {
        "model_config_file": REPO_ROOT / "serving" / "models.config",
        "batching_parameters_file": REPO_ROOT / "serving" / "batching_parameters.txt",
        "monitoring_config_file": REPO_ROOT / "serving" / "monitoring.config",
    }
    assert all(volume.endswith(":ro") for volume in TFSERVING["volumes"])


def test_the_mounted_models_are_where_the_export_writes_and_where_models_config_points() -> None:
    for model in models_config().model_config_list.config:
        assert on_host(model.base_path, mounts(TFSERVING)) == DEFAULT_MODEL_BASE_PATH / model.name
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^MODEL_BASE_PATH \?= (\S+)$", makefile, re.M).group(1) == DEFAULT_MODEL_BASE_PATH.name
    assert re.search(r"^TRANSFORMER_MODEL_NAME \?= (\S+)$", makefile, re.M).group(1) == TRANSFORMER_MODEL_NAME


def test_monitoring_config_turns_on_prometheus_on_the_rest_port() -> None:
    config = text_format.Parse((REPO_ROOT / "serving" / "monitoring.config").read_text(), monitoring_config_class()())

    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"
    assert "rest_api_port" in flags(TFSERVING), "TF Serving exposes the metrics on its REST port"


def test_batching_is_on_only_for_versions_with_their_own_parameters() -> None:
    served = flags(TFSERVING)
    text = (REPO_ROOT / "serving" / "batching_parameters.txt").read_text()
    parameters = text_format.Parse(text, BatchingParameters())

    assert served["enable_batching"] == served["enable_per_model_batching_parameters"] == "true"
    assert parameters.num_batch_threads.value >= 1


def stand_in_argv(model_base_path: Path, tmp_path: Path, grpc_port: int) -> list[str]:
    """The compose command for the stand-in: the container's paths on this host, the test's export
    instead of ./models, free ports, and no --monitoring_config_file (the stand-in has no monitoring)."""
    volumes = mounts(TFSERVING) | {PurePosixPath("/models"): model_base_path}
    config = models_config()
    for model in config.model_config_list.config:
        model.base_path = str(on_host(model.base_path, volumes))
    (tmp_path / "models.config").write_text(text_format.MessageToString(config))
    volumes[PurePosixPath("/config/models.config")] = tmp_path / "models.config"
    served = flags(TFSERVING) | {"port": str(grpc_port), "rest_api_port": "0"}
    del served["monitoring_config_file"]
    for name in [name for name in served if name.endswith("_file")]:
        served[name] = str(on_host(served[name], volumes))
    return [f"--{name}={value}" for name, value in served.items()]


@pytest.fixture
def tier_from(two_models: Path, tmp_path: Path) -> Iterator:
    """Starts the stand-in in-process with the compose command, minus the given flags; stops it afterwards."""
    from serving.__main__ import parse_args, tier_options
    from serving.tier import ServingTier

    tiers = []

    def start(without: tuple[str, ...] = ()) -> tuple[ServingTier, bool, str]:
        port = free_port()
        argv = [a for a in stand_in_argv(two_models, tmp_path, port) if a.split("=")[0][2:] not in without]
        tier = ServingTier(replace(tier_options(parse_args(argv)), file_system_poll_wait_seconds=0))
        tiers.append(tier)
        return tier, tier.start(), f"127.0.0.1:{port}"

    yield start
    for tier in tiers:
        tier.stop(0)


def test_the_compose_command_serves_the_step_loop_and_generate(tier_from, chelsea_jpeg: bytes) -> None:
    from gateway.backends.tfserving import TfServingBackend

    _, started, target = tier_from()
    assert started

    transformer = TfServingBackend(target, TRANSFORMER_MODEL_NAME, 30)
    try:
        assert transformer.load_metadata().contract.decoder == "transformer"
    finally:
        transformer.close()
    backend = TfServingBackend(target, MODEL_NAME, 30)
    try:
        contract = backend.load_metadata().contract
        context = backend.encode([chelsea_jpeg])
        beams = 3
        state = np.zeros((beams, contract.state_size), np.float32)
        tokens = np.full(beams, contract.start_id)
        step = backend.decode_step(tokens, state, context, np.zeros(beams, np.int32), 4)
    finally:
        backend.close()
    assert step.top_ids.shape == (beams, 4)

    inputs = {"image_bytes": [chelsea_jpeg], "prefix": [b""], "beam_width": np.int32(3), "n_best": np.int32(2)}
    inputs |= {"max_length": np.int32(8), "length_penalty": np.float32(1.0), "no_repeat_ngram_size": np.int32(3)}
    with prediction_stub(target) as stub:
        assert grpc_predict(stub, MODEL_NAME, GENERATE, inputs, timeout=60)["text"].shape == (1, 2)


def test_without_per_model_parameters_batching_would_refuse_decode_step_and_no_version_would_load(tier_from) -> None:
    tier, started, _ = tier_from(without=("enable_per_model_batching_parameters",))

    assert not started
    (status,) = tier.store.version_status(MODEL_NAME)
    assert (status.state, status.error_code) == ("END", "INVALID_ARGUMENT")
    assert status.error_message.startswith("Batching Run() input tensors must have")
