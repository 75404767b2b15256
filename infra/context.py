"""What every deployment step needs: the settings, AWS, the names, the tags, and the report."""

from __future__ import annotations

from dataclasses import dataclass, field

from infra.aws import Aws
from infra.changes import Report
from infra.names import Names
from infra.settings import DeploySettings
from infra.tags import deployment_tags

PENDING = "(known after deploy)"
"""Stands for an identifier AWS assigns at creation, in a plan."""


class DeployError(RuntimeError):
    """A deployment step cannot go on; the message says why and what to do."""


@dataclass
class Stack:
    settings: DeploySettings
    aws: Aws
    report: Report
    apply: bool
    """False for `plan`: steps then only read (the clients refuse anything else) and report."""
    names: Names = field(init=False)

    def __post_init__(self) -> None:
        self.names = Names(self.settings.prefix)

    def tags(self, **extra: str) -> dict[str, str]:
        return deployment_tags(self.settings.prefix, **extra)

    @property
    def bucket(self) -> str:
        return self.settings.bucket or self.names.bucket(self.aws.account, self.aws.region)
