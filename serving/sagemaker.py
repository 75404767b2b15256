"""The SageMaker TensorFlow Serving container's HTTP contract (``--sagemaker_port``, our own flag),
plus SageMaker Runtime's InvokeEndpoint path, so boto3's ``sagemaker-runtime`` client can be
pointed at a local port with ``endpoint_url``.

Container side, as the container's nginx + njs front end does it when there is no inference.py
(aws/sagemaker-tensorflow-serving-container, docker/build_artifacts/sagemaker/tensorflowServing.js
and nginx.conf.template; the same files live on in aws/deep-learning-containers):

- ``GET /ping``: asks TF Serving's REST API for the model's status; 200 with an empty body when
  the text holds ``"AVAILABLE"``, else nginx's 502 page.
- ``POST /invocations``: Content-Type must be exactly ``application/json``, ``application/jsonlines``,
  ``application/jsons`` or ``text/csv`` (else 415). A JSON body naming ``instances``, ``inputs`` or
  ``examples`` goes to TF Serving as it is; JSON lines and plain JSON are wrapped into
  ``{"instances": ...}``, CSV rows likewise. TF Serving's status and body come back; with an Accept
  header listing ``application/json`` or ``application/jsonlines`` the body loses its newlines and
  takes the first listed type as Content-Type.
- ``X-Amzn-SageMaker-Custom-Attributes: tfs-model-name=...,tfs-model-version=...,tfs-method=...``
  picks the model (default: ``SAGEMAKER_TFS_DEFAULT_MODEL_NAME``, else the first configured model),
  the version and the method (default ``predict``).
- ``/tfs/...`` is TF Serving's REST API; any other path is ``404 {"error": "Not Found"}``.
- With ``code/inference.py`` beside the models (/opt/ml/model/code/inference.py in the container), the
  container's Python service answers ``/ping`` and ``/invocations`` instead, running the script's
  handlers for any content type (``serving/sagemaker_python_service.py``).

Runtime side (``POST /endpoints/{name}/invocations``, sagemaker-runtime 2017-05-13): the request's
Content-Type, Accept and custom attributes go to ``/invocations``; a 2xx answer is returned with
``x-Amzn-Invoked-Production-Variant``, any other becomes the service's ``424 ModelError`` carrying
OriginalStatusCode and OriginalMessage. Any endpoint name is accepted: one local container serves it.
"""

from __future__ import annotations

import json
import re
import uuid
from email.message import Message

from serving.http_server import HttpRequest, HttpResponse
from serving.rest_api import RestApi
from serving.sagemaker_python_service import PythonService

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
JSON_CONTENT_TYPES = ("application/json", "application/jsonlines", "application/jsons")
PRODUCTION_VARIANT = "AllTraffic"  # what the SageMaker SDK names a single variant
LOCAL_ACCOUNT = "000000000000"
DEFAULT_REGION = "us-east-1"
NO_DEFAULT_MODEL = "None"  # the container's SAGEMAKER_TFS_DEFAULT_MODEL_NAME when unset

_RUNTIME_PATH = re.compile(r"/endpoints/([^/]+)/invocations")
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/")
_NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_JSON = (("Content-Type", "application/json"),)


class SageMakerApi:
    def __init__(
        self, rest: RestApi, default_model: str = NO_DEFAULT_MODEL, python_service: PythonService | None = None
    ) -> None:
        self._rest = rest
        self._default_model = default_model
        self._python_service = python_service

    def handle(self, request: HttpRequest) -> HttpResponse:
        path = request.path.split("?", 1)[0]
        runtime = _RUNTIME_PATH.fullmatch(path)
        if runtime and request.method == "POST":
            return self._invoke_endpoint(runtime.group(1), request)
        # nginx prefix locations of the container.
        if path.startswith("/tfs"):
            return self._rest.handle(request.method, re.sub(r"^/tfs/", "/", path), request.body)
        if path.startswith("/ping"):
            return self._ping(request.headers)
        if path.startswith("/invocations"):
            return self._invocations(request.headers, request.body)
        return HttpResponse(404, b'{"error": "Not Found"}', _JSON)

    def _ping(self, headers: Message) -> HttpResponse:
        if self._python_service is not None:
            return self._python_service.ping()
        status = self._rest.handle("GET", self._tfs_uri(headers, with_method=False), b"")
        if status.status == 200 and b'"AVAILABLE"' in status.body:
            return HttpResponse(200, b"", _JSON)
        return HttpResponse(502, _NGINX_502, (("Content-Type", "text/html"),))

    def _invocations(self, headers: Message, body: bytes) -> HttpResponse:
        if self._python_service is not None:
            uri = self._tfs_uri(headers, with_method=True)
            return self._python_service.invoke(headers, body, _tfs_attributes(headers), uri)
        content_type = headers.get("Content-Type")
        data = body.decode("utf-8", "surrogateescape")
        if content_type in JSON_CONTENT_TYPES:
            if re.search(r'"(instances|inputs|examples)"\s*:', data):
                tfs_json = data
            elif re.search(r"[}\]]\s*[\[{]", data):
                tfs_json = _json_lines_to_instances(data)
            else:
                tfs_json = '{"instances":' + (data if re.match(r"\s*\[\s*\[", data) else f"[{data}]") + "}"
        elif content_type == "text/csv":
            tfs_json = _csv_to_instances(data)
        else:
            message = f"Unsupported Media Type: {content_type or 'Unknown'}"
            return HttpResponse(415, ('{"error": "' + message + '"}').encode(), _JSON)
        return self._tfs_json_request(headers, tfs_json.encode("utf-8", "surrogateescape"))

    def _tfs_json_request(self, headers: Message, body: bytes) -> HttpResponse:
        response = self._rest.handle("POST", self._tfs_uri(headers, with_method=True), body)
        text = response.body
        if response.status == 400:
            text = text.replace(b"\\'instances\\'", b"'instances'")
        content_type = "application/json"
        accept = headers.get("Accept")
        if accept is not None:
            content_types = accept.strip().replace(" ", "", 1).split(",")  # JS replace(): first space only
            if "application/jsonlines" in content_types or "application/json" in content_types:
                text = text.replace(b"\n", b"")
                content_type = content_types[0]
        return HttpResponse(response.status, text, (("Content-Type", content_type),))

    def _tfs_uri(self, headers: Message, with_method: bool) -> str:
        attributes = _tfs_attributes(headers)
        uri = "/v1/models/" + (attributes.get("tfs-model-name") or self._default_model)
        if "tfs-model-version" in attributes:
            uri += "/versions/" + attributes["tfs-model-version"]
        if with_method:
            uri += ":" + (attributes.get("tfs-method") or "predict")
        return uri

    def _invoke_endpoint(self, endpoint: str, request: HttpRequest) -> HttpResponse:
        container = self._invocations(request.headers, request.body)
        request_id = ("x-amzn-RequestId", str(uuid.uuid4()))
        if 200 <= container.status < 300:
            content_type = dict(container.headers).get("Content-Type", "application/json")
            headers = (("Content-Type", content_type), ("x-Amzn-Invoked-Production-Variant", PRODUCTION_VARIANT))
            return HttpResponse(200, container.body, (*headers, request_id))
        scope = _CREDENTIAL_SCOPE.search(request.headers.get("Authorization") or "")
        region = scope.group(1) if scope else DEFAULT_REGION
        log_group = f"/aws/sagemaker/Endpoints/{endpoint}"
        original = container.body.decode("utf-8", "replace")
        kind = "client" if container.status < 500 else "server"
        message = (
            f'Received {kind} error ({container.status}) from primary with message "{original}". '
            f"See https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
            f"#logEventViewer:group={log_group} in account {LOCAL_ACCOUNT} for more information."
        )
        error = {
            "LogStreamArn": f"arn:aws:logs:{region}:{LOCAL_ACCOUNT}:log-group:{log_group}",
            "Message": message,
            "OriginalMessage": original,
            "OriginalStatusCode": container.status,
        }
        headers = (
            ("Content-Type", "application/json"),
            ("x-amzn-ErrorType", "ModelError:http://internal.amazon.com/coral/com.amazon.sagemaker/"),
            request_id,
        )
        return HttpResponse(424, json.dumps(error).encode(), headers)


def _tfs_attributes(headers: Message) -> dict[str, str]:
    attributes = {}
    for pair in re.findall(r"tfs-[a-z\-]+=[^,]+", headers.get(CUSTOM_ATTRIBUTES) or ""):
        parts = pair.split("=")
        if len(parts) == 2:
            attributes[parts[0]] = parts[1]
    return attributes


def _json_lines_to_instances(data: str) -> str:
    lines = re.split(r"\r?\n", data.strip())
    parts = ['{"instances":', "[" if len(lines) != 1 else ""]
    for index, line in enumerate(lines):
        if line.strip():
            parts.append(("" if index == 0 else ",") + line.strip())
    parts.append("}" if len(lines) == 1 else "]}")
    return "".join(parts)


def _csv_to_instances(data: str) -> str:
    # The container's csv_request, quirks included: only the first '"' and ',' of a row are
    # rewritten when quoting.
    needs_quotes = re.match(r'\s*("|[\d.Ee+\-]+.*)', data) is None
    lines = re.split(r"\r?\n", data.strip())
    parts = ['{"instances":[']
    for index, raw in enumerate(lines):
        line = raw.strip()
        if line:
            several = "," in line
            row = '"' + line.replace('"', '\\"', 1).replace(",", '","', 1) + '"' if needs_quotes else line
            parts.append(f"[{row}]" if several else row)
            if index != len(lines) - 1:
                parts.append(",")
    parts.append("]}")
    return "".join(parts)
