"""The local serving tier, serving the exported caption model, called with TF Serving's official stubs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from gateway.backends.tfserving import TfServingBackend
from memefly.contract import DECODE_STEP, ENCODE, METADATA, SPECIAL_TOKENS, ModelContract, signatures
from tests.support import MODEL_NAME, encode_arrays, predict_request, prediction_stub, serving_model


@pytest.fixture(scope="module")
def channel(serving_target: str):
    with grpc.insecure_channel(serving_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict(stub, signature: str, inputs: dict, name: str = MODEL_NAME, version: int | None = None):
    """The whole PredictResponse (its model spec and wire form matter here)."""
    return stub.Predict(predict_request(name, signature, inputs, version), timeout=30)


@pytest.fixture(scope="module")
def contract(stub) -> ModelContract:
    response = predict(stub, METADATA, {})
    return ModelContract.from_json(tf.make_ndarray(response.outputs["contract"]).item())


def test_metadata_signature_gives_vocabulary_and_contract(stub, contract: ModelContract) -> None:
    response = predict(stub, METADATA, {})
    vocabulary = tf.make_ndarray(response.outputs["vocabulary"])
    assert [w.decode() for w in vocabulary[: len(SPECIAL_TOKENS)]] == list(SPECIAL_TOKENS)
    assert len(vocabulary) == contract.vocab_size
    assert response.model_spec.name == MODEL_NAME
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == METADATA


def test_encode_then_decode_step_over_grpc(stub, contract: ModelContract, chelsea_jpeg: bytes) -> None:
    context = tf.make_ndarray(predict(stub, ENCODE, encode_arrays([chelsea_jpeg])).outputs["context"])
    assert context.shape == (1, *contract.context_shape)
    response = predict(
        stub,
        DECODE_STEP,
        {
            "tokens": np.full([3], contract.start_id, np.int32),
            "state": np.zeros([3, contract.state_size], contract.state_dtype),
            "context": context,
            "context_index": np.zeros([3], np.int32),
            "k": np.int32(4),
        },
    )
    assert tf.make_ndarray(response.outputs["top_ids"]).shape == (3, 4)
    assert tf.make_ndarray(response.outputs["top_log_probs"]).shape == (3, 4)
    assert tf.make_ndarray(response.outputs["state"]).shape == (3, contract.state_size)


def test_model_metadata_lists_every_contract_signature(stub, contract: ModelContract) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL_NAME
    response = stub.GetModelMetadata(request, timeout=30)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    for spec in signatures(contract):
        signature = signature_map.signature_def[spec.name]
        assert set(signature.inputs) == {t.name for t in spec.inputs}
        assert set(signature.outputs) == {t.name for t in spec.outputs}


def test_model_status_is_available(channel) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL_NAME
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    states = {
        s.version: get_model_status_pb2.ModelVersionStatus.State.Name(s.state) for s in response.model_version_status
    }
    assert states == {1: "AVAILABLE"}


@pytest.mark.parametrize(("name", "version"), [("no-such-model", None), (MODEL_NAME, 99)])
def test_unknown_model_or_version_is_not_found(stub, name: str, version: int | None) -> None:
    with pytest.raises(grpc.RpcError) as error:
        predict(stub, METADATA, {}, name=name, version=version)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("signature", "inputs"),
    [
        (ENCODE, {}),
        (ENCODE, {"image_bytes": np.array([1.0, 2.0], np.float32)}),
        (ENCODE, encode_arrays([b"definitely not an image"])),
        (DECODE_STEP, {"tokens": np.zeros([2], np.int32)}),
    ],
)
def test_malformed_input_is_invalid_argument(stub, signature: str, inputs: dict) -> None:
    with pytest.raises(grpc.RpcError) as error:
        predict(stub, signature, inputs)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_signature_is_failed_precondition_as_in_tf_serving(stub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        predict(stub, "no_such_signature", {})
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no_such_signature" in error.value.details()


@pytest.fixture(scope="module")
def packed_target(model_base_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second tier on the same model, run as docker-compose.yml runs TF Serving: packed answers."""
    log_path = tmp_path_factory.mktemp("packed") / "server.log"
    with serving_model(model_base_path, log_path, "--enable_serialization_as_tensor_content=true") as target:
        yield target


def test_packed_answers_carry_the_same_decode_step_as_typed_fields(
    stub, serving_target: str, packed_target: str, contract: ModelContract, chelsea_jpeg: bytes
) -> None:
    inputs = {
        "tokens": np.full([3], contract.start_id, np.int32),
        "state": np.zeros([3, contract.state_size], contract.state_dtype),
        "context_index": np.zeros([3], np.int32),
        "k": np.int32(4),
    }
    inputs["context"] = tf.make_ndarray(predict(stub, ENCODE, encode_arrays([chelsea_jpeg])).outputs["context"])
    with prediction_stub(packed_target) as packed_stub:
        packed = predict(packed_stub, DECODE_STEP, inputs)
    typed = predict(stub, DECODE_STEP, inputs)
    for name in ("top_log_probs", "top_ids", "state"):
        assert packed.outputs[name].tensor_content and not typed.outputs[name].tensor_content, name
        np.testing.assert_array_equal(tf.make_ndarray(packed.outputs[name]), tf.make_ndarray(typed.outputs[name]))

    # The gateway's backend reads either form to the same step.
    steps = []
    for target in (serving_target, packed_target):
        backend = TfServingBackend(target, MODEL_NAME, timeout_seconds=30)
        try:
            backend.load_metadata()
            steps.append(backend.decode_step(**{**inputs, "k": 4}))
        finally:
            backend.close()
    for a, b in zip(steps[0], steps[1], strict=True):
        np.testing.assert_array_equal(a, b)
