"""Concurrent requests share decode steps, and each gets exactly the captions it gets alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gateway.backends import Condition, Encoding
from gateway.backends.embedded import EmbeddedBackend
from gateway.captioner import CaptionRequest, ModelSession
from gateway.scheduler import DeadlineExceeded, SchedulerSettings
from gateway.search import SamplingSettings, SearchSettings
from tests.support import MODEL_NAME, photo_jpeg

PHOTOS = ["chelsea", "astronaut", "coffee", "rocket"]


@pytest.fixture(scope="module")
def session(model_base_path: Path):
    session = ModelSession(EmbeddedBackend(model_base_path, MODEL_NAME), SchedulerSettings(batch_wait_seconds=0.02))
    yield session
    session.close()


@pytest.fixture(scope="module")
def images(data_folder: Path) -> list[bytes]:
    templates = [(data_folder / "templates" / f"{t}.jpg").read_bytes() for t in ("buzz", "wonka", "ds", "drake")]
    return [photo_jpeg(name) for name in PHOTOS] + templates


def caption_all(session: ModelSession, images: list[bytes], settings, concurrent: bool) -> list:
    captioner = session.captioner()
    if not concurrent:
        return [captioner.caption(image, settings) for image in images]
    barrier = threading.Barrier(len(images))

    def one(image: bytes):
        barrier.wait()
        return captioner.caption(image, settings)

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(one, images))


@pytest.mark.parametrize(
    "settings",
    [SearchSettings(beam_width=3, n_best=3, max_length=12), SamplingSettings(n=3, max_length=12, seed=5)],
    ids=["beam", "sample"],
)
def test_concurrent_requests_share_decode_calls_and_match_solo_results(
    session: ModelSession, images: list[bytes], settings
) -> None:
    stats = session.scheduler.stats
    calls_before = stats.decode_calls
    alone = caption_all(session, images, settings, concurrent=False)
    solo_calls = stats.decode_calls - calls_before
    assert solo_calls == sum(r.model_calls - 1 for r in alone)

    calls_before, beams_before = stats.decode_calls, stats.decode_beams
    together = caption_all(session, images, settings, concurrent=True)
    shared_calls = stats.decode_calls - calls_before

    assert shared_calls < solo_calls, "decode steps of concurrent requests are merged"
    assert (stats.decode_beams - beams_before) / shared_calls > 3, "calls carry beams of several requests"
    for solo, shared in zip(alone, together, strict=True):
        assert [c.boxes for c in solo.captions] == [c.boxes for c in shared.captions]
        np.testing.assert_allclose([c.score for c in solo.captions], [c.score for c in shared.captions], rtol=1e-4)
        assert solo.model_calls == shared.model_calls


def test_prefix_is_kept_and_completed(session: ModelSession, images: list[bytes]) -> None:
    captioner = session.captioner()
    vocabulary = captioner.info.vocabulary
    words = [vocabulary[5], vocabulary[6]]
    result = captioner.caption(
        images[0], SearchSettings(beam_width=3, n_best=3, max_length=12), CaptionRequest(prefix=" ".join(words))
    )
    assert result.captions
    for caption in result.captions:
        assert caption.boxes[0].split()[:2] == words
    closed = captioner.caption(
        images[0], SearchSettings(beam_width=3, n_best=2, max_length=12), CaptionRequest(prefix=words[0] + "\n")
    )
    assert all(c.boxes[0] == words[0] and len(c.boxes) >= 2 for c in closed.captions)


def test_sampling_with_a_seed_repeats_and_noise_varies_contexts(session: ModelSession, images: list[bytes]) -> None:
    captioner = session.captioner()
    settings = SamplingSettings(n=4, temperature=1.2, max_length=12, seed=9)
    first = captioner.caption(images[1], settings, CaptionRequest(context_noise=0.5, seed=3))
    again = captioner.caption(images[1], settings, CaptionRequest(context_noise=0.5, seed=3))
    assert [c.boxes for c in first.captions] == [c.boxes for c in again.captions]


def test_a_request_past_its_deadline_stops(session: ModelSession, images: list[bytes]) -> None:
    captioner = session.captioner()
    with pytest.raises(DeadlineExceeded):
        captioner.caption(images[0], SearchSettings(beam_width=3, max_length=12), CaptionRequest(timeout_seconds=1e-6))


def test_a_withdrawn_request_stops_decoding(session: ModelSession, images: list[bytes]) -> None:
    cancel = threading.Event()
    cancel.set()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="withdrawn"):
        session.captioner().caption(
            images[0], SearchSettings(beam_width=3, max_length=12), CaptionRequest(cancel=cancel)
        )
    assert time.monotonic() - started < 10


class _OneEncodeThatWaits(EmbeddedBackend):
    """The real model, except that encoding `held` blocks until released (a slow upload's encode)."""

    def __init__(self, model_base_path: Path, held: bytes) -> None:
        super().__init__(model_base_path, MODEL_NAME)
        self.held = held
        self.encoding_held = threading.Event()
        self.release = threading.Event()

    def encode_rows(self, image_bytes: list[bytes], conditions: list[Condition]) -> Encoding:
        if self.held in image_bytes:
            self.encoding_held.set()
            self.release.wait(timeout=60)
        return super().encode_rows(image_bytes, conditions)


class _EncoderThatWaits(_OneEncodeThatWaits):
    """As above, and decoding waits until that encode has begun, so the request decoding overlaps it for sure."""

    def decode_step(self, *args, **kwargs):
        self.encoding_held.wait(timeout=30)
        return super().decode_step(*args, **kwargs)


def test_a_new_requests_encode_does_not_stall_requests_already_decoding(model_base_path: Path) -> None:
    held = photo_jpeg("rocket")
    backend = _EncoderThatWaits(model_base_path, held)
    session = ModelSession(backend)
    settings = SearchSettings(beam_width=3, n_best=1, max_length=12)
    try:
        captioner = session.captioner()
        with ThreadPoolExecutor(2) as pool:
            decoding = pool.submit(captioner.caption, photo_jpeg("chelsea"), settings)
            while captioner.scheduler.stats.encode_calls == 0:
                time.sleep(0.01)
            waiting = pool.submit(captioner.caption, held, settings)
            # The first request decodes to the end while the second one's encode is held.
            alone = decoding.result(timeout=60)
            assert not waiting.done()
            backend.release.set()
            assert waiting.result(timeout=60).captions
        assert alone.captions
    finally:
        backend.release.set()
        session.close()


def test_an_image_arriving_while_another_encodes_does_not_wait_for_it(model_base_path: Path) -> None:
    held = photo_jpeg("rocket")
    backend = _OneEncodeThatWaits(model_base_path, held)
    session = ModelSession(backend, SchedulerSettings(encode_workers=2))
    settings = SearchSettings(beam_width=3, n_best=1, max_length=12)
    try:
        captioner = session.captioner()
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(captioner.caption, held, settings)
            assert backend.encoding_held.wait(timeout=30)
            # Encoded and decoded to the end while the first image is still being encoded.
            quick = pool.submit(captioner.caption, photo_jpeg("chelsea"), settings).result(timeout=30)
            assert not slow.done()
            backend.release.set()
            assert slow.result(timeout=60).captions
        assert quick.captions
        assert captioner.scheduler.stats.encode_calls == 2
    finally:
        backend.release.set()
        session.close()
