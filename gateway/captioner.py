"""Caption one image: one `encode` call, then one `decode_step` per step carrying all live beams.

The calls go through the `BatchScheduler`, so concurrent requests share them; what a request sees is
the same as if it ran alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from gateway.backends import ModelBackend, ModelInfo, ModelVersionGoneError
from gateway.backends.base import GenerateBackend
from gateway.rerank import blank_image_jpeg, most_specific, specificity
from gateway.scheduler import BatchScheduler
from gateway.search import BeamSearch, Hypothesis, Sampling, SamplingSettings, SearchSettings
from memefly.text import caption_text, ids_to_boxes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caption:
    boxes: list[str]
    score: float
    log_prob: float
    specificity: float | None = None
    """log P(caption | image) − log P(caption | blank image), when sampled captions were re-ranked by it."""

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
        self._blank_context: np.ndarray | None = None
        self._blank_lock = threading.Lock()

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
        whole_search = isinstance(settings, SearchSettings) and not request.context_noise
        if whole_search and isinstance(self.backend, GenerateBackend):
            # One model call: the model tokenizes the prefix, encodes and searches in-graph (no noise possible).
            return self._result(self.backend.generate(image_jpeg, settings, request.prefix), rpcs=1)
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
        rerank = isinstance(settings, SamplingSettings) and settings.rerank > 1
        if rerank:
            wanted, settings = settings.n, replace(settings, n=settings.n * settings.rerank)
        decoding = BeamSearch if isinstance(settings, SearchSettings) else Sampling
        search = decoding(
            settings,
            contract.start_id,
            contract.end_id,
            contract.sep_id,
            contract.state_size,
            contract.unk_id,
            prefix=prefix,
            pad_id=contract.pad_id,
        )
        rpcs += self.scheduler.decode(search, context, deadline, request.cancel)
        result = self._result(search.results(), rpcs)
        return self._most_specific(result, context, wanted, deadline) if rerank else result

    def _result(self, hypotheses: list[Hypothesis], rpcs: int) -> CaptionResult:
        vocabulary, contract = self.info.vocabulary, self.info.contract
        captions = [Caption(ids_to_boxes(h.ids, vocabulary, contract), h.score, h.log_prob) for h in hypotheses]
        return CaptionResult([c for c in captions if c.boxes], self.info.name, self.info.version, rpcs)

    def _most_specific(self, result: CaptionResult, context: np.ndarray, n: int, deadline: float) -> CaptionResult:
        """Keep the `n` sampled captions the image explains best: one `score` call over image and blank."""
        if not result.captions:
            return result
        rpcs = result.rpcs
        if self._blank_context is None:
            with self._blank_lock:
                if self._blank_context is None:
                    self._blank_context = self.scheduler.encode(blank_image_jpeg(), deadline, joins=False)
                    rpcs += 1
        texts = [caption_text(c.boxes) for c in result.captions]
        count = len(texts)
        contexts = np.concatenate(
            [np.repeat(context[None], count, axis=0), np.repeat(self._blank_context[None], count, axis=0)]
        )
        log_probs = self.backend.score(contexts, texts + texts)
        scores = specificity(log_probs[:count], log_probs[count:])
        captions = [replace(result.captions[i], specificity=float(scores[i])) for i in most_specific(scores, texts, n)]
        return replace(result, captions=captions, rpcs=rpcs + 1)


class ModelSession:
    """The model tier as the routes see it: one `Captioner` per model version, switched between requests.

    The session pins the version whose vocabulary it loaded; every call of a request names that version.
    At most every `version_check_seconds` a request's start asks the model tier which version it serves
    now; when that changed, new requests get a captioner (and scheduler) for the new version while
    requests already running finish on theirs. A request whose version disappears mid-way (TF Serving
    unloads the old version once the new one is available) is rerun from the start on the new version,
    so no caption ever mixes two versions.
    """

    def __init__(
        self,
        backend: ModelBackend,
        max_batch_beams: int = 256,
        batch_wait_seconds: float = 0.002,
        on_decode_batch: Callable[[int], None] | None = None,
        version_check_seconds: float = 5.0,
        on_version_switch: Callable[[ModelInfo], None] | None = None,
        encode_workers: int = 2,
    ) -> None:
        self.backend = backend
        self.encode_workers = encode_workers
        self.max_batch_beams = max_batch_beams
        self.batch_wait_seconds = batch_wait_seconds
        self.on_decode_batch = on_decode_batch
        self.version_check_seconds = version_check_seconds
        self.on_version_switch = on_version_switch
        self._captioner: Captioner | None = None
        self._leases: dict[int, int] = {}  # id(captioner) -> requests running on it
        self._retired: list[Captioner] = []
        self._checked_at = 0.0
        self._checking = False
        self._lock = threading.Lock()

    @property
    def scheduler(self) -> BatchScheduler:
        """The current version's scheduler (raises `ModelUnavailableError` while none is loaded)."""
        return self.captioner().scheduler

    def captioner(self) -> Captioner:
        """The captioner new requests use. Raises `ModelUnavailableError` while the model tier cannot answer."""
        with self._lock:
            now = time.monotonic()
            if self._captioner is None:
                self._switch()
                return self._captioner
            current = self._captioner
            if self._checking or now - self._checked_at < self.version_check_seconds:
                return current
            # One request asks; the others go on with the current version instead of queueing behind it.
            self._checking, self._checked_at = True, now
        try:
            latest = self.backend.available_version()
        finally:
            with self._lock:
                self._checking = False
        with self._lock:
            if latest != current.info.version and self._captioner is current:
                self._switch()
            return self._captioner

    def caption(
        self,
        image_jpeg: bytes,
        settings: Callable[[Captioner], SearchSettings | SamplingSettings],
        request: CaptionRequest | None = None,
    ) -> CaptionResult:
        """Caption on the current version; `settings` builds the decoding settings for that version's limits."""
        request = request or CaptionRequest()
        deadline = time.monotonic() + request.timeout_seconds
        while True:
            captioner = self._lease()
            try:
                remaining = replace(request, timeout_seconds=max(deadline - time.monotonic(), 1e-3))
                result = captioner.caption(image_jpeg, settings(captioner), remaining)
            except ModelVersionGoneError:
                if time.monotonic() >= deadline:
                    raise
                log.warning("model version gone mid-request; rerunning", extra={"version": captioner.info.version})
                self._expire(captioner)
                continue
            finally:
                self._release(captioner)
            log.info(
                "captioned",
                extra={"version": result.model_version, "rpcs": result.rpcs, "captions": len(result.captions)},
            )
            return result

    def close(self) -> None:
        with self._lock:
            captioners = [c for c in [self._captioner, *self._retired] if c is not None]
            self._captioner, self._retired = None, []
        for captioner in captioners:
            captioner.scheduler.close()
        self.backend.close()

    def _switch(self) -> None:
        info = self.backend.load_metadata()
        pinned = self.backend.pinned(info.version)
        scheduler = BatchScheduler(
            pinned, self.max_batch_beams, self.batch_wait_seconds, self.on_decode_batch, self.encode_workers
        )
        old, self._captioner = self._captioner, Captioner(pinned, info, scheduler)
        self._checked_at = time.monotonic()
        if old is not None:
            self._retire(old)
        if self.on_version_switch is not None:
            self.on_version_switch(info)

    def _retire(self, captioner: Captioner) -> None:
        """Close its scheduler once the last request running on it is done (now, if none is)."""
        if self._leases.get(id(captioner), 0):
            self._retired.append(captioner)
        else:
            captioner.scheduler.close()

    def _lease(self) -> Captioner:
        captioner = self.captioner()
        with self._lock:
            self._leases[id(captioner)] = self._leases.get(id(captioner), 0) + 1
        return captioner

    def _release(self, captioner: Captioner) -> None:
        with self._lock:
            left = self._leases.pop(id(captioner), 1) - 1
            if left:
                self._leases[id(captioner)] = left
                return
            if captioner in self._retired:
                self._retired.remove(captioner)
                captioner.scheduler.close()

    def _expire(self, captioner: Captioner) -> None:
        """Its version is gone: the next lease asks the model tier again, at once."""
        with self._lock:
            if self._captioner is captioner:
                self._checked_at = 0.0
