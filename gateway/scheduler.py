"""Continuous batching: the decode steps of every request in flight go to the model tier as one call.

As in TGI and vLLM, requests join and leave between ticks. Each tick stacks the live beams of all
active searches into one `decode_step` call (each request's context sent once, its beams pointing at
it through `context_index`), splits the top-k back and advances each search. Encoder calls are merged
the same way, on threads of their own, so a new request's image never stalls the steps of the
requests already decoding. More than one `encode` call can be in flight: images that arrive while a
batch is being encoded start at once rather than after it. A lone request is never delayed; a tick
waits (briefly, bounded) only while requests whose image is already encoded are about to join.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import numpy as np

from gateway.backends import Condition, Encoding, ModelBackend
from gateway.search import BeamSearch, Sampling


def _settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Resolve a future unless it already is (a request may have given up on it)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before its caption was finished."""


class Cancelled(RuntimeError):
    """The request was withdrawn (its client went away)."""


@dataclass
class _Job:
    search: BeamSearch | Sampling
    context: np.ndarray
    deadline: float
    cancel: threading.Event | None = None
    future: Future = field(default_factory=Future)
    steps: int = 0
    cancelled: bool = False

    @property
    def withdrawn(self) -> bool:
        return self.cancelled or (self.cancel is not None and self.cancel.is_set())


@dataclass
class _EncodeJob:
    images: list[bytes]
    conditions: list[Condition]
    deadline: float
    decode_follows: bool = True
    """A `decode` for this request follows at once, so the next tick may wait a moment for it."""
    counted_as_joining: bool = False
    """Counted in `_joining` until its search joins (or its request gives up)."""
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    decode_calls: int = 0
    decode_beams: int = 0
    encode_calls: int = 0
    encode_images: int = 0

    @property
    def mean_decode_batch(self) -> float:
        return self.decode_beams / self.decode_calls if self.decode_calls else 0.0


@dataclass(frozen=True)
class SchedulerSettings:
    """How a `BatchScheduler` batches; a `ModelSession` gives the same to each version's scheduler."""

    max_batch_beams: int = 256
    """The most beams one `decode_step` call carries."""
    batch_wait_seconds: float = 0.002
    """How long a tick waits for requests whose image is encoded and whose search is about to join."""
    on_decode_batch: Callable[[int], None] | None = None
    """Called with the beams of each `decode_step` call (a metric)."""
    encode_workers: int = 2
    """`encode` calls in flight at once."""


class BatchScheduler:
    """Worker threads run every model call: one for `decode_step`, `settings.encode_workers` for `encode`;
    request threads only enqueue and wait."""

    def __init__(self, backend: ModelBackend, settings: SchedulerSettings = SchedulerSettings()) -> None:
        self.backend = backend
        self.settings = settings
        self.stats = BatchStats()
        self._jobs: list[_Job] = []
        self._encodes: list[_EncodeJob] = []
        self._joining = 0  # requests whose image is encoded and whose search has not joined yet
        self._wake = threading.Condition()
        self._closed = False
        self._workers = [
            threading.Thread(target=self._run, name="batch-scheduler-decode", daemon=True),
            *(
                threading.Thread(target=self._run_encoder, name=f"batch-scheduler-encode-{n}", daemon=True)
                for n in range(settings.encode_workers)
            ),
        ]
        for worker in self._workers:
            worker.start()

    # Request side -----------------------------------------------------------------------------

    def encode(self, image: bytes, deadline: float, decode_follows: bool = True) -> np.ndarray:
        """The context row for one image (the model's own topic and style); blocks until the merged
        `encode` call returns. `decode_follows`: a `decode` for this request follows at once, so the next
        tick may wait a moment for it."""
        return self.encode_rows([image], [Condition(0)], deadline, decode_follows).contexts[0]

    def encode_rows(
        self, images: list[bytes], conditions: list[Condition], deadline: float, decode_follows: bool = True
    ) -> Encoding:
        """A context for each row of `conditions` (indices into `images`), merged into one `encode` call
        with the other requests' images."""
        job = _EncodeJob(list(images), list(conditions), deadline, decode_follows=decode_follows)
        with self._wake:
            self._check_open()
            self._encodes.append(job)
            self._wake.notify_all()
        try:
            return self._wait(job.future, deadline)
        except BaseException:
            with self._wake:
                if job.counted_as_joining:
                    self._joining = max(0, self._joining - 1)
                    job.counted_as_joining = False
            raise

    def decode(
        self,
        search: BeamSearch | Sampling,
        context: np.ndarray,
        deadline: float,
        cancel: threading.Event | None = None,
    ) -> int:
        """Run `search` to the end; returns how many `decode_step` calls it took part in. Setting
        `cancel` withdraws it before the next tick."""
        return self.decode_all([search], context[None], deadline, cancel)

    def decode_all(
        self,
        searches: list[BeamSearch | Sampling],
        contexts: np.ndarray,
        deadline: float,
        cancel: threading.Event | None = None,
    ) -> int:
        """Run one request's searches side by side (search i on `contexts[i]`), sharing each tick;
        returns how many `decode_step` calls they took part in."""
        jobs = [_Job(search, context, deadline, cancel) for search, context in zip(searches, contexts, strict=True)]
        with self._wake:
            self._check_open()
            self._jobs.extend(jobs)
            self._joining = max(0, self._joining - 1)
            self._wake.notify_all()
        try:
            return max((self._wait(job.future, deadline) for job in jobs), default=0)
        finally:
            for job in jobs:
                job.cancelled = True

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        for worker in self._workers:
            worker.join(timeout=5)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the scheduler is shut down")

    @staticmethod
    def _wait(future: Future, deadline: float):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("deadline passed")
        try:
            return future.result(timeout=remaining)
        except TimeoutError as error:
            if isinstance(error, DeadlineExceeded):
                raise
            raise DeadlineExceeded("deadline passed while decoding") from error

    # Worker side ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._jobs:
                    self._wake.wait()
                if self._closed:
                    self._fail_all(RuntimeError("the scheduler is shut down"))
                    return
                # Requests whose image is encoded join this tick if we wait a moment for them.
                if self._joining and self.settings.batch_wait_seconds > 0:
                    self._wake.wait(self.settings.batch_wait_seconds)
            self._run_decode_tick()

    def _run_encoder(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._encodes:
                    self._wake.wait()
                if self._closed:
                    return
                encodes, self._encodes = self._encodes, []
            self._run_encodes(encodes)

    def _run_encodes(self, jobs: list[_EncodeJob]) -> None:
        now = time.monotonic()
        live = [job for job in jobs if job.deadline > now]
        for job in jobs:
            if job.deadline <= now:
                _settle(job.future, error=DeadlineExceeded("deadline passed before encoding"))
        if not live:
            return
        images: list[bytes] = []
        conditions: list[Condition] = []
        for job in live:
            conditions += [replace(c, image=c.image + len(images)) for c in job.conditions]
            images += job.images
        try:
            encoding = self.backend.encode_rows(images, conditions)
        except Exception as error:  # every waiting request learns why
            for job in live:
                _settle(job.future, error=error)
            return
        self.stats.encode_calls += 1
        self.stats.encode_images += len(images)
        with self._wake:
            for job in live:
                job.counted_as_joining = job.decode_follows
            self._joining += sum(job.decode_follows for job in live)
        row = image = 0
        for job in live:
            rows = slice(row, row + len(job.conditions))
            row, image, first = rows.stop, image + len(job.images), image
            _settle(
                job.future,
                Encoding(
                    encoding.contexts[rows],
                    encoding.topics[rows],
                    encoding.styles[rows],
                    encoding.concepts[first:image],
                ),
            )

    def _take_batch(self) -> list[_Job]:
        now = time.monotonic()
        with self._wake:
            keep = []
            for job in self._jobs:
                if job.withdrawn:
                    _settle(job.future, error=Cancelled("request withdrawn"))
                elif job.deadline <= now:
                    _settle(job.future, error=DeadlineExceeded("deadline passed while decoding"))
                else:
                    keep.append(job)
            self._jobs = keep
            batch, beams = [], 0
            for job in keep:
                if batch and beams + job.search.num_live > self.settings.max_batch_beams:
                    break
                batch.append(job)
                beams += job.search.num_live
            return batch

    def _run_decode_tick(self) -> None:
        batch = self._take_batch()
        if not batch:
            return
        tokens = np.concatenate([job.search.tokens for job in batch])
        state = np.concatenate([job.search.state for job in batch])
        context = np.stack([job.context for job in batch])
        context_index = np.repeat(np.arange(len(batch), dtype=np.int32), [job.search.num_live for job in batch])
        k = max(job.search.k for job in batch)
        try:
            step = self.backend.decode_step(tokens, state, context, context_index, k)
        except Exception as error:
            with self._wake:
                self._jobs = [job for job in self._jobs if job not in batch]
            for job in batch:
                _settle(job.future, error=error)
            return
        self.stats.decode_calls += 1
        self.stats.decode_beams += len(tokens)
        if self.settings.on_decode_batch is not None:
            self.settings.on_decode_batch(len(tokens))
        start = 0
        finished = []
        for job in batch:
            rows = slice(start, start + job.search.num_live)
            start = rows.stop
            own_k = job.search.k
            try:
                job.search.advance(step.top_log_probs[rows, :own_k], step.top_ids[rows, :own_k], step.state[rows])
            except Exception as error:  # one request's failure must not stop the others
                _settle(job.future, error=error)
                finished.append(job)
                continue
            job.steps += 1
            if job.search.done:
                finished.append(job)
        with self._wake:
            self._jobs = [job for job in self._jobs if job not in finished]
        for job in finished:
            _settle(job.future, job.steps)

    def _fail_all(self, error: Exception) -> None:
        for job in [*self._jobs, *self._encodes]:
            _settle(job.future, error=error)
        self._jobs, self._encodes = [], []
