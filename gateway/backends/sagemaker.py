"""A SageMaker endpoint running AWS's TensorFlow Serving container, called through sagemaker-runtime.

Every call is one `InvokeEndpoint` carrying TF Serving's REST predict body in columnar form
(`{"signature_name": ..., "inputs": {...}}`; image bytes as `{"b64": ...}`), and the container's
custom attributes `tfs-model-name=...,tfs-method=predict[,tfs-model-version=N]`.

The vocabulary and contract come from the `metadata_rest` signature. The `metadata` signature
cannot be used here: it takes no inputs, and TF Serving's REST API refuses every such signature
("Failed to get input map for signature: metadata"). SageMaker reaches the container only through
`POST /invocations`, which the container turns into `POST /v1/models/<name>[/versions/<v>]:<tfs-method>`.
TF Serving answers POST only for `:predict`, `:classify` and `:regress`, so `tfs-method=metadata`
is "Malformed request". Its `GET .../metadata` route is out of reach, and it returns signature
definitions, not the vocabulary. `metadata_rest` returns the same outputs as `metadata` and takes
one ignored scalar, so REST can call it; the export writes it beside `metadata`.

TF Serving's REST answers do not carry the model version. Set `model_version` to pin it (the deploy
does), so that `encode` and `decode_step` always reach the version whose vocabulary was read.
Without a pin, the reported version is 0 ("whatever the endpoint serves").

Each InvokeEndpoint is a network round trip to another AWS service, so `SageMakerGenerateBackend` (the
default, `MEMEFLY_SAGEMAKER_MODE=generate`) answers a beam-search request in one call of the model's
`generate` signature, which runs the search in-graph. `SageMakerBackend` alone is the step loop:
`encode`, then one `decode_step` call per step; sampling requests take it in both modes.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import numpy as np
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway.backends.base import (
    Condition,
    DecodeStepResult,
    Encoding,
    ModelInfo,
    ModelUnavailableError,
    default_conditions,
    encode_inputs,
    encoding_from_outputs,
    explanations,
    signature_inputs,
    signature_specs,
)
from gateway.search import Hypothesis, SearchSettings
from memefly.contract import (
    DECODE_STEP,
    ENCODE,
    EXPLAIN,
    GENERATE,
    METADATA_REST,
    SCORE,
    TOKENIZE,
    ModelContract,
    SignatureSpec,
)

UNPINNED_VERSION = 0
_SIGNATURE_MISSING = "not found in signature def"


class ModelRejectedInput(ValueError):
    """TF Serving answered 4xx (other than 404): the request's tensors were wrong."""

    def __init__(self, signature: str, message: str) -> None:
        super().__init__(f"the model rejected the {signature} input: {message}")
        self.message = message


class SageMakerBackend:
    name = "sagemaker"

    def __init__(
        self,
        endpoint_name: str,
        model_name: str,
        region: str | None = None,
        model_version: int | None = None,
        endpoint_url: str | None = None,
        connect_timeout_seconds: float = 2.0,
        read_timeout_seconds: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        self.endpoint_name = endpoint_name
        self.model_name = model_name
        self.model_version = model_version
        config = Config(
            region_name=region,  # None: boto3's own lookup (AWS_REGION, AWS_DEFAULT_REGION, ~/.aws/config)
            connect_timeout=connect_timeout_seconds,
            read_timeout=read_timeout_seconds,
            # Standard mode retries throttling, 5xx from the service and connection errors, with backoff.
            # A container's answer (ModelError, 424) is never retried: it is the model's final word.
            retries={"mode": "standard", "max_attempts": max_attempts},
        )
        self._client = boto3.client("sagemaker-runtime", endpoint_url=endpoint_url, config=config)
        self._attributes = f"tfs-model-name={model_name},tfs-method=predict"
        if model_version is not None:
            self._attributes += f",tfs-model-version={model_version}"
        self.specs = signature_specs(None)
        """The signatures by name, as the contract `load_metadata` read writes them."""
        self._step = self.specs[DECODE_STEP]
        """`decode_step`, or its float32-state twin when the model sends float16 state (not JSON-able)."""

    def available_version(self) -> int:
        """REST answers do not say which version served them: the pin, or 0 for "whatever is served"."""
        return UNPINNED_VERSION if self.model_version is None else self.model_version

    def pinned(self, version: int) -> SageMakerBackend:
        return self

    def load_metadata(self) -> ModelInfo:
        spec = self.specs[METADATA_REST]
        try:
            outputs = self._predict(spec, signature_inputs(spec, unused=0))
        except ModelRejectedInput as error:
            if _SIGNATURE_MISSING not in error.message:
                raise
            raise ModelUnavailableError(
                f"endpoint {self.endpoint_name}: the model has no `{METADATA_REST}` signature, so its vocabulary and "
                f"contract cannot be read over SageMaker (TF Serving's REST API cannot call the input-less "
                f"`metadata` signature). Re-export the model with `{METADATA_REST}` ({error.message})"
            ) from error
        vocabulary = tuple(str(word) for word in outputs["vocabulary"])
        # A scalar in the signature; read as a 1-element list too, which is what the local stand-in can send today.
        contract = ModelContract.from_json(str(np.asarray(outputs["contract"]).reshape(-1)[0]))
        self.specs = signature_specs(contract)
        self._step = self.specs[contract.decode_step_rest.name]
        version = UNPINNED_VERSION if self.model_version is None else self.model_version
        return ModelInfo(self.model_name, version, vocabulary, contract)

    def encode(self, image_bytes: list[bytes]) -> np.ndarray:
        return self.encode_rows(image_bytes, default_conditions(len(image_bytes))).contexts

    def encode_rows(self, image_bytes: list[bytes], conditions: list[Condition]) -> Encoding:
        spec = self.specs[ENCODE]
        try:
            outputs = self._predict(spec, encode_inputs(spec, image_bytes, conditions))
        except ModelRejectedInput as error:
            raise ValueError(f"the model could not decode the image: {error.message}") from error
        return encoding_from_outputs({name: np.asarray(value) for name, value in outputs.items()}, conditions)

    def tokenize(self, text: str) -> tuple[int, ...]:
        spec = self.specs[TOKENIZE]
        outputs = self._predict(spec, signature_inputs(spec, text=[text.encode("utf-8")]))
        ids = np.asarray(outputs["ids"], np.int32).reshape(1, -1)[0]
        length = int(np.asarray(outputs["lengths"], np.int32).reshape(-1)[0])
        return tuple(ids[:length].tolist())

    def decode_step(
        self, tokens: np.ndarray, state: np.ndarray, context: np.ndarray, context_index: np.ndarray, k: int
    ) -> DecodeStepResult:
        inputs = signature_inputs(
            self._step, tokens=tokens, state=state, context=context, context_index=context_index, k=k
        )
        outputs = self._predict(self._step, inputs)
        return DecodeStepResult(
            np.asarray(outputs["top_log_probs"], np.float32),
            np.asarray(outputs["top_ids"], np.int32),
            np.asarray(outputs["state"], np.float32),
        )

    def score(self, context: np.ndarray, texts: list[str]) -> np.ndarray:
        spec = self.specs[SCORE]
        outputs = self._predict(spec, signature_inputs(spec, context=context, text=[t.encode("utf-8") for t in texts]))
        return np.asarray(outputs["log_prob"], np.float32).reshape(-1)

    def explain(self, context: np.ndarray, texts: list[str]) -> list[list[tuple[str, list[float]]]]:
        spec = self.specs[EXPLAIN]
        return explanations(
            self._predict(spec, signature_inputs(spec, context=context, text=[t.encode() for t in texts]))
        )

    def close(self) -> None:
        self._client.close()

    def _predict(self, spec: SignatureSpec, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """`spec`'s outputs (JSON values), by name, for `inputs` as `signature_inputs` gives them: TF Serving's
        columnar JSON, with `*_bytes` strings as `{"b64": ...}`."""
        signature = spec.name
        columns = {name: _json_value(name, value) for name, value in inputs.items()}
        body = json.dumps({"signature_name": signature, "inputs": columns}, separators=(",", ":"))
        try:
            response = self._client.invoke_endpoint(
                EndpointName=self.endpoint_name,
                Body=body.encode("utf-8"),
                ContentType="application/json",
                Accept="application/json",
                CustomAttributes=self._attributes,
            )
            answer = response["Body"].read()
        except ClientError as error:
            raise self._error(signature, error) from error
        except BotoCoreError as error:  # connection refused, timeouts, no credentials
            raise ModelUnavailableError(f"endpoint {self.endpoint_name}: {error}") from error
        try:
            outputs = json.loads(answer)["outputs"]
            # TF Serving's columnar answer drops the names when a signature has a single output.
            return {t.name: outputs[t.name] if isinstance(outputs, dict) else outputs for t in spec.outputs}
        except (ValueError, KeyError, TypeError) as error:
            raise ModelUnavailableError(
                f"endpoint {self.endpoint_name} answered {signature} with {response.get('ContentType')!r} "
                f"{answer[:200]!r}, not TF Serving's columnar JSON"
            ) from error

    def _error(self, signature: str, error: ClientError) -> Exception:
        details = error.response
        code = details.get("Error", {}).get("Code", "")
        if code == "ModelError":
            status = int(details.get("OriginalStatusCode") or 0)
            message = _tf_serving_message(details.get("OriginalMessage", ""))
            # 404 is TF Serving's "Servable not found": the pinned version is not (or no longer) loaded.
            if 400 <= status < 500 and status != 404:
                return ModelRejectedInput(signature, message)
            return ModelUnavailableError(f"endpoint {self.endpoint_name}: {signature}: HTTP {status}: {message}")
        message = details.get("Error", {}).get("Message", str(error))
        return ModelUnavailableError(f"endpoint {self.endpoint_name}: {code or 'error'}: {message}")


class SageMakerGenerateBackend(SageMakerBackend):
    """One InvokeEndpoint per beam-search request: the model's `generate` signature runs the whole search."""

    def generate(
        self, image_jpeg: bytes, settings: SearchSettings, prefix: str = "", captions: int | None = None
    ) -> list[Hypothesis]:
        """The n best captions of one image, best first, by the gateway's search rules, in one call (with
        styles: `captions` captions, one a style)."""
        spec = self.specs[GENERATE]
        inputs = signature_inputs(
            spec,
            image_bytes=[image_jpeg],
            prefix=[(prefix if prefix.strip() else "").encode("utf-8")],
            beam_width=settings.beam_width,
            n_best=captions or settings.n_best,
            max_length=settings.max_length,
            length_penalty=settings.length_penalty,
            no_repeat_ngram_size=settings.no_repeat_ngram_size,
        )
        try:
            outputs = self._predict(spec, inputs)
        except ModelRejectedInput as error:
            if _SIGNATURE_MISSING not in error.message:
                raise
            raise ModelUnavailableError(
                f"endpoint {self.endpoint_name}: the model has no `{GENERATE}` signature. Re-export it, or set "
                f"MEMEFLY_SAGEMAKER_MODE=step_loop ({error.message})"
            ) from error
        ids, lengths = outputs["ids"][0], outputs["lengths"][0]
        return [
            Hypothesis(tuple(ids[i][:length]), float(outputs["log_probs"][0][i]), float(outputs["scores"][0][i]))
            for i, length in enumerate(lengths)
            if length > 0
        ]


def _json_value(name: str, value: np.ndarray) -> Any:
    """One input as TF Serving's REST JSON: binary strings (`*_bytes`) as `{"b64": ...}`, other strings as
    text, numbers as they are (float32 → Python float is exact, and JSON writes the shortest text that reads
    back the same)."""
    if value.ndim == 0 and value.dtype.kind == "f":
        return float(str(value))  # a float32 setting as it was written (0.7, not 0.699999988079071)
    if value.dtype != object:
        return value.tolist()
    if name.endswith("_bytes"):
        return [{"b64": base64.b64encode(item).decode("ascii")} for item in value.tolist()]
    return [item.decode("utf-8") for item in value.tolist()]


def _tf_serving_message(original: str) -> str:
    try:
        return str(json.loads(original)["error"])
    except (ValueError, KeyError, TypeError):
        return original
