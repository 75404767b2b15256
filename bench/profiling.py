"""py-spy on both tiers while a mode runs: where the client (gateway) and the serving tier spend CPU.

py-spy samples the gateway side (this process) and the serving tier (its own child process) without
root. Its raw output (collapsed stacks, one per line with a sample count) is kept beside the report and
summarised here as the functions with the most samples, on the stack (inclusive) and on top (self).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.load import closed_loop
from bench.modes import Mode
from bench.workload import BenchImage

SAMPLES_PER_SECOND = 200
TOP_FUNCTIONS = 25


def _start_py_spy(pid: int, output: Path) -> subprocess.Popen | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return None
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", str(SAMPLES_PER_SECOND), "--format", "raw",
         "--threads", "--nonblocking", "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def _stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    try:
        _, error = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, error = process.communicate()
    return error.decode(errors="replace")[-500:]


def summarise(raw: Path, top: int = TOP_FUNCTIONS) -> dict[str, Any]:
    """Total samples, samples per thread, and the top functions by inclusive and by self samples."""
    inclusive: Counter = Counter()
    own: Counter = Counter()
    threads: Counter = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        frames = frames[1:] or frames
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    share = lambda counter: [  # noqa: E731 - a local formatter
        {"function": name, "samples": n, "share": n / total if total else 0.0} for name, n in counter.most_common(top)
    ]
    return {"samples": total, "threads": share(threads), "inclusive": share(inclusive), "self": share(own)}


def profile_mode(
    mode: Mode, images: list[BenchImage], concurrency: int, memes: int, server_pid: int | None, out_dir: Path
) -> dict[str, Any]:
    """Runs `memes` memes at `concurrency` under py-spy; returns the summaries and where the raw files are."""
    targets = {"gateway": os.getpid()}
    if server_pid is not None:
        targets["serving"] = server_pid
    outputs = {side: out_dir / f"profile-mode{mode.number}-c{concurrency}-{side}.txt" for side in targets}
    spies = {side: _start_py_spy(pid, outputs[side]) for side, pid in targets.items()}
    if any(spy is None for spy in spies.values()):
        return {"error": "py-spy not found (pip install '.[bench]')"}
    time.sleep(1.0)  # py-spy attaches
    measurement = closed_loop(mode, images, concurrency, memes)
    errors = {side: _stop(spy) for side, spy in spies.items() if spy is not None}
    result: dict[str, Any] = {
        "concurrency": concurrency,
        "memes": len(measurement.latencies),
        "seconds": measurement.seconds,
        "note": "sampled while profiling; not the measured row",
    }
    for side, output in outputs.items():
        if output.is_file():
            result[side] = {"raw": str(output), **summarise(output)}
        else:
            result[side] = {"error": errors.get(side, "no output")}
    return result
