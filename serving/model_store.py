"""Versioned SavedModels on disk, loaded, warmed up and looked up the way TensorFlow Serving does it.

Each model (a ``ModelConfig``) is a base path holding numeric version directories
(``<base>/<version>/saved_model.pb``). Its version policy picks the versions to serve (the latest
N, all, or specific ones). ``poll()`` loads wanted versions highest first, replays each one's
warm-up requests before marking it AVAILABLE, and unloads unwanted versions as TF Serving's
availability-preserving policy does (core/availability_preserving_policy.cc): only once a wanted
version serves, so requests never find the model missing. ``apply_config()`` is ServerCore's
ReloadConfig: version labels are checked against what is loaded *before* new models load, so a
label on a model's very first config fails unless ``allow_version_labels_for_unavailable_models``.

No transport lives here: the gRPC and REST front ends map ``ServingError.code`` to their status codes.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import model_pb2

from memefly.paths import model_versions
from serving.batching import BatchSignature, SharedBatchScheduler
from serving.batching_options import PER_MODEL_PARAMETERS_FILE, BatchingOptions
from serving.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ServingError,
)
from serving.model_config import ModelConfig
from serving.tensors import dtype_name
from serving.warmup import WarmupOptions, run_warmup

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
SERVE_TAG = "serve"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionStatus:
    """One version's lifecycle, named after ``ModelVersionStatus.State`` in TF Serving's API."""

    version: int
    state: str  # "LOADING", "AVAILABLE" or "END"
    error_code: str = "OK"
    error_message: str = ""


@dataclass(frozen=True)
class Batching:
    """``--enable_batching``: the shared batch threads, and the parameters for each model version."""

    scheduler: SharedBatchScheduler
    options: BatchingOptions
    per_model: bool = False  # --enable_per_model_batching_parameters

    def options_for(self, version_dir: Path) -> BatchingOptions | None:
        """Per-model parameters come from the version's own file; without one it is not batched."""
        if not self.per_model:
            return self.options
        path = version_dir / PER_MODEL_PARAMETERS_FILE
        return BatchingOptions.read(path) if path.is_file() else None


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ServingError):
        return exc.code
    if isinstance(exc, tf.errors.OpError):
        return error_codes_pb2.Code.Name(exc.error_code)
    return "UNKNOWN"


def _read_signature_defs(version_dir: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{version_dir} has no MetaGraphDef tagged {SERVE_TAG!r}")


class LoadedVersion:
    """One loaded version of a model: its callable signatures and their SignatureDefs."""

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        batching: tuple[SharedBatchScheduler, BatchingOptions] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = _read_signature_defs(path)
        # Signature functions do not keep the loaded object (and so its variables) alive;
        # holding it here does, for as long as this version is served.
        self._loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        self.signatures = dict(self._loaded.signatures)
        self._batching = batching
        self.signature_calls: Counter[str] = Counter()  # underlying calls; batching makes them fewer
        self._calls_lock = threading.Lock()

    def signature_def(self, signature_name: str) -> meta_graph_pb2.SignatureDef:
        if signature_name not in self.signatures:
            # TF Serving's gRPC Predict answers FAILED_PRECONDITION here (predict_util.cc).
            raise FailedPreconditionError(f'Serving signature key "{signature_name}" not found.')
        return self.signature_defs[signature_name]

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs one signature on named arrays; checks mirror TF Serving's Predict.

        ``deadline`` (``time.monotonic()``) only bounds the wait in a batching queue, as the
        request's RunOptions timeout does in TF Serving.
        """
        signature = self.signature_def(signature_name)
        inputs = {**_defaults(signature), **inputs}
        _check_input_names(signature, inputs)
        arrays = {alias: _checked_array(alias, signature.inputs[alias], inputs[alias]) for alias in sorted(inputs)}
        wanted = _checked_output_filter(signature, output_filter)
        if self._batching is None:
            outputs = self.run_signature(signature_name, arrays)
        else:
            scheduler, options = self._batching
            batch_signature = BatchSignature(
                {alias: signature.inputs[alias].name for alias in arrays},
                {alias: signature.outputs[alias].name for alias in wanted},
            )
            outputs = scheduler.run(
                (self, signature_name, tuple(wanted)),
                options,
                batch_signature,
                lambda merged: self.run_signature(signature_name, merged),
                arrays,
                deadline,
            )
        return {alias: outputs[alias] for alias in wanted}

    def run_signature(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of the signature's function: every output, as arrays."""
        with self._calls_lock:
            self.signature_calls[signature_name] += 1
        signature = self.signature_defs[signature_name]
        tensors = {
            alias: tf.constant(array, dtype=tf.as_dtype(signature.inputs[alias].dtype))
            for alias, array in inputs.items()
        }
        try:
            outputs = self.signatures[signature_name](**tensors)
        except tf.errors.OpError as exc:
            raise ServingError(exc.message, _error_code(exc)) from exc
        return {alias: tensor.numpy() for alias, tensor in outputs.items()}


def _defaults(signature: meta_graph_pb2.SignatureDef) -> dict[str, np.ndarray]:
    return {alias: tf.make_ndarray(proto) for alias, proto in signature.defaults.items()}


def _check_input_names(signature: meta_graph_pb2.SignatureDef, inputs: Mapping[str, np.ndarray]) -> None:
    sent, expected = set(inputs), set(signature.inputs)
    if sent == expected:
        return
    # Same wording as TF Serving's VerifyRequestInputsSize (predict_util.cc).
    raise InvalidArgumentError(
        f"input size does not match signature: {len(sent)}!={len(expected)} "
        f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
        f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
        f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
    )


def _checked_array(alias: str, info: meta_graph_pb2.TensorInfo, array: np.ndarray) -> np.ndarray:
    try:
        sent_dtype = tf.as_dtype(array.dtype)
    except TypeError as exc:
        raise InvalidArgumentError(f"tensor parsing error: {alias}") from exc
    if sent_dtype.as_datatype_enum != info.dtype:
        # Wording of TF Serving's TFRT predict path (tfrt_predict_util.cc).
        raise InvalidArgumentError(
            f"Expected input {alias} to be {dtype_name(info.dtype)} but get {dtype_name(sent_dtype.as_datatype_enum)}."
        )
    expected_shape = tf.TensorShape(info.tensor_shape)
    if not expected_shape.is_compatible_with(array.shape):
        raise InvalidArgumentError(
            f"Expected input {alias} to have shape {_shape_text(expected_shape)} but got {list(array.shape)}."
        )
    return array


def _shape_text(shape: tf.TensorShape) -> str:
    return "<unknown rank>" if shape.rank is None else str([-1 if d is None else d for d in shape.as_list()])


def _checked_output_filter(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]) -> list[str]:
    for index, alias in enumerate(output_filter):
        # Wording of TF Serving's PreProcessPrediction (predict_util.cc).
        if alias not in signature.outputs:
            raise InvalidArgumentError(
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{','.join(sorted(signature.outputs))}}}."
            )
        if alias in output_filter[:index]:
            raise InvalidArgumentError(f"duplicate output tensor alias: {alias}")
    return list(output_filter) or sorted(signature.outputs)


class ModelStore:
    """Loaded versions of the configured models, each found under its own base path."""

    def __init__(
        self,
        *,
        warmup: WarmupOptions | None = None,
        batching: Batching | None = None,
        allow_version_labels_for_unavailable_models: bool = False,
    ) -> None:
        self._warmup = warmup or WarmupOptions()
        self._batching = batching
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._models: dict[str, ModelConfig] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._available: dict[str, dict[int, LoadedVersion]] = {}
        self._status: dict[str, dict[int, VersionStatus]] = {}
        self._lock = threading.Lock()  # guards the dicts above; never held while loading
        self._poll_lock = threading.Lock()  # one config change or poll at a time

    @property
    def model_names(self) -> list[str]:
        """The configured models, in config order."""
        with self._lock:
            return list(self._models)

    def available_versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._available.get(name, {}))

    def apply_config(self, models: Sequence[ModelConfig]) -> None:
        """Serves exactly ``models`` from now on (ServerCore::ReloadConfig), loading new versions
        before returning. Raises a ServingError, changing nothing, if a version label is refused."""
        with self._poll_lock:
            labels = self._checked_labels(models)
            with self._lock:
                removed = set(self._models) - {m.name for m in models}
                self._models = {m.name: m for m in models}
                self._labels = labels
                for model in models:
                    self._available.setdefault(model.name, {})
                    self._status.setdefault(model.name, {})
                for name in removed:
                    self._unload(name, list(self._available[name]))
            for model in models:
                self._poll_model(model)

    def _checked_labels(self, models: Sequence[ModelConfig]) -> dict[str, dict[str, int]]:
        labels: dict[str, dict[str, int]] = {}
        with self._lock:
            for model in models:
                for label, version in model.labels.items():
                    previous = self._labels.get(model.name, {}).get(label)
                    # As UpdateModelVersionLabelMap: the flag lets only new labels (or unmoved ones)
                    # point at a version that is not available yet.
                    allowed = self._allow_unavailable_labels and previous in (None, version)
                    if not allowed and version not in self._available.get(model.name, {}):
                        raise FailedPreconditionError(
                            f"Request to assign label to version {version} of model {model.name}, "
                            "which is not currently available for inference"
                        )
                    labels.setdefault(model.name, {})[label] = version
        return labels

    def poll(self) -> None:
        """Looks for new and removed versions of every model, as the file-system poll does."""
        with self._poll_lock:
            with self._lock:
                models = list(self._models.values())
            for model in models:
                self._poll_model(model)

    def _poll_model(self, model: ModelConfig) -> None:
        try:
            if not model.base_path.is_dir():
                raise FileNotFoundError(f"no such directory: {model.base_path}")
            on_disk = model_versions(model.base_path)
        except OSError as exc:
            log.error("Could not find base path %s for servable %s: %s", model.base_path, model.name, exc)
            return
        if not on_disk:
            log.warning("No versions of servable %s found under base path %s", model.name, model.base_path)
        aspired = model.policy.select(model.name, on_disk)
        with self._lock:
            available = self._available[model.name]
            statuses = self._status[model.name]
            # TF Serving retries a failed load 5 times a minute apart, then gives up; this gives up at once.
            failed = {v for v, status in statuses.items() if status.error_message}
            to_load = [v for v in aspired if v not in available and v not in failed]
        for version in sorted(to_load, reverse=True):
            self._load(model.name, version, on_disk[version])
        with self._lock:
            available = self._available[model.name]
            unaspired = sorted(v for v in available if v not in aspired)
            if not aspired or any(v in available for v in aspired):
                self._unload(model.name, unaspired)
            else:
                self._unload(model.name, unaspired[:-1])  # keep one version serving until a new one does

    def _unload(self, name: str, versions: Sequence[int]) -> None:
        for version in versions:
            del self._available[name][version]
            self._status[name][version] = VersionStatus(version, "END")
            log.info("Unloaded servable version {name: %s version: %d}", name, version)

    def _load(self, name: str, version: int, path: Path) -> None:
        with self._lock:
            self._status[name][version] = VersionStatus(version, "LOADING")
        try:
            options = self._batching.options_for(path) if self._batching else None
            batching = (self._batching.scheduler, options) if self._batching and options else None
            loaded = LoadedVersion(name, version, path, batching)
            run_warmup(loaded, self._warmup)
        except Exception as exc:  # a broken export must not stop the versions being served
            log.exception("Loading servable version {name: %s version: %d} failed", name, version)
            message = exc.message if isinstance(exc, ServingError) else str(exc) or type(exc).__name__
            with self._lock:
                self._status[name][version] = VersionStatus(version, "END", _error_code(exc), message)
            return
        with self._lock:
            self._available[name][version] = loaded
            self._status[name][version] = VersionStatus(version, "AVAILABLE")
        log.info("Successfully loaded servable version {name: %s version: %d}", name, version)

    def resolve(self, spec: model_pb2.ModelSpec) -> LoadedVersion:
        """The loaded version a request's ModelSpec names, with TF Serving's error wording."""
        if not spec.name:
            raise InvalidArgumentError("ModelSpec has no name specified.")
        version: int | None = None
        choice = spec.WhichOneof("version_choice")
        with self._lock:
            if choice == "version":
                version = spec.version.value
            elif choice == "version_label":
                version = self._labels.get(spec.name, {}).get(spec.version_label)
                if version is None:
                    raise InvalidArgumentError(f"Unrecognized servable version label: {spec.version_label}")
            versions = dict(self._available.get(spec.name, {}))
        if version is None:
            if not versions:
                raise NotFoundError(f"Servable not found for request: Latest({spec.name})")
            return versions[max(versions)]
        if version not in versions:
            raise NotFoundError(f"Servable not found for request: Specific({spec.name}, {version})")
        return versions[version]

    def version_status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Every version seen since start-up (newest first), or just ``version``; as GetModelStatus."""
        with self._lock:
            statuses = dict(self._status.get(name, {}))
        if version is not None:
            if version not in statuses:
                raise NotFoundError(f"Could not find version {version} of model {name}")
            return [statuses[version]]
        if not statuses:
            raise NotFoundError(f"Could not find any versions of model {name}")
        return [statuses[v] for v in sorted(statuses, reverse=True)]


def poll_forever(poll: Callable[[], None], interval_seconds: float, stop: threading.Event, what: str) -> None:
    """Calls ``poll()`` every ``interval_seconds`` until ``stop`` is set; failures are logged."""
    while not stop.wait(interval_seconds):
        try:
            poll()
        except Exception:  # keep polling: the next export or config may well be fine
            log.exception("Polling %s failed", what)
