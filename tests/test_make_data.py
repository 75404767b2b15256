"""`make data` (export/sources.py): the data set from ../shared when it is there, else built from the pinned
public sources; offline, a clear list of what is missing and where to put it."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from export.data import data_dir, iter_captions, load_templates
from export.sources import MANIFEST, git_blob_id, load_manifest, prepare_data, source_files
from tests.support import free_port

CONFIG = """name: Tiny Template
source: https://example.org/tiny
text:
  - style: upper
    color: white
    font: thick
    anchor_x: 0.0
    anchor_y: 0.0
    angle: 0.0
    scale_x: 1.0
    scale_y: 0.2
    align: center
    start: 0.0
    stop: 1.0
example:
  - top text
  - bottom text
"""


def _pinned(data: bytes) -> dict:
    return {"git_blob": git_blob_id(data), "sha256": hashlib.sha256(data).hexdigest()}


def _sources(root: Path) -> Path:
    """Tiny stand-ins for the three sources, laid out as downloaded, and their manifest."""
    files = {
        ("memegen", "templates/tiny/config.yml"): CONFIG.encode(),
        ("imgflip575k", "dataset/memes/Tiny-Meme.json"): json.dumps(
            [{"boxes": ["one", "two"], "metadata": {"views": "1,234", "img-votes": "5"}}, {"boxes": ["", " "]}]
        ).encode(),
        ("memefly", "data/combined_data.json"): json.dumps(
            [{"meme_name": "tiny-meme", "meme_text": ["a memefly caption", "  "]}]
        ).encode(),
    }
    image = root / "memegen" / "templates" / "tiny" / "default.png"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (1024, 600), (10, 120, 200)).save(image)
    files[("memegen", "templates/tiny/default.png")] = image.read_bytes()
    for (source, path), data in files.items():
        (root / source / path).parent.mkdir(parents=True, exist_ok=True)
        (root / source / path).write_bytes(data)
    sources = {
        name: {
            "repo": f"example/{name}",
            "commit": "0" * 40,
            "files": {path: _pinned(data) for (source, path), data in files.items() if source == name},
        }
        for name in ("memegen", "imgflip575k", "memefly")
    }
    sources["imgflip575k"]["memes_folder"] = "dataset/memes"
    sources["memefly"]["captions_file"] = "data/combined_data.json"
    templates = {
        "tiny": {"aliases": ["Tiny Meme", "tiny-meme"], "imgflip575k": ["Tiny-Meme"], "memefly": ["tiny-meme"]}
    }
    manifest = root / "sources.json"
    manifest.write_text(json.dumps({"sources": sources, "templates": templates}), encoding="utf-8")
    return manifest


def test_the_data_set_builds_from_the_pinned_sources(tmp_path: Path) -> None:
    manifest = _sources(tmp_path / "sources")
    out = tmp_path / "memes"
    prepare_data(
        out, sources_dir=tmp_path / "sources", url_template="http://127.0.0.1:9/{path}", manifest_path=manifest
    )
    folder = data_dir(out)
    (template,) = load_templates(folder)
    assert (template.id, template.name, template.width, template.height) == ("tiny", "Tiny Template", 512, 300)
    assert template.text_boxes[0]["scale_y"] == 0.2 and "font" not in template.text_boxes[0]
    assert template.example == ("top text", "bottom text")
    assert [c.boxes for c in iter_captions(folder)] == [
        ("one", "two"),
        ("a memefly caption",),
        ("top text", "bottom text"),
    ]
    with gzip.open(folder / "captions.jsonl.gz", "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert (first["source"], first["votes"], first["views"]) == ("imgflip575k", 5, 1234)
    made = (folder / "captions.jsonl.gz").read_bytes()
    (folder / "captions.jsonl.gz").unlink()
    prepare_data(
        out, sources_dir=tmp_path / "sources", url_template="http://127.0.0.1:9/{path}", manifest_path=manifest
    )
    assert (folder / "captions.jsonl.gz").read_bytes() == made  # reproducible, byte for byte


def test_offline_it_lists_what_is_missing_and_where_to_put_it(tmp_path: Path) -> None:
    manifest = _sources(tmp_path / "elsewhere")
    tampered = tmp_path / "sources" / "memefly" / "data" / "combined_data.json"
    tampered.parent.mkdir(parents=True)
    tampered.write_text("[]", encoding="utf-8")  # present, but not the pinned file
    url = f"http://127.0.0.1:{free_port()}/{{repo}}/{{commit}}/{{path}}"  # nothing listens there
    with pytest.raises(FileNotFoundError) as error:
        prepare_data(tmp_path / "memes", sources_dir=tmp_path / "sources", url_template=url, manifest_path=manifest)
    message = str(error.value)
    assert "4 of 4 source files are missing" in message
    for file in source_files(load_manifest(manifest)):
        assert str(file.local(tmp_path / "sources")) in message and file.url(url) in message
    assert "MEMEFLY_DATA_DIR" in message
    assert not (tmp_path / "memes" / "captions.jsonl.gz").exists()


def test_make_data_uses_a_data_set_that_is_there(tmp_path: Path) -> None:
    folder = tmp_path / "memes"
    folder.mkdir()
    (folder / "templates.json").write_text("[]", encoding="utf-8")
    with gzip.open(folder / "captions.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"template": "x", "boxes": ["y"]}) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "data", "--data-dir", str(folder)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"present at {folder}" in result.stdout


def test_the_manifest_pins_every_shipped_template_and_its_caption_sources() -> None:
    manifest = load_manifest(MANIFEST)
    shipped = json.loads((Path(__file__).resolve().parents[1] / "gateway/meme_templates/templates.json").read_text())
    assert sorted(manifest["templates"]) == sorted(t["id"] for t in shipped)
    for name, source in manifest["sources"].items():
        assert len(source["commit"]) == 40, name
        assert all(len(f["git_blob"]) == 40 and len(f["sha256"]) == 64 for f in source["files"].values()), name
    memegen = manifest["sources"]["memegen"]["files"]
    for template_id, links in manifest["templates"].items():
        assert f"templates/{template_id}/config.yml" in memegen
        assert any(p.startswith(f"templates/{template_id}/default.") for p in memegen)
        for name in links["imgflip575k"]:
            assert f"dataset/memes/{name}.json" in manifest["sources"]["imgflip575k"]["files"]
