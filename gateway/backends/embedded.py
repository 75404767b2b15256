"""The SavedModel loaded in-process: the same signatures TF Serving runs, without the network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from gateway.backends.base import (
    Condition,
    DecodeStepResult,
    Encoding,
    ModelInfo,
    ModelUnavailableError,
    ModelVersionGoneError,
    default_conditions,
    encode_inputs,
    encoding_from_outputs,
)
from memefly.contract import DECODE_STEP, ENCODE, METADATA, SCORE, TOKENIZE, ModelContract
from memefly.paths import model_versions


def latest_version(model_dir: Path) -> int:
    versions = model_versions(model_dir)
    if not versions:
        raise ModelUnavailableError(
            f"no SavedModel version under {model_dir} (expected {model_dir}/<n>/saved_model.pb)"
        )
    return max(versions)


class EmbeddedBackend:
    name = "embedded"

    def __init__(self, model_base_path: Path, model_name: str) -> None:
        self.model_dir = Path(model_base_path) / model_name
        self.model_name = model_name
        self.version = latest_version(self.model_dir)
        self._loaded = tf.saved_model.load(str(self.model_dir / str(self.version)))
        self.signatures = self._loaded.signatures
        self._encode = self._loaded.signatures[ENCODE]
        self._decode_step = self._loaded.signatures[DECODE_STEP]
        self._metadata = self._loaded.signatures[METADATA]
        self._state_dtype = self._decode_step.structured_input_signature[1]["state"].dtype
        self._conditioned = "image_index" in self._encode.structured_input_signature[1]

    def available_version(self) -> int:
        """The version loaded at start-up: the embedded backend serves one version per process."""
        return self.version

    def pinned(self, version: int) -> EmbeddedBackend:
        if version != self.version:
            raise ModelVersionGoneError(f"version {version} is not loaded (this process serves {self.version})")
        return self

    def load_metadata(self) -> ModelInfo:
        outputs = self._metadata()
        vocabulary = tuple(word.decode("utf-8") for word in outputs["vocabulary"].numpy())
        contract = ModelContract.from_json(outputs["contract"].numpy())
        return ModelInfo(self.model_name, self.version, vocabulary, contract)

    def encode(self, image_bytes: list[bytes]) -> np.ndarray:
        return self.encode_rows(image_bytes, default_conditions(len(image_bytes))).contexts

    def encode_rows(self, image_bytes: list[bytes], conditions: list[Condition]) -> Encoding:
        inputs = {"image_bytes": tf.constant(image_bytes, tf.string)}
        if self._conditioned:
            inputs |= {name: tf.constant(value) for name, value in encode_inputs(conditions).items()}
        try:
            outputs = self._encode(**inputs)
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(f"the model could not decode the image: {error.message}") from error
        return encoding_from_outputs({name: value.numpy() for name, value in outputs.items()}, conditions)

    def tokenize(self, text: str) -> tuple[int, ...]:
        outputs = self._loaded.signatures[TOKENIZE](text=tf.constant([text]))
        return tuple(outputs["ids"].numpy()[0, : int(outputs["lengths"].numpy()[0])].tolist())

    def decode_step(
        self, tokens: np.ndarray, state: np.ndarray, context: np.ndarray, context_index: np.ndarray, k: int
    ) -> DecodeStepResult:
        outputs = self._decode_step(
            tokens=tf.constant(tokens, tf.int32),
            state=tf.constant(state, self._state_dtype),
            context=tf.constant(context, tf.float32),
            context_index=tf.constant(context_index, tf.int32),
            k=tf.constant(k, tf.int32),
        )
        return DecodeStepResult(
            outputs["top_log_probs"].numpy(), outputs["top_ids"].numpy(), outputs["state"].numpy().astype(np.float32)
        )

    def score(self, context: np.ndarray, texts: list[str]) -> np.ndarray:
        outputs = self._loaded.signatures[SCORE](
            context=tf.constant(context, tf.float32), text=tf.constant(texts, tf.string)
        )
        return outputs["log_prob"].numpy()

    def close(self) -> None:
        self._loaded = None
