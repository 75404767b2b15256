"""TF Serving's gRPC PredictionService: the real tensorflow_model_server, or the local stand-in."""

from __future__ import annotations

import copy
import json

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from gateway.backends.base import (
    Condition,
    DecodeStepResult,
    Encoding,
    ModelInfo,
    ModelUnavailableError,
    ModelVersionGoneError,
    default_conditions,
    encode_inputs,
    encoding_from_outputs,
    explanations,
    signature_inputs,
    signature_outputs,
    signature_specs,
)
from gateway.tensors import array_to_proto, proto_to_array, strings_to_proto
from memefly.contract import DECODE_STEP, ENCODE, EXPLAIN, METADATA, SCORE, TOKENIZE, ModelContract, SignatureSpec

# Predict is idempotent, so a call that found the server unavailable is retried by grpc itself,
# bounded and with jittered backoff; every other failure reaches the caller at once. The throttle
# stops retrying while most calls fail (the tier is down), so an outage is not tripled in load.
_SERVICE_CONFIG = {
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    "methodConfig": [
        {
            "name": [
                {"service": "tensorflow.serving.PredictionService"},
                {"service": "tensorflow.serving.ModelService"},
            ],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class TfServingBackend:
    name = "tfserving"

    def __init__(self, target: str, model_name: str, timeout_seconds: float) -> None:
        self.target = target
        self.model_name = model_name
        self.timeout_seconds = timeout_seconds
        self.version: int | None = None
        self.specs = signature_specs(None)
        """The signatures by name, as the contract `load_metadata` read writes them."""
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.enable_retries", 1),
                ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
                # grpc's default reconnect backoff grows to 120 s: a restarted tier would wait that long.
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.min_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_service = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def pinned(self, version: int) -> TfServingBackend:
        """Shares the channel; every call names `version`, so a request never reaches two versions."""
        view = copy.copy(self)
        view.version = version
        return view

    def available_version(self) -> int:
        """The newest AVAILABLE version, from ModelService.GetModelStatus (no Predict call)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        try:
            response = self._model_service.GetModelStatus(request, timeout=self.timeout_seconds)
        except grpc.RpcError as error:
            raise ModelUnavailableError(
                f"TF Serving at {self.target}: {error.code().name}: {error.details()}"
            ) from error
        available = [
            status.version
            for status in response.model_version_status
            if status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        ]
        if not available:
            raise ModelUnavailableError(f"TF Serving at {self.target}: no version of {self.model_name} is available")
        return max(available)

    def _predict(self, spec: SignatureSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`spec`'s outputs for `inputs` (as `signature_inputs` gives them), by name."""
        return _arrays(spec, self._call(spec, inputs))

    def _call(self, spec: SignatureSpec, inputs: dict[str, np.ndarray]) -> predict_pb2.PredictResponse:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = spec.name
        if self.version is not None:
            request.model_spec.version.value = self.version
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(
                strings_to_proto(list(value)) if value.dtype == object else array_to_proto(value)
            )
        try:
            return self._stub.Predict(request, timeout=self.timeout_seconds)
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise ValueError(f"the model rejected the input: {details}") from error
            if code == grpc.StatusCode.NOT_FOUND and self.version is not None:
                raise ModelVersionGoneError(f"TF Serving at {self.target}: {details}") from error
            raise ModelUnavailableError(f"TF Serving at {self.target}: {code.name}: {details}") from error

    def load_metadata(self) -> ModelInfo:
        """The metadata of the version that answers (the latest unless this view is pinned)."""
        spec = self.specs[METADATA]
        response = self._call(spec, {})
        outputs = _arrays(spec, response)
        vocabulary = tuple(word.decode("utf-8") for word in outputs["vocabulary"])
        contract = ModelContract.from_json(outputs["contract"].item())
        self.specs = signature_specs(contract)
        return ModelInfo(self.model_name, response.model_spec.version.value, vocabulary, contract)

    def encode(self, image_bytes: list[bytes]) -> np.ndarray:
        return self.encode_rows(image_bytes, default_conditions(len(image_bytes))).contexts

    def encode_rows(self, image_bytes: list[bytes], conditions: list[Condition]) -> Encoding:
        spec = self.specs[ENCODE]
        return encoding_from_outputs(self._predict(spec, encode_inputs(spec, image_bytes, conditions)), conditions)

    def tokenize(self, text: str) -> tuple[int, ...]:
        spec = self.specs[TOKENIZE]
        outputs = self._predict(spec, signature_inputs(spec, text=[text.encode("utf-8")]))
        return tuple(outputs["ids"][0][: int(outputs["lengths"][0])].tolist())

    def decode_step(
        self, tokens: np.ndarray, state: np.ndarray, context: np.ndarray, context_index: np.ndarray, k: int
    ) -> DecodeStepResult:
        spec = self.specs[DECODE_STEP]
        inputs = signature_inputs(spec, tokens=tokens, state=state, context=context, context_index=context_index, k=k)
        step = DecodeStepResult(**self._predict(spec, inputs))
        return step._replace(state=step.state.astype(np.float32))

    def score(self, context: np.ndarray, texts: list[str]) -> np.ndarray:
        spec = self.specs[SCORE]
        inputs = signature_inputs(spec, context=context, text=[text.encode("utf-8") for text in texts])
        return self._predict(spec, inputs)["log_prob"]

    def explain(self, context: np.ndarray, texts: list[str]) -> list[list[tuple[str, list[float]]]]:
        spec = self.specs[EXPLAIN]
        inputs = signature_inputs(spec, context=context, text=[text.encode("utf-8") for text in texts])
        return explanations(self._predict(spec, inputs))

    def close(self) -> None:
        self._channel.close()


def _arrays(spec: SignatureSpec, response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {name: proto_to_array(proto) for name, proto in signature_outputs(spec, response.outputs).items()}
