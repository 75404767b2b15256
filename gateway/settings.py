"""Every gateway setting in one object, read from MEMEFLY_* environment variables or a .env file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from memefly.paths import DEFAULT_MODEL_BASE_PATH, DEFAULT_MODEL_NAME


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMEFLY_", env_file=".env", extra="ignore")

    backend: Literal["embedded", "tfserving"] = "embedded"
    model_name: str = DEFAULT_MODEL_NAME
    model_base_path: Path = DEFAULT_MODEL_BASE_PATH
    """Embedded backend: versioned SavedModels under `<model_base_path>/<model_name>/<version>/`."""
    tfserving_target: str = "127.0.0.1:8500"
    rpc_timeout_seconds: float = Field(10.0, gt=0)

    beam_width: int = Field(4, ge=1, le=16)
    n_best: int = Field(3, ge=1, le=16)
    length_penalty: float = 1.0
    max_length: int | None = Field(None, ge=1)
    """Caps the model's own maximum caption length."""

    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0)
    model_input_max_side: int = Field(512, ge=64)
    """Uploads are scaled to this longest side before they go to `encode`, like the training templates."""
