"""The tags that mark what a deployment created; `destroy` deletes only what carries them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DEPLOYMENT = "memefly:deployment"
"""Value: the deployment's prefix. The one tag every created resource carries."""
MANAGED_BY = "memefly:managed-by"
MODEL_VERSIONS = "memefly:model-versions"
"""On SageMaker models: each model's versions inside the archive, e.g. "memefly=1+2 memefly-transformer=1"
(SageMaker's tag values allow letters, digits, spaces and `_.:/=+-@`, not commas)."""
SPEC = "memefly:spec"
"""On ECS task definitions: the digest of the desired definition, to tell whether a new revision is needed."""


def format_model_versions(models: Mapping[str, Iterable[int]]) -> str:
    return " ".join(f"{name}={'+'.join(map(str, sorted(versions)))}" for name, versions in sorted(models.items()))


def parse_model_versions(value: str) -> dict[str, tuple[int, ...]]:
    """`format_model_versions`'s value back; an unreadable value reads as nothing deployed."""
    models: dict[str, tuple[int, ...]] = {}
    for item in value.split():
        name, _, versions = item.partition("=")
        if name and versions and all(v.isdigit() for v in versions.split("+")):
            models[name] = tuple(sorted(int(v) for v in versions.split("+")))
    return models


def deployment_tags(prefix: str, **extra: str) -> dict[str, str]:
    return {DEPLOYMENT: prefix, MANAGED_BY: "python -m infra", **extra}


def as_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """`[{"Key": ..., "Value": ...}]`: S3, IAM, SageMaker, CloudWatch, ELBv2, EC2, ECR."""
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def as_lower_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """`[{"key": ..., "value": ...}]`: ECS."""
    return [{"key": key, "value": value} for key, value in tags.items()]


def as_dict(tags: Iterable[Mapping[str, Any]] | Mapping[str, str] | None) -> dict[str, str]:
    if not tags:
        return {}
    if isinstance(tags, Mapping):
        return dict(tags)
    return {tag.get("Key", tag.get("key")): tag.get("Value", tag.get("value")) for tag in tags}


def is_ours(tags: Iterable[Mapping[str, Any]] | Mapping[str, str] | None, prefix: str) -> bool:
    return as_dict(tags).get(DEPLOYMENT) == prefix
