"""Which models and versions the local serving tier serves: --model_config_file (version policies,
version labels, reloads) and SavedModel warm-up, with TF Serving's rules and messages.

Most tests drive the ModelStore (or the whole tier) in-process; one runs `python -m serving`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from serving.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from serving.model_config import (
    ModelConfig,
    VersionPolicy,
    model_configs,
    parse_model_server_config,
    read_model_config_file,
)
from serving.model_store import ModelStore
from serving.tier import ServingTier, TierOptions
from serving.warmup import WARMUP_FILE, WarmupOptions
from tests.support import free_port, running_tier

REPO_ROOT = Path(__file__).resolve().parents[1]
RELOAD_SECONDS = 20


class Versioned(tf.Module):
    """y = x * version, so every answer tells which version gave it."""

    def __init__(self, version: int) -> None:
        super().__init__()
        self.factor = tf.Variable(float(version))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def scale(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * self.factor}


def export(path: Path, version: int) -> Path:
    module = Versioned(version)
    tf.saved_model.save(module, str(path / str(version)), signatures={"serving_default": module.scale})
    return path / str(version)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<root>/captioner/{1,2,3}` and `<root>/scorer/1`."""
    root = tmp_path_factory.mktemp("models")
    for version in (1, 2, 3):
        export(root / "captioner", version)
    export(root / "scorer", 1)
    return root


def config_text(*entries: str) -> str:
    return "model_config_list {\n" + "".join(f"  config {{ {entry} }}\n" for entry in entries) + "}\n"


def entry(name: str, base_path: Path | str, extra: str = "") -> str:
    return f'name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" {extra}'


def store_for(text: str, **options: object) -> ModelStore:
    store = ModelStore(**options)  # type: ignore[arg-type]
    store.apply_config(model_configs(parse_model_server_config(text)))
    return store


def answer(store: ModelStore, spec: model_pb2.ModelSpec) -> float:
    outputs = store.resolve(spec).predict("serving_default", {"x": np.array([1.0], np.float32)})
    return float(outputs["y"][0])


def test_version_policies_pick_latest_n_all_or_specific_versions(models: Path) -> None:
    store = store_for(
        config_text(
            entry("default", models / "captioner"),
            entry("latest2", models / "captioner", "model_version_policy { latest { num_versions: 2 } }"),
            entry("every", models / "captioner", "model_version_policy { all {} }"),
            entry("pinned", models / "captioner", "model_version_policy { specific { versions: 1 versions: 7 } }"),
            entry("scorer", models / "scorer"),
        )
    )

    served = {name: store.available_versions(name) for name in store.model_names}
    assert served == {"default": [3], "latest2": [2, 3], "every": [1, 2, 3], "pinned": [1], "scorer": [1]}
    assert answer(store, model_pb2.ModelSpec(name="pinned")) == 1.0


@pytest.mark.parametrize(
    "entries, error",
    [
        (
            [entry("captioner", "models/captioner")],
            "Expected model captioner to have an absolute path or URI; got base_path()=models/captioner",
        ),
        (
            [entry("captioner", "/m/a"), entry("captioner", "/m/b")],
            "Illegal to list model captioner multiple times in config list",
        ),
        (
            ['name: "captioner" base_path: "/m/a"'],
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform, model name is captioner",
        ),
    ],
    ids=["relative-base-path", "duplicate-name", "no-platform"],
)
def test_invalid_model_lists_are_refused_with_tf_serving_messages(entries: list[str], error: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        model_configs(parse_model_server_config(config_text(*entries)))

    assert raised.value.message == error


def test_platforms_other_than_tensorflow_have_no_platform_config() -> None:
    with pytest.raises(FailedPreconditionError) as raised:
        model_configs(parse_model_server_config(config_text('name: "m" base_path: "/m" model_platform: "onnx"')))

    assert raised.value.message == "PlatformConfigMap has no entry for platform onnx"


def test_repository_models_config_names_the_gru_and_the_transformer_under_models() -> None:
    gru, transformer = model_configs(read_model_config_file(REPO_ROOT / "serving" / "models.config"))

    assert gru == ModelConfig("memefly-gru", Path("/models/memefly-gru"), VersionPolicy("latest", 1), {})
    assert transformer == ModelConfig(
        "memefly-transformer", Path("/models/memefly-transformer"), VersionPolicy("latest", 2), {}
    )


LABELS = 'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 }'
TWO_VERSIONS = "model_version_policy { specific { versions: 1 versions: 2 } }"


def test_labels_in_a_models_first_config_are_refused_as_tf_serving_refuses_them(models: Path) -> None:
    store = ModelStore()

    with pytest.raises(FailedPreconditionError) as raised:
        store.apply_config(
            model_configs(
                parse_model_server_config(
                    config_text(
                        entry("c", models / "captioner", f'{TWO_VERSIONS} version_labels {{ key: "stable" value: 1 }}')
                    )
                )
            )
        )

    assert raised.value.message == (
        "Request to assign label to version 1 of model c, which is not currently available for inference"
    )
    assert store.model_names == []


def test_allow_version_labels_for_unavailable_models_lets_first_config_labels_through(models: Path) -> None:
    store = store_for(
        config_text(entry("c", models / "captioner", f"{TWO_VERSIONS} {LABELS}")),
        allow_version_labels_for_unavailable_models=True,
    )

    assert answer(store, model_pb2.ModelSpec(name="c", version_label="stable")) == 1.0
    assert answer(store, model_pb2.ModelSpec(name="c", version_label="canary")) == 2.0
    with pytest.raises(InvalidArgumentError, match="Unrecognized servable version label: beta"):
        store.resolve(model_pb2.ModelSpec(name="c", version_label="beta"))


def test_labels_can_be_added_by_a_reload_once_their_versions_serve(models: Path) -> None:
    store = store_for(config_text(entry("c", models / "captioner", TWO_VERSIONS)))

    store.apply_config(
        model_configs(
            parse_model_server_config(config_text(entry("c", models / "captioner", f"{TWO_VERSIONS} {LABELS}")))
        )
    )

    assert answer(store, model_pb2.ModelSpec(name="c", version_label="canary")) == 2.0


def test_moving_a_label_to_a_version_not_serving_is_refused_even_with_the_flag(models: Path) -> None:
    store = store_for(
        config_text(entry("c", models / "captioner", f"{TWO_VERSIONS} {LABELS}")),
        allow_version_labels_for_unavailable_models=True,
    )
    moved = config_text(entry("c", models / "captioner", 'version_labels { key: "stable" value: 3 }'))

    with pytest.raises(FailedPreconditionError):
        store.apply_config(model_configs(parse_model_server_config(moved)))

    assert answer(store, model_pb2.ModelSpec(name="c", version_label="stable")) == 1.0  # nothing changed


# ---- the tier: config file polling and HandleReloadConfigRequest -----------------------------


@pytest.fixture
def tier(models: Path, tmp_path: Path) -> Iterator[ServingTier]:
    config = tmp_path / "models.config"
    config.write_text(config_text(entry("captioner", models / "captioner")))
    options = TierOptions(
        grpc_port=free_port(),
        model_config_file=str(config),
        model_config_file_poll_wait_seconds=1,
        file_system_poll_wait_seconds=0,
    )
    with running_tier(options) as tier:
        yield tier


@pytest.fixture
def channel(tier: ServingTier) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{tier.options.grpc_port}") as channel:
        yield channel


def grpc_states(channel: grpc.Channel, name: str) -> dict[int, str]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    try:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    except grpc.RpcError:
        return {}
    return {
        s.version: get_model_status_pb2.ModelVersionStatus.State.Name(s.state) for s in response.model_version_status
    }


def grpc_predict(channel: grpc.Channel, spec: model_pb2.ModelSpec) -> float:
    request = predict_pb2.PredictRequest(model_spec=spec)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    return float(tf.make_ndarray(response.outputs["y"])[0])


def test_polled_config_file_loads_new_models_and_unloads_removed_ones(
    tier: ServingTier, channel: grpc.Channel, models: Path
) -> None:
    Path(tier.options.model_config_file).write_text(config_text(entry("scorer", models / "scorer")))

    deadline = time.monotonic() + RELOAD_SECONDS
    while time.monotonic() < deadline and (
        grpc_states(channel, "captioner") != {3: "END"} or grpc_states(channel, "scorer") != {1: "AVAILABLE"}
    ):
        time.sleep(0.2)

    assert grpc_states(channel, "captioner") == {3: "END"}
    assert grpc_states(channel, "scorer") == {1: "AVAILABLE"}
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(channel, model_pb2.ModelSpec(name="captioner"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_reload_config_request_over_grpc_applies_or_refuses_a_config(channel: grpc.Channel, models: Path) -> None:
    models_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(
        parse_model_server_config(config_text(entry("captioner", models / "captioner", TWO_VERSIONS)))
    )
    models_stub.HandleReloadConfigRequest(request, timeout=30)
    labelled = config_text(entry("captioner", models / "captioner", f"{TWO_VERSIONS} {LABELS}"))
    request.config.CopyFrom(parse_model_server_config(labelled))

    models_stub.HandleReloadConfigRequest(request, timeout=30)

    assert grpc_predict(channel, model_pb2.ModelSpec(name="captioner", version_label="canary")) == 2.0
    request.config.CopyFrom(
        parse_model_server_config(
            config_text(entry("captioner", models / "captioner", LABELS.replace("value: 2", "value: 9")))
        )
    )
    with pytest.raises(grpc.RpcError) as raised:
        models_stub.HandleReloadConfigRequest(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_cli_refuses_to_start_on_a_relative_base_path_with_tf_serving_message(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text(config_text(entry("memefly", "models/memefly")))

    result = subprocess.run(
        [sys.executable, "-m", "serving", f"--port={free_port()}", f"--model_config_file={config}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert (
        "Failed to start server. Error: INVALID_ARGUMENT: Expected model memefly to have an absolute path or URI; "
        "got base_path()=models/memefly" in result.stderr
    )


# ---- warm-up ------------------------------------------------------------------------------------


def write_warmup(version_dir: Path, records: list[bytes]) -> None:
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def predict_log(signature: str = "", rows: int = 2) -> bytes:
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = "ignored"
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.arange(rows, dtype=np.float32)))
    return log.SerializeToString()


def warmed_store(base_path: Path, **warmup: object) -> ModelStore:
    store = ModelStore(warmup=WarmupOptions(**warmup))  # type: ignore[arg-type]
    store.apply_config([ModelConfig("w", base_path)])
    return store


def test_warmup_requests_are_replayed_before_the_version_is_available(tmp_path: Path) -> None:
    write_warmup(export(tmp_path / "w", 1), [predict_log(), predict_log("serving_default", 3), predict_log()])

    store = warmed_store(tmp_path / "w", num_request_iterations=2)

    assert store.version_status("w") and store.version_status("w")[0].state == "AVAILABLE"
    assert store.resolve(model_pb2.ModelSpec(name="w")).signature_calls["serving_default"] == 6


def test_warmup_can_be_turned_off(tmp_path: Path) -> None:
    write_warmup(export(tmp_path / "w", 1), [predict_log()])

    store = warmed_store(tmp_path / "w", enabled=False)

    assert store.resolve(model_pb2.ModelSpec(name="w")).signature_calls["serving_default"] == 0


@pytest.mark.parametrize(
    "records, code, message",
    [
        ([predict_log(), predict_log("nope")], "FAILED_PRECONDITION", 'Serving signature key "nope" not found.'),
        ([b""] * 1001, "INVALID_ARGUMENT", "Number of warmup records exceeds the maximum (1000) at "),
    ],
    ids=["failing-request", "too-many-records"],
)
def test_a_failing_warmup_fails_the_load(tmp_path: Path, records: list[bytes], code: str, message: str) -> None:
    write_warmup(export(tmp_path / "w", 1), records)

    store = warmed_store(tmp_path / "w")

    [status] = store.version_status("w")
    assert (status.state, status.error_code) == ("END", code)
    assert status.error_message.startswith(message)
    with pytest.raises(NotFoundError):
        store.resolve(model_pb2.ModelSpec(name="w"))


def test_a_warmup_file_that_is_not_tfrecord_fails_the_load_with_data_loss(tmp_path: Path) -> None:
    version_dir = export(tmp_path / "w", 1)
    (version_dir / WARMUP_FILE).parent.mkdir()
    (version_dir / WARMUP_FILE).write_bytes(b"these are not TFRecords")

    [status] = warmed_store(tmp_path / "w").version_status("w")

    assert (status.state, status.error_code) == ("END", "DATA_LOSS")
    assert status.error_message.endswith(". Please verify your warmup data is in TFRecord format.")
