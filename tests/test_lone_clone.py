"""memefly as a newcomer has it: a clone of the committed repository with nothing beside it (no
../shared, no MEMEFLY_DATA_DIR). `make run` there serves photo memes, template memes, the shipped template
gallery and the page. The clone reuses this test run's virtual environment (VENV=...) instead of
installing one, and its own code comes first on PYTHONPATH."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from memefly.paths import REPO_ROOT
from tests.support import free_port, photo_jpeg

VENV = Path(sys.executable).parent.parent
START_TIMEOUT_SECONDS = 300


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    folder = tmp_path_factory.mktemp("lone") / "memefly"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(folder)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit.stdout.strip()], cwd=folder, check=True)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["memefly"]
    return folder


def _clone_env(clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMEFLY_")}
    env["PYTHONPATH"] = str(clone)
    return env


@pytest.fixture(scope="module")
def gateway(clone: Path) -> Iterator[str]:
    port = free_port()
    log = clone / "make-run.log"
    command = ["make", "-o", f"{VENV}/.installed", "run", f"VENV={VENV}", f"PORT={port}"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=clone, env=_clone_env(clone), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"`make run` exited {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`make run` not ready in {START_TIMEOUT_SECONDS} s:\n{log.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_clone_runs_its_own_code(clone: Path) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import gateway, export; print(gateway.__file__); print(export.__file__)"],
        cwd=clone, env=_clone_env(clone), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert all(Path(line).is_relative_to(clone) for line in where.stdout.split())


def test_make_run_answers_a_photo_meme(gateway: str) -> None:
    response = httpx.post(
        f"{gateway}/v1/memes", files={"image": ("cat.jpg", photo_jpeg("chelsea"), "image/jpeg")}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size[0] > 0
    assert response.headers["x-memefly-caption"]


def test_make_run_serves_the_transformer_as_default_beside_the_gru(gateway: str) -> None:
    listed = httpx.get(f"{gateway}/v1/models", timeout=30).json()
    assert [(m["name"], m["decoder"], m["default"]) for m in listed] == [
        ("memefly-transformer", "transformer", True),
        ("memefly-gru", "gru", False),
    ]


def test_make_run_answers_a_template_meme(gateway: str) -> None:
    response = httpx.post(f"{gateway}/v1/templates/drake/memes", json={}, timeout=60)  # the model's caption
    assert response.status_code == 200, response.text
    drake = httpx.get(f"{gateway}/v1/templates/drake", timeout=30).json()
    assert Image.open(io.BytesIO(response.content)).size == (drake["width"], drake["height"])
    assert response.headers["x-memefly-caption"]


def test_make_run_lists_the_shipped_templates_with_their_images(gateway: str, clone: Path) -> None:
    shipped = json.loads((clone / "gateway" / "meme_templates" / "templates.json").read_text(encoding="utf-8"))
    listed = httpx.get(f"{gateway}/v1/templates", timeout=30).json()
    assert [t["id"] for t in listed] == sorted(t["id"] for t in shipped)
    by_id = {t["id"]: t for t in shipped}
    with httpx.Client(timeout=30) as client:
        for template in listed:
            assert template["boxes"] == (len(by_id[template["id"]]["text_boxes"]) or 2)
            thumbnail = client.get(template["image_url"])
            assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
            image = Image.open(io.BytesIO(thumbnail.content))
            assert image.size == (template["width"], template["height"]) and max(image.size) <= 512


def test_make_run_serves_the_page_whose_gallery_loads_the_templates(gateway: str) -> None:
    page = httpx.get(f"{gateway}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/templates" in page.text
