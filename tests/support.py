"""Helpers the tests share: real photos, free ports, waiting for the serving tier."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from memefly.paths import REPO_ROOT

if TYPE_CHECKING:  # TensorFlow, the gateway and the tier are imported by the helpers that need them
    import httpx
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from gateway.settings import Settings
    from serving.tier import ServingTier, TierOptions

TRANSFORMER_MODEL_NAME = "memefly-transformer"
"""The second model the side-by-side tests serve beside `MODEL_NAME`."""
MODEL_NAME = "memefly-gru"


def photo_jpeg(name: str = "chelsea") -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def embedded_settings(model_base_path: Path, meme_store_dir: Path | None = None, **overrides: object) -> Settings:
    """The gateway's settings for `MODEL_NAME` under `model_base_path`, loaded in-process."""
    from gateway.settings import Settings

    stored = {} if meme_store_dir is None else {"meme_store_dir": meme_store_dir}
    return Settings(backend="embedded", model_name=MODEL_NAME, model_base_path=model_base_path, **stored, **overrides)


def save_module(module: object, path: Path, *methods: str, **renamed: str) -> None:
    """A SavedModel of `module` whose signatures call its `methods` (each signature named as its method)
    and its `renamed` ones (signature name=method name)."""
    import tensorflow as tf

    names = {method: method for method in methods} | renamed
    tf.saved_model.save(module, str(path), signatures={name: getattr(module, method) for name, method in names.items()})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_model_status(target: str, model_name: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"serving tier exited with {process.returncode}")
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = model_name
            try:
                stub.GetModelStatus(request, timeout=2)
                return
            except grpc.RpcError:
                time.sleep(0.3)
    raise TimeoutError(f"serving tier at {target} not ready after {timeout} s")


@contextmanager
def serving_process(args: list[str], log_path: Path, stop_timeout: float = 15.0) -> Iterator[subprocess.Popen]:
    """`python -m serving ARGS` as a subprocess logging to `log_path`; stopped (killed if need be) on exit."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log_file
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def serving_model(model_base_path: Path, log_path: Path, *flags: str) -> Iterator[str]:
    """`python -m serving FLAGS` on a free port, serving `MODEL_NAME` from `model_base_path`; yields its
    gRPC target once the model answers."""
    port = free_port()
    args = [f"--port={port}", f"--model_name={MODEL_NAME}", f"--model_base_path={model_base_path / MODEL_NAME}"]
    with serving_process([*args, *flags], log_path, stop_timeout=20) as process:
        target = f"127.0.0.1:{port}"
        wait_for_model_status(target, MODEL_NAME, process)
        yield target


def assert_signatures_follow_the_contract(loaded, contract) -> None:
    """Every exported signature has exactly the contract's tensors, dtypes and shapes."""
    import tensorflow as tf

    from memefly.contract import signatures

    dtypes = {"string": tf.string, "int32": tf.int32, "float32": tf.float32, "float16": tf.float16}
    assert set(loaded.signatures) == {spec.name for spec in signatures(contract)}
    for spec in signatures(contract):
        function = loaded.signatures[spec.name]
        _, input_specs = function.structured_input_signature
        assert set(input_specs) == {t.name for t in spec.inputs}
        for tensor in spec.inputs:
            assert input_specs[tensor.name].dtype == dtypes[tensor.dtype]
            assert input_specs[tensor.name].shape.as_list() == list(tensor.shape)
        outputs = function.structured_outputs
        assert set(outputs) == {t.name for t in spec.outputs}
        for tensor in spec.outputs:
            assert outputs[tensor.name].dtype == dtypes[tensor.dtype]
            assert outputs[tensor.name].shape.rank == len(tensor.shape)


def assert_encode_and_decode_step_follow_the_contract(loaded, contract, images: list[bytes]):
    """Two different photos give different contexts of the contract's shape, and `decode_step` answers each
    beam's top k sorted, of its own image, without `<pad>` or `<start>`. Returns the contexts."""
    import numpy as np
    import tensorflow as tf

    from gateway.backends.base import default_conditions, encode_inputs
    from memefly.contract import DECODE_STEP, ENCODE

    inputs = encode_inputs(contract.encode, images, default_conditions(len(images)))
    context = loaded.signatures[ENCODE](**{name: tf.constant(value) for name, value in inputs.items()})["context"]
    assert context.shape == (2, *contract.context_shape)
    assert context.dtype == tf.float32
    assert not np.allclose(context[0], context[1]), "different photos must give different contexts"

    n, k = 5, 7
    outputs = loaded.signatures[DECODE_STEP](
        tokens=tf.fill([n], contract.start_id),
        state=tf.zeros([n, contract.state_size], contract.state_dtype),
        context=context,
        context_index=tf.constant([0, 0, 1, 1, 1]),
        k=tf.constant(k),
    )
    assert outputs["top_log_probs"].shape == outputs["top_ids"].shape == (n, k)
    assert outputs["top_ids"].dtype == tf.int32
    assert outputs["state"].shape == (n, contract.state_size)
    log_probs = outputs["top_log_probs"].numpy()
    assert np.all(np.diff(log_probs, axis=1) <= 0), "top-k comes sorted"
    assert np.all(log_probs <= 0)
    # Rows of the same image and state agree; rows of different images differ.
    np.testing.assert_allclose(log_probs[0], log_probs[1], rtol=1e-5)
    assert not np.allclose(log_probs[0], log_probs[2])
    assert {contract.pad_id, contract.start_id}.isdisjoint(outputs["top_ids"].numpy().ravel().tolist())
    return context


def assert_scores_as_in_process(backend, model_base_path: Path) -> None:
    """`backend.score` gives the in-process model's log-probabilities (two photos, two captions)."""
    import pytest

    from gateway.backends.embedded import EmbeddedBackend

    embedded = EmbeddedBackend(model_base_path, MODEL_NAME)
    context = embedded.encode([photo_jpeg("coffee"), photo_jpeg("rocket")])
    texts = ["when you see it", "one does not simply\nwalk into mordor"]
    assert backend.score(context, texts) == pytest.approx(embedded.score(context, texts), abs=1e-4)


def assert_score_equals_summed_decode_step_log_probs(loaded, contract, context, text: str) -> None:
    """Teacher-forced `score` and step-by-step `decode_step` (k = vocabulary, `<end>` included) agree."""
    import pytest
    import tensorflow as tf

    from memefly.contract import DECODE_STEP, SCORE, TOKENIZE

    ids = loaded.signatures[TOKENIZE](text=tf.constant([text]))["ids"].numpy()[0].tolist() + [contract.end_id]
    state = tf.zeros([1, contract.state_size], contract.state_dtype)
    token, total = contract.start_id, 0.0
    for target in ids:
        step = loaded.signatures[DECODE_STEP](
            tokens=tf.constant([token]),
            state=state,
            context=context,
            context_index=tf.constant([0]),
            k=tf.constant(contract.vocab_size),
        )
        row = dict(zip(step["top_ids"].numpy()[0].tolist(), step["top_log_probs"].numpy()[0].tolist(), strict=True))
        total += row[target]
        token, state = target, step["state"]
    scored = loaded.signatures[SCORE](context=context, text=tf.constant([text]))
    assert scored["num_tokens"].numpy().tolist() == [len(ids)]
    assert scored["log_prob"].numpy()[0] == pytest.approx(total, abs=1e-3)


def encode_arrays(images: list[bytes], conditioned: bool = True) -> dict:
    """`encode`'s inputs as NumPy arrays: the images, and for a conditioned model one row an image with
    the model's own topic and style choice."""
    from gateway.backends.base import default_conditions, encode_inputs
    from memefly.contract import conditioned_encode_signature, encode_signature

    spec = conditioned_encode_signature((), 0) if conditioned else encode_signature(())
    return encode_inputs(spec, images, default_conditions(len(images)))


def encode_kwargs(images: list[bytes], conditioned: bool = True) -> dict:
    """`encode_arrays` as TensorFlow tensors, to call the signature in-process."""
    import tensorflow as tf

    return {name: tf.constant(value) for name, value in encode_arrays(images, conditioned).items()}


def predict_request(
    model: str,
    signature: str = "",
    inputs: Mapping[str, object] | None = None,
    version: int | None = None,
    version_label: str = "",
) -> predict_pb2.PredictRequest:
    """A PredictRequest with each input made by `tf.make_tensor_proto` (a `TensorProto` goes as it is)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if version_label:
        request.model_spec.version_label = version_label
    for alias, value in (inputs or {}).items():
        request.inputs[alias].CopyFrom(
            value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        )
    return request


def grpc_predict(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    model: str,
    signature: str,
    inputs: Mapping[str, object],
    version: int | None = None,
    timeout: float = 30,
) -> dict[str, np.ndarray]:
    """Predict over gRPC: the outputs as NumPy arrays."""
    import tensorflow as tf

    response = stub.Predict(predict_request(model, signature, inputs, version), timeout=timeout)
    return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}


@contextmanager
def prediction_stub(target: str) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    """A PredictionService stub on its own channel to `target` (host:port), closed on exit."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def grpc_target(tier: ServingTier) -> str:
    return f"127.0.0.1:{tier.options.grpc_port}"


@contextmanager
def running_tier(options: TierOptions) -> Iterator[ServingTier]:
    """The serving tier in-process, started (or the test fails), and stopped on exit."""
    from serving.tier import ServingTier

    tier = ServingTier(options)
    assert tier.start(), "serving tier did not start"
    try:
        yield tier
    finally:
        tier.stop(0)


@contextmanager
def rest_client(port: int, timeout: float = 30) -> Iterator[httpx.Client]:
    """An HTTP client for a REST port on this machine."""
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
        yield client
