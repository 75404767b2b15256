"""The deployed endpoint from a notebook, through the SageMaker Python SDK (v3: sagemaker-core).

    from infra.predictor import MemeflyPredictor

    predictor = MemeflyPredictor("memefly-endpoint", region="us-east-1")
    photo = open("cat.jpg", "rb").read()
    predictor.captions(photo, n=3)                      # any deployed archive: TF Serving's JSON, `generate`
    predictor.photo_captions(photo, n=3)                # MEMEFLY_DEPLOY_IMAGE_INVOCATION=true archives only
    predictor.predict("tokenize", {"text": ["when the tests pass"]})

SDK v3 has no `Predictor` class any more: `sagemaker.core.resources.Endpoint.invoke` with a serializer and a
deserializer takes its place. Requests are TF Serving's columnar REST predict body, `{"signature_name": ...,
"inputs": {...}}`, with the container's custom attributes `tfs-model-name=...,tfs-method=predict` (and
`tfs-model-version=N` when pinned); `TFServingSerializer` turns bytes into `{"b64": ...}` and numpy arrays into
lists. A photo posted as it is (`photo_captions`) needs the archive's `code/inference.py`
(infra/sagemaker_inference.py). A refusal by the model raises botocore's `ModelError` (a `ClientError`; its
`response["OriginalStatusCode"]` and `["OriginalMessage"]` are the container's status and body).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import numpy as np
from sagemaker.core.deserializers import JSONDeserializer
from sagemaker.core.resources import Endpoint
from sagemaker.core.serializers import IdentitySerializer, SimpleBaseSerializer

from infra.sagemaker_inference import GENERATE, JSON_CONTENT_TYPE, SETTINGS, generate_captions, generate_request
from memefly.paths import DEFAULT_MODEL_NAME


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


class TFServingSerializer(SimpleBaseSerializer):
    """A TF Serving REST request as JSON: bytes become `{"b64": ...}`, numpy arrays and scalars lists and numbers."""

    def __init__(self) -> None:
        super().__init__(content_type=JSON_CONTENT_TYPE)

    def serialize(self, data: dict[str, Any]) -> bytes:
        return json.dumps(_jsonable(data), separators=(",", ":")).encode("utf-8")


class MemeflyPredictor:
    """Calls one SageMaker endpoint serving memefly: any signature, or captions for a photo."""

    def __init__(
        self,
        endpoint_name: str,
        model_name: str = DEFAULT_MODEL_NAME,
        model_version: int | None = None,
        region: str | None = None,
        session: boto3.Session | None = None,
    ) -> None:
        self.session = session or boto3.Session(region_name=region)
        self.region = region or self.session.region_name
        self.model_name, self.model_version = model_name, model_version
        self.endpoint = Endpoint(
            endpoint_name=endpoint_name, serializer=TFServingSerializer(), deserializer=JSONDeserializer()
        )
        self._photo_endpoint = Endpoint(
            endpoint_name=endpoint_name, serializer=IdentitySerializer("image/jpeg"), deserializer=JSONDeserializer()
        )

    def custom_attributes(self, **settings: Any) -> str:
        attributes = [f"tfs-model-name={self.model_name}", "tfs-method=predict"]
        if self.model_version is not None:
            attributes.append(f"tfs-model-version={self.model_version}")
        return ",".join(attributes + [f"{key}={value}" for key, value in settings.items()])

    def predict(self, signature_name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """TF Serving's `outputs` for one call of `signature_name` with columnar `inputs`."""
        response = self.endpoint.invoke(
            body={"signature_name": signature_name, "inputs": inputs},
            content_type=JSON_CONTENT_TYPE,
            accept=JSON_CONTENT_TYPE,
            custom_attributes=self.custom_attributes(),
            session=self.session,
            region=self.region,
        )
        return response.body["outputs"]

    def captions(self, photo: bytes, n: int = 3, **settings: Any) -> list[dict[str, Any]]:
        """`n` captions for a JPEG or PNG, each `{"text", "boxes", "score", "log_prob"}`, from `generate`.

        `settings`: `beam_width`, `max_length`, `length_penalty`, `prefix` (defaults and meaning in
        infra/sagemaker_inference.py's SETTINGS).
        """
        values = {name: setting.default for name, setting in SETTINGS.items()} | settings | {"n": n}
        return generate_captions(self.predict(GENERATE, generate_request(photo, values)["inputs"]))

    def photo_captions(self, photo: bytes, content_type: str = "image/jpeg", **settings: Any) -> dict[str, Any]:
        """The photo posted as it is: `{"captions": [...], "model": {...}}` (needs the archive's inference.py)."""
        response = self._photo_endpoint.invoke(
            body=photo,
            content_type=content_type,
            accept=JSON_CONTENT_TYPE,
            custom_attributes=self.custom_attributes(**settings),
            session=self.session,
            region=self.region,
        )
        return response.body
