"""Caption one image: one `encode` call, then one `decode_step` per step carrying all live beams.

The calls go through the `BatchScheduler`, so concurrent requests share them; what a request sees is
the same as if it ran alone.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from gateway.backends import Condition, ModelBackend, ModelInfo, ModelVersionGoneError
from gateway.backends.base import GenerateBackend
from gateway.rerank import blank_image_jpeg, most_specific, specificity
from gateway.scheduler import BatchScheduler, SchedulerSettings
from gateway.search import BeamSearch, Hypothesis, Sampling, SamplingSettings, SearchSettings
from gateway.template_picker import TemplatePicker
from gateway.templates import Template
from memefly.text import caption_text, ids_to_boxes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caption:
    boxes: list[str]
    score: float
    log_prob: float
    specificity: float | None = None
    """log P(caption | image) − log P(caption | blank image), when sampled captions were re-ranked by it."""
    topic: str | None = None
    """The topic words the model wrote about (None: a model without conditioning, or `generate`)."""
    style: str | None = None
    """The template whose voice the caption took."""
    attention: tuple[tuple[str, list[float]], ...] | None = None
    """With `explain`: each word and where the decoder looked on the image grid while writing it."""

    @property
    def text(self) -> str:
        return " / ".join(self.boxes)


@dataclass(frozen=True)
class CaptionResult:
    captions: list[Caption]
    model_name: str
    model_version: int
    model_calls: int
    """Calls made to the model tier for this meme (the API's `rpcs`)."""
    concepts: tuple[tuple[str, float], ...] = ()
    """What the photo showed: concept words and their probabilities, most likely first."""


class UnknownStyleError(ValueError):
    """A style the model does not have, or a topic or style asked of a model without conditioning."""


class UnsupportedByModelError(ValueError):
    """The request asks for something the served model does not export (`explain` of a GRU)."""


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
    topic: str = ""
    """What the caption should be about (free text); "" for what the photo shows."""
    style: str = ""
    """A style (template id) the model lists; "" to let the model pick one for each caption."""
    captions: int = 1
    """How many captions the request returns: without a style, each takes its own."""
    style_beam_width: int | None = None
    """Beam search with one style a caption: the beam width of each caption's search (None: the
    settings' own)."""
    explain: bool = False
    """Also ask the model where it looked for each word (one `explain` call, only then)."""


class Captioner:
    def __init__(self, backend: ModelBackend, info: ModelInfo, scheduler: BatchScheduler) -> None:
        self.backend = backend
        self.info = info
        self.scheduler = scheduler
        self._picker: TemplatePicker | None = None
        self._blank_contexts: dict[str, np.ndarray] = {}
        """The blank image's context, by style ("": the model's own choice, or no conditioning)."""
        self._lock = threading.Lock()
        """Guards the picker and the blank contexts, each built once."""

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
        if request.explain and self.info.contract.explain is None:
            raise UnsupportedByModelError(
                f"the served model {self.info.name} ({self.info.contract.decoder}) does not attend over an image grid, "
                "so it cannot explain its captions; ask a transformer model (model=transformer)"
            )
        if self.info.contract.conditioned:
            return self._caption_conditioned(image_jpeg, settings, request)
        asked = [name for name in ("topic", "style") if getattr(request, name)]
        if asked:
            raise UnknownStyleError(
                f"the served model version {self.info.version} has no topic or style conditioning (its contract "
                f"predates them), so it cannot honour {' and '.join(asked)}; leave them out, or serve a newer "
                "model (GET /v1/styles lists the styles of the one served)"
            )
        whole_search = isinstance(settings, SearchSettings) and not request.context_noise
        if whole_search and isinstance(self.backend, GenerateBackend):
            # One model call: the model tokenizes the prefix, encodes and searches in-graph (no noise possible).
            return self._result(self.backend.generate(image_jpeg, settings, request.prefix), model_calls=1)
        deadline = time.monotonic() + request.timeout_seconds
        prefix = self._prefix(request)
        context = _with_noise(self.scheduler.encode(image_jpeg, deadline), request)
        model_calls = bool(request.prefix.strip()) + 1  # the `tokenize` call, if any, and `encode`
        rerank = isinstance(settings, SamplingSettings) and settings.rerank > 1
        if rerank:
            wanted, settings = settings.n, replace(settings, n=settings.n * settings.rerank)
        search = self._search(settings, prefix)
        model_calls += self.scheduler.decode(search, context, deadline, request.cancel)
        result = self._result(search.results(), model_calls)
        if not rerank:
            return result
        kept, calls = self._most_specific_rows([result.captions], context[None], ("",), wanted, deadline)
        return replace(result, captions=kept[0], model_calls=result.model_calls + calls)

    def template_picker(self, templates: Sequence[Template]) -> TemplatePicker:
        """Text to template on this version (its styles), built once."""
        with self._lock:
            if self._picker is None:
                self._picker = TemplatePicker(self.backend, templates, self.info.contract.styles)
            return self._picker

    def conditions(self, request: CaptionRequest) -> list[Condition]:
        """The context rows of a request: one for a given style; else one a caption, each taking the next
        best fitting style (with a seed, a random few of the best, so "more like this" varies)."""
        contract = self.info.contract
        if request.style:
            if request.style not in contract.styles:
                raise UnknownStyleError(f"no style {request.style!r}; see GET /v1/styles")
            return [Condition(0, request.topic, request.style, 0)]
        count = max(1, min(request.captions, len(contract.styles) or 1))
        ranks: list[int] = list(range(count))
        if request.seed is not None:
            pool = min(len(contract.styles) or 1, 2 * count + 2)
            ranks = sorted(int(r) for r in np.random.default_rng(request.seed).choice(pool, count, replace=False))
        return [Condition(0, request.topic, "", rank) for rank in ranks]

    def _caption_conditioned(
        self, image_jpeg: bytes, settings: SearchSettings | SamplingSettings, request: CaptionRequest
    ) -> CaptionResult:
        """One `encode` call for all of the request's rows, then a search a row, side by side in the ticks."""
        deadline = time.monotonic() + request.timeout_seconds
        conditions = self.conditions(request)
        rows = len(conditions)
        one_style_each = not request.style
        if isinstance(settings, SearchSettings) and one_style_each:
            # The best caption of each style's beam (`generate` follows the same rule in-graph).
            width = request.style_beam_width or settings.beam_width
            settings = replace(settings, beam_width=width, n_best=1)
        whole_search = isinstance(settings, SearchSettings) and not request.context_noise
        in_graph = one_style_each and not request.topic and not request.explain
        if whole_search and isinstance(self.backend, GenerateBackend) and in_graph:
            found = self._result(
                self.backend.generate(image_jpeg, settings, request.prefix, captions=rows), model_calls=1
            )
            return replace(found, captions=_one_style_each_in_turn([[c] for c in found.captions]))
        prefix = self._prefix(request)
        encoding = self.scheduler.encode_rows([image_jpeg], conditions, deadline)
        contexts = _with_noise(encoding.contexts, request)
        model_calls = bool(request.prefix.strip()) + 1  # the `tokenize` call, if any, and `encode`
        rerank = isinstance(settings, SamplingSettings) and settings.rerank > 1
        per_row = 1
        if isinstance(settings, SamplingSettings):
            per_row = -(-settings.n // rows)
            row_settings = [
                replace(
                    settings,
                    n=per_row * (settings.rerank if rerank else 1),
                    seed=None if settings.seed is None else settings.seed + row,
                )
                for row in range(rows)
            ]
        else:
            row_settings = [settings] * rows
        searches = [self._search(row, prefix) for row in row_settings]
        model_calls += self.scheduler.decode_all(searches, contexts, deadline, request.cancel)
        per_row_captions = [
            [
                replace(c, topic=encoding.topics[row], style=encoding.styles[row])
                for c in self._result(s.results(), 0).captions
            ]
            for row, s in enumerate(searches)
        ]
        if rerank:
            per_row_captions, calls = self._most_specific_rows(
                per_row_captions, contexts, encoding.styles, per_row, deadline
            )
            model_calls += calls
        merged = _one_style_each_in_turn(per_row_captions)
        if request.explain and merged:
            row_of_style = {style: row for row, style in enumerate(encoding.styles)}
            rows = [row_of_style.get(c.style, 0) for c in merged]
            explained = self.backend.explain(contexts[rows], ["\n".join(c.boxes) for c in merged])
            merged = [replace(c, attention=tuple(words)) for c, words in zip(merged, explained, strict=True)]
            model_calls += 1
        return CaptionResult(merged, self.info.name, self.info.version, model_calls, encoding.concepts[0])

    def _prefix(self, request: CaptionRequest) -> tuple[int, ...]:
        """The model's tokens for the request's caption beginning (one `tokenize` call), or none."""
        return self.backend.tokenize(request.prefix) if request.prefix.strip() else ()

    def _search(self, settings: SearchSettings | SamplingSettings, prefix: tuple[int, ...]) -> BeamSearch | Sampling:
        decoding = BeamSearch if isinstance(settings, SearchSettings) else Sampling
        return decoding.for_contract(settings, self.info.contract, prefix)

    def _blank_contexts_for(self, styles: set[str], deadline: float) -> int:
        """Encode the blank image in each style not seen yet, in one call; returns the calls made."""
        with self._lock:
            missing = sorted(styles - set(self._blank_contexts))
            if not missing:
                return 0
            conditions = [Condition(0, "", style, 0) for style in missing]
            encoding = self.scheduler.encode_rows([blank_image_jpeg()], conditions, deadline, decode_follows=False)
            self._blank_contexts.update(zip(missing, encoding.contexts, strict=True))
            return 1

    def _most_specific_rows(
        self,
        per_row: list[list[Caption]],
        contexts: np.ndarray,
        styles: tuple[str, ...],
        n: int,
        deadline: float,
    ) -> tuple[list[list[Caption]], int]:
        """Each row's `n` sampled captions the image explains best, against the blank image in the row's
        style: one `score` call for all rows."""
        calls = self._blank_contexts_for(set(styles), deadline)
        texts = [caption_text(c.boxes) for captions in per_row for c in captions]
        if not texts:
            return per_row, calls
        rows = [row for row, captions in enumerate(per_row) for _ in captions]
        blanks = np.stack([self._blank_contexts[styles[row]] for row in rows])
        log_probs = self.backend.score(np.concatenate([contexts[rows], blanks]), texts + texts)
        scores = specificity(log_probs[: len(texts)], log_probs[len(texts) :])
        kept, start = [], 0
        for captions in per_row:
            own = scores[start : start + len(captions)]
            own_texts = texts[start : start + len(captions)]
            start += len(captions)
            kept.append([replace(captions[i], specificity=float(own[i])) for i in most_specific(own, own_texts, n)])
        return kept, calls + 1

    def _result(self, hypotheses: list[Hypothesis], model_calls: int) -> CaptionResult:
        vocabulary, contract = self.info.vocabulary, self.info.contract
        captions = [Caption(ids_to_boxes(h.ids, vocabulary, contract), h.score, h.log_prob) for h in hypotheses]
        return CaptionResult([c for c in captions if c.boxes], self.info.name, self.info.version, model_calls)


def _with_noise(contexts: np.ndarray, request: CaptionRequest) -> np.ndarray:
    """Gaussian noise on the contexts, relative to their spread, when the request asks for it."""
    if request.context_noise <= 0:
        return contexts
    rng = np.random.default_rng(request.seed)
    noisy = contexts + rng.normal(0.0, request.context_noise * float(contexts.std()), contexts.shape)
    return noisy.astype(np.float32)


def _one_style_each_in_turn(per_row: list[list[Caption]]) -> list[Caption]:
    """One caption of each style in turn (each turn best first), so the first n differ in more than
    their last words; two styles may still agree on a caption, which is shown once."""
    merged, seen = [], set()
    for turn in itertools.zip_longest(*per_row):
        for caption in sorted((c for c in turn if c is not None), key=_rank):
            if caption.text not in seen:
                seen.add(caption.text)
                merged.append(caption)
    return merged


def _rank(caption: Caption) -> tuple[bool, float]:
    """Best first: captions that name their topic, then the most image-specific of re-ranked samples,
    else the best scored. A style's catch phrase can outscore the topic ("i should buy a boat" for a
    coffee cup); the meme shown is the first caption, so one about the photo comes first."""
    named = bool(caption.topic) and bool(_words(caption.topic) & _words(caption.text))
    return not named, -(caption.specificity if caption.specificity is not None else caption.score)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[\w']+", text.lower()))


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
        scheduler: SchedulerSettings | None = None,
        version_check_seconds: float = 5.0,
        on_version_switch: Callable[[ModelInfo], None] | None = None,
    ) -> None:
        self.backend = backend
        self.scheduler_settings = scheduler or SchedulerSettings()
        """Each version's `BatchScheduler` batches by these."""
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
                extra={"version": result.model_version, "rpcs": result.model_calls, "captions": len(result.captions)},
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
        scheduler = BatchScheduler(pinned, self.scheduler_settings)
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
        while True:
            captioner = self.captioner()
            with self._lock:
                # Counted under the same hold of the lock that a switch takes: a captioner replaced
                # since `captioner()` returned may already be closed, so take the new one instead.
                if captioner is self._captioner:
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
