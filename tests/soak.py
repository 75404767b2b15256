"""`make soak`: a long mixed load against a real gateway, checking it stays correct and its memory flat.

Not part of `make test`. Without --url it starts `memefly serve` (the embedded backend on models/, or
whatever MEMEFLY_* says) on a free port, and stops it at the end. Workers send, in a loop: photos
(most), the hostile corpus of tests/bad_images.py, and template memes with user text. It fails (exit 1)
if any answer is a 500 or an unexpected status, if a meme takes longer than the request deadline, or
if the gateway's resident memory keeps growing.

    python -m tests.soak --duration 600 --concurrency 12
    python -m tests.soak --url http://127.0.0.1:8000 --duration 120
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.bad_images import CORPUS
from tests.support import free_port, photo_jpeg

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "cat")
ALLOWED_UNDER_LOAD = {429, 503, 504}
"""Answers that mean "busy", not "wrong": counted, never a failure."""


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, status: int, expected: int, seconds: float) -> None:
        with self.lock:
            self.statuses[(kind, status)] += 1
            if status == expected:
                if status == 200:
                    self.latencies.append(seconds)
            elif status not in ALLOWED_UNDER_LOAD and len(self.unexpected) < 50:
                self.unexpected.append(f"{kind}: {status}, expected {expected}")


def _requests() -> list[tuple[str, dict, int, float]]:
    """(kind, httpx keyword arguments, expected status, weight)."""
    photos = [
        (f"photo:{name}", {"json": {"image": base64.b64encode(photo_jpeg(name)).decode()}}, 200, 6.0) for name in PHOTOS
    ]
    corpus = [
        (f"corpus:{name}", {"files": {"image": (f"{name}.bin", make(), "application/octet-stream")}}, status, 1.0)
        for name, (make, status, _) in CORPUS.items()
    ]
    template = [("template:drake", {"json": {"template_id": "drake", "text": ["soak", "test"]}}, 200, 3.0)]
    return photos + corpus + template


def _worker(base_url: str, requests: list[tuple[str, dict, int, float]], until: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    api_key = os.environ.get("MEMEFLY_SOAK_API_KEY")
    weights = [weight for *_, weight in requests]
    headers = {"Accept": "application/json", **({"X-API-Key": api_key} if api_key else {})}
    with httpx.Client(base_url=base_url, timeout=120, headers=headers) as client:
        while time.monotonic() < until:
            kind, kwargs, expected, _ = rng.choices(requests, weights)[0]
            started = time.monotonic()
            try:
                status = client.post("/v1/memes", **kwargs).status_code
            except httpx.HTTPError as error:
                with tally.lock:
                    tally.unexpected.append(f"{kind}: {type(error).__name__}")
                continue
            tally.record(kind, status, expected, time.monotonic() - started)
            if status in ALLOWED_UNDER_LOAD:
                time.sleep(rng.uniform(0.05, 0.5))  # a polite client backs off, with jitter


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _start_gateway(port: int, log_path: Path, meme_dir: str) -> subprocess.Popen:
    # The soak's memes go to a temporary folder unless MEMEFLY_MEME_STORE_DIR says otherwise.
    env = {"MEMEFLY_MEME_STORE_DIR": meme_dir, **os.environ}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--port", str(port)], stdout=log, stderr=log, env=env
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise TimeoutError(f"the gateway was not ready within 180 s; see {log_path}")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running gateway; default: start one")
    parser.add_argument("--duration", type=float, default=300, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=30, help="the gateway's request deadline, seconds")
    parser.add_argument("--max-rss-growth-mib", type=float, default=150)
    args = parser.parse_args()

    process = None
    meme_dir = tempfile.TemporaryDirectory(prefix="memefly-soak-")
    if args.url is None:
        port = free_port()
        process = _start_gateway(port, Path(os.environ.get("SOAK_LOG", "soak-gateway.log")), meme_dir.name)
        base_url = f"http://127.0.0.1:{port}"
    else:
        base_url = args.url.rstrip("/")
    tally = Tally()
    rss: list[float] = []
    try:
        requests = _requests()
        until = time.monotonic() + args.duration
        workers = [
            threading.Thread(target=_worker, args=(base_url, requests, until, tally, seed))
            for seed in range(args.concurrency)
        ]
        for worker in workers:
            worker.start()
        while any(worker.is_alive() for worker in workers):
            if process is not None:
                rss.append(_rss_mib(process.pid))
            time.sleep(5)
        for worker in workers:
            worker.join()
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
        meme_dir.cleanup()

    # Memory: the last quarter's peak against the first quarter's, once caches and arenas have warmed up.
    quarter = max(1, len(rss) // 4)
    growth = (max(rss[-quarter:]) - max(rss[:quarter])) if rss else 0.0
    p50, p99 = _percentile(tally.latencies, 0.5), _percentile(tally.latencies, 0.99)
    problems = list(tally.unexpected)
    if p99 > args.deadline:
        problems.append(f"p99 latency {p99:.1f} s is past the {args.deadline} s deadline")
    if growth > args.max_rss_growth_mib:
        problems.append(f"resident memory grew {growth:.0f} MiB between the first and last quarter")
    summary = {
        "requests": sum(tally.statuses.values()),
        "statuses": {f"{kind} {status}": n for (kind, status), n in sorted(tally.statuses.items())},
        "latency_seconds": {"p50": round(p50, 3), "p99": round(p99, 3)},
        "rss_mib": {"first": round(rss[0], 1), "last": round(rss[-1], 1), "growth": round(growth, 1)} if rss else None,
        "problems": problems,
    }
    print(json.dumps(summary, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
