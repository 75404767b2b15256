"""Closed-loop load: `concurrency` client threads, each making one meme after another until `memes` are done.

Each meme is timed from the image handed over to the caption returned (encode and every decode step).
Throughput is memes divided by the wall time of the whole window, ramp-up and drain included.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from bench.machine import CpuSample, cpu_sample
from bench.modes import MemeOutcome, Mode, OfflineBatchedMode
from bench.wire import LedgerSnapshot
from bench.workload import BenchImage


@dataclass
class Measurement:
    concurrency: int | None
    offline_batch: int | None
    memes: int
    seconds: float
    latencies: list[float]
    """Seconds per meme, for the memes that finished."""
    outcomes: list[tuple[str, MemeOutcome]]
    """(image name, outcome) of each finished meme."""
    ledger: LedgerSnapshot
    """Model calls and bytes within the window."""
    errors: list[str]
    cpu_seconds: float = 0.0
    """CPU time of the benchmark process and the serving tier within the window."""
    other_cpu_seconds: float = 0.0
    """CPU time every other process on the machine took within the window."""


def _cpu_window(before: CpuSample, after: CpuSample) -> tuple[float, float]:
    ours = after.ours_seconds - before.ours_seconds
    return ours, max(after.busy_seconds - before.busy_seconds - ours, 0.0)


def closed_loop(
    mode: Mode, images: list[BenchImage], concurrency: int, memes: int, server_pids: tuple[int, ...] = ()
) -> Measurement:
    lock = threading.Lock()
    taken = 0
    latencies: list[float] = []
    outcomes: list[tuple[str, MemeOutcome]] = []
    errors: list[str] = []
    ready = threading.Barrier(concurrency + 1)

    def client() -> None:
        nonlocal taken
        ready.wait()
        while True:
            with lock:
                index, taken = taken, taken + 1
            if index >= memes:
                return
            image = images[index % len(images)]
            started = time.perf_counter()
            try:
                outcome = mode.meme(image.jpeg)
            except Exception as error:  # a failed meme is reported, not fatal to the run
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                outcomes.append((image.name, outcome))

    threads = [threading.Thread(target=client, name=f"bench-client-{i}", daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    before = mode.ledger.snapshot()
    cpu_before = cpu_sample(list(server_pids))
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    cpu = _cpu_window(cpu_before, cpu_sample(list(server_pids)))
    ledger = mode.ledger.snapshot().minus(before)
    return Measurement(concurrency, None, memes, seconds, latencies, outcomes, ledger, errors, *cpu)


def offline_batches(mode: OfflineBatchedMode, images: list[BenchImage], batch: int, repeats: int) -> Measurement:
    """`repeats` batches of `batch` memes, one after another; each meme's latency is its batch's time."""
    latencies: list[float] = []
    outcomes: list[tuple[str, MemeOutcome]] = []
    before = mode.ledger.snapshot()
    cpu_before = cpu_sample([])
    started = time.perf_counter()
    for repeat in range(repeats):
        chosen = [images[(repeat * batch + i) % len(images)] for i in range(batch)]
        batch_started = time.perf_counter()
        results = mode.batch([image.jpeg for image in chosen])
        elapsed = time.perf_counter() - batch_started
        latencies += [elapsed] * batch
        outcomes += [(image.name, outcome) for image, outcome in zip(chosen, results, strict=True)]
    seconds = time.perf_counter() - started
    cpu = _cpu_window(cpu_before, cpu_sample([]))
    ledger = mode.ledger.snapshot().minus(before)
    return Measurement(None, batch, batch * repeats, seconds, latencies, outcomes, ledger, [], *cpu)
