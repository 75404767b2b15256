"""Deployment settings, read from MEMEFLY_DEPLOY_* environment variables or a .env file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from memefly.paths import DEFAULT_MODEL_BASE_PATH, DEFAULT_MODEL_NAME, REPO_ROOT
from memefly.serving_targets import DEFAULT_CHECKS_DIR


class DeploySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEMEFLY_DEPLOY_", env_file=".env", extra="ignore")

    region: str = "us-east-1"
    prefix: str = Field("memefly", pattern=r"^[a-z][a-z0-9-]{0,18}[a-z0-9]$")
    """Starts every resource name and is the value of the `memefly:deployment` tag (at most 20 characters)."""

    # The model tier.
    instance_type: str = "ml.m5.large"
    initial_instance_count: int = Field(1, ge=1)
    min_instance_count: int = Field(1, ge=1)
    max_instance_count: int = Field(2, ge=1)
    invocations_per_instance: float = Field(600.0, gt=0)
    """Autoscaling target: invocations per instance per minute. One meme is 1 + (caption length) invocations."""
    # The tensorflow-inference image's version is SAGEMAKER_TFS_VERSION in serving/versions.env, declared once.
    model_image_uri: str | None = None
    """Overrides the tensorflow-inference image URI built from SAGEMAKER_TFS_VERSION and the region; it must run
    that TF Serving release, the one `make serving-check` proved the model against."""
    serving_checks_dir: Path = DEFAULT_CHECKS_DIR
    """Where `make serving-check` writes its records; deploy and plan refuse a version without a passing one."""
    image_invocation: bool = False
    """Pack `code/inference.py` (infra/sagemaker_inference.py) so that the endpoint also answers a photo posted
    as `image/jpeg`. Off by default: with any inference.py, AWS's container sends every invocation, the gateway's
    JSON too, through its Python service (one more hop), and up to image 2.19 that service answers every error
    as 500, which the rollback alarm counts (infra/README.md)."""
    endpoint_timeout_seconds: float = Field(1800.0, gt=0)
    poll_seconds: float = Field(15.0, gt=0)

    # Blue/green updates of the endpoint.
    traffic_routing: Literal["ALL_AT_ONCE", "CANARY", "LINEAR"] = "CANARY"
    canary_percent: int = Field(10, ge=1, le=50)
    canary_wait_seconds: int = Field(300, ge=0, le=3600)
    termination_wait_seconds: int = Field(300, ge=0, le=3600)

    # The model archive: a prebuilt one (`python -m infra package`), or built from the model base path.
    model_archive: Path | None = None
    model_base_path: Path = DEFAULT_MODEL_BASE_PATH
    model_name: str = DEFAULT_MODEL_NAME
    model_version: int | None = Field(None, ge=1)
    """Default: the newest version under `<model_base_path>/<model_name>/`."""
    more_models: list[str] = []
    """Models served beside `model_name` from the same archive and endpoint (the transformer beside the GRU),
    each at its newest version under `<model_base_path>/<name>/`; the gateways serve them all (MEMEFLY_MODELS)."""
    bucket: str | None = None
    """Default: `<prefix>-artifacts-<account>-<region>`, created and tagged. An existing bucket of yours is
    used as it is; only the objects under `<prefix>/` are then this deployment's."""

    # The gateway.
    gateway_image_uri: str | None = None
    """Used when no docker engine answers; with one, the image is built from `build_context` and pushed to ECR."""
    build_gateway_image: bool = True
    """False: never build, always use `gateway_image_uri` (for CI with a prebuilt image, and the tests)."""
    build_context: Path = REPO_ROOT
    gateway_count: int = Field(2, ge=1)
    gateway_cpu: int = 1024
    gateway_memory: int = 2048
    vpc_id: str | None = None
    """Default: the region's default VPC and its default subnets."""
    subnet_ids: list[str] = []
    allowed_cidr: str = "0.0.0.0/0"
    """Who may reach the load balancer's port 80."""

    @model_validator(mode="after")
    def _counts_in_order(self) -> DeploySettings:
        if not self.min_instance_count <= self.initial_instance_count <= self.max_instance_count:
            raise ValueError("instance counts must satisfy min <= initial <= max")
        if self.subnet_ids and not self.vpc_id:
            raise ValueError("subnet_ids need vpc_id")
        if self.model_name in self.more_models or len(set(self.more_models)) != len(self.more_models):
            raise ValueError("more_models must name other models than model_name, each once")
        return self

    @property
    def model_names(self) -> list[str]:
        """Every model the endpoint serves, the default first."""
        return [self.model_name, *self.more_models]
