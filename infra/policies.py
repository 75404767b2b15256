"""IAM documents: trust policies and least-privilege inline policies, scoped to what the deployment creates.

No statement has a wildcard action. `Resource: "*"` appears only for `ecr:GetAuthorizationToken`,
which IAM cannot scope to a resource (the token is per registry, not per repository).
"""

from __future__ import annotations

import re
from typing import Any

VERSION = "2012-10-17"
UNSCOPABLE_ACTIONS = frozenset({"ecr:GetAuthorizationToken"})
_ECR_IMAGE = re.compile(r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([^:@]+)")
_ECR_PULL = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]


def trust_policy(service: str) -> dict[str, Any]:
    return {
        "Version": VERSION,
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }


def ecr_repository_arn(image_uri: str, partition: str) -> str | None:
    """The repository ARN of an ECR image URI; None for images elsewhere (which need no ECR permission)."""
    match = _ECR_IMAGE.match(image_uri)
    if not match:
        return None
    account, region, repository = match.groups()
    return f"arn:{partition}:ecr:{region}:{account}:repository/{repository}"


def _pull(repository_arn: str) -> list[dict[str, Any]]:
    return [
        {"Sid": "PullImage", "Effect": "Allow", "Action": _ECR_PULL, "Resource": [repository_arn]},
        {"Sid": "EcrToken", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
    ]


def sagemaker_execution_policy(
    model_objects_arn: str, image_repository_arn: str | None, endpoint_log_group_arn: str
) -> dict[str, Any]:
    """What the endpoint's container needs: its model archives, its image, its logs."""
    statements: list[dict[str, Any]] = [
        {"Sid": "ReadModelArchives", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [model_objects_arn]},
        {
            "Sid": "WriteEndpointLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
            "Resource": [endpoint_log_group_arn, f"{endpoint_log_group_arn}:log-stream:*"],
        },
    ]
    if image_repository_arn:
        statements += _pull(image_repository_arn)
    return {"Version": VERSION, "Statement": statements}


def gateway_execution_policy(image_repository_arn: str | None, log_group_arn: str) -> dict[str, Any]:
    """What ECS needs to start a gateway task: pull its image, write its logs."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "WriteGatewayLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [f"{log_group_arn}:log-stream:*"],
        }
    ]
    if image_repository_arn:
        statements += _pull(image_repository_arn)
    return {"Version": VERSION, "Statement": statements}


def gateway_task_policy(endpoint_arn: str) -> dict[str, Any]:
    """What the gateway itself may do: invoke its one endpoint."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "InvokeModel",
                "Effect": "Allow",
                "Action": ["sagemaker:InvokeEndpoint"],
                "Resource": [endpoint_arn],
            }
        ],
    }


def actions_and_resources(policy: dict[str, Any]) -> list[tuple[list[str], list[str]]]:
    """Each statement's actions and resources as lists (IAM allows a bare string for either)."""
    pairs = []
    for statement in policy["Statement"]:
        actions, resources = statement.get("Action", []), statement.get("Resource", [])
        pairs.append(
            (
                [actions] if isinstance(actions, str) else list(actions),
                [resources] if isinstance(resources, str) else list(resources),
            )
        )
    return pairs


def violations(policy: dict[str, Any]) -> list[str]:
    """Least-privilege breaches: wildcard actions, or `*` resources for actions IAM can scope."""
    found = []
    for actions, resources in actions_and_resources(policy):
        found += [f"wildcard action {action!r}" for action in actions if "*" in action]
        if "*" in resources and not set(actions) <= UNSCOPABLE_ACTIONS:
            found.append(f"resource '*' for {sorted(set(actions) - UNSCOPABLE_ACTIONS)}")
    return found
