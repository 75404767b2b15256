"""The SageMaker TF Serving container's Python service, which answers `/invocations` when the model
directory holds `code/inference.py`, as the stand-in runs it.

Read from the container's sources: python_service.py and tfs_utils.py (aws/sagemaker-tensorflow-serving-
container's docker/build_artifacts/sagemaker/, now aws/deep-learning-containers'
scripts/docker/tensorflow/inference/sagemaker/), and serve.py, which turns nginx's `/ping` and
`/invocations` over to this service when `/opt/ml/model/code/inference.py` exists.

- The script is imported by path as module `inference`. It defines `handler(data, context)`, else both
  `input_handler(data, context)` and `output_handler(response, context)`; else the service fails to start.
- `data` is the request body as a readable stream; `context` a `Context` namedtuple: model_name,
  model_version, method (from the `tfs-*` custom attributes), rest_uri (TF Serving's REST URI for the
  request, as nginx's path builds it), grpc_port, channel, custom_attributes (the whole header),
  request_content_type and accept_header (each "application/json" when absent), content_length, timeout.
- With the handler pair, the service POSTs `input_handler`'s body (str or bytes) to `rest_uri`. From
  TF Serving 2.20 a non-200 answer is raised as `falcon.HTTPError` with TF Serving's status before
  `output_handler` runs; that is what the stand-in does. (Before 2.20 `output_handler` got it whatever
  its status.)
- The handler's `(body, content_type)` is answered with status 200 (content type None: falcon's
  default, application/json). A raised `falcon.HTTPError` is answered with its status and falcon's JSON
  `{"title": ..., "description": ...}` (from 2.20; before, it too was a 500); any other exception with
  500 `{"error": str(exception)}`.
- `/ping` answers 200 with no body, without asking TF Serving.

Differences: falcon is not installed here, so an exception with falcon.HTTPError's `status` line and
`to_dict()` stands for one. The stand-in calls TF Serving's REST API in-process, not over HTTP; its
`rest_uri` points at this port's `/tfs/` route, which reaches the same API, for a `handler` that POSTs
itself. `channel` is None (there is no gRPC channel to share), and the script's `code/lib` is not put on
`sys.path`, nor `code/requirements.txt` installed.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
from collections import namedtuple
from collections.abc import Callable
from email.message import Message
from http import HTTPStatus
from pathlib import Path
from typing import Any

from serving.http_server import HttpResponse
from serving.rest_api import RestApi

log = logging.getLogger("serving")

SCRIPT = Path("code") / "inference.py"
"""Where the container looks for the script, under /opt/ml/model."""
DEFAULT_MEDIA_TYPE = "application/json"
CONTEXT_TIMEOUT_SECONDS = 60

Context = namedtuple(
    "Context",
    "model_name, model_version, method, rest_uri, grpc_port, channel, "
    "custom_attributes, request_content_type, accept_header, content_length, timeout",
)


class TfsResponse:
    """The parts of `requests.Response` that `output_handler`s read."""

    def __init__(self, status_code: int, content: bytes, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers
        self.ok = status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


ScriptHandlers = Callable[[Any, Any], Any] | tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]
"""The script's `handler(data, context)`, or its `input_handler` and `output_handler`."""


def load_script(script: Path) -> ScriptHandlers:
    """The script's handlers, imported as python_service's `_import_handlers` does."""
    spec = importlib.util.spec_from_file_location("inference", script)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "handler"):
        return module.handler
    if hasattr(module, "input_handler") and hasattr(module, "output_handler"):
        return module.input_handler, module.output_handler
    raise NotImplementedError("Handlers are not implemented correctly in user script.")


class PythonService:
    def __init__(self, handlers: ScriptHandlers, rest: RestApi, rest_base_url: str, grpc_port: int) -> None:
        self._rest = rest
        self._rest_base_url = rest_base_url.rstrip("/")
        self._grpc_port = grpc_port
        self._handler = self._pair(*handlers) if isinstance(handlers, tuple) else handlers

    def ping(self) -> HttpResponse:
        return HttpResponse(200, b"", (("Content-Type", DEFAULT_MEDIA_TYPE),))

    def invoke(self, headers: Message, body: bytes, attributes: dict[str, str], tfs_uri: str) -> HttpResponse:
        """`tfs_uri`: TF Serving's REST path for the request, `/v1/models/...:<method>`."""
        context = Context(
            attributes.get("tfs-model-name"),
            attributes.get("tfs-model-version"),
            attributes.get("tfs-method"),
            self._rest_base_url + "/tfs" + tfs_uri,
            self._grpc_port,
            None,
            headers.get("X-Amzn-SageMaker-Custom-Attributes"),
            headers.get("Content-Type") or DEFAULT_MEDIA_TYPE,
            headers.get("Accept") or DEFAULT_MEDIA_TYPE,
            len(body),
            CONTEXT_TIMEOUT_SECONDS,
        )
        try:
            answer, content_type = self._handler(io.BytesIO(body), context)
        except Exception as error:  # the container's own catch-all
            return _error_response(error)
        if isinstance(answer, str):
            answer = answer.encode("utf-8")
        if not isinstance(answer, bytes | None):
            return _error_response(TypeError(f"the handler answered {type(answer).__name__}, not str or bytes"))
        return HttpResponse(200, answer or b"", (("Content-Type", content_type or DEFAULT_MEDIA_TYPE),))

    def _pair(
        self, input_handler: Callable[[Any, Any], Any], output_handler: Callable[[Any, Any], Any]
    ) -> Callable[[Any, Any], Any]:
        def handler(data: Any, context: Context) -> Any:
            processed = input_handler(data, context)
            if isinstance(processed, str):
                processed = processed.encode("utf-8")
            path = context.rest_uri.removeprefix(self._rest_base_url + "/tfs")
            response = self._rest.handle("POST", path, processed or b"")
            if response.status != 200:
                raise _HttpError(response.status, response.body.decode("utf-8", "replace"))
            return output_handler(TfsResponse(response.status, response.body, dict(response.headers)), context)

        return handler


class _HttpError(Exception):
    """falcon.HTTPError(str(status), description=...), as python_service raises it for TF Serving's errors."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = _status_line(status)
        self.title = self.status
        self.description = description

    def to_dict(self) -> dict[str, str]:
        return {"title": self.title, "description": self.description}


def _error_response(error: Exception) -> HttpResponse:
    status_line, to_dict = getattr(error, "status", None), getattr(error, "to_dict", None)
    if isinstance(status_line, str) and status_line[:3].isdigit() and callable(to_dict):
        return HttpResponse(
            int(status_line[:3]), json.dumps(to_dict()).encode(), (("Content-Type", "application/json"),)
        )
    log.error("exception handling request: %s", error, exc_info=error)
    return HttpResponse(500, json.dumps({"error": str(error)}).encode(), (("Content-Type", "application/json"),))


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def find_script(base_paths: list[Path]) -> Path | None:
    """`code/inference.py` beside the models, as /opt/ml/model/code beside /opt/ml/model/<name>; None if
    there is none. Models under different folders, several of which have one, are refused."""
    found = sorted({path.parent / SCRIPT for path in base_paths if (path.parent / SCRIPT).is_file()})
    if len(found) > 1:
        raise ValueError(
            f"several inference scripts beside the models ({', '.join(map(str, found))}); the "
            "container has one model directory"
        )
    return found[0] if found else None
