"""The local serving tier's REST API (--rest_api_port) against TF Serving's own formats and errors.

Each server runs in-process (gRPC and HTTP on free loopback ports) and is stopped by its fixture.
Expected values, status codes and messages come from TF Serving's sources (json_tensor.cc,
http_rest_api_handler.cc) and from the SageMaker TF Serving container's tests; bodies are compared
as JSON, not as text.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from memefly.contract import DECODE_STEP, ENCODE, METADATA, ModelContract
from serving.tier import ServingTier, TierOptions
from tests.support import (
    MODEL_NAME,
    encode_arrays,
    free_port,
    grpc_predict,
    grpc_target,
    prediction_stub,
    rest_client,
    running_tier,
    save_module,
)

MODEL = "scorer"


class Scorer(tf.Module):
    """String, int and float inputs; float, int64, string and bytes outputs."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="text"),
            tf.TensorSpec([None], tf.int32, name="count"),
            tf.TensorSpec([None, 2], tf.float32, name="weights"),
        ]
    )
    def score(self, text: tf.Tensor, count: tf.Tensor, weights: tf.Tensor) -> dict[str, tf.Tensor]:
        length = tf.cast(tf.strings.length(text), tf.float32)
        return {
            "score": weights[:, 0] * length + weights[:, 1] * tf.cast(count, tf.float32) / 3.0,
            "count_squared": tf.cast(count, tf.int64) ** 2,
            "echo": tf.strings.join([text, "!"]),
            "echo_bytes": tf.strings.join([text, "!"]),
        }

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
    def half_plus_three(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": 0.5 * x + 3.0}

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="x")])
    def double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"doubled": x * 2}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="count")])
    def summary(self, count: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"doubled": count * 2, "total": tf.reduce_sum(count)}

    @tf.function(input_signature=[])
    def labels(self) -> dict[str, tf.Tensor]:
        return {"labels": tf.constant(["cat", "dog"]), "model": tf.constant("scorer")}


def export_scorer(path: Path) -> None:
    save_module(Scorer(), path, "half_plus_three", "double", "summary", "labels", serving_default="score")


def tier_options(name: str, base_path: Path) -> TierOptions:
    return TierOptions(
        grpc_port=free_port(),
        rest_api_port=free_port(),
        model_name=name,
        model_base_path=str(base_path),
        file_system_poll_wait_seconds=0,
    )


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingTier]:
    base_path = tmp_path_factory.mktemp("rest") / MODEL
    export_scorer(base_path / "1")
    with running_tier(tier_options(MODEL, base_path)) as tier:
        yield tier


@pytest.fixture(scope="module")
def rest(tier: ServingTier) -> Iterator[httpx.Client]:
    with rest_client(tier.options.rest_api_port) as client:
        yield client


@pytest.fixture(scope="module")
def stub(tier: ServingTier) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with prediction_stub(grpc_target(tier)) as stub:
        yield stub


TEXTS = [b"hi", b"\xff\x00binary"]
COUNTS = [3, 4]
WEIGHTS = [[0.5, 1.5], [0.1, -1.0]]


def grpc_score(stub) -> dict[str, np.ndarray]:
    inputs = {
        "text": np.array(TEXTS, dtype=object),
        "count": np.array(COUNTS, np.int32),
        "weights": np.array(WEIGHTS, np.float32),
    }
    return grpc_predict(stub, MODEL, "serving_default", inputs)


def loads(response: httpx.Response) -> dict:
    return json.loads(response.content.decode("utf-8", "surrogateescape"))


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def test_columnar_predict_gives_the_grpc_outputs(rest: httpx.Client, stub) -> None:
    body = {"inputs": {"text": [b64(t) for t in TEXTS], "count": COUNTS, "weights": WEIGHTS}}

    response = rest.post(f"/v1/models/{MODEL}:predict", json=body)

    assert response.status_code == 200, response.text
    outputs = loads(response)["outputs"]
    expected = grpc_score(stub)
    assert np.array(outputs["score"], np.float32).tolist() == expected["score"].tolist()
    assert outputs["count_squared"] == expected["count_squared"].tolist()
    assert [base64.b64decode(v["b64"]) for v in outputs["echo_bytes"]] == expected["echo_bytes"].tolist()
    # Not a *_bytes alias: TF Serving writes the string's bytes as they are, even when not UTF-8.
    assert [v.encode("utf-8", "surrogateescape") for v in outputs["echo"]] == expected["echo"].tolist()


def test_row_predict_gives_the_grpc_outputs_row_by_row(rest: httpx.Client, stub) -> None:
    instances = [{"text": b64(t), "count": c, "weights": w} for t, c, w in zip(TEXTS, COUNTS, WEIGHTS, strict=True)]

    response = rest.post(f"/v1/models/{MODEL}:predict", json={"instances": instances})

    assert response.status_code == 200, response.text
    predictions = loads(response)["predictions"]
    expected = grpc_score(stub)
    for row, prediction in enumerate(predictions):
        assert np.float32(prediction["score"]) == expected["score"][row]
        assert prediction["count_squared"] == expected["count_squared"][row]
        assert base64.b64decode(prediction["echo_bytes"]["b64"]) == expected["echo_bytes"][row]


def test_float_outputs_round_trip_through_json_exactly(rest: httpx.Client) -> None:
    body = {"signature_name": "half_plus_three", "inputs": [0.1, 1 / 3, 1e-7, 123456.789]}

    outputs = rest.post(f"/v1/models/{MODEL}:predict", json=body).json()["outputs"]

    expected = 0.5 * np.array(body["inputs"], np.float32) + np.float32(3.0)
    assert np.array(outputs, np.float32).tolist() == expected.tolist()


def test_row_and_columnar_bodies_carry_tf_serving_json_values(rest: httpx.Client) -> None:
    row = rest.post(f"/v1/models/{MODEL}:predict", json={"signature_name": "half_plus_three", "instances": [1.0, 2, 5]})
    columnar = rest.post(f"/v1/models/{MODEL}:predict", json={"signature_name": "double", "inputs": {"x": 21}})

    assert row.json() == {"predictions": [3.5, 4.0, 5.5]}
    assert row.headers["content-type"] == "application/json"
    assert columnar.json() == {"outputs": 42}


def test_several_outputs_in_row_format_are_objects_by_name(rest: httpx.Client) -> None:
    instances = [{"text": "ab", "count": 2, "weights": [1.0, 0.0]}]

    response = rest.post(f"/v1/models/{MODEL}:predict", json={"instances": instances})

    assert response.json() == {
        "predictions": [{"count_squared": 4, "echo": "ab!", "echo_bytes": {"b64": "YWIh"}, "score": 2.0}]
    }


def test_scalar_inputs_work_in_columnar_format_but_not_as_rows(rest: httpx.Client) -> None:
    columnar = rest.post(f"/v1/models/{MODEL}:predict", json={"signature_name": "double", "inputs": {"x": 21}})
    rows = rest.post(f"/v1/models/{MODEL}:predict", json={"signature_name": "double", "instances": [21]})

    assert columnar.json() == {"outputs": 42}
    assert rows.status_code == 400
    assert rows.json() == {"error": "Expected input x to have shape [] but got [1]."}


def test_row_format_needs_a_batch_dimension_on_every_output(rest: httpx.Client) -> None:
    columnar = rest.post(f"/v1/models/{MODEL}:predict", json={"signature_name": "summary", "inputs": [1, 2]})
    rows = rest.post(f"/v1/models/{MODEL}:predict", json={"signature_name": "summary", "instances": [1, 2]})

    assert columnar.json() == {"outputs": {"doubled": [2, 4], "total": 3}}
    assert (rows.status_code, rows.json()) == (400, {"error": "Tensor name: total has no shape information "})


@pytest.mark.parametrize("body", [{"inputs": {}}, {"instances": [{}]}], ids=["columnar", "row"])
def test_signatures_without_inputs_are_refused_over_rest_as_tf_serving_does(
    rest: httpx.Client, stub, body: dict
) -> None:
    response = rest.post(f"/v1/models/{MODEL}:predict", json={"signature_name": "labels", **body})

    assert (response.status_code, response.json()) == (
        400,
        {"error": "Failed to get input map for signature: labels"},
    )
    assert grpc_predict(stub, MODEL, "labels", {})["model"] == b"scorer"  # gRPC serves it


def test_model_status_is_proto_json_as_tf_serving_gives_it(rest: httpx.Client) -> None:
    whole = rest.get(f"/v1/models/{MODEL}")
    one = rest.get(f"/v1/models/{MODEL}/versions/1")

    assert whole.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert one.json() == whole.json()


def test_model_status_by_label_ignores_the_label_as_tf_serving_does(rest: httpx.Client) -> None:
    by_label = rest.get(f"/v1/models/{MODEL}/labels/no_such_label")
    metadata_by_label = rest.get(f"/v1/models/{MODEL}/labels/no_such_label/metadata")

    assert by_label.json() == rest.get(f"/v1/models/{MODEL}").json()
    assert (metadata_by_label.status_code, metadata_by_label.json()) == (
        400,
        {"error": "Unrecognized servable version label: no_such_label"},
    )


def test_metadata_lists_signature_defs_under_model_spec_and_metadata(rest: httpx.Client) -> None:
    response = rest.get(f"/v1/models/{MODEL}/versions/1/metadata")

    assert response.status_code == 200
    assert response.json()["model_spec"] == {"name": "scorer", "signature_name": "", "version": "1"}
    signature_defs = response.json()["metadata"]["signature_def"]["signature_def"]
    text_input = signature_defs["serving_default"]["inputs"]["text"]
    assert set(text_input) == {"dtype", "tensor_shape", "name"}
    assert text_input["dtype"] == "DT_STRING"
    assert text_input["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    assert signature_defs["half_plus_three"]["method_name"] == "tensorflow/serving/predict"


NOT_FOUND_PAGE = b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
SCORE = {"text": ["a"], "count": [1], "weights": [[1.0, 2.0]]}
CLIENT_MISTAKES = {
    "unknown-model": (
        "POST",
        "/v1/models/nope:predict",
        {"inputs": SCORE},
        404,
        "Servable not found for request: Latest(nope)",
    ),
    "unknown-version": (
        "POST",
        f"/v1/models/{MODEL}/versions/7:predict",
        {"inputs": SCORE},
        404,
        f"Servable not found for request: Specific({MODEL}, 7)",
    ),
    "unknown-label": (
        "POST",
        f"/v1/models/{MODEL}/labels/stable:predict",
        {"inputs": SCORE},
        400,
        "Unrecognized servable version label: stable",
    ),
    "unknown-signature": (
        "POST",
        f"/v1/models/{MODEL}:predict",
        {"signature_name": "nope", "inputs": SCORE},
        400,
        'Serving signature name: "nope" not found in signature def',
    ),
    "empty-body": ("POST", f"/v1/models/{MODEL}:predict", b"", 400, "JSON Parse error: The document is empty"),
    "not-json": (
        "POST",
        f"/v1/models/{MODEL}:predict",
        b"instances = [1, 2]",
        400,
        "JSON Parse error: Expecting value: line 1 column 1 (char 0)",
    ),
    "wrong-type": (
        "POST",
        f"/v1/models/{MODEL}:predict",
        {"inputs": {**SCORE, "count": ["x"]}},
        400,
        'JSON Value: "x" Type: String is not of expected type: int32',
    ),
    "missing-input": (
        "POST",
        f"/v1/models/{MODEL}:predict",
        {"inputs": {"text": ["a"], "count": [1]}},
        400,
        "Missing named input: weights in 'inputs' object.",
    ),
    "unknown-instance-key": (
        "POST",
        f"/v1/models/{MODEL}:predict",
        {"instances": [{"junk": "data"}]},
        400,
        "Failed to process element: 0 key: junk of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON object: does not have named input: junk",
    ),
    "ragged-rows": (
        "POST",
        f"/v1/models/{MODEL}:predict",
        {"signature_name": "half_plus_three", "instances": [[1.0], [1.0, 2.0]]},
        400,
        "Failed to process element: 1 of 'instances' list. "
        "Error: INVALID_ARGUMENT: Expecting tensor size: 1 but got: 2",
    ),
    "both-formats": (
        "POST",
        f"/v1/models/{MODEL}:predict",
        {"inputs": [1.0], "instances": [1.0]},
        400,
        'JSON Value: {"inputs": [1.0], "instances": [1.0]} Not formatted correctly expecting only '
        "one of 'inputs' or 'instances' keys to exist ",
    ),
    "unknown-path": ("GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
    "get-predict": (
        "GET",
        f"/v1/models/{MODEL}:predict",
        None,
        400,
        f"Malformed request: GET /v1/models/{MODEL}:predict",
    ),
    "no-model-name": ("GET", "/v1/models", None, 400, "Missing model name in request."),
    "unknown-status-version": (
        "GET",
        f"/v1/models/{MODEL}/versions/9",
        None,
        404,
        f"Could not find version 9 of model {MODEL}",
    ),
}


@pytest.mark.parametrize("method, path, body, status, message", CLIENT_MISTAKES.values(), ids=CLIENT_MISTAKES.keys())
def test_client_mistakes_get_tf_serving_http_status_and_error_body(
    rest: httpx.Client, method: str, path: str, body: object, status: int, message: str
) -> None:
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()

    response = rest.request(method, path, content=content)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": message}


def test_paths_outside_v1_get_libevent_not_found_page(rest: httpx.Client) -> None:
    response = rest.get("/v2/models/scorer")

    assert (response.status_code, response.content) == (404, NOT_FOUND_PAGE)


def test_classify_and_regress_are_routed_but_not_implemented(rest: httpx.Client) -> None:
    response = rest.post(f"/v1/models/{MODEL}:classify", json={"examples": [{"x": 1.0}]})

    assert response.status_code == 501
    assert "not implemented by this local stand-in" in response.json()["error"]


# ---- the exported caption model (the session's tiny preset) -----------------------------------


@pytest.fixture(scope="module")
def caption_tier(model_base_path: Path) -> Iterator[ServingTier]:
    with running_tier(tier_options(MODEL_NAME, model_base_path / MODEL_NAME)) as tier:
        yield tier


@pytest.fixture(scope="module")
def caption_rest(caption_tier: ServingTier) -> Iterator[httpx.Client]:
    with rest_client(caption_tier.options.rest_api_port, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def caption_stub(caption_tier: ServingTier) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with prediction_stub(grpc_target(caption_tier)) as stub:
        yield stub


@pytest.fixture(scope="module")
def contract(caption_stub) -> ModelContract:
    return ModelContract.from_json(grpc_predict(caption_stub, MODEL_NAME, METADATA, {})["contract"].item())


def test_caption_encode_over_rest_gives_the_grpc_context(caption_rest, caption_stub, chelsea_jpeg: bytes) -> None:
    # Images and context rows differ in number, so the conditioned `encode` is columnar-only over REST.
    rows = {
        name: [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
        for name, value in encode_arrays([chelsea_jpeg]).items()
        if name != "image_bytes"
    }
    body = {"signature_name": ENCODE, "inputs": {"image_bytes": [b64(chelsea_jpeg)], **rows}}

    response = caption_rest.post(f"/v1/models/{MODEL_NAME}:predict", json=body)

    assert response.status_code == 200, response.text
    context = np.array(response.json()["outputs"]["context"], np.float32)
    expected = grpc_predict(caption_stub, MODEL_NAME, ENCODE, encode_arrays([chelsea_jpeg]))
    np.testing.assert_array_equal(context, expected["context"])


def test_caption_decode_step_over_rest_gives_the_grpc_outputs(caption_rest, caption_stub, contract) -> None:
    # The GRU's `decode_step` state is float16, which JSON cannot carry; its float32 twin is the REST one.
    signature = contract.decode_step_rest.name
    rng = np.random.default_rng(0)
    inputs = {
        "tokens": np.array([contract.start_id, 7, 9], np.int32),
        "state": rng.normal(size=(3, contract.state_size)).astype(np.float32),
        "context": rng.normal(size=(2, *contract.context_shape)).astype(np.float32),
        "context_index": np.array([0, 1, 1], np.int32),
        "k": np.int32(4),
    }
    body = {"signature_name": signature, "inputs": {name: value.tolist() for name, value in inputs.items()}}

    response = caption_rest.post(f"/v1/models/{MODEL_NAME}:predict", json=body)

    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    expected = grpc_predict(caption_stub, MODEL_NAME, signature, inputs)
    assert outputs["top_ids"] == expected["top_ids"].tolist()
    np.testing.assert_array_equal(np.array(outputs["top_log_probs"], np.float32), expected["top_log_probs"])
    np.testing.assert_array_equal(np.array(outputs["state"], np.float32), expected["state"])


def test_a_float16_decode_step_state_is_grpc_only_as_in_tf_serving(caption_rest, caption_stub, contract) -> None:
    assert contract.state_dtype == "float16"
    inputs = {
        "tokens": np.array([contract.start_id], np.int32),
        "state": np.zeros((1, contract.state_size), np.float16),
        "context": np.zeros((1, *contract.context_shape), np.float32),
        "context_index": np.array([0], np.int32),
        "k": np.int32(2),
    }
    body = {"signature_name": DECODE_STEP, "inputs": {name: value.tolist() for name, value in inputs.items()}}

    response = caption_rest.post(f"/v1/models/{MODEL_NAME}:predict", json=body)

    assert response.status_code == 501, response.text
    assert "to type: half" in response.json()["error"]
    over_grpc = grpc_predict(caption_stub, MODEL_NAME, DECODE_STEP, inputs)
    assert over_grpc["state"].dtype == np.float16
    # The twin's float32 state is the float16 state, widened: both transports step through equal numbers.
    twin = grpc_predict(
        caption_stub,
        MODEL_NAME,
        contract.decode_step_rest.name,
        {**inputs, "state": inputs["state"].astype(np.float32)},
    )
    np.testing.assert_array_equal(twin["state"], over_grpc["state"].astype(np.float32))


def test_caption_metadata_signature_is_grpc_only_as_in_tf_serving(caption_rest, caption_stub) -> None:
    response = caption_rest.post(f"/v1/models/{MODEL_NAME}:predict", json={"signature_name": METADATA, "inputs": {}})

    assert (response.status_code, response.json()) == (
        400,
        {"error": "Failed to get input map for signature: metadata"},
    )
    assert grpc_predict(caption_stub, MODEL_NAME, METADATA, {})["vocabulary"].shape[0] > 5


def test_caption_model_metadata_over_rest_lists_the_contract_signatures(caption_rest) -> None:
    response = caption_rest.get(f"/v1/models/{MODEL_NAME}/metadata")

    signature_defs = response.json()["metadata"]["signature_def"]["signature_def"]
    assert {ENCODE, DECODE_STEP, METADATA} <= set(signature_defs)
    assert signature_defs[DECODE_STEP]["inputs"]["k"]["tensor_shape"] == {"dim": [], "unknown_rank": False}
