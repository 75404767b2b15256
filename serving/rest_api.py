"""TF Serving's REST API (``--rest_api_port``), as a function of method, path and body.

Routes, messages and status codes follow tensorflow_model_server's
model_servers/http_rest_api_handler.cc, http_rest_api_util.cc and http_server.cc:

- ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]``: GetModelStatus as proto JSON. A label
  does not narrow it down: TF Serving ignores labels here and lists every version.
- ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata``: GetModelMetadata, with the
  members TF Serving gives it (``{"model_spec": ..., "metadata": {"signature_def": ...}}``), as compact JSON.
- ``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict``: see ``serving.json_tensor``.
  ``:classify`` and ``:regress`` are routed but not implemented by this stand-in (501).
- Any other path under ``/v1/`` is ``400 Malformed request``; paths outside it get libevent's
  404 page. Errors are ``{"error": ...}`` with gRPC codes mapped to HTTP as ToHTTPStatusCode does.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import unquote

from google.protobuf import json_format
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from serving.errors import InvalidArgumentError, ServingError, UnimplementedError
from serving.http_server import HttpResponse
from serving.json_tensor import InputInfos, error_body, parse_predict_request, predict_response
from serving.model_store import DEFAULT_SIGNATURE, ModelStore

JSON_HEADERS = (("Content-Type", "application/json"),)
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, GET"),
    ("Access-Control-Allow-Headers", "Content-Type"),
)
# ToHTTPStatusCode (http_server.cc).
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
# kHTTPRestApiHandlerPathRegex, kPredictionApiGegex and kModelStatusApiRegex.
_HANDLED_PATH = re.compile(r"(?i)/v1/.*")
_PREDICTION_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
_STATUS_PATH = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
# evhttp_send_error(req, HTTP_NOTFOUND, nullptr) in libevent.
_NOT_FOUND_PAGE = b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
_INT64_MAX = 2**63 - 1


class RestApi:
    """Answers TF Serving REST requests from a ModelStore; no sockets here (see ``serving.http_server``)."""

    def __init__(self, store: ModelStore, timeout_seconds: float = 30.0, cors: bool = False) -> None:
        self._store = store
        self._timeout_seconds = timeout_seconds  # --rest_api_timeout_in_ms
        self._cors = cors  # --rest_api_enable_cors_support

    def handle(self, method: str, path: str, body: bytes, origin: str = "") -> HttpResponse:
        path = path.split("?", 1)[0]
        if not _HANDLED_PATH.fullmatch(path):
            return HttpResponse(404, _NOT_FOUND_PAGE, (("Content-Type", "text/html"), ("Connection", "close")))
        headers = JSON_HEADERS + (CORS_HEADERS if self._cors else ())
        try:
            if method == "OPTIONS":
                if not re.search(r"https?://", origin):
                    raise ServingError("Origin header is missing in CORS preflight", "FAILED_PRECONDITION")
                return HttpResponse(200, b"", CORS_HEADERS if self._cors else ())
            return HttpResponse(200, self._dispatch(method, path, body), headers)
        except ServingError as exc:
            return HttpResponse(HTTP_STATUS.get(exc.code, 500), error_body(exc.message), headers)

    def _dispatch(self, method: str, path: str, body: bytes) -> bytes:
        malformed = InvalidArgumentError(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICTION_PATH.fullmatch(path)
            if match is None:
                raise malformed
            name, version, label, verb = match.groups()
            spec = _model_spec(name, version, label)
            if verb == "predict":
                return self._predict(spec, body)
            if verb in ("classify", "regress"):
                raise UnimplementedError(
                    f":{verb} is not implemented by this local stand-in for tensorflow_model_server"
                )
            raise malformed  # the regex ignores case; the verb check does not
        if method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if match is None:
                raise malformed
            name, version, label, subresource = match.groups()
            if not name:
                raise InvalidArgumentError("Missing model name in request.")
            spec = _model_spec(name, version, label)
            return self._metadata(spec) if subresource == "metadata" else self._status(spec)
        raise malformed

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
        def input_infos(signature_name: str) -> InputInfos:
            signature_defs = self._store.resolve(spec).signature_defs
            name = signature_name or DEFAULT_SIGNATURE
            if name not in signature_defs:
                # GetInfoMap words this differently from Predict's FAILED_PRECONDITION.
                raise InvalidArgumentError(f'Serving signature name: "{name}" not found in signature def')
            return signature_defs[name].inputs

        request = parse_predict_request(body, input_infos)
        servable = self._store.resolve(spec)
        outputs = servable.predict(
            request.signature_name or DEFAULT_SIGNATURE,
            request.inputs,
            deadline=time.monotonic() + self._timeout_seconds,
        )
        return predict_response(outputs, request.format)

    def _status(self, spec: model_pb2.ModelSpec) -> bytes:
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self._store.version_status(spec.name, version):
            entry = response.model_version_status.add(version=status.version)
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
            entry.status.error_code = error_codes_pb2.Code.Value(status.error_code)
            entry.status.error_message = status.error_message
            entry.status.SetInParent()
        return json.dumps(_proto_dict(response, preserve_names=False)).encode()

    def _metadata(self, spec: model_pb2.ModelSpec) -> bytes:
        servable = self._store.resolve(spec)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in servable.signature_defs.items():
            signature_defs.signature_def[name].CopyFrom(signature_def)
        model_spec = {"name": servable.name, "signature_name": "", "version": str(servable.version)}
        metadata = {"signature_def": _proto_dict(signature_defs, preserve_names=True)}
        return json.dumps({"model_spec": model_spec, "metadata": metadata}).encode()


def _model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    """ParseModelInfo and FillModelSpecWithNameVersionAndLabel."""
    spec = model_pb2.ModelSpec(name=unquote(name))
    if version is not None:
        if int(version) > _INT64_MAX:
            raise InvalidArgumentError(f"Failed to convert version: {version} to numeric.")
        spec.version.value = int(version)
    if label is not None:
        spec.version_label = unquote(label)
    return spec


def _proto_dict(message: Any, preserve_names: bool) -> dict[str, Any]:
    """A proto as TF Serving's JSON: every field, default values included."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=preserve_names,
        always_print_fields_with_no_presence=True,
    )
