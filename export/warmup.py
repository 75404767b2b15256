"""TF Serving warm-up records, written into every exported version.

tensorflow_model_server replays `<version>/assets.extra/tf_serving_warmup_requests` (a TFRecord file of
`PredictionLog`s) before it marks a version AVAILABLE, so the first real request does not pay for graph
optimisation and lazy initialisation (the vocabulary table, the While loop of `generate`). There is one
small request for every signature the model exports; `serving/warmup.py` replays them the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from memefly.contract import (
    DECODE_STEP,
    DECODE_STEP_REST,
    ENCODE,
    EXPLAIN,
    GENERATE,
    METADATA,
    METADATA_REST,
    SCORE,
    TOKENIZE,
    ModelContract,
    signatures,
)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
WARMUP_TEXT = "when the model\nwarms up"


def warmup_jpeg(size: int = 48) -> bytes:
    """A small real JPEG (a colour gradient): `encode` decodes and resizes it as it would a photo."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 255 - ramp[:, None]), axis=-1)
    return tf.io.encode_jpeg(pixels.astype(np.uint8)).numpy()


def _encode_rows(contract: ModelContract) -> dict[str, np.ndarray]:
    """One row of each kind: the photo's own topic and style choice, and a given topic and style."""
    if not contract.conditioned:
        return {}
    style = contract.styles[0].encode() if contract.styles else b""
    return {
        "image_index": np.zeros(2, np.int32),
        "topic": np.array([b"", WARMUP_TEXT.encode()], dtype=object),
        "style": np.array([b"", style], dtype=object),
        "style_rank": np.array([0, 0], np.int32),
    }


def warmup_inputs(contract: ModelContract) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of one small request for each signature, by signature name."""
    context = np.zeros((1, *contract.context_shape), np.float32)
    image = np.array([warmup_jpeg()], dtype=object)
    beams = 2

    def step(state_dtype: str) -> dict[str, np.ndarray]:
        return {
            "tokens": np.full(beams, contract.start_id, np.int32),
            "state": np.zeros((beams, contract.state_size), state_dtype),
            "context": context,
            "context_index": np.zeros(beams, np.int32),
            "k": np.int32(2 * beams),
        }

    return {
        ENCODE: {"image_bytes": image, **_encode_rows(contract)},
        DECODE_STEP: step(contract.state_dtype),
        DECODE_STEP_REST: step("float32"),
        METADATA: {},
        METADATA_REST: {"unused": np.int32(0)},
        TOKENIZE: {"text": np.array([WARMUP_TEXT.encode()], dtype=object)},
        SCORE: {"context": context, "text": np.array([WARMUP_TEXT.encode()], dtype=object)},
        EXPLAIN: {"context": context, "text": np.array([WARMUP_TEXT.encode()], dtype=object)},
        GENERATE: {
            "image_bytes": image,
            "prefix": np.array([b""], dtype=object),
            "beam_width": np.int32(beams),
            "n_best": np.int32(1),
            "max_length": np.int32(min(3, contract.max_length)),
            "length_penalty": np.float32(1.0),
            "no_repeat_ngram_size": np.int32(3),
        },
    }


def warmup_records(contract: ModelContract) -> list[prediction_log_pb2.PredictionLog]:
    inputs = warmup_inputs(contract)
    exported = [spec.name for spec in signatures(contract)]
    missing = set(exported) - set(inputs)
    if missing:
        raise ValueError(f"no warm-up request for signature(s) {sorted(missing)}: add them to warmup_inputs")
    records = []
    for signature_name in exported:
        tensors = inputs[signature_name]
        request = predict_pb2.PredictRequest()
        request.model_spec.name = contract.model_name
        request.model_spec.signature_name = signature_name
        for name, value in tensors.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        records.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    return records


def write_warmup_requests(version_dir: Path, contract: ModelContract) -> Path:
    """Writes `<version_dir>/assets.extra/tf_serving_warmup_requests`; returns its path."""
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in warmup_records(contract):
            writer.write(record.SerializeToString())
    return path
