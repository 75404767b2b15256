"""A new model version appears while requests loop through the gateway on the tfserving backend.

The gateway pins the version whose vocabulary it loaded and switches between requests. Version 2 is
the tiny model with different output weights, so its captions differ from version 1's: a request that
mixed versions (encoded by one, decoded by the other) would match neither.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.support import MODEL_NAME, free_port, serving_process, wait_for_model_status

SETTINGS = {"model_name": MODEL_NAME, "beam_width": 3, "n_best": 3}


@pytest.fixture(scope="module")
def version_2_base(tiny_training, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<base>/memefly/2/`: the tiny model with its output bias shifted, exported through the real export."""
    from export.saved_model import export_saved_model

    bias = tiny_training.module.decoder.logits.bias
    original = bias.numpy()
    shift = np.random.default_rng(7).normal(0.0, 3.0, original.shape).astype(np.float32)
    base = tmp_path_factory.mktemp("version2")
    bias.assign(original + shift)
    try:
        export_saved_model(tiny_training.module, base / MODEL_NAME, version=2)
    finally:
        bias.assign(original)
    return base


def _captions(client: TestClient, image: bytes) -> tuple[int, list[tuple[str, float]]]:
    response = client.post(
        "/v1/memes", files={"image": ("chelsea.jpg", image, "image/jpeg")}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model"]["version"], [(c["text"], c["score"]) for c in body["captions"]]


@pytest.fixture(scope="module")
def alone(model_base_path: Path, version_2_base: Path, chelsea_jpeg: bytes) -> dict[int, list[tuple[str, float]]]:
    """What each version answers when it is the only one, in-process."""
    answers = {}
    for base in (model_base_path, version_2_base):
        with TestClient(create_app(Settings(backend="embedded", model_base_path=base, **SETTINGS))) as client:
            version, captions = _captions(client, chelsea_jpeg)
            answers[version] = captions
    assert answers[1] != answers[2], "the two versions must caption differently for the test to mean anything"
    return answers


@pytest.fixture
def rollout(model_base_path: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The local serving tier polling a base path that holds version 1 only, every second."""
    base = tmp_path / "models"
    shutil.copytree(model_base_path / MODEL_NAME / "1", base / MODEL_NAME / "1")
    port = free_port()
    args = [
        f"--port={port}",
        f"--model_name={MODEL_NAME}",
        f"--model_base_path={base / MODEL_NAME}",
        "--file_system_poll_wait_seconds=1",
    ]
    with serving_process(args, tmp_path / "server.log") as process:
        target = f"127.0.0.1:{port}"
        wait_for_model_status(target, MODEL_NAME, process)
        yield target, base / MODEL_NAME


Answers = list[list[tuple[int, list[tuple[str, float]]]]]


@contextlib.contextmanager
def clients_looping(client: TestClient, image: bytes, clients: int) -> Iterator[tuple[Answers, list[BaseException]]]:
    """`clients` threads making memes until the block ends: each one's answers, and any failure."""
    answers: Answers = [[] for _ in range(clients)]
    failures: list[BaseException] = []
    stop = threading.Event()

    def loop(own: list) -> None:
        while not stop.is_set():
            try:
                own.append(_captions(client, image))
            except BaseException as error:  # noqa: BLE001 - every failure is the test's finding
                failures.append(error)
                return

    threads = [threading.Thread(target=loop, args=(own,)) for own in answers]
    for thread in threads:
        thread.start()
    try:
        yield answers, failures
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def _same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> bool:
    return [t for t, _ in got] == [t for t, _ in want] and np.allclose(
        [s for _, s in got], [s for _, s in want], atol=1e-4
    )


def test_new_version_mid_loop_fails_no_request_and_no_request_mixes_versions(
    rollout: tuple[str, Path],
    version_2_base: Path,
    alone: dict[int, list[tuple[str, float]]],
    chelsea_jpeg: bytes,
) -> None:
    target, model_dir = rollout
    staged = model_dir.parent / "staged"
    shutil.copytree(version_2_base / MODEL_NAME / "2", staged)
    settings = Settings(backend="tfserving", tfserving_target=target, version_check_seconds=0.2, **SETTINGS)
    with TestClient(create_app(settings)) as client:
        with clients_looping(client, chelsea_jpeg, 2) as (answers, failures):
            deadline = time.monotonic() + 90
            while sum(map(len, answers)) < 4 and time.monotonic() < deadline and not failures:
                time.sleep(0.05)
            # A rename is atomic: the server sees either no version 2 or all of it, as export guarantees.
            staged.rename(model_dir / "2")
            while time.monotonic() < deadline and not failures:
                if all(sum(v == 2 for v, _ in own) >= 3 for own in answers):
                    break
                time.sleep(0.05)
        ready = client.get("/readyz").json()

    assert not failures, failures[0]
    for own in answers:
        versions = [version for version, _ in own]
        assert versions == sorted(versions), "a client never goes back to the old version"
        assert versions[0] == 1 and versions[-1] == 2
        for version, captions in own:
            assert _same(captions, alone[version]), f"version {version} answered {captions}, alone {alone[version]}"
    assert ready["version"] == 2


ROLLOUT_VERSIONS = 6
ROLLOUT_EVERY_SECONDS = 3.0
ROLLOUT_CLIENTS = 8


def test_rollout_under_load_fails_no_request_and_mixes_no_versions(
    rollout: tuple[str, Path],
    model_base_path: Path,
    version_2_base: Path,
    alone: dict[int, list[tuple[str, float]]],
    chelsea_jpeg: bytes,
    tmp_path: Path,
) -> None:
    """A new version every few seconds while many clients make memes. Odd versions carry version 1's
    weights, even ones version 2's, so every answer can be checked against what its weights say alone."""
    target, model_dir = rollout
    weights = {1: model_base_path / MODEL_NAME / "1", 2: version_2_base / MODEL_NAME / "2"}
    staged = {}
    for version in range(2, ROLLOUT_VERSIONS + 1):
        staged[version] = tmp_path / "staged" / str(version)
        shutil.copytree(weights[2 - version % 2], staged[version])
    settings = Settings(backend="tfserving", tfserving_target=target, version_check_seconds=0.2, **SETTINGS)
    with (
        TestClient(create_app(settings)) as client,
        clients_looping(client, chelsea_jpeg, ROLLOUT_CLIENTS) as (answers, failures),
    ):
        for version in range(2, ROLLOUT_VERSIONS + 1):
            time.sleep(ROLLOUT_EVERY_SECONDS)
            staged[version].rename(model_dir / str(version))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not failures:
            if client.get("/readyz").json().get("version") == ROLLOUT_VERSIONS:
                break
            time.sleep(0.1)
        time.sleep(ROLLOUT_EVERY_SECONDS)

    assert not failures, failures[0]
    served = sorted({version for own in answers for version, _ in own})
    assert served[0] == 1 and served[-1] == ROLLOUT_VERSIONS
    assert len(served) >= ROLLOUT_VERSIONS // 2, f"the load saw only versions {served}"
    for own in answers:
        versions = [version for version, _ in own]
        assert versions == sorted(versions), "a client never goes back to an older version"
        for version, captions in own:
            want = alone[2 - version % 2]
            assert _same(captions, want), f"version {version} answered {captions}, its weights alone {want}"
