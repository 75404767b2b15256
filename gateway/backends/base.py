"""What the gateway needs of the model tier, whatever carries the calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from gateway.search import Hypothesis, SearchSettings
from memefly.contract import ModelContract


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

    def encode(self, image_bytes: list[bytes]) -> np.ndarray: ...

    def tokenize(self, text: str) -> tuple[int, ...]:
        """The model's own tokens for `text` (its `tokenize` signature): no tokenizer in the gateway."""
        ...

    def decode_step(
        self, tokens: np.ndarray, state: np.ndarray, context: np.ndarray, context_index: np.ndarray, k: int
    ) -> DecodeStepResult: ...

    def score(self, context: np.ndarray, texts: list[str]) -> np.ndarray:
        """log P(text | context) [N] for contexts [N, ...] as `encode` returns them (the `score` signature)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class GenerateBackend(Protocol):
    """A backend that answers a whole beam search in one model call (the model's `generate` signature)."""

    def generate(self, image_jpeg: bytes, settings: SearchSettings, prefix: str = "") -> list[Hypothesis]:
        """The n best captions of one image, best first; `prefix` is tokenized by the model."""
        ...
