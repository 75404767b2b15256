"""`code/inference.py` of the model archive: captions for a photo posted to the SageMaker endpoint as it is.

    aws sagemaker-runtime invoke-endpoint --endpoint-name NAME --content-type image/jpeg \
        --body fileb://photo.jpg [--custom-attributes n=2] out.json

AWS's TensorFlow Serving container runs this file when the archive holds it as `code/inference.py`
(docker/build_artifacts/sagemaker/python_service.py of aws/sagemaker-tensorflow-serving-container, now
scripts/docker/tensorflow/inference/sagemaker/python_service.py of aws/deep-learning-containers). Its
nginx then sends every `/invocations` to that Python service, which calls `input_handler(data, context)`,
POSTs the body it returns to `context.rest_uri` (TF Serving's REST predict URI), and answers
`output_handler(response, context)`'s `(body, content_type)` with status 200.

- `application/json` bodies go through unchanged and TF Serving's answer comes back unchanged: the
  gateway's `sagemaker` backend keeps working as before.
- `image/jpeg`, `image/png` and `application/x-image` bodies become one call of the model's `generate`
  signature (the whole beam search in-graph), and the answer `{"captions": [{"text", "boxes", "score",
  "log_prob"}], "model": {"name", "version"}}`. Settings come from the custom attributes, `key=value`
  separated by commas (see `SETTINGS`); the container's own `tfs-*` attributes still pick the model.
- `topic` and `style` are refused with 400: `generate` always lets each caption take its own style with
  the photo's concepts as topic. The gateway's `POST /v1/memes` takes both.

Errors. A refused request raises `falcon.HTTPError` (falcon is the container's web framework), which the
Python service of TF Serving 2.20 and later answers with its status; before 2.20 it answers every
exception with 500 `{"error": "<message>"}`. Likewise, from 2.20 a TF Serving error (such as an image the
model cannot decode) is answered with TF Serving's status before `output_handler` runs; before, it
reaches `output_handler`, which raises it (so 500).

The container imports this file by path, with none of this repository installed: it uses the standard
library only (and falcon when it is there). Signature and input names are those of memefly/contract.py's
`GENERATE_SIGNATURE`, which the tests check.
"""

from __future__ import annotations

import base64
import json
import re
from http import HTTPStatus
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote

try:
    import falcon
except ImportError:  # outside the container, e.g. under the local stand-in
    falcon = None

GENERATE = "generate"
JSON_CONTENT_TYPE = "application/json"
IMAGE_CONTENT_TYPES = frozenset({"image/jpeg", "image/png", "application/x-image"})
GATEWAY_ONLY = ("topic", "style")
NO_REPEAT_NGRAM_SIZE = 3  # the gateway's SearchSettings default
_REST_URI = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:")


class Setting(NamedTuple):
    kind: type
    default: Any
    low: float
    high: float
    meaning: str


SETTINGS: dict[str, Setting] = {
    "n": Setting(int, 3, 1, 16, "how many captions, each in its own style"),
    "beam_width": Setting(int, 2, 1, 16, "the beam of each caption's search (the gateway's style_beam_width)"),
    "max_length": Setting(int, 64, 1, 64, "tokens at most; the model caps it at its own maximum"),
    "length_penalty": Setting(float, 1.0, 0.0, 4.0, "scores are log P / length ** length_penalty"),
    "prefix": Setting(str, "", 0, 200, "the caption's beginning, percent-encoded; %0A closes the top box"),
}
"""The custom attributes an image request may carry, with the gateway's defaults and bounds."""


class Context(Protocol):
    """The fields of the container's `Context` namedtuple (tfs_utils.py) that these handlers read."""

    rest_uri: str
    custom_attributes: str | None
    request_content_type: str | None


class Response(Protocol):
    """What these handlers read of the `requests.Response` the container passes to `output_handler`."""

    status_code: int
    content: bytes


class InvocationError(Exception):
    """A refused request, with falcon.HTTPError's fields: where falcon is missing, the stand-in reads these."""

    def __init__(self, status: int, title: str, description: str) -> None:
        super().__init__(f"{title}: {description}")
        self.status = _status_line(status)
        self.title = title
        self.description = description

    def to_dict(self) -> dict[str, str]:
        return {"title": self.title, "description": self.description}


if falcon is not None:

    class _ContainerError(falcon.HTTPError):
        def __init__(self, status: int, title: str, description: str) -> None:
            super().__init__(falcon.code_to_http_status(status), title=title, description=description)

        def __str__(self) -> str:
            # What the Python service before 2.20 puts in its 500 body, {"error": str(exception)}.
            return f"{self.title}: {self.description}"


def refusal(status: int, title: str, description: str) -> Exception:
    if falcon is None:
        return InvocationError(status, title, description)
    return _ContainerError(status, title, description)


def input_handler(data: Any, context: Context) -> bytes:
    """The body POSTed to TF Serving: a JSON body as it came, or a `generate` request for an image."""
    content_type = _media_type(context)
    body = data.read()
    if content_type == JSON_CONTENT_TYPE:
        # Bytes, not text: `requests` sends them as they are, whatever their encoding.
        return body
    if content_type not in IMAGE_CONTENT_TYPES:
        raise refusal(
            415,
            "unsupported_media_type",
            f"Content-Type {content_type or 'none'}: send a photo as image/jpeg, image/png or "
            "application/x-image, or TF Serving's JSON as application/json",
        )
    if not body:
        raise refusal(400, "empty_image", "the body is empty: send the photo's bytes")
    request = generate_request(body, image_settings(context.custom_attributes))
    return json.dumps(request, separators=(",", ":")).encode("ascii")


def output_handler(response: Response, context: Context) -> tuple[bytes, str]:
    """TF Serving's answer as it came for JSON requests, the captions for an image."""
    if response.status_code != 200:
        raise refusal(response.status_code, "model_error", response.content.decode("utf-8", "replace"))
    if _media_type(context) not in IMAGE_CONTENT_TYPES:
        return response.content, JSON_CONTENT_TYPE
    name, version = _model(context.rest_uri)
    captions = generate_captions(json.loads(response.content)["outputs"])
    answer = {"captions": captions, "model": {"name": name, "version": version}}
    return json.dumps(answer).encode("utf-8"), JSON_CONTENT_TYPE


def generate_captions(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The first image's captions in `generate`'s columnar REST outputs (empty ones left out)."""
    return [
        {"text": text, "boxes": text.split("\n"), "score": score, "log_prob": log_prob}
        for text, length, score, log_prob in zip(
            outputs["text"][0], outputs["lengths"][0], outputs["scores"][0], outputs["log_probs"][0], strict=True
        )
        if length > 0
    ]


def image_settings(custom_attributes: str | None) -> dict[str, Any]:
    """The settings of an image request from its custom attributes; the container's `tfs-*` are skipped."""
    settings = {name: setting.default for name, setting in SETTINGS.items()}
    for item in (custom_attributes or "").split(","):
        if not item.strip() or item.strip().startswith("tfs-"):
            continue
        name, equals, text = item.partition("=")
        name = name.strip()
        if name in GATEWAY_ONLY:
            raise refusal(
                400,
                "unsupported_attribute",
                f"{name}: a direct invocation lets each caption take its own style, about what the photo shows; "
                "for topics and styles use the gateway's POST /v1/memes (fields `topic` and `style`)",
            )
        if name not in SETTINGS or not equals:
            raise refusal(
                400,
                "invalid_attribute",
                f"{item.strip()!r}: custom attributes are key=value pairs separated by commas, with keys "
                + ", ".join(f"{key} ({setting.meaning})" for key, setting in SETTINGS.items()),
            )
        settings[name] = _parsed(name, unquote(text.strip()) if name == "prefix" else text.strip())
    return settings


def generate_request(image: bytes, settings: dict[str, Any]) -> dict[str, Any]:
    """TF Serving's columnar REST request for `generate` (scalar inputs rule out the row form)."""
    return {
        "signature_name": GENERATE,
        "inputs": {
            "image_bytes": [{"b64": base64.b64encode(image).decode("ascii")}],
            "prefix": [settings["prefix"]],
            "beam_width": settings["beam_width"],
            "n_best": settings["n"],
            "max_length": settings["max_length"],
            "length_penalty": settings["length_penalty"],
            "no_repeat_ngram_size": NO_REPEAT_NGRAM_SIZE,
        },
    }


def _parsed(name: str, text: str) -> Any:
    setting = SETTINGS[name]
    if setting.kind is str:
        if len(text) > setting.high:
            raise refusal(400, "invalid_attribute", f"{name}: at most {int(setting.high)} characters")
        return text
    try:
        value = setting.kind(text)
    except ValueError:
        value = None
    if value is None or not setting.low <= value <= setting.high:
        kind = "an integer" if setting.kind is int else "a number"
        raise refusal(
            400, "invalid_attribute", f"{name}={text}: must be {kind} from {setting.low:g} to {setting.high:g}"
        )
    return value


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _media_type(context: Context) -> str:
    return (context.request_content_type or "").split(";", 1)[0].strip().lower()


def _model(rest_uri: str) -> tuple[str | None, int | None]:
    match = _REST_URI.search(rest_uri)
    if match is None:
        return None, None
    return match.group(1), None if match.group(2) is None else int(match.group(2))
