"""The SageMaker TensorFlow Serving container's contract on --sagemaker_port, and boto3's
sagemaker-runtime client pointed at it.

The server is `python -m serving` as a subprocess, serving a model config file. Expected bodies
follow the container's own integration tests (aws/sagemaker-tensorflow-serving-container,
test/integration/local/test_container.py), which use the same half_plus_three model.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest
import tensorflow as tf

from tests.support import free_port, serving_process

STARTUP_SECONDS = 60
MODEL = "half_plus_three"


class HalfPlusThree(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": 0.5 * x + 3.0}


@dataclass
class Container:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    root = tmp_path_factory.mktemp("sagemaker")
    module = HalfPlusThree()
    for version in (123, 124):
        tf.saved_model.save(module, str(root / MODEL / str(version)), signatures={"serving_default": module.predict})
    config = root / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{root / MODEL}" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 123 versions: 124 } } } }"
    )
    port = free_port()
    log_path = root / "server.log"
    args = [f"--port={free_port()}", f"--sagemaker_port={port}", f"--model_config_file={config}"]
    with serving_process([*args, "--file_system_poll_wait_seconds=0"], log_path) as process:
        running = Container(f"http://127.0.0.1:{port}", process, log_path)
        wait_for_ping(running)
        yield running


def wait_for_ping(container: Container) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert container.process.poll() is None, container.log_path.read_text()
        try:
            if httpx.get(f"{container.url}/ping", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(f"no 200 from /ping after {STARTUP_SECONDS} s:\n{container.log_path.read_text()}")


@pytest.fixture(scope="module")
def client(container: Container) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=container.url, timeout=30) as http:
        yield http


def invoke(
    client: httpx.Client, body: str, content_type: str = "application/json", attributes: str = "", **headers: str
) -> httpx.Response:
    headers = {"Content-Type": content_type, **headers}
    if attributes:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
    return client.post("/invocations", content=body.encode(), headers=headers)


def test_ping_is_200_with_an_empty_body_when_the_default_model_is_available(client: httpx.Client) -> None:
    response = client.get("/ping")

    assert (response.status_code, response.content) == (200, b"")


def test_ping_is_502_when_the_named_model_is_not_served(client: httpx.Client) -> None:
    response = client.get("/ping", headers={"X-Amzn-SageMaker-Custom-Attributes": "tfs-model-name=nope"})

    assert response.status_code == 502


def test_tf_serving_json_goes_through_to_the_default_model(client: httpx.Client) -> None:
    response = invoke(client, json.dumps({"instances": [1.0, 2.0, 5.0]}))

    assert response.json() == {"predictions": [3.5, 4.0, 5.5]}
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("version", [123, 124])
def test_custom_attributes_pick_the_model_version_and_method(client: httpx.Client, version: int) -> None:
    attributes = f"tfs-model-name={MODEL},tfs-method=predict,tfs-model-version={version}"

    response = invoke(client, json.dumps({"instances": [[1.0, 2.0, 5.0], [1.0, 2.0, 5.0]]}), attributes=attributes)

    assert response.json() == {"predictions": [[3.5, 4.0, 5.5], [3.5, 4.0, 5.5]]}


def test_custom_attributes_naming_an_unserved_version_get_tf_serving_not_found(client: httpx.Client) -> None:
    response = invoke(
        client, json.dumps({"instances": [1.0]}), attributes=f"tfs-model-name={MODEL},tfs-model-version=7"
    )

    assert response.status_code == 404
    assert response.json() == {"error": f"Servable not found for request: Specific({MODEL}, 7)"}


WRAPPED_BODIES = {
    "json-lines-as-json": ("[1.0, 2.0, 5.0]\n[1.0, 2.0, 5.0]", "application/json", [[3.5, 4.0, 5.5]] * 2),
    "jsonlines": ("[1.0, 2.0, 5.0]\n[1.0, 2.0, 5.0]", "application/jsonlines", [[3.5, 4.0, 5.5]] * 2),
    "jsons-objects": ('{"x": [1.0, 2.0, 5.0]}\n{"x": [1.0, 2.0, 5.0]}', "application/jsons", [[3.5, 4.0, 5.5]] * 2),
    "plain-json": ("[1.0, 2.0, 5.0]", "application/json", [[3.5, 4.0, 5.5]]),
    "plain-json-rows": ("[[1.0, 2.0, 5.0], [1.0, 2.0, 5.0]]", "application/json", [[3.5, 4.0, 5.5]] * 2),
    "csv-one-value": ("1.0", "text/csv", [3.5]),
    "csv-zero": ("0.0", "text/csv", [3.0]),
    "csv-one-row": ("0.0,2.0,5.0", "text/csv", [[3.0, 4.0, 5.5]]),
    "csv-two-rows": ("1.0,2.0,5.0\n1.0,2.0,5.0", "text/csv", [[3.5, 4.0, 5.5]] * 2),
    "csv-column": ("1.0\n2.0\n5.0", "text/csv", [3.5, 4.0, 5.5]),
}


@pytest.mark.parametrize("body, content_type, predictions", WRAPPED_BODIES.values(), ids=WRAPPED_BODIES.keys())
def test_json_lines_plain_json_and_csv_are_wrapped_into_instances(
    client: httpx.Client, body: str, content_type: str, predictions: list
) -> None:
    response = invoke(client, body, content_type)

    assert response.json() == {"predictions": predictions}


@pytest.mark.parametrize(
    "accept, content_type",
    [
        ("application/jsonlines", "application/jsonlines"),
        ("application/json, application/jsonlines", "application/json"),
    ],
)
def test_accepting_json_strips_newlines_and_takes_the_first_type(
    client: httpx.Client, accept: str, content_type: str
) -> None:
    response = invoke(client, json.dumps({"instances": [1.0, 2.0, 5.0]}), Accept=accept)

    assert response.headers["content-type"] == content_type
    assert b"\n" not in response.content
    assert response.json() == {"predictions": [3.5, 4.0, 5.5]}


def test_unsupported_content_type_is_415_json(client: httpx.Client) -> None:
    response = invoke(client, "1.0", "text/plain")

    assert (response.status_code, response.json()) == (415, {"error": "Unsupported Media Type: text/plain"})


def test_tf_serving_errors_come_back_with_their_status_and_message(client: httpx.Client) -> None:
    response = invoke(client, json.dumps({"instances": ["]["]}))

    # The container's test saw "Invalid argument:" from older TF; absl's Status now says INVALID_ARGUMENT.
    assert response.status_code == 400
    assert response.json() == {
        "error": "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        'JSON Value: "][" Type: String is not of expected type: float'
    }


def test_other_paths_are_404_json_and_tfs_paths_reach_tf_serving(client: httpx.Client) -> None:
    assert (client.get("/nope").status_code, client.get("/nope").json()) == (404, {"error": "Not Found"})
    status = client.get(f"/tfs/v1/models/{MODEL}").json()
    assert [s["version"] for s in status["model_version_status"]] == ["124", "123"]


@pytest.fixture(scope="module")
def runtime(container: Container):
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=container.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )


def test_boto3_invoke_endpoint_returns_the_prediction(runtime) -> None:
    response = runtime.invoke_endpoint(
        EndpointName="memefly",
        Body=json.dumps({"instances": [1.0, 2.0, 5.0]}),
        ContentType="application/json",
        CustomAttributes=f"tfs-model-name={MODEL},tfs-method=predict,tfs-model-version=123",
    )

    assert json.loads(response["Body"].read()) == {"predictions": [3.5, 4.0, 5.5]}
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"


def test_boto3_sees_container_errors_as_model_error_with_the_original_status(runtime) -> None:
    with pytest.raises(runtime.exceptions.ModelError) as raised:
        runtime.invoke_endpoint(
            EndpointName="memefly",
            Body=json.dumps({"instances": [1.0]}),
            ContentType="application/json",
            CustomAttributes="tfs-model-name=nope",
        )

    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["OriginalStatusCode"] == 404
    assert json.loads(error["OriginalMessage"]) == {"error": "Servable not found for request: Latest(nope)"}
    assert "Received client error (404) from primary" in error["Error"]["Message"]
