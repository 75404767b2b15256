"""IAM roles with one inline policy each, created under the deployment's path and tagged."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from infra.aws import error_code
from infra.changes import Action
from infra.context import DeployError, Stack
from infra.tags import as_list, is_ours


def _same(left: Any, right: Any) -> bool:
    return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)


def policy_name(role: str) -> str:
    return f"{role}-policy"


def role_arn(stack: Stack, role: str) -> str:
    return f"arn:{stack.aws.partition}:iam::{stack.aws.account}:role{stack.names.role_path}{role}"


def ensure_role(stack: Stack, role: str, trust: dict[str, Any], policy: dict[str, Any], purpose: str) -> str:
    iam = stack.aws.client("iam")
    try:
        existing = iam.get_role(RoleName=role)["Role"]
    except ClientError as error:
        if error_code(error) != "NoSuchEntity":
            raise
        existing = None
    if existing is None:
        stack.report.record(Action.CREATE, "iam role", role, purpose)
        if stack.apply:
            iam.create_role(
                RoleName=role,
                Path=stack.names.role_path,
                AssumeRolePolicyDocument=json.dumps(trust),
                Description=f"memefly {stack.settings.prefix}: {purpose}",
                Tags=as_list(stack.tags()),
            )
            iam.put_role_policy(RoleName=role, PolicyName=policy_name(role), PolicyDocument=json.dumps(policy))
        return role_arn(stack, role)
    if not is_ours(iam.list_role_tags(RoleName=role)["Tags"], stack.settings.prefix):
        raise DeployError(f"iam role {role} exists but was not created by deployment {stack.settings.prefix}")
    try:
        current = iam.get_role_policy(RoleName=role, PolicyName=policy_name(role))["PolicyDocument"]
    except ClientError as error:
        if error_code(error) != "NoSuchEntity":
            raise
        current = None
    updates = []
    if not _same(existing["AssumeRolePolicyDocument"], trust):
        updates.append("trust policy")
    if current is None or not _same(current, policy):
        updates.append("inline policy")
    if not updates:
        stack.report.record(Action.UNCHANGED, "iam role", role, purpose)
        return existing["Arn"]
    stack.report.record(Action.UPDATE, "iam role", role, " and ".join(updates))
    if stack.apply:
        if "trust policy" in updates:
            iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(trust))
        if "inline policy" in updates:
            iam.put_role_policy(RoleName=role, PolicyName=policy_name(role), PolicyDocument=json.dumps(policy))
    return existing["Arn"]
