"""One boto3 session for a deployment, its clients, the SageMaker SDK's session over it, and the read-only guard
that `plan` runs under (on the boto3 session, so every client made from it, the SDK's too, is guarded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from sagemaker.core.helper.session_helper import Session as SageMakerSession

READ_ONLY_PREFIXES = ("Describe", "List", "Get", "Head")


class MutationRefused(RuntimeError):
    """A mutating call was attempted where only reads are allowed (`plan`)."""


def _refuse_mutations(model: Any, **_: Any) -> None:
    if not model.name.startswith(READ_ONLY_PREFIXES):
        raise MutationRefused(f"{model.service_model.service_name}:{model.name} refused: this run may only read")


@dataclass
class Aws:
    region: str
    read_only: bool = False
    session: boto3.Session = field(init=False)
    _clients: dict[str, Any] = field(default_factory=dict, init=False)
    _identity: dict[str, str] = field(default_factory=dict, init=False)
    _sagemaker_session: SageMakerSession | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.session = boto3.Session(region_name=self.region)
        if self.read_only:
            self.session.events.register("before-call", _refuse_mutations)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60)
            self._clients[service] = self.session.client(service, config=config)
        return self._clients[service]

    @property
    def sagemaker(self) -> SageMakerSession:
        """The SageMaker Python SDK's session, on this boto3 session and its sagemaker client."""
        if self._sagemaker_session is None:
            self._sagemaker_session = SageMakerSession(
                boto_session=self.session, sagemaker_client=self.client("sagemaker")
            )
        return self._sagemaker_session

    @property
    def account(self) -> str:
        if not self._identity:
            self._identity = self.client("sts").get_caller_identity()
        return self._identity["Account"]

    @property
    def partition(self) -> str:
        return self.session.get_partition_for_region(self.region)

    @property
    def url_suffix(self) -> str:
        return "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"

    def arn(self, service: str, resource: str, region: bool = True, account: bool = True) -> str:
        return (
            f"arn:{self.partition}:{service}:{self.region if region else ''}:"
            f"{self.account if account else ''}:{resource}"
        )


def error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
