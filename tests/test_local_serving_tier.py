"""The local serving tier (`python -m serving`) seen through TF Serving's own gRPC stubs.

One server process serves the whole module, so the tests run in file order: the version-2
reload and the SIGTERM shutdown come last.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.grpc_server import to_tensor_proto
from tests.support import free_port, predict_request, save_module, serving_process

MODEL = "captioner"
STARTUP_SECONDS = 60
RELOAD_SECONDS = 30
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
PredictionStub = prediction_service_pb2_grpc.PredictionServiceStub
ModelStub = model_service_pb2_grpc.ModelServiceStub


class Captioner(tf.Module):
    """Stands in for the caption model: outputs that reveal which version answered."""

    def __init__(self, version: int) -> None:
        super().__init__()
        self.version = version
        self.weight = tf.Variable(float(version))

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="text"), tf.TensorSpec([None], tf.int32, name="count")]
    )
    def score(self, text: tf.Tensor, count: tf.Tensor) -> dict[str, tf.Tensor]:
        length = tf.cast(tf.strings.length(text), tf.float32)
        return {
            "scores": tf.stack([length * self.weight, tf.cast(count, tf.float32)], axis=1),
            "total": tf.reduce_sum(count),
        }

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="x")])
    def double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"doubled": x * 2}

    @tf.function(input_signature=[])
    def labels(self) -> dict[str, tf.Tensor]:
        return {"labels": tf.constant(["cat", "dog"]), "model": tf.constant(f"captioner-v{self.version}")}


def export(version: int, path: Path) -> None:
    save_module(Captioner(version), path, "double", "labels", serving_default="score")


@dataclass
class Server:
    port: int
    base_path: Path
    staging: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serving")
    staging, base_path = root / "staging", root / "models" / MODEL
    export(1, base_path / "1")
    export(2, staging / "2")
    port = free_port()
    log_path = root / "server.log"
    args = [f"--port={port}", f"--model_name={MODEL}", f"--model_base_path={base_path}"]
    with serving_process([*args, "--file_system_poll_wait_seconds=1"], log_path) as process:
        running = Server(port, base_path, staging, log_path, process)
        wait_until_serving(running)
        yield running


def wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ModelStub(channel)
        while time.monotonic() < deadline:
            assert server.process.poll() is None, f"server exited early:\n{server.log()}"
            try:
                stub.GetModelStatus(status_request(), timeout=1)
                return
            except grpc.RpcError:
                time.sleep(0.2)
    pytest.fail(f"server not serving after {STARTUP_SECONDS} s:\n{server.log()}")


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        yield chan


@pytest.fixture(scope="module")
def prediction(channel: grpc.Channel) -> PredictionStub:
    return PredictionStub(channel)


@pytest.fixture(scope="module")
def models(channel: grpc.Channel) -> ModelStub:
    return ModelStub(channel)


def score_request(version: int | None = None, **overrides: object) -> predict_pb2.PredictRequest:
    inputs: dict[str, object] = {"text": np.array([b"hi", b"hello"]), "count": np.array([3, 4], np.int32)}
    return predict_request(MODEL, "", {**inputs, **overrides}, version)


def status_request(model: str = MODEL) -> get_model_status_pb2.GetModelStatusRequest:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    return request


def outputs(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}


def test_default_signature_scores_strings_and_counts(prediction: PredictionStub) -> None:
    response = prediction.Predict(score_request(), timeout=10)

    result = outputs(response)
    np.testing.assert_allclose(result["scores"], [[2.0, 3.0], [5.0, 4.0]])
    assert result["scores"].dtype == np.float32
    assert result["total"] == 7
    assert (response.model_spec.name, response.model_spec.version.value) == (MODEL, 1)
    assert response.model_spec.signature_name == "serving_default"


def test_outputs_use_typed_value_fields_like_tf_serving(prediction: PredictionStub) -> None:
    scores = prediction.Predict(score_request(), timeout=10).outputs["scores"]

    assert list(scores.float_val) == [2.0, 3.0, 5.0, 4.0]
    assert scores.tensor_content == b""
    assert [dim.size for dim in scores.tensor_shape.dim] == [2, 2]


def test_scalar_signature_doubles_its_input(prediction: PredictionStub) -> None:
    response = prediction.Predict(predict_request(MODEL, "double", {"x": np.int32(21)}), timeout=10)

    doubled = outputs(response)["doubled"]
    assert doubled.shape == () and doubled == 42
    assert response.model_spec.signature_name == "double"


def test_signature_without_inputs_returns_string_vector_and_scalar(prediction: PredictionStub) -> None:
    result = outputs(prediction.Predict(predict_request(MODEL, "labels"), timeout=10))

    assert result["labels"].tolist() == [b"cat", b"dog"]
    assert result["model"] == b"captioner-v1"


def test_output_filter_returns_only_requested_outputs(prediction: PredictionStub) -> None:
    request = score_request()
    request.output_filter.append("total")

    assert set(prediction.Predict(request, timeout=10).outputs) == {"total"}


def test_metadata_lists_signature_defs_with_input_and_output_dtypes(prediction: PredictionStub) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL

    response = prediction.GetModelMetadata(request, timeout=10)

    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    assert {"serving_default", "double", "labels"} <= set(signature_defs.signature_def)
    default = signature_defs.signature_def["serving_default"]
    assert {name: info.dtype for name, info in default.inputs.items()} == {
        "text": types_pb2.DT_STRING,
        "count": types_pb2.DT_INT32,
    }
    assert default.outputs["scores"].dtype == types_pb2.DT_FLOAT
    assert [dim.size for dim in default.outputs["scores"].tensor_shape.dim] == [-1, 2]
    assert (response.model_spec.name, response.model_spec.version.value) == (MODEL, 1)


def test_model_status_reports_version_1_available(models: ModelStub) -> None:
    response = models.GetModelStatus(status_request(), timeout=10)

    [status] = response.model_version_status
    assert (status.version, status.state, status.status.error_code) == (1, AVAILABLE, 0)


def undecodable_count() -> tensor_pb2.TensorProto:
    proto = tf.make_tensor_proto(np.array([1.0, 2.0], np.float32))
    proto.tensor_content = b"\x00\x01\x02"  # not a whole number of float32s
    return proto


def unknown_metadata_field(prediction: PredictionStub) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["labels"])
    request.model_spec.name = MODEL
    prediction.GetModelMetadata(request, timeout=10)


def with_output_filter(name: str) -> predict_pb2.PredictRequest:
    request = score_request()
    request.output_filter.append(name)
    return request


CLIENT_MISTAKES = {
    "unknown-model": (
        lambda p: p.Predict(predict_request("nope"), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(nope)",
    ),
    "unknown-version": (
        lambda p: p.Predict(score_request(version=7), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        f"Servable not found for request: Specific({MODEL}, 7)",
    ),
    "unknown-version-label": (
        lambda p: p.Predict(predict_request(MODEL, version_label="stable"), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: stable",
    ),
    # FAILED_PRECONDITION, not INVALID_ARGUMENT: that is what tensorflow_model_server's gRPC Predict says.
    "unknown-signature": (
        lambda p: p.Predict(predict_request(MODEL, "nope"), timeout=10),
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nope" not found.',
    ),
    "missing-input": (
        lambda p: p.Predict(predict_request(MODEL, "", {"text": np.array([b"hi"])}), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Missing but required: {count}.",
    ),
    "extra-input": (
        lambda p: p.Predict(score_request(mood=np.array([b"glad"])), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Sent extra: {mood}.",
    ),
    "wrong-dtype": (
        lambda p: p.Predict(score_request(count=np.array([3.0, 4.0], np.float32)), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expected input count to be int32 but get float.",
    ),
    "wrong-shape": (
        lambda p: p.Predict(score_request(count=np.array([[3, 4]], np.int32)), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expected input count to have shape [-1] but got [1, 2].",
    ),
    "undecodable-tensor": (
        lambda p: p.Predict(score_request(count=undecodable_count()), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tensor parsing error: count",
    ),
    "unknown-output-filter": (
        lambda p: p.Predict(with_output_filter("nope"), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "output tensor alias not found in signature: nope",
    ),
    "unknown-metadata-field": (
        unknown_metadata_field,
        grpc.StatusCode.INVALID_ARGUMENT,
        "Metadata field labels is not supported",
    ),
}


@pytest.mark.parametrize("call, code, message", CLIENT_MISTAKES.values(), ids=CLIENT_MISTAKES.keys())
def test_client_mistakes_get_tf_serving_status_and_message(
    prediction: PredictionStub, call: Callable[[PredictionStub], object], code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        call(prediction)

    assert raised.value.code() == code
    assert message in raised.value.details()


@pytest.mark.parametrize(
    "dtype",
    [
        np.float16,
        tf.bfloat16.as_numpy_dtype,
        np.float32,
        np.float64,
        np.int8,
        np.uint16,
        np.int64,
        np.uint64,
        np.complex64,
        np.bool_,
    ],
)
def test_typed_value_fields_round_trip_every_numeric_dtype(dtype: type) -> None:
    array = np.arange(6).reshape(2, 3).astype(dtype)

    proto = to_tensor_proto(array)

    assert proto.tensor_content == b""
    decoded = tf.make_ndarray(proto)
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)


def test_new_version_replaces_old_without_failed_requests(
    server: Server, prediction: PredictionStub, models: ModelStub
) -> None:
    # A rename makes the version appear whole, as an export pipeline should publish it.
    (server.staging / "2").rename(server.base_path / "2")

    deadline = time.monotonic() + RELOAD_SECONDS
    answered_by = []
    while time.monotonic() < deadline:
        response = prediction.Predict(score_request(), timeout=10)  # any failure fails the test
        version = response.model_spec.version.value
        answered_by.append(version)
        np.testing.assert_allclose(outputs(response)["scores"][:, 0], [2.0 * version, 5.0 * version])
        if version == 2:
            break
        time.sleep(0.05)
    assert answered_by[-1] == 2, f"version 2 not served within {RELOAD_SECONDS} s"
    assert outputs(prediction.Predict(predict_request(MODEL, "labels"), timeout=10))["model"] == b"captioner-v2"

    while time.monotonic() < deadline:
        states = {s.version: s.state for s in models.GetModelStatus(status_request(), timeout=10).model_version_status}
        if states == {2: AVAILABLE, 1: END}:
            break
        time.sleep(0.1)
    assert states == {2: AVAILABLE, 1: END}
    with pytest.raises(grpc.RpcError) as raised:
        prediction.Predict(score_request(version=1), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_sigterm_shuts_down_cleanly_after_logging_readiness(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)

    assert server.process.wait(timeout=15) == 0
    assert f"Serving model {MODEL} versions [1] on port {server.port}" in server.log()
