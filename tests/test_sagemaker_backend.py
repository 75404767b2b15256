"""The gateway's SageMaker backend against the local stand-in's SageMaker contract (--sagemaker_port).

The stand-in serves two models from one model config file:

- `memefly`: the session's tiny model, saved again by the test with its own `metadata_rest` wrapper
  (`metadata`'s outputs behind one ignored scalar input, so TF Serving's REST API can call it).
- `plain`: the session's export as it is, which now writes `metadata_rest` itself.

boto3's sagemaker-runtime client reaches it through `endpoint_url`, as it would reach AWS.

The gateway's two modes (`generate`: one InvokeEndpoint per meme; `step_loop`) are checked against the
serving tier run in-process, whose per-signature call counts show what each meme cost.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.backends import ModelUnavailableError
from gateway.backends.sagemaker import SageMakerBackend, SageMakerGenerateBackend
from gateway.search import SearchSettings
from memefly.contract import DECODE_STEP_REST, METADATA_REST, METADATA_REST_SIGNATURE
from tests.support import MODEL_NAME, assert_scores_as_in_process, free_port, photo_jpeg, serving_process

STARTUP_SECONDS = 90
PLAIN = "plain"
STEP_OVER_JSON = DECODE_STEP_REST
"""The tiny GRU sends float16 state, which JSON cannot carry: its step loop calls the float32 twin."""
REGION = "us-east-1"


def export_with_rest_metadata(module, model_dir: Path) -> None:
    """What the export would write with the proposed `metadata_rest` signature."""
    import tensorflow as tf

    from memefly.contract import DECODE_STEP, DECODE_STEP_REST, ENCODE, METADATA, SCORE, TOKENIZE

    wrapper = tf.Module()
    wrapper.model = module

    def metadata_rest(unused: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = module.metadata()
        # The proposal returns `contract` as a scalar, as `metadata` does. The stand-in's REST writer fails
        # on scalar string outputs today (serving/json_tensor.py, predict_response gets `bytes`), so this
        # test model sends it as a 1-element vector, which the backend reads too.
        return {"vocabulary": outputs["vocabulary"], "contract": tf.reshape(outputs["contract"], [1])}

    wrapper.metadata_rest = tf.function(
        metadata_rest, input_signature=[tf.TensorSpec([], tf.int32, name=METADATA_REST_SIGNATURE.inputs[0].name)]
    )
    signatures = {
        ENCODE: module.encode,
        DECODE_STEP: module.decode_step,
        DECODE_STEP_REST: module.decode_step_rest,
        METADATA: module.metadata,
        TOKENIZE: module.tokenize,
        SCORE: module.score,
        METADATA_REST: wrapper.metadata_rest,
    }
    tf.saved_model.save(wrapper, str(model_dir / "1"), signatures=signatures)


@pytest.fixture(scope="module")
def endpoint_url(tmp_path_factory: pytest.TempPathFactory, tiny_training, model_base_path: Path) -> Iterator[str]:
    root = tmp_path_factory.mktemp("sagemaker-backend")
    export_with_rest_metadata(tiny_training.module, root / MODEL_NAME)
    config = root / "models.config"
    config.write_text(
        "model_config_list { "
        f'config {{ name: "{MODEL_NAME}" base_path: "{root / MODEL_NAME}" model_platform: "tensorflow" }} '
        f'config {{ name: "{PLAIN}" base_path: "{model_base_path / MODEL_NAME}" model_platform: "tensorflow" }} }}'
    )
    port = free_port()
    log_path = root / "server.log"
    args = [f"--port={free_port()}", f"--sagemaker_port={port}", f"--model_config_file={config}"]
    with serving_process([*args, "--file_system_poll_wait_seconds=0"], log_path) as process:
        url = f"http://127.0.0.1:{port}"
        wait_until_both_models_answer_ping(url, process, log_path)
        yield url


def wait_until_both_models_answer_ping(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    pending = [MODEL_NAME, PLAIN]
    while pending and time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            headers = {"X-Amzn-SageMaker-Custom-Attributes": f"tfs-model-name={pending[0]}"}
            if httpx.get(f"{url}/ping", headers=headers, timeout=2).status_code == 200:
                pending.pop(0)
                continue
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    if pending:
        pytest.fail(f"/ping not 200 for {pending} after {STARTUP_SECONDS} s:\n{log_path.read_text()}")


def backend(endpoint_url: str, model_name: str = MODEL_NAME, **options) -> SageMakerBackend:
    return SageMakerBackend("memefly-endpoint", model_name, REGION, endpoint_url=endpoint_url, **options)


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


def test_captions_over_sagemaker_are_the_embedded_backends(
    endpoint_url: str, model_base_path: Path, chelsea_jpeg: bytes
) -> None:
    from gateway.backends.embedded import EmbeddedBackend
    from gateway.captioner import ModelSession

    results = {}
    for name, model_backend in {
        "embedded": EmbeddedBackend(model_base_path, MODEL_NAME),
        "sagemaker": backend(endpoint_url, model_version=1),
    }.items():
        session = ModelSession(model_backend)
        try:
            captioner = session.captioner()
            settings = SearchSettings(beam_width=3, n_best=3, length_penalty=1.0, max_length=captioner.max_length(None))
            results[name] = (captioner.info, captioner.caption(chelsea_jpeg, settings))
        finally:
            session.close()

    (embedded_info, embedded), (sagemaker_info, sagemaker) = results["embedded"], results["sagemaker"]
    assert sagemaker_info.vocabulary == embedded_info.vocabulary
    assert sagemaker_info.contract == embedded_info.contract
    assert sagemaker_info.version == 1
    assert [c.boxes for c in sagemaker.captions] == [c.boxes for c in embedded.captions]
    assert [c.log_prob for c in sagemaker.captions] == pytest.approx([c.log_prob for c in embedded.captions], abs=1e-4)
    assert sagemaker.model_calls == embedded.model_calls
    assert sagemaker.captions, "the model wrote no caption"


def test_tokenize_over_sagemaker_gives_the_models_ids(endpoint_url: str) -> None:
    model_backend = backend(endpoint_url)
    try:
        info = model_backend.load_metadata()
        word = info.vocabulary[len(info.contract.special_tokens)]

        assert model_backend.tokenize(word) == (len(info.contract.special_tokens),)
    finally:
        model_backend.close()


def test_score_over_sagemaker_equals_the_in_process_score(endpoint_url: str, model_base_path: Path) -> None:
    model_backend = backend(endpoint_url, model_version=1)
    try:
        assert_scores_as_in_process(model_backend, model_base_path)
    finally:
        model_backend.close()


def test_unpinned_backend_reports_version_zero(endpoint_url: str) -> None:
    model_backend = backend(endpoint_url)
    try:
        assert model_backend.load_metadata().version == 0
    finally:
        model_backend.close()


def test_bytes_that_are_no_image_are_a_value_error(endpoint_url: str) -> None:
    model_backend = backend(endpoint_url, model_version=1)
    try:
        with pytest.raises(ValueError, match="could not decode the image"):
            model_backend.encode([b"this is not a JPEG"])
    finally:
        model_backend.close()


def test_tensors_of_the_wrong_shape_are_a_value_error_naming_the_signature(endpoint_url: str) -> None:
    import numpy as np

    model_backend = backend(endpoint_url, model_version=1)
    try:
        info = model_backend.load_metadata()
        context = model_backend.encode([photo_jpeg()])
        wrong_state = np.zeros((1, info.contract.state_size + 1), np.float32)
        with pytest.raises(ValueError, match="the model rejected the decode_step_rest input: "):
            model_backend.decode_step(
                np.array([info.contract.start_id]), wrong_state, context, np.zeros(1, np.int32), 3
            )
    finally:
        model_backend.close()


def test_a_pinned_version_the_endpoint_does_not_serve_is_unavailable(endpoint_url: str) -> None:
    model_backend = backend(endpoint_url, model_version=7)
    try:
        with pytest.raises(
            ModelUnavailableError,
            match=re.escape(f"HTTP 404: Servable not found for request: Specific({MODEL_NAME}, 7)"),
        ):
            model_backend.load_metadata()
    finally:
        model_backend.close()


def test_the_projects_own_export_serves_metadata_over_rest(endpoint_url: str) -> None:
    """The export writes `metadata_rest` itself, so the unmodified SavedModel works over SageMaker."""
    plain, wrapped = backend(endpoint_url, model_name=PLAIN), backend(endpoint_url)
    try:
        assert plain.load_metadata().vocabulary == wrapped.load_metadata().vocabulary
    finally:
        plain.close()
        wrapped.close()


def test_a_down_endpoint_is_unavailable_within_the_timeouts() -> None:
    closed_port = free_port()
    model_backend = backend(f"http://127.0.0.1:{closed_port}", connect_timeout_seconds=0.5, max_attempts=2)
    started = time.monotonic()
    try:
        with pytest.raises(ModelUnavailableError, match="memefly-endpoint: Could not connect to the endpoint URL"):
            model_backend.load_metadata()
    finally:
        model_backend.close()
    assert time.monotonic() - started < 10


def test_generate_mode_on_a_model_without_generate_names_the_fix(endpoint_url: str, chelsea_jpeg: bytes) -> None:
    # `memefly` here is the test's own re-export, with every signature but `generate`.
    model_backend = SageMakerGenerateBackend("memefly-endpoint", MODEL_NAME, REGION, endpoint_url=endpoint_url)
    try:
        with pytest.raises(ModelUnavailableError, match="no `generate` signature.*MEMEFLY_SAGEMAKER_MODE=step_loop"):
            model_backend.generate(chelsea_jpeg, SearchSettings())
    finally:
        model_backend.close()


@pytest.fixture(scope="module")
def counted_endpoint(model_base_path: Path) -> Iterator[tuple[str, Counter[str]]]:
    """The serving tier in-process on the session's export: the SageMaker port, and the calls of each signature."""
    from tensorflow_serving.apis import model_pb2

    from serving.tier import ServingTier, TierOptions

    port = free_port()
    options = TierOptions(
        grpc_port=free_port(),
        model_name=MODEL_NAME,
        model_base_path=str(model_base_path / MODEL_NAME),
        file_system_poll_wait_seconds=0,
        sagemaker_port=port,
    )
    tier = ServingTier(options)
    assert tier.start(), "the serving tier did not start"
    try:
        assert tier.store is not None
        yield f"http://127.0.0.1:{port}", tier.store.resolve(model_pb2.ModelSpec(name=MODEL_NAME)).signature_calls
    finally:
        tier.stop(0)


@pytest.fixture(scope="module")
def gateways(
    counted_endpoint: tuple[str, Counter[str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TestClient]]:
    from gateway.app import create_app
    from gateway.settings import Settings

    url, _ = counted_endpoint
    common = {
        "backend": "sagemaker",
        "model_name": MODEL_NAME,
        "sagemaker_endpoint_url": url,
        "sagemaker_region": REGION,
        "sagemaker_model_version": 1,
        "meme_store_dir": tmp_path_factory.mktemp("memes"),
    }
    with (
        TestClient(create_app(Settings(sagemaker_mode="generate", **common))) as generate,
        TestClient(create_app(Settings(sagemaker_mode="step_loop", **common))) as step_loop,
    ):
        yield {"generate": generate, "step_loop": step_loop}


def _meme(client: TestClient, calls: Counter[str], image: bytes, **form) -> tuple[httpx.Response, Counter[str]]:
    """POSTs a meme; returns the answer and the model calls it made."""
    before = Counter(calls)
    headers = {"Accept": "application/json"} if form.pop("json", False) else {}
    response = client.post("/v1/memes", files={"image": ("photo.jpg", image, "image/jpeg")}, data=form, headers=headers)
    assert response.status_code == 200, response.text
    return response, Counter(calls) - before


def test_generate_mode_makes_a_meme_with_one_invocation(
    gateways: dict[str, TestClient], counted_endpoint: tuple[str, Counter[str]], chelsea_jpeg: bytes
) -> None:
    _, calls = counted_endpoint
    response, made = _meme(gateways["generate"], calls, chelsea_jpeg)

    assert made == Counter({"generate": 1})
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-memefly-rpcs"] == "1"
    assert Image.open(io.BytesIO(response.content)).size == Image.open(io.BytesIO(chelsea_jpeg)).size


@pytest.mark.parametrize("prefix", ["", "me when\n"])
def test_generate_mode_gives_the_step_loops_captions(
    gateways: dict[str, TestClient], counted_endpoint: tuple[str, Counter[str]], chelsea_jpeg: bytes, prefix: str
) -> None:
    _, calls = counted_endpoint
    answers, made = {}, {}
    for mode, client in gateways.items():
        response, made[mode] = _meme(client, calls, chelsea_jpeg, json=True, prefix=prefix, beam_width="3")
        answers[mode] = response.json()

    assert made["generate"] == Counter({"generate": 1}) and answers["generate"]["rpcs"] == 1
    assert "generate" not in made["step_loop"] and made["step_loop"][STEP_OVER_JSON] >= 2
    generated, stepped = answers["generate"]["captions"], answers["step_loop"]["captions"]
    assert generated, "no caption"
    assert [c["boxes"] for c in generated] == [c["boxes"] for c in stepped]
    assert [c["score"] for c in generated] == pytest.approx([c["score"] for c in stepped], abs=1e-4)


def test_sampling_in_generate_mode_takes_the_step_loop(
    gateways: dict[str, TestClient], counted_endpoint: tuple[str, Counter[str]], chelsea_jpeg: bytes
) -> None:
    _, calls = counted_endpoint
    response, made = _meme(gateways["generate"], calls, chelsea_jpeg, json=True, decoding="sample", seed="7")
    plain, plain_made = _meme(
        gateways["generate"], calls, chelsea_jpeg, json=True, decoding="sample", seed="7", rerank="1"
    )

    # Re-ranking adds one `score` call, and the blank image's `encode` the first time.
    assert "generate" not in made and made["encode"] == 2 and made["score"] == 1 and made[STEP_OVER_JSON] >= 1
    assert "generate" not in plain_made and plain_made["encode"] == 1 and "score" not in plain_made
    assert response.json()["rpcs"] == sum(made.values())
    assert plain.json()["rpcs"] == sum(plain_made.values())
