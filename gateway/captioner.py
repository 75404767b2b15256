"""Caption one image: one `encode` call, then one `decode_step` call per step carrying all live beams."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from gateway.backends import ModelBackend, ModelInfo
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


class Captioner:
    def __init__(self, backend: ModelBackend, info: ModelInfo) -> None:
        self.backend = backend
        self.info = info

    def search_settings(
        self, beam_width: int, n_best: int, length_penalty: float, max_length: int | None
    ) -> SearchSettings:
        limit = self.info.contract.max_length
        return SearchSettings(
            beam_width=beam_width,
            n_best=min(n_best, beam_width),
            length_penalty=length_penalty,
            max_length=min(max_length or limit, limit),
        )

    def caption(self, image_jpeg: bytes, settings: SearchSettings | SamplingSettings) -> CaptionResult:
        """Beam search with `SearchSettings`, sampling with `SamplingSettings`."""
        contract = self.info.contract
        context = self.backend.encode([image_jpeg])
        rpcs = 1
        decoding = BeamSearch if isinstance(settings, SearchSettings) else Sampling
        search = decoding(
            settings, contract.start_id, contract.end_id, contract.sep_id, contract.state_size, contract.unk_id
        )
        while not search.done:
            step = self.backend.decode_step(
                search.tokens, search.state, context, np.zeros(search.num_live, np.int32), search.k
            )
            rpcs += 1
            search.advance(*step)
        captions = [
            Caption(ids_to_boxes(h.ids, self.info.vocabulary, contract), h.score, h.log_prob) for h in search.results()
        ]
        return CaptionResult([c for c in captions if c.boxes], self.info.name, self.info.version, rpcs)


class ModelSession:
    """The backend plus what its model told us; loads the model's metadata on first need."""

    def __init__(self, backend: ModelBackend) -> None:
        self.backend = backend
        self._captioner: Captioner | None = None
        self._lock = threading.Lock()

    def captioner(self) -> Captioner:
        """Raises `ModelUnavailableError` while the model tier cannot answer."""
        with self._lock:
            if self._captioner is None:
                self._captioner = Captioner(self.backend, self.backend.load_metadata())
            return self._captioner

    def close(self) -> None:
        self.backend.close()
