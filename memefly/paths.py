"""Where the project finds its data and models by default."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "memes"
DEFAULT_MODEL_BASE_PATH = REPO_ROOT / "models"
DEFAULT_MODEL_NAME = "memefly"
DEFAULT_BUNDLE_DIR = REPO_ROOT / "model"
"""The committed default model: decoder weights, vocabulary, config (see export/bundle.py)."""
