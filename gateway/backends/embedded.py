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
    explanations,
    signature_inputs,
    signature_outputs,
    signature_specs,
)
from memefly.contract import DECODE_STEP, ENCODE, EXPLAIN, METADATA, SCORE, TOKENIZE, ModelContract, SignatureSpec
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
        self.specs = signature_specs(self._contract())
        """The signatures by name, as the loaded model's contract writes them."""

    def available_version(self) -> int:
        """The version loaded at start-up: the embedded backend serves one version per process."""
        return self.version

    def pinned(self, version: int) -> EmbeddedBackend:
        if version != self.version:
            raise ModelVersionGoneError(f"version {version} is not loaded (this process serves {self.version})")
        return self

    def load_metadata(self) -> ModelInfo:
        outputs = self._call(self.specs[METADATA], {})
        vocabulary = tuple(word.decode("utf-8") for word in outputs["vocabulary"])
        contract = ModelContract.from_json(outputs["contract"])
        return ModelInfo(self.model_name, self.version, vocabulary, contract)

    def encode(self, image_bytes: list[bytes]) -> np.ndarray:
        return self.encode_rows(image_bytes, default_conditions(len(image_bytes))).contexts

    def encode_rows(self, image_bytes: list[bytes], conditions: list[Condition]) -> Encoding:
        spec = self.specs[ENCODE]
        try:
            outputs = self._call(spec, encode_inputs(spec, image_bytes, conditions))
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(f"the model could not decode the image: {error.message}") from error
        return encoding_from_outputs(outputs, conditions)

    def tokenize(self, text: str) -> tuple[int, ...]:
        spec = self.specs[TOKENIZE]
        outputs = self._call(spec, signature_inputs(spec, text=[text.encode("utf-8")]))
        return tuple(outputs["ids"][0, : int(outputs["lengths"][0])].tolist())

    def decode_step(
        self, tokens: np.ndarray, state: np.ndarray, context: np.ndarray, context_index: np.ndarray, k: int
    ) -> DecodeStepResult:
        spec = self.specs[DECODE_STEP]
        inputs = signature_inputs(spec, tokens=tokens, state=state, context=context, context_index=context_index, k=k)
        step = DecodeStepResult(**self._call(spec, inputs))
        return step._replace(state=step.state.astype(np.float32))

    def score(self, context: np.ndarray, texts: list[str]) -> np.ndarray:
        spec = self.specs[SCORE]
        inputs = signature_inputs(spec, context=context, text=[text.encode("utf-8") for text in texts])
        return self._call(spec, inputs)["log_prob"]

    def explain(self, context: np.ndarray, texts: list[str]) -> list[list[tuple[str, list[float]]]]:
        spec = self.specs[EXPLAIN]
        inputs = signature_inputs(spec, context=context, text=[text.encode("utf-8") for text in texts])
        return explanations(self._call(spec, inputs))

    def _contract(self) -> ModelContract:
        return ModelContract.from_json(self.signatures[METADATA]()["contract"].numpy())

    def _call(self, spec: SignatureSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`spec`'s outputs, by name, for `inputs` as `signature_inputs` gives them."""
        outputs = self.signatures[spec.name](**{name: tf.constant(value) for name, value in inputs.items()})
        return {name: value.numpy() for name, value in signature_outputs(spec, outputs).items()}

    def close(self) -> None:
        self._loaded = None
