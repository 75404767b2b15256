"""SavedModel warm-up: replaying recorded requests before a version is marked AVAILABLE.

As TF Serving does (servables/tensorflow/saved_model_warmup_util.cc): if the version directory
holds ``assets.extra/tf_serving_warmup_requests``, a TFRecord file of PredictionLog protos, each
record's request is run ``num_request_iterations`` times (default 1) against the new version. At
most 1000 records are allowed; a record that fails, does not parse, or a file that is not TFRecord
fails the load. This stand-in replays PredictLog records only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import prediction_log_pb2

from serving.errors import InvalidArgumentError, ServingError, UnimplementedError
from serving.tensors import to_ndarray

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # WarmupConsts::kMaxNumRecords

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmupOptions:
    """``--enable_model_warmup`` and ``--num_request_iterations_for_warmup``."""

    enabled: bool = True
    num_request_iterations: int = 1


class Predictor(Protocol):
    path: Path

    def predict(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]: ...


def run_warmup(version: Predictor, options: WarmupOptions) -> int:
    """Replays the version's warm-up requests; returns how many records were read."""
    path = version.path / WARMUP_FILE
    if not options.enabled:
        return 0
    if not path.is_file():
        log.info("No warmup data file found at %s", path)
        return 0
    log.info("Starting to read warmup data for model at %s", path)
    started = time.monotonic()
    records = 0
    try:
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            prediction_log = prediction_log_pb2.PredictionLog()
            try:
                prediction_log.ParseFromString(record)
            except DecodeError as exc:
                text = record.decode(errors="backslashreplace")
                raise InvalidArgumentError(f"Failed to parse warmup record: {text} from {path}") from exc
            for _ in range(options.num_request_iterations):
                _replay(version, prediction_log)
            records += 1
            if records > MAX_RECORDS:
                raise InvalidArgumentError(f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")
    except tf.errors.DataLossError as exc:
        raise ServingError(
            f"{exc.message}. Please verify your warmup data is in TFRecord format.", "DATA_LOSS"
        ) from exc
    elapsed_micros = int((time.monotonic() - started) * 1e6)
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d. "
        "Elapsed time (microseconds): %d.",
        path,
        records,
        elapsed_micros,
    )
    return records


def _replay(version: Predictor, prediction_log: prediction_log_pb2.PredictionLog) -> None:
    kind = prediction_log.WhichOneof("log_type")
    if kind is None:
        return
    if kind == "predict_log":
        request = prediction_log.predict_log.request
        # As RunPredict in TF Serving: the record's model name and version are not looked at.
        inputs = {alias: to_ndarray(alias, proto) for alias, proto in request.inputs.items()}
        signature_name = request.model_spec.signature_name or tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
        version.predict(signature_name, inputs, list(request.output_filter))
    elif kind in ("classify_log", "regress_log", "multi_inference_log"):
        raise UnimplementedError(f"Warm-up with {kind} records is not implemented by this local stand-in")
    else:
        number = prediction_log.DESCRIPTOR.fields_by_name[kind].number
        raise UnimplementedError(f"Unsupported log_type for warmup: {number}")
