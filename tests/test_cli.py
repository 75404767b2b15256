"""The `memefly` command: generate memes into a folder, list templates."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from memefly.cli import app
from tests.support import MODEL_NAME, photo_jpeg


def test_generate_writes_a_meme_per_image_and_skips_non_images(
    model_base_path: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MEMEFLY_MODEL_BASE_PATH", str(model_base_path))
    monkeypatch.setenv("MEMEFLY_MODEL_NAME", MODEL_NAME)
    (tmp_path / "cat.jpg").write_bytes(photo_jpeg("chelsea"))
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
