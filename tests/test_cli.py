"""The `memefly` command: generate memes into a folder, list templates."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from tests.support import MODEL_NAME, photo_jpeg


@pytest.fixture
def photos(model_base_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a cat photo, and the tiny model as the CLI's model."""
    monkeypatch.setenv("MEMEFLY_MODEL_BASE_PATH", str(model_base_path))
    monkeypatch.setenv("MEMEFLY_MODEL_NAME", MODEL_NAME)
    (tmp_path / "cat.jpg").write_bytes(photo_jpeg("chelsea"))
    return tmp_path


def test_generate_writes_a_meme_per_image_and_skips_non_images(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "rocket.jpg").write_bytes(photo_jpeg("rocket"))
    (tmp_path / "notes.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "generate",
            str(tmp_path / "cat.jpg"),
            str(tmp_path / "rocket.jpg"),
            str(tmp_path / "notes.png"),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["cat.png", "rocket.png"]
    assert Image.open(out / "cat.png").size == Image.open(tmp_path / "cat.jpg").size
    assert "skipped" in result.output and "notes.png" in result.output


def test_templates_lists_ids_and_names(data_folder: Path) -> None:
    result = CliRunner().invoke(app, ["templates", "--templates-dir", str(data_folder)])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 200
    assert any(line.startswith("drake\t") for line in lines)


def _caption_written(output: str, target: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith(target))
    return line.split(": ", 1)[1].split(" [", 1)[0]


def test_generate_applies_the_content_filter_as_the_api_does(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    command = ["generate", str(tmp_path / "cat.jpg"), "-o", str(out)]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    caption = _caption_written(first.output, str(out / "cat.png"))
    blocked_word = caption.replace("/", " ").split()[0]
    (tmp_path / "blocked.txt").write_text(blocked_word + "\n")
    monkeypatch.setenv("MEMEFLY_BLOCKED_WORDS_FILE", str(tmp_path / "blocked.txt"))
    filtered = CliRunner().invoke(app, command)
    assert filtered.exit_code == 0, filtered.output
    assert blocked_word not in _caption_written(filtered.output, str(out / "cat.png")).replace("/", " ").split()
