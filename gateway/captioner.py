"""Caption one image: one `encode` call, then one `decode_step` per step carrying all live beams.

The calls go through the `BatchScheduler`, so concurrent requests share them; what a request sees is
the same as if it ran alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.backends import ModelBackend, ModelInfo
from gateway.scheduler import BatchScheduler
from gateway.search import BeamSearch, Sampling, SamplingSettings, SearchSettings
from memefly.text import ids_to_boxes


@dataclass(frozen=True)
class Caption:
    boxes: list[str]
    score: float
    log_prob: float

    @property
    def text(self) -> str:
        return " / ".join(self.boxes)


@dataclass(frozen=True)
class CaptionResult:
    captions: list[Caption]
    model_name: str
    model_version: int
    rpcs: int


@dataclass(frozen=True)
class CaptionRequest:
    """What varies per request besides the decoding settings."""

    prefix: str = ""
    """The caption's beginning, written by the user; a trailing newline closes the first box."""
    context_noise: float = 0.0
    """Gaussian noise on the image context, relative to its spread, for variety (as Memefly did)."""
    seed: int | None = None
    timeout_seconds: float = 30.0
    cancel: threading.Event | None = None
    """Set when the client has gone away: decoding stops at the next tick."""


class Captioner:
    def __init__(self, backend: ModelBackend, info: ModelInfo, scheduler: BatchScheduler) -> None:
        self.backend = backend
        self.info = info
        self.scheduler = scheduler

    def search_settings(
        self, beam_width: int, n_best: int, length_penalty: float, max_length: int | None
    ) -> SearchSettings:
        return SearchSettings(
            beam_width=beam_width,
            n_best=min(n_best, beam_width),
            length_penalty=length_penalty,
            max_length=self.max_length(max_length),
        )

    def max_length(self, requested: int | None) -> int:
        limit = self.info.contract.max_length
        return min(requested or limit, limit)

    def caption(
        self,
        image_jpeg: bytes,
        settings: SearchSettings | SamplingSettings,
        request: CaptionRequest | None = None,
    ) -> CaptionResult:
        """Beam search with `SearchSettings`, sampling with `SamplingSettings`."""
        request = request or CaptionRequest()
        contract = self.info.contract
        deadline = time.monotonic() + request.timeout_seconds
        rpcs = 0
        prefix: tuple[int, ...] = ()
        if request.prefix.strip():
            prefix = self.backend.tokenize(request.prefix)
            rpcs += 1
        context = self.scheduler.encode(image_jpeg, deadline)
        rpcs += 1
        if request.context_noise > 0:
            rng = np.random.default_rng(request.seed)
            context = context + rng.normal(0.0, request.context_noise * float(context.std()), context.shape)
            context = context.astype(np.float32)
        decoding = BeamSearch if isinstance(settings, SearchSettings) else Sampling
        search = decoding(
            settings,
            contract.start_id,
            contract.end_id,
            contract.sep_id,
            contract.state_size,
            contract.unk_id,
            prefix=prefix,
        )
        rpcs += self.scheduler.decode(search, context, deadline, request.cancel)
        captions = [
            Caption(ids_to_boxes(h.ids, self.info.vocabulary, contract), h.score, h.log_prob) for h in search.results()
        ]
        return CaptionResult([c for c in captions if c.boxes], self.info.name, self.info.version, rpcs)


class ModelSession:
    """The backend, the batch scheduler, and what the model told us; loads metadata on first need."""

    def __init__(
        self,
        backend: ModelBackend,
        max_batch_beams: int = 256,
        batch_wait_seconds: float = 0.002,
        on_decode_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.backend = backend
        self.scheduler = BatchScheduler(backend, max_batch_beams, batch_wait_seconds, on_decode_batch)
        self._captioner: Captioner | None = None
        self._lock = threading.Lock()

    def captioner(self) -> Captioner:
        """Raises `ModelUnavailableError` while the model tier cannot answer."""
        with self._lock:
            if self._captioner is None:
                self._captioner = Captioner(self.backend, self.backend.load_metadata(), self.scheduler)
            return self._captioner

    def close(self) -> None:
        self.scheduler.close()
        self.backend.close()
