"""--enable_batching in the local serving tier: concurrent Predict calls merged as TF Serving merges them,
and refused where TF Serving refuses them.

Servers run in-process (gRPC on a free loopback port), so the tests can read how many times each
signature function really ran (``LoadedVersion.signature_calls``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, prediction_service_pb2_grpc

from serving.batching_options import BatchingOptions
from serving.errors import InvalidArgumentError
from serving.tier import ServingTier, TierOptions
from tests.support import free_port, grpc_predict, grpc_target, prediction_stub, running_tier, save_module

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_BATCH_SIZE = 16
CALLERS = 8


class Batchable(tf.Module):
    """memefly's signatures in miniature: `encode` can be batched, `decode_step` and `metadata` cannot."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def encode(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        rows = tf.shape(image_bytes)[0]
        length = tf.cast(tf.strings.length(image_bytes), tf.float32)
        # Column 0 tells whose row it is; column 1 how many rows the call that computed it had.
        return {"context": tf.stack([length, tf.fill([rows], tf.cast(rows, tf.float32))], axis=1)}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.int32, name="tokens"),
            tf.TensorSpec([None, 2], tf.float32, name="context"),
            tf.TensorSpec([None], tf.int32, name="context_index"),
            tf.TensorSpec([], tf.int32, name="k"),
        ]
    )
    def decode_step(self, tokens: tf.Tensor, context: tf.Tensor, context_index: tf.Tensor, k: tf.Tensor):
        return {"top_ids": tf.tile(tokens[:, None], [1, k]), "picked": tf.gather(context, context_index)}

    @tf.function(input_signature=[])
    def metadata(self) -> dict[str, tf.Tensor]:
        return {"vocabulary": tf.constant(["<pad>", "cat"]), "contract": tf.constant("{}")}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="count")])
    def summary(self, count: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"doubled": count * 2, "total": tf.reduce_sum(count)}


def export(path: Path) -> None:
    save_module(Batchable(), path, "encode", "decode_step", "metadata", "summary")


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingTier]:
    root = tmp_path_factory.mktemp("batching")
    export(root / "encoder" / "1")
    parameters = root / "batching.txt"
    # One batch thread and a long timeout: the callers below all land in one open batch.
    parameters.write_text(
        f"max_batch_size {{ value: {MAX_BATCH_SIZE} }}\nbatch_timeout_micros {{ value: 300000 }}\n"
        "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 4 }\n"
    )
    options = TierOptions(
        grpc_port=free_port(),
        model_name="encoder",
        model_base_path=str(root / "encoder"),
        file_system_poll_wait_seconds=0,
        enable_batching=True,
        batching_parameters_file=str(parameters),
    )
    with running_tier(options) as tier:
        yield tier


@pytest.fixture(scope="module")
def stub(tier: ServingTier) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with prediction_stub(grpc_target(tier)) as stub:
        yield stub


def signature_calls(tier: ServingTier, model: str, signature: str) -> int:
    assert tier.store is not None
    return tier.store.resolve(model_pb2.ModelSpec(name=model)).signature_calls[signature]


def decode_step_inputs(context_rows: int) -> dict[str, np.ndarray]:
    return {
        "tokens": np.array([5, 6, 7], np.int32),
        "context": np.ones([context_rows, 2], np.float32),
        "context_index": np.array([0, 0, context_rows - 1], np.int32),
        "k": np.int32(2),
    }


def test_concurrent_encode_calls_are_merged_and_each_caller_gets_its_own_rows(tier: ServingTier, stub) -> None:
    # Caller i sends one or two "images" whose lengths identify it.
    images = [[b"x" * (10 * i + j + 1) for j in range(1 + i % 2)] for i in range(CALLERS)]
    before = signature_calls(tier, "encoder", "encode")
    barrier = threading.Barrier(CALLERS)

    def call(caller: int) -> np.ndarray:
        barrier.wait()
        inputs = {"image_bytes": np.array(images[caller], dtype=object)}
        return grpc_predict(stub, "encoder", "encode", inputs)["context"]

    with ThreadPoolExecutor(CALLERS) as pool:
        contexts = list(pool.map(call, range(CALLERS)))

    calls = signature_calls(tier, "encoder", "encode") - before
    assert calls < CALLERS, f"{CALLERS} concurrent calls ran the signature {calls} times"
    for caller, context in enumerate(contexts):
        assert context[:, 0].tolist() == [len(image) for image in images[caller]]
    assert max(context[0, 1] for context in contexts) > 2  # some call computed several callers' rows


def test_request_larger_than_max_batch_size_is_invalid_argument(stub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(stub, "encoder", "encode", {"image_bytes": np.array([b"x"] * (MAX_BATCH_SIZE + 1), dtype=object)})

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == f"Task size {MAX_BATCH_SIZE + 1} is larger than maximum input batch size 16"


@pytest.mark.parametrize("context_rows", [3, 2], ids=["scalar-k", "context-rows-differ"])
def test_decode_step_cannot_be_batched_and_fails_as_in_tf_serving(stub, context_rows: int) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(stub, "encoder", "decode_step", decode_step_inputs(context_rows))

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Which of the two TF Serving reports first depends on its input order.
    assert raised.value.details() in (
        "Batching Run() input tensors must have at least one dimension",
        "Batching Run() input tensors must have equal 0th-dimension size",
    )


def test_signature_without_inputs_cannot_be_batched(stub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(stub, "encoder", "metadata", {})

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Batching Run() must have at least one input tensor"


def test_scalar_outputs_fail_a_batch_with_failed_precondition(stub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(stub, "encoder", "summary", {"count": np.array([1, 2], np.int32)})

    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == "Batched output tensor has 0 dimensions"


@pytest.fixture(scope="module")
def per_model_stub(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    """A stub of a tier where only the encoder ships its own batching parameters."""
    root = tmp_path_factory.mktemp("per-model")
    export(root / "encoder" / "1")
    export(root / "captioner" / "1")
    (root / "encoder" / "1" / "batching_params.pbtxt").write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 0 }\nallowed_batch_sizes: [4, 16]\n"
    )
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(
            f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "tensorflow" }}\n'
            for name in ("encoder", "captioner")
        )
        + "}\n"
    )
    options = TierOptions(
        grpc_port=free_port(),
        model_config_file=str(config),
        file_system_poll_wait_seconds=0,
        enable_batching=True,
        enable_per_model_batching_parameters=True,
    )
    with running_tier(options) as tier, prediction_stub(grpc_target(tier)) as stub:
        yield stub


def test_per_model_parameters_batch_only_models_that_ship_them(per_model_stub) -> None:
    stub = per_model_stub

    picked = grpc_predict(stub, "captioner", "decode_step", decode_step_inputs(2))["picked"]
    metadata = grpc_predict(stub, "captioner", "metadata", {})
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(stub, "encoder", "metadata", {})

    assert picked.shape == (3, 2) and metadata["contract"] == b"{}"
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_allowed_batch_sizes_pad_the_batch_but_not_the_answer(per_model_stub) -> None:
    context = grpc_predict(
        per_model_stub, "encoder", "encode", {"image_bytes": np.array([b"a", b"bb", b"ccc"], dtype=object)}
    )["context"]

    assert context[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert context[:, 1].tolist() == [4.0, 4.0, 4.0]  # computed in a call padded to 4 rows


def test_repository_batching_parameters_file_parses_to_its_tuned_values() -> None:
    options = BatchingOptions.read(REPO_ROOT / "serving" / "batching_parameters.txt")

    assert (options.max_batch_size, options.batch_timeout_micros) == (8, 2000)
    assert (options.num_batch_threads, options.max_enqueued_batches) == (2, 4)
    assert options.allowed_batch_sizes == () and not options.pad_variable_length_inputs


def test_last_allowed_batch_size_must_equal_max_batch_size() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        BatchingOptions.from_text("max_batch_size { value: 8 }\nallowed_batch_sizes: [2, 4]")

    assert (
        raised.value.message
        == "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8"
    )
