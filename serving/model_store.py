"""Versioned SavedModels on disk, loaded and looked up the way TensorFlow Serving does it.

A model is a base path holding numeric version directories (``<base>/<version>/saved_model.pb``).
Like TF Serving's default ``latest`` version policy, the store serves the highest version found;
``poll()`` picks up a newer one, loading it before unloading the old one so requests never
find the model missing.

No transport lives here: the gRPC front end (``serving.grpc_server``) maps ``ServingError.code``
to a status code, and a REST front end can do the same.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import model_pb2

DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"

log = logging.getLogger(__name__)


class ServingError(Exception):
    """A request that cannot be served; ``code`` is a canonical status name such as ``"NOT_FOUND"``."""

    default_code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class NotFoundError(ServingError):
    default_code = "NOT_FOUND"


class InvalidArgumentError(ServingError):
    default_code = "INVALID_ARGUMENT"


class FailedPreconditionError(ServingError):
    default_code = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class VersionStatus:
    """One version's lifecycle, named after ``ModelVersionStatus.State`` in TF Serving's API."""

    version: int
    state: str  # "LOADING", "AVAILABLE" or "END"
    error_code: str = "OK"
    error_message: str = ""


def dtype_name(dtype: int) -> str:
    """TensorFlow's C++ DataTypeString spelling ("float", "string", "int32"), used in messages."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def _error_code(exc: BaseException) -> str:
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

    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = _read_signature_defs(path)
        # Signature functions do not keep the loaded object (and so its variables) alive;
        # holding it here does, for as long as this version is served.
        self._loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        self.signatures = dict(self._loaded.signatures)

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
    ) -> dict[str, np.ndarray]:
        """Runs one signature on named arrays; checks mirror TF Serving's Predict."""
        signature = self.signature_def(signature_name)
        inputs = {**_defaults(signature), **inputs}
        _check_input_names(signature, inputs)
        tensors = {alias: _checked_tensor(alias, signature.inputs[alias], a) for alias, a in inputs.items()}
        wanted = _checked_output_filter(signature, output_filter)
        try:
            outputs = self.signatures[signature_name](**tensors)
        except tf.errors.OpError as exc:
            raise ServingError(exc.message, _error_code(exc)) from exc
        return {alias: outputs[alias].numpy() for alias in wanted}


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


def _checked_tensor(alias: str, info: meta_graph_pb2.TensorInfo, array: np.ndarray) -> tf.Tensor:
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
    return tf.constant(array, dtype=sent_dtype)


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


def find_versions(base_path: Path) -> dict[int, Path]:
    """Numeric subdirectories of ``base_path`` that hold a ``saved_model.pb``, by version."""
    versions = {}
    for child in sorted(base_path.iterdir()):
        if child.name.isdigit() and (child / "saved_model.pb").is_file():
            versions[int(child.name)] = child
    return versions


class ModelStore:
    """Loaded versions of several models, each found under its own base path."""

    def __init__(
        self,
        base_paths: Mapping[str, str | os.PathLike[str]],
        version_labels: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self._base_paths = {name: Path(path) for name, path in base_paths.items()}
        self._labels = {name: dict(labels) for name, labels in (version_labels or {}).items()}
        self._available: dict[str, dict[int, LoadedVersion]] = {name: {} for name in base_paths}
        self._status: dict[str, dict[int, VersionStatus]] = {name: {} for name in base_paths}
        self._lock = threading.Lock()  # guards _available and _status; never held while loading
        self._poll_lock = threading.Lock()

    @property
    def model_names(self) -> list[str]:
        return sorted(self._base_paths)

    def available_versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._available.get(name, {}))

    def poll(self) -> None:
        """Serves the newest version on disk: loads it first, then unloads the others."""
        with self._poll_lock:
            for name, base_path in self._base_paths.items():
                self._poll_model(name, base_path)

    def _poll_model(self, name: str, base_path: Path) -> None:
        try:
            on_disk = find_versions(base_path)
        except OSError as exc:
            log.error("Could not find base path %s for servable %s: %s", base_path, name, exc)
            return
        if not on_disk:
            log.warning("No versions of servable %s found under base path %s", name, base_path)
        aspired = max(on_disk, default=None)
        with self._lock:
            known = self._status[name].get(aspired)
            needs_load = aspired is not None and aspired not in self._available[name]
        # TF Serving retries a failed load 5 times a minute apart, then gives up; this gives up at once.
        if needs_load and not (known and known.error_message):
            self._load(name, aspired, on_disk[aspired])
        with self._lock:
            # As TF Serving's availability-preserving policy: old versions go only once the
            # aspired one serves, or when the base path no longer holds any version at all.
            if aspired is None or aspired in self._available[name]:
                for version in [v for v in self._available[name] if v != aspired]:
                    del self._available[name][version]
                    self._status[name][version] = VersionStatus(version, "END")
                    log.info("Unloaded servable version {name: %s version: %d}", name, version)

    def _load(self, name: str, version: int, path: Path) -> None:
        with self._lock:
            self._status[name][version] = VersionStatus(version, "LOADING")
        try:
            loaded = LoadedVersion(name, version, path)
        except Exception as exc:  # a broken export must not stop the versions being served
            log.exception("Loading servable version {name: %s version: %d} failed", name, version)
            status = VersionStatus(version, "END", _error_code(exc), str(exc) or type(exc).__name__)
            with self._lock:
                self._status[name][version] = status
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
        if choice == "version":
            version = spec.version.value
        elif choice == "version_label":
            version = self._labels.get(spec.name, {}).get(spec.version_label)
            if version is None:
                raise InvalidArgumentError(f"Unrecognized servable version label: {spec.version_label}")
        with self._lock:
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


def poll_forever(store: ModelStore, interval_seconds: float, stop: threading.Event) -> None:
    """Calls ``store.poll()`` every ``interval_seconds`` until ``stop`` is set."""
    while not stop.wait(interval_seconds):
        try:
            store.poll()
        except Exception:  # keep polling: the next export may well be fine
            log.exception("Polling the file system for new model versions failed")
