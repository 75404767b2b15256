"""Where the project finds its data and models by default."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "memes"
DEFAULT_MODEL_BASE_PATH = REPO_ROOT / "models"
DEFAULT_MODEL_NAME = "memefly-gru"
DEFAULT_BUNDLE_DIR = REPO_ROOT / "model"
"""The committed default model: decoder weights, vocabulary, config (see export/bundle.py)."""


def model_versions(model_dir: Path, *, loadable_only: bool = True) -> dict[int, Path]:
    """The version folders of a TF Serving model base path (`<model_dir>/<n>/`), by version, oldest first.

    With `loadable_only`, only those that hold a `saved_model.pb`. A missing `model_dir` has none; one
    that cannot be listed raises `OSError`.
    """
    if not model_dir.exists():
        return {}
    versions = {int(child.name): child for child in model_dir.iterdir() if child.name.isdigit()}
    return {
        version: versions[version]
        for version in sorted(versions)
        if not loadable_only or (versions[version] / "saved_model.pb").is_file()
    }
