"""The templates the product ships (gateway/meme_templates): package data an installed wheel carries, and
what export/ship_templates.py makes from the data set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from gateway.settings import Settings
from gateway.templates import SHIPPED_TEMPLATES_SOURCE, TemplateStore, shipped_templates_dir
from memefly.paths import REPO_ROOT


def _shipped_entries() -> list[dict]:
    return json.loads((SHIPPED_TEMPLATES_SOURCE / "templates.json").read_text(encoding="utf-8"))


def test_the_gateway_serves_the_shipped_templates_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMEFLY_DATA_DIR", raising=False)
    monkeypatch.delenv("MEMEFLY_TEMPLATES_DIR", raising=False)
    assert Settings().templates_dir == shipped_templates_dir() == SHIPPED_TEMPLATES_SOURCE
    store = TemplateStore(Settings().templates_dir)
    assert [t.id for t in store.all()] == sorted(e["id"] for e in _shipped_entries())
    for template in store.all():
        with Image.open(template.image_path) as image:
            assert image.format == "JPEG" and image.size == (template.width, template.height)
            assert max(image.size) <= 512


def test_a_templates_dir_setting_points_the_gateway_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {**_shipped_entries()[0], "id": "mine", "image": "templates/mine.jpg"}
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "mine.jpg").write_bytes(
        (SHIPPED_TEMPLATES_SOURCE / _shipped_entries()[0]["image"]).read_bytes()
    )
    (tmp_path / "templates.json").write_text(json.dumps([entry]), encoding="utf-8")
    monkeypatch.setenv("MEMEFLY_DATA_DIR", str(tmp_path))
    assert [t.id for t in TemplateStore(Settings().templates_dir).all()] == ["mine"]
    monkeypatch.setenv("MEMEFLY_TEMPLATES_DIR", str(SHIPPED_TEMPLATES_SOURCE))
    assert len(TemplateStore(Settings().templates_dir).all()) == len(_shipped_entries())


def test_an_installed_wheel_finds_the_shipped_data_through_importlib_resources(tmp_path: Path) -> None:
    # Built from a copy: setuptools' build/ folder in the checkout could hold files no longer there.
    source = tmp_path / "source"
    skip = (".git", ".venv", "models", "var", "build", "dist", "data", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*skip))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    wheel = next(tmp_path.glob("memefly-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"gateway/meme_templates/{e['image']}" for e in _shipped_entries()}
    expected |= {"gateway/meme_templates/templates.json", "gateway/meme_templates/README.md", "export/sources.json"}
    expected |= {"export/concepts/imagenet_words.tsv", "export/concepts/imagenet_classes.tsv"}
    assert expected <= names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    probe = (
        "import json; from gateway.settings import Settings; from gateway.templates import TemplateStore; "
        "s = Settings(); t = TemplateStore(s.templates_dir).all(); "
        "print(json.dumps([str(s.templates_dir), len(t), all(x.image_path.is_file() for x in t)]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMEFLY_")} | {"PYTHONPATH": str(site)}
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    folder, count, images = json.loads(found.stdout)
    assert Path(folder).is_relative_to(site) and count == len(_shipped_entries()) and images


@pytest.mark.corpus
def test_the_committed_templates_are_what_the_script_makes(data_folder: Path, tmp_path: Path) -> None:
    from export.ship_templates import build_shipped_templates

    build_shipped_templates(data_folder, tmp_path)
    assert (tmp_path / "templates.json").read_bytes() == (SHIPPED_TEMPLATES_SOURCE / "templates.json").read_bytes()
    made = sorted(p.name for p in (tmp_path / "templates").iterdir())
    assert made == sorted(p.name for p in (SHIPPED_TEMPLATES_SOURCE / "templates").iterdir())
    for name in made:
        assert (tmp_path / "templates" / name).read_bytes() == (
            SHIPPED_TEMPLATES_SOURCE / "templates" / name
        ).read_bytes()


def test_a_large_template_image_is_scaled_to_512_px(tmp_path: Path) -> None:
    from export.ship_templates import shipped_image

    big = tmp_path / "big.png"
    Image.new("RGB", (1200, 800), (200, 30, 30)).save(big)
    data, size = shipped_image(big)
    assert size == (512, 341)
    assert Image.open(__import__("io").BytesIO(data)).format == "JPEG"
    assert shipped_image(big) == (data, size)
