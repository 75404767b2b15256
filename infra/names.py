"""Every resource name, derived from the prefix alone, so `plan`, `deploy` and `destroy` agree on them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

VARIANT = "AllTraffic"
CONTAINER = "gateway"
GATEWAY_PORT = 8000


def digest(spec: Any, length: int = 10) -> str:
    """A short, stable digest of a JSON-able spec: names of immutable resources carry it."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Names:
    prefix: str

    def bucket(self, account: str, region: str) -> str:
        return f"{self.prefix}-artifacts-{account}-{region}"

    @property
    def object_prefix(self) -> str:
        """Every S3 key this deployment writes starts with it (IAM scopes reads to it)."""
        return f"{self.prefix}/"

    def model_key(self, model_name: str, sha256: str) -> str:
        return f"{self.object_prefix}models/{model_name}/{sha256[:16]}/model.tar.gz"

    @property
    def role_path(self) -> str:
        return f"/memefly/{self.prefix}/"

    @property
    def sagemaker_role(self) -> str:
        return f"{self.prefix}-sagemaker"

    @property
    def gateway_execution_role(self) -> str:
        return f"{self.prefix}-gateway-execution"

    @property
    def gateway_task_role(self) -> str:
        return f"{self.prefix}-gateway-task"

    def model(self, version: int, spec_digest: str) -> str:
        return f"{self.prefix}-v{version}-{spec_digest}"

    def endpoint_config(self, spec_digest: str) -> str:
        return f"{self.prefix}-config-{spec_digest}"

    @property
    def endpoint(self) -> str:
        return f"{self.prefix}-endpoint"

    @property
    def rollback_alarm(self) -> str:
        return f"{self.prefix}-endpoint-5xx"

    @property
    def scaling_policy(self) -> str:
        return f"{self.prefix}-invocations-per-instance"

    @property
    def scaling_resource_id(self) -> str:
        return f"endpoint/{self.endpoint}/variant/{VARIANT}"

    @property
    def repository(self) -> str:
        return f"{self.prefix}-gateway"

    @property
    def cluster(self) -> str:
        return self.prefix

    @property
    def service(self) -> str:
        return f"{self.prefix}-gateway"

    @property
    def task_family(self) -> str:
        return f"{self.prefix}-gateway"

    @property
    def log_group(self) -> str:
        return f"/ecs/{self.prefix}-gateway"

    @property
    def load_balancer(self) -> str:
        return f"{self.prefix}-alb"

    @property
    def target_group(self) -> str:
        return f"{self.prefix}-gateway"

    @property
    def alb_security_group(self) -> str:
        return f"{self.prefix}-alb"

    @property
    def task_security_group(self) -> str:
        return f"{self.prefix}-gateway-tasks"
