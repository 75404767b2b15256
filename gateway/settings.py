"""Every gateway setting in one object, read from MEMEFLY_* environment variables or a .env file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.templates import shipped_templates_dir
from memefly.paths import DEFAULT_MODEL_BASE_PATH, DEFAULT_MODEL_NAME, REPO_ROOT


def default_templates_dir() -> Path:
    """The templates the product ships, unless $MEMEFLY_DATA_DIR names a data set with its own templates."""
    data_dir = os.environ.get("MEMEFLY_DATA_DIR")
    if data_dir and (Path(data_dir) / "templates.json").is_file():
        return Path(data_dir)
    return shipped_templates_dir()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMEFLY_", env_file=".env", extra="ignore")

    backend: Literal["embedded", "tfserving", "sagemaker"] = "embedded"
    model_name: str = DEFAULT_MODEL_NAME
    model_base_path: Path = DEFAULT_MODEL_BASE_PATH
    """Embedded backend: versioned SavedModels under `<model_base_path>/<model_name>/<version>/`."""
    models: list[str] = []
    """More models served beside `model_name` (a transformer beside the GRU), each with its own session and
    batches; a request picks one with `model` or the `X-Memefly-Model` header."""
    model_traffic: dict[str, float] = {}
    """A/B: weights by model name for the requests that name no model, e.g. {"memefly-gru": 90,
    "memefly-transformer": 10}; empty: all of them go to `model_name`."""
    tfserving_target: str = "127.0.0.1:8500"
    rpc_timeout_seconds: float = Field(10.0, gt=0)
    sagemaker_endpoint_name: str = "memefly-endpoint"
    sagemaker_region: str | None = None
    """None: boto3's own lookup (AWS_REGION, AWS_DEFAULT_REGION, ~/.aws/config)."""
    sagemaker_model_version: int | None = Field(None, ge=1)
    """Pins the TF Serving model version; REST answers do not say which version answered."""
    sagemaker_model_versions: dict[str, int] = {}
    """Pins by model name, for an endpoint serving several models; a model not named here gets
    `sagemaker_model_version`."""
    sagemaker_endpoint_url: str | None = None
    sagemaker_connect_timeout_seconds: float = Field(2.0, gt=0)
    sagemaker_max_attempts: int = Field(3, ge=1)
    sagemaker_mode: Literal["generate", "step_loop"] = "generate"
    """generate: one InvokeEndpoint per beam-search meme (the `generate` signature); step_loop: one per step."""

    beam_width: int = Field(4, ge=1, le=16)
    n_best: int = Field(3, ge=1, le=16)
    length_penalty: float = 1.0
    sampling_rerank: int = Field(4, ge=1, le=8)
    """Sampling draws this many captions per caption returned and keeps the most image-specific."""
    style_beam_width: int = Field(2, ge=1, le=16)
    """Beam search on a model with styles, when each caption takes its own style: each caption's own
    beam width (their beams share every step; evaluation/evaluate.py's decoding table compares widths)."""
    max_length: int | None = Field(None, ge=1)
    """Caps the model's own maximum caption length."""

    request_timeout_seconds: float = Field(30.0, gt=0)
    """A request's whole budget: encoding, every decode step, waiting for its batch."""
    max_batch_beams: int = Field(256, ge=1)
    """The most beams one `decode_step` call carries across all requests."""
    batch_wait_ms: float = Field(2.0, ge=0)
    """How long a tick waits for requests that are already encoding to join it."""
    encode_calls_in_flight: int = Field(2, ge=1, le=16)
    """How many `encode` calls may run at once: images arriving while a batch is encoded start at once."""
    version_check_seconds: float = Field(5.0, ge=0)
    """How often (at most) a request's start asks the model tier whether it serves a new version."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    """One JSON object a line with the request id; false: plain text lines (still with the id)."""

    templates_dir: Path | None = Field(default_factory=default_templates_dir)
    """A folder in the meme data set's format (templates.json + templates/); default: the shipped templates
    (gateway/meme_templates), or $MEMEFLY_DATA_DIR's when set; none → no templates."""
    meme_store_dir: Path = REPO_ROOT / "var" / "memes"
    """Where permalinked memes are kept when no S3 bucket is set."""
    meme_store_s3_bucket: str | None = None
    meme_store_s3_prefix: str = "memes/"
    content_filter: bool = True
    blocked_words_file: Path | None = None
    """Extra blocked words, one a line, added to the built-in list."""

    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0)
    model_input_max_side: int = Field(512, ge=64)
    """Uploads are scaled to this longest side before they go to `encode`, like the training templates."""

    # Reliability and security (README: "Limits, errors and security").
    max_image_pixels: int = Field(40_000_000, gt=0)
    """Width × height, checked from the header before decoding (413 above it); also Pillow's own limit."""
    max_concurrent_memes: int = Field(16, ge=1)
    """Meme requests worked on at once; more wait in the queue."""
    max_queued_memes: int = Field(32, ge=0)
    """Meme requests waiting for a slot; beyond them, 429 with Retry-After."""
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    """Comma-separated; when set, the POST routes need one in `X-API-Key`. Never logged."""
    cors_allow_origins: Annotated[list[str], NoDecode] = []
    """Comma-separated origins allowed to call from a browser (`*` for any); none: no CORS headers."""
    url_fetch_enabled: bool = False
    """Allow `image_url` (https only, public addresses only)."""
    url_fetch_timeout_seconds: float = Field(5.0, gt=0)
    url_fetch_max_redirects: int = Field(3, ge=0, le=10)

    @field_validator("api_keys", "cors_allow_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
