"""What the gateway needs of the model tier, whatever carries the calls."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from gateway.search import Hypothesis, SearchSettings
from memefly.contract import SEP, ModelContract, SignatureSpec, signatures


class ModelUnavailableError(RuntimeError):
    """The model tier could not answer (down, starting, timed out); the request may be retried."""


class ModelVersionGoneError(ModelUnavailableError):
    """The pinned version is no longer served (a newer one replaced it): rerun the request on the new one."""


@dataclass(frozen=True)
class ModelInfo:
    """Read from the model's own `metadata` signature, never from a file beside it."""

    name: str
    version: int
    vocabulary: tuple[str, ...]
    contract: ModelContract


@dataclass(frozen=True)
class Condition:
    """One context row of an `encode` call: image `image` of the call with a topic and a style.

    `topic` is free text ("" for the image's own concept words); `style` a style the contract lists
    ("" for the `style_rank`-th that best fits the row's topic and image).
    """

    image: int = 0
    topic: str = ""
    style: str = ""
    style_rank: int = 0


@dataclass(frozen=True)
class Encoding:
    """What `encode` answered: a context a row, what each row used, and what each image showed."""

    contexts: np.ndarray
    topics: tuple[str, ...]
    """Each row's topic words, as the model used them ("" for none, or a model without conditioning)."""
    styles: tuple[str, ...]
    concepts: tuple[tuple[tuple[str, float], ...], ...]
    """Each image's concept words with their probabilities, most likely first."""


NUMPY_DTYPES = {
    "string": np.dtype(object),
    "int32": np.dtype(np.int32),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
}
"""The contract's dtype names as NumPy dtypes (strings as object arrays of bytes)."""


def signature_specs(contract: ModelContract | None) -> dict[str, SignatureSpec]:
    """A model's signatures by name, as its contract writes them. Before the contract is read: those of
    a model without conditioning and with a float32 state (their tensor names and dtypes are all a call
    needs; the shapes are not checked here)."""
    contract = contract or ModelContract("", "", "", 0, 0, 0, 0, ())
    return {spec.name: spec for spec in signatures(contract)}


def signature_inputs(spec: SignatureSpec, **values: Any) -> dict[str, np.ndarray]:
    """The inputs `spec` lists, each taken from `values` by its contract name and cast to its contract
    dtype, in the contract's order. Values the signature does not take are left out; one it takes and
    `values` lacks is a `KeyError`."""
    return {tensor.name: np.asarray(values[tensor.name], NUMPY_DTYPES[tensor.dtype]) for tensor in spec.inputs}


def signature_outputs(spec: SignatureSpec, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The outputs `spec` lists, by their contract names, in the contract's order."""
    return {tensor.name: outputs[tensor.name] for tensor in spec.outputs}


def encode_inputs(spec: SignatureSpec, images: list[bytes], conditions: list[Condition]) -> dict[str, np.ndarray]:
    """An `encode` call's inputs as NumPy arrays: the images, and the rows of `conditions` when `spec`
    (the contract's `encode`) takes topics and styles."""
    return signature_inputs(
        spec,
        image_bytes=np.array(images, object),
        image_index=[c.image for c in conditions],
        topic=np.array([c.topic.encode("utf-8") for c in conditions], object),
        style=np.array([c.style.encode("utf-8") for c in conditions], object),
        style_rank=[c.style_rank for c in conditions],
    )


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def encoding_from_outputs(outputs: dict[str, np.ndarray], conditions: list[Condition]) -> Encoding:
    """The `Encoding` of an `encode` answer: conditioned when it has `concepts`, else one context an image
    gathered into the rows `conditions` asked for (a model exported before conditioning)."""
    contexts = np.asarray(outputs["context"], np.float32)
    if "concepts" not in outputs:
        rows = len(conditions)
        return Encoding(contexts[[c.image for c in conditions]], ("",) * rows, ("",) * rows, ((),) * len(contexts))
    names = np.asarray(outputs["concepts"])
    probabilities = np.asarray(outputs["concept_probs"], np.float32)
    concepts = tuple(
        tuple((_text(w), float(p)) for w, p in zip(row_names, row_probs, strict=True) if _text(w))
        for row_names, row_probs in zip(names, probabilities, strict=True)
    )
    return Encoding(
        contexts,
        tuple(_text(t) for t in np.asarray(outputs["topic"]).reshape(-1)),
        tuple(_text(t) for t in np.asarray(outputs["style"]).reshape(-1)),
        concepts,
    )


def default_conditions(images: int) -> list[Condition]:
    return [Condition(i) for i in range(images)]


class DecodeStepResult(NamedTuple):
    top_log_probs: np.ndarray
    top_ids: np.ndarray
    state: np.ndarray


class ModelBackend(Protocol):
    name: str

    def load_metadata(self) -> ModelInfo:
        """Read vocabulary and contract of the version the model tier serves now."""
        ...

    def available_version(self) -> int:
        """The version a new request would be served by (a cheap status call, no metadata)."""
        ...

    def pinned(self, version: int) -> ModelBackend:
        """This backend with every call addressed to `version` (sharing its connection)."""
        ...

    def encode(self, image_bytes: list[bytes]) -> np.ndarray:
        """One context an image, with the model's own topic and style choice when it has conditioning."""
        ...

    def encode_rows(self, image_bytes: list[bytes], conditions: list[Condition]) -> Encoding:
        """A context for each row of `conditions` (one `encode` call; each image sent once)."""
        ...

    def tokenize(self, text: str) -> tuple[int, ...]:
        """The model's own tokens for `text` (its `tokenize` signature): no tokenizer in the gateway."""
        ...

    def decode_step(
        self, tokens: np.ndarray, state: np.ndarray, context: np.ndarray, context_index: np.ndarray, k: int
    ) -> DecodeStepResult: ...

    def score(self, context: np.ndarray, texts: list[str]) -> np.ndarray:
        """log P(text | context) [N] for contexts [N, ...] as `encode` returns them (the `score` signature)."""
        ...

    def explain(self, context: np.ndarray, texts: list[str]) -> list[list[tuple[str, list[float]]]]:
        """For each text, its words with the decoder's attention over the image grid while writing each (the
        `explain` signature; `ModelVersionGoneError`-style errors as the others, `KeyError` without it)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class GenerateBackend(Protocol):
    """A backend that answers a whole beam search in one model call (the model's `generate` signature)."""

    def generate(
        self, image_jpeg: bytes, settings: SearchSettings, prefix: str = "", captions: int | None = None
    ) -> list[Hypothesis]:
        """The n best captions of one image, best first; `prefix` is tokenized by the model. A model with
        styles gives `captions` captions instead, each the best of its own style's beam, in style order."""
        ...


def explanations(outputs: dict[str, Any]) -> list[list[tuple[str, list[float]]]]:
    """The `explain` signature's outputs as each caption's (word, attention over the grid) pairs; the box
    separator is left out, as it is not drawn."""
    attention = np.asarray(outputs["attention"], np.float32)
    words = np.asarray(outputs["words"], object)
    counts = np.asarray(outputs["num_words"]).reshape(-1)
    explained = []
    for row, count in enumerate(counts):
        pairs = []
        for position in range(int(count)):
            word = _text(words[row][position])
            if word != SEP:
                pairs.append((word, [round(float(v), 4) for v in attention[row][position]]))
        explained.append(pairs)
    return explained
