"""TF Serving's ``--enable_batching``: concurrent Predict calls merged along dimension 0.

Follows tensorflow_model_server's batching session (batching/batching_session.cc) over a shared
batch scheduler (tensorflow/core/kernels/batching_util/shared_batch_scheduler.h):

- Every signature of a batched model goes through the batcher; requests are queued per model
  version, signature and set of requested outputs, and a batch only ever holds one queue's requests.
- Every input of a request must have rank >= 1 and the same 0th dimension, or the request fails
  with INVALID_ARGUMENT. So scalar inputs (``decode_step``'s ``k``), inputs of different 0th sizes
  (``context`` vs ``tokens``) and signatures without inputs (``metadata``) cannot be served with
  batching on; TF Serving itself answers them with the same errors.
- Inputs are concatenated along dimension 0 (padded to an ``allowed_batch_sizes`` entry by
  repeating a row); every requested output must have a 0th dimension equal to the batch's rows,
  and is split back by the callers' row counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from serving.batching_options import BatchingOptions
from serving.errors import FailedPreconditionError, InvalidArgumentError, ServingError, UnavailableError

log = logging.getLogger(__name__)


def batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    """The common 0th dimension of a request's inputs (ComputeTensorBatchSize, batching_util.h)."""
    if not inputs:
        raise InvalidArgumentError("Batching Run() must have at least one input tensor")
    sizes = set()
    for array in inputs.values():
        if array.ndim == 0:
            raise InvalidArgumentError("Batching Run() input tensors must have at least one dimension")
        sizes.add(array.shape[0])
        if len(sizes) > 1:
            raise InvalidArgumentError("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


@dataclass(eq=False)
class _Task:
    inputs: Mapping[str, np.ndarray]
    size: int
    deadline: float | None  # time.monotonic(); None waits forever, like a RunOptions timeout of 0
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: ServingError | None = None


# Runs one merged batch: the merged inputs in, every output of the signature out.
RunBatch = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class BatchSignature:
    """What a queue batches: the graph tensor names (TF Serving's messages use them) of its inputs
    and of its requested outputs, by alias."""

    input_names: Mapping[str, str]
    output_names: Mapping[str, str]


class _Queue:
    """One model version's queue for one signature and output set (internal::Queue)."""

    def __init__(self, options: BatchingOptions, signature: BatchSignature, run: RunBatch) -> None:
        self.options = options
        self.signature = signature
        self.run = run
        self.batches: deque[list[_Task]] = deque([[]])  # the last batch is the open one
        self.open_since = 0.0
        self.in_flight = 0

    def add(self, task: _Task) -> None:
        open_batch = self.batches[-1]
        if sum(t.size for t in open_batch) + task.size > self.options.max_batch_size:
            if len(self.batches) >= self.options.max_enqueued_batches:
                raise UnavailableError(
                    "The batch scheduling queue to which this task was submitted is full; currently "
                    f"{len(self.batches)} batches enqueued and max_enqueued_batches is "
                    f"{self.options.max_enqueued_batches}"
                )
            self.batches.append([])
        if not self.batches[-1]:
            self.open_since = time.monotonic()
        self.batches[-1].append(task)

    def ready_at(self) -> float | None:
        """When the open batch may be processed even if not full; None when it is empty."""
        if len(self.batches) > 1:
            return 0.0
        if not self.batches[-1]:
            return None
        if sum(t.size for t in self.batches[-1]) >= self.options.max_batch_size:
            return 0.0
        return self.open_since + self.options.batch_timeout_micros / 1e6

    def take(self, now: float, closing: bool) -> list[_Task] | None:
        ready_at = self.ready_at()
        if ready_at is None or (ready_at > now and not closing):
            return None
        if len(self.batches) == 1:
            self.batches.append([])
        self.in_flight += 1
        return self.batches.popleft()

    def idle(self) -> bool:
        return self.in_flight == 0 and len(self.batches) == 1 and not self.batches[-1]


class SharedBatchScheduler:
    """The server-wide pool of ``num_batch_threads`` threads, taking ready batches from every
    queue in turn, as TF Serving's SharedBatchScheduler does."""

    def __init__(self, num_batch_threads: int) -> None:
        self._cv = threading.Condition()
        self._queues: dict[Hashable, _Queue] = {}
        self._turn = 0
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch_threads_{i}", daemon=True)
            for i in range(num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(
        self,
        key: Hashable,
        options: BatchingOptions,
        signature: BatchSignature,
        run_batch: RunBatch,
        inputs: Mapping[str, np.ndarray],
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Queues one request and waits for its rows of the merged batch's outputs."""
        size = batch_size(inputs)
        if size > options.max_batch_size:
            raise InvalidArgumentError(
                f"Task size {size} is larger than maximum input batch size {options.max_batch_size}"
            )
        task = _Task(inputs, size, deadline)
        with self._cv:
            if self._closing:
                raise UnavailableError("Server is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(options, signature, run_batch)
            queue.add(task)
            self._cv.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def close(self, timeout: float = 10.0) -> None:
        """Processes what is queued, then stops the threads."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cv:
                while True:
                    found = self._next_batch()
                    if found is not None:
                        break
                    if self._closing and not self._queues:
                        return
                    self._cv.wait(self._wait_seconds())
            queue, batch = found
            try:
                _process(queue, batch)
            finally:
                with self._cv:
                    queue.in_flight -= 1
                    self._forget_if_idle(queue)
                    self._cv.notify_all()

    def _next_batch(self) -> tuple[_Queue, list[_Task]] | None:
        queues = list(self._queues.values())
        now = time.monotonic()
        for offset in range(len(queues)):
            queue = queues[(self._turn + offset) % len(queues)]
            batch = queue.take(now, self._closing)
            if batch is not None:
                self._turn = (self._turn + offset + 1) % len(queues)
                return queue, batch
        return None

    def _wait_seconds(self) -> float | None:
        times = [t for t in (q.ready_at() for q in self._queues.values()) if t is not None]
        return max(min(times) - time.monotonic(), 0.0005) if times else None

    def _forget_if_idle(self, queue: _Queue) -> None:
        for key, known in list(self._queues.items()):
            if known is queue and queue.idle():
                del self._queues[key]


def _process(queue: _Queue, tasks: list[_Task]) -> None:
    """ProcessBatch: merge, run once, split; any failure fails every request of the batch."""
    try:
        now = time.monotonic()
        if all(t.deadline is not None and t.deadline <= now for t in tasks):
            raise ServingError("Run() timeout exceeded while waiting in batching queue", "RESOURCE_EXHAUSTED")
        padding = _padding(queue.options.allowed_batch_sizes, sum(t.size for t in tasks))
        merged = merge_inputs([t.inputs for t in tasks], queue.signature.input_names, queue.options, padding)
        outputs = queue.run(merged)
        parts = split_outputs(outputs, queue.signature.output_names, [t.size for t in tasks], padding)
        for task, part in zip(tasks, parts, strict=True):
            task.outputs = part
    except ServingError as exc:
        for task in tasks:
            task.error = exc
    except Exception as exc:  # a bug here must not leave callers waiting forever
        log.exception("Processing a batch failed")
        for task in tasks:
            task.error = ServingError(str(exc) or type(exc).__name__, "INTERNAL")
    finally:
        for task in tasks:
            task.done.set()


def _padding(allowed_batch_sizes: Sequence[int], size: int) -> int:
    """Rows to add to reach the lowest allowed batch size (RoundToLowestAllowedBatchSize)."""
    for allowed in allowed_batch_sizes:
        if allowed >= size:
            return allowed - size
    return 0


def merge_inputs(
    requests: Sequence[Mapping[str, np.ndarray]],
    tensor_names: Mapping[str, str],
    options: BatchingOptions,
    padding: int,
) -> dict[str, np.ndarray]:
    """Concatenates each input over the requests along dimension 0 (MergeInputTensors)."""
    merged = {}
    for alias, tensor_name in tensor_names.items():
        arrays = [request[alias] for request in requests]
        if options.pad_variable_length_inputs:
            arrays = _pad_to_common_shape(arrays)
        elif any(a.shape[1:] != arrays[0].shape[1:] for a in arrays):
            raise FailedPreconditionError(
                f"Tensors with name '{tensor_name}' from different tasks have different shapes and padding is "
                "turned off. Set pad_variable_length_inputs to true, or ensure that all tensors with the same "
                "name have equal dimensions starting with the first dim."
            )
        if padding:
            # TF Serving pads with copies of the last request's first row: always a valid input.
            arrays.append(np.repeat(arrays[-1][:1], padding, axis=0))
        merged[alias] = np.concatenate(arrays)
    return merged


def _pad_to_common_shape(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """AddPadding (batching_util.cc): grows dimensions 1.. to the largest, filling with the first value."""
    largest = np.max([a.shape for a in arrays], axis=0)
    padded = []
    for array in arrays:
        if not 1 <= array.ndim <= 6:
            raise InvalidArgumentError("Only tensors with rank from 1 to 6 can be padded.")
        extra = [(0, 0)] + [(0, int(n - d)) for n, d in zip(largest[1:], array.shape[1:], strict=True)]
        if not any(after for _, after in extra):
            padded.append(array)
            continue
        if array.size < 1:
            raise InvalidArgumentError("Got empty tensor in batch of non-empty tensors.")
        padded.append(np.pad(array, extra, constant_values=array.flat[0]))
    return padded


def split_outputs(
    outputs: Mapping[str, np.ndarray],
    tensor_names: Mapping[str, str],
    sizes: Sequence[int],
    padding: int,
) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every requested output (SplitOutputTensors)."""
    total = sum(sizes) + padding
    bounds = np.cumsum(sizes)[:-1]
    parts: list[dict[str, np.ndarray]] = [{} for _ in sizes]
    for alias in sorted(tensor_names, key=tensor_names.__getitem__):
        array = outputs[alias]
        if array.ndim == 0:
            raise FailedPreconditionError("Batched output tensor has 0 dimensions")
        if array.shape[0] != total:
            raise FailedPreconditionError(
                "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of "
                "the input tensors"
            )
        for part, rows in zip(parts, np.split(array[: total - padding], bounds), strict=True):
            part[alias] = rows
    return parts
