"""A photo posted to the SageMaker endpoint as it is (`--content-type image/jpeg`) gets its captions as JSON.

The model archive carries `code/inference.py`; the test unpacks it as the container's /opt/ml/model, serves
it with the local stand-in (which runs the script as the container's Python service does) and calls it
with boto3's sagemaker-runtime client.
"""

from __future__ import annotations

import email.message
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import boto3
import httpx
import numpy as np
import pytest
import tensorflow as tf
from botocore.exceptions import ClientError

from infra import sagemaker_inference
from infra.model_archive import INFERENCE_SCRIPT, INFERENCE_SCRIPT_NAME, build_model_archive
from infra.predictor import MemeflyPredictor, TFServingSerializer
from memefly.contract import GENERATE, GENERATE_SIGNATURE, METADATA_REST, SPECIAL_TOKENS
from serving.http_server import HttpRequest, HttpResponse
from serving.sagemaker import SageMakerApi
from serving.sagemaker_python_service import find_script, load_script
from tests.support import MODEL_NAME, free_port, photo_jpeg, serving_process

STARTUP_SECONDS = 90
DEFAULTS = {name: setting.default for name, setting in sagemaker_inference.SETTINGS.items()}


@pytest.fixture(scope="module")
def archive(model_base_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_archive(
        {model_base_path / MODEL_NAME: [1]}, tmp_path_factory.mktemp("archive") / "model.tar.gz"
    ).path


@pytest.fixture(scope="module")
def opt_ml_model(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive unpacked as SageMaker unpacks it into /opt/ml/model."""
    root = tmp_path_factory.mktemp("opt-ml") / "model"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.fixture(scope="module")
def endpoint_url(opt_ml_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    args = [
        f"--port={free_port()}",
        f"--sagemaker_port={port}",
        f"--model_name={MODEL_NAME}",
        f"--model_base_path={opt_ml_model / MODEL_NAME}",
        "--file_system_poll_wait_seconds=0",
    ]
    log_path = tmp_path_factory.mktemp("container") / "server.log"
    with serving_process(args, log_path, stop_timeout=20) as process:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        assert "SageMaker inference script" in log_path.read_text()
        yield url


@pytest.fixture(scope="module")
def runtime(endpoint_url: str):
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )


@pytest.fixture(scope="module")
def generate(model_base_path: Path):
    """The `generate` signature itself, in this process."""
    signature = tf.saved_model.load(str(model_base_path / MODEL_NAME / "1")).signatures[GENERATE]

    def call(image: bytes, n: int) -> list[dict]:
        found = signature(
            image_bytes=tf.constant([image]),
            prefix=tf.constant([""]),
            beam_width=tf.constant(DEFAULTS["beam_width"]),
            n_best=tf.constant(n),
            max_length=tf.constant(DEFAULTS["max_length"]),
            length_penalty=tf.constant(DEFAULTS["length_penalty"]),
            no_repeat_ngram_size=tf.constant(sagemaker_inference.NO_REPEAT_NGRAM_SIZE),
        )
        texts = [t.decode() for t in found["text"].numpy()[0]]
        lengths, scores = found["lengths"].numpy()[0], found["scores"].numpy()[0]
        return [
            {"text": t, "score": float(s)} for t, n_tokens, s in zip(texts, lengths, scores, strict=True) if n_tokens
        ]

    return call


def captions_of(answer: dict) -> list[dict]:
    return [{"text": c["text"], "score": pytest.approx(c["score"], rel=1e-6)} for c in answer["captions"]]


def invoke_image(runtime, body: bytes, **extra) -> dict:
    response = runtime.invoke_endpoint(EndpointName="memefly", Body=body, ContentType="image/jpeg", **extra)
    assert response["ContentType"] == "application/json"
    return json.loads(response["Body"].read())


def model_error(runtime, body: bytes, content_type: str = "image/jpeg", **extra) -> tuple[int, dict]:
    with pytest.raises(runtime.exceptions.ModelError) as raised:
        runtime.invoke_endpoint(EndpointName="memefly", Body=body, ContentType=content_type, **extra)
    error = raised.value.response
    return error["OriginalStatusCode"], json.loads(error["OriginalMessage"])


def test_the_archive_carries_the_inference_script_reproducibly(
    model_base_path: Path, archive: Path, tmp_path: Path
) -> None:
    again = build_model_archive({model_base_path / MODEL_NAME: [1]}, tmp_path / "again.tar.gz")
    without = build_model_archive({model_base_path / MODEL_NAME: [1]}, tmp_path / "bare.tar.gz", inference_script=None)

    with tarfile.open(archive) as tar:
        script = tar.getmember(INFERENCE_SCRIPT_NAME)
        packed = tar.extractfile(script).read()
        code = tar.getmember("code")
    assert packed == INFERENCE_SCRIPT.read_bytes()
    assert (script.mtime, script.uid, script.mode, code.isdir()) == (0, 0, 0o644, True)
    assert again.path.read_bytes() == archive.read_bytes()
    with tarfile.open(without.path) as tar:
        assert not [name for name in tar.getnames() if name.startswith("code")]


def test_a_jpeg_gets_the_captions_generate_gives(runtime, generate, chelsea_jpeg: bytes) -> None:
    answer = invoke_image(runtime, chelsea_jpeg)

    expected = generate(chelsea_jpeg, DEFAULTS["n"])
    assert len(answer["captions"]) == DEFAULTS["n"] == len(expected)
    assert captions_of(answer) == expected
    assert all(c["boxes"] == c["text"].split("\n") and c["log_prob"] < 0 for c in answer["captions"])
    assert answer["model"] == {"name": MODEL_NAME, "version": None}


def test_n_in_the_custom_attributes_sets_how_many_captions(runtime, generate, chelsea_jpeg: bytes) -> None:
    answer = invoke_image(runtime, chelsea_jpeg, CustomAttributes="n=2")

    assert captions_of(answer) == generate(chelsea_jpeg, 2)
    assert len(answer["captions"]) == 2


def test_the_container_attributes_still_pick_the_model_version(runtime, generate) -> None:
    photo = photo_jpeg("astronaut")

    answer = invoke_image(runtime, photo, CustomAttributes=f"tfs-model-name={MODEL_NAME},tfs-model-version=1,n=1")

    assert answer["model"] == {"name": MODEL_NAME, "version": 1}
    assert captions_of(answer) == generate(photo, 1)


def test_a_json_request_passes_through_unchanged(runtime, endpoint_url: str, chelsea_jpeg: bytes) -> None:
    request = sagemaker_inference.generate_request(chelsea_jpeg, DEFAULTS)
    body = json.dumps(request).encode()
    tf_serving = httpx.post(f"{endpoint_url}/tfs/v1/models/{MODEL_NAME}:predict", content=body, timeout=60)

    response = runtime.invoke_endpoint(
        EndpointName="memefly",
        Body=body,
        ContentType="application/json",
        Accept="application/json",
        CustomAttributes=f"tfs-model-name={MODEL_NAME},tfs-method=predict",
    )

    assert tf_serving.status_code == 200
    assert response["Body"].read() == tf_serving.content
    assert response["ContentType"] == "application/json"


def test_tf_serving_errors_on_json_keep_their_status(runtime) -> None:
    body = json.dumps({"signature_name": "nope", "inputs": {"x": 1}}).encode()

    status, message = model_error(runtime, body, "application/json")

    assert status == 400
    assert "nope" in message["description"]


@pytest.mark.parametrize(
    "body",
    [b"not a photo", photo_jpeg("chelsea")[:200], b"\xff\xd8\xff\xe0" + b"\0" * 64],
    ids=["text", "truncated-jpeg", "jpeg-header-only"],
)
def test_a_bad_image_is_a_4xx_json_error(runtime, body: bytes) -> None:
    status, message = model_error(runtime, body)

    assert 400 <= status < 500
    assert message["description"]


@pytest.mark.parametrize(
    "attributes, status, title, words",
    [
        ("topic=mondays", 400, "unsupported_attribute", "POST /v1/memes"),
        ("n=2,style=drake", 400, "unsupported_attribute", "POST /v1/memes"),
        ("n=0", 400, "invalid_attribute", "from 1 to 16"),
        ("n=two", 400, "invalid_attribute", "an integer"),
        ("length_penalty=9", 400, "invalid_attribute", "from 0 to 4"),
        ("colour=red", 400, "invalid_attribute", "beam_width"),
    ],
)
def test_bad_settings_are_a_4xx_json_error(
    runtime, chelsea_jpeg: bytes, attributes: str, status: int, title: str, words: str
) -> None:
    found, message = model_error(runtime, chelsea_jpeg, CustomAttributes=attributes)

    assert (found, message["title"]) == (status, title)
    assert words in message["description"]


def test_an_empty_image_and_other_media_types_are_refused(runtime, endpoint_url: str) -> None:
    empty = httpx.post(f"{endpoint_url}/invocations", content=b"", headers={"Content-Type": "image/png"}, timeout=30)
    assert (empty.status_code, empty.json()["title"]) == (400, "empty_image")

    status, message = model_error(runtime, b"1.0,2.0", "text/csv")
    assert (status, message["title"]) == (415, "unsupported_media_type")


def test_ping_answers_as_the_python_service_does(endpoint_url: str) -> None:
    response = httpx.get(f"{endpoint_url}/ping", timeout=5)

    assert (response.status_code, response.content) == (200, b"")


def test_the_request_names_generates_inputs() -> None:
    request = sagemaker_inference.generate_request(b"jpeg", DEFAULTS)

    assert request["signature_name"] == GENERATE_SIGNATURE.name
    assert set(request["inputs"]) == {spec.name for spec in GENERATE_SIGNATURE.inputs}


def test_the_prefix_is_percent_decoded_and_tfs_attributes_are_skipped() -> None:
    settings = sagemaker_inference.image_settings("tfs-model-name=memefly, prefix=when%20you%2C%0A ,beam_width=3")

    assert settings == DEFAULTS | {"prefix": "when you,\n", "beam_width": 3}


class _NoTfServing:
    def handle(self, method: str, path: str, body: bytes) -> HttpResponse:
        raise AssertionError("an image must not reach TF Serving without a handler")


def test_without_an_inference_script_images_are_415_as_in_the_container() -> None:
    headers = email.message.Message()
    headers["Content-Type"] = "image/jpeg"
    api = SageMakerApi(_NoTfServing(), MODEL_NAME)  # type: ignore[arg-type]

    response = api.handle(HttpRequest("POST", "/invocations", headers, b"\xff\xd8\xff"))

    assert (response.status, json.loads(response.body)) == (415, {"error": "Unsupported Media Type: image/jpeg"})


def test_output_handler_raises_tf_serving_errors_it_is_given() -> None:
    """Before TF Serving 2.20 the container hands TF Serving's errors to output_handler."""
    context = SimpleNamespace(
        rest_uri="http://localhost:8501/v1/models/memefly:predict", request_content_type="image/png"
    )
    response = SimpleNamespace(status_code=400, content=b'{"error": "Invalid JPEG data"}')

    with pytest.raises(sagemaker_inference.InvocationError) as raised:
        sagemaker_inference.output_handler(response, context)  # type: ignore[arg-type]

    assert raised.value.status == "400 Bad Request"
    assert "Invalid JPEG data" in str(raised.value)


def test_a_script_without_handlers_stops_the_service_as_in_the_container(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text("def input_handler(data, context):\n    return data.read()\n")

    assert find_script([tmp_path / MODEL_NAME, tmp_path / "other"]) == tmp_path / "code" / "inference.py"
    with pytest.raises(NotImplementedError, match="Handlers are not implemented correctly"):
        load_script(tmp_path / "code" / "inference.py")
    assert find_script([tmp_path / "elsewhere" / MODEL_NAME]) is None


# The SageMaker SDK's side: `infra.predictor.MemeflyPredictor` (sagemaker-core's Endpoint.invoke with
# serializers), its runtime client sent to the stand-in by botocore's service-specific endpoint variable.


@pytest.fixture
def predictor(endpoint_url: str, monkeypatch: pytest.MonkeyPatch) -> MemeflyPredictor:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", endpoint_url)
    session = boto3.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    return MemeflyPredictor("memefly", session=session)


def test_the_sdk_predictor_gets_the_captions_generate_gives_from_json(predictor, generate, chelsea_jpeg) -> None:
    assert captions_of({"captions": predictor.captions(chelsea_jpeg, n=2)}) == generate(chelsea_jpeg, 2)


def test_the_sdk_predictor_posts_a_photo_as_it_is(predictor, generate) -> None:
    photo = photo_jpeg("astronaut")
    predictor.model_version = 1

    answer = predictor.photo_captions(photo, n=1)

    assert answer["model"] == {"name": MODEL_NAME, "version": 1}
    assert captions_of(answer) == generate(photo, 1)


def test_the_sdk_predictor_calls_any_signature_and_raises_the_models_refusal(predictor) -> None:
    outputs = predictor.predict(METADATA_REST, {"unused": np.int32(0)})
    assert outputs["vocabulary"][: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)

    with pytest.raises(ClientError) as raised:
        predictor.predict("nope", {"x": 1})
    assert raised.value.response["Error"]["Code"] == "ModelError"
    assert raised.value.response["OriginalStatusCode"] == 400


def test_the_tf_serving_serializer_encodes_bytes_and_numpy() -> None:
    body = TFServingSerializer().serialize(
        {"signature_name": "s", "inputs": {"b": [b"\xff\xd8"], "n": np.int32(2), "x": np.ones((1, 2), np.float32)}}
    )

    assert json.loads(body) == {"signature_name": "s", "inputs": {"b": [{"b64": "/9g="}], "n": 2, "x": [[1.0, 1.0]]}}
    assert TFServingSerializer().CONTENT_TYPE == "application/json"
