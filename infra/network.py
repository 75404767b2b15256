"""Where the gateways run: the VPC, its subnets, and two security groups (load balancer, tasks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.changes import Action
from infra.context import PENDING, DeployError, Stack
from infra.names import GATEWAY_PORT
from infra.tags import as_list, is_ours


@dataclass(frozen=True)
class Network:
    vpc_id: str
    subnet_ids: list[str]


def find_network(stack: Stack) -> Network:
    ec2 = stack.aws.client("ec2")
    settings = stack.settings
    if settings.vpc_id and settings.subnet_ids:
        return Network(settings.vpc_id, list(settings.subnet_ids))
    vpc_id = settings.vpc_id
    if vpc_id is None:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise DeployError(
                f"no default VPC in {stack.aws.region}: set MEMEFLY_DEPLOY_VPC_ID and MEMEFLY_DEPLOY_SUBNET_IDS "
                "(public subnets in two or more availability zones)"
            )
        vpc_id = vpcs[0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    one_per_zone: dict[str, str] = {}
    for subnet in sorted(subnets, key=lambda s: (not s.get("DefaultForAz", False), s["SubnetId"])):
        one_per_zone.setdefault(subnet["AvailabilityZone"], subnet["SubnetId"])
    if len(one_per_zone) < 2:
        raise DeployError(f"VPC {vpc_id} has subnets in fewer than two availability zones; a load balancer needs two")
    return Network(vpc_id, [one_per_zone[zone] for zone in sorted(one_per_zone)])


def _rule_key(permission: dict[str, Any]) -> tuple:
    return (
        permission.get("IpProtocol"),
        permission.get("FromPort"),
        permission.get("ToPort"),
        tuple(sorted(r["CidrIp"] for r in permission.get("IpRanges", []))),
        tuple(sorted(p["GroupId"] for p in permission.get("UserIdGroupPairs", []))),
    )


def ensure_security_group(stack: Stack, name: str, description: str, vpc_id: str, ingress: list[dict[str, Any]]) -> str:
    ec2 = stack.aws.client("ec2")
    found = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}]
    )["SecurityGroups"]
    if not found:
        stack.report.record(Action.CREATE, "security group", name, description)
        if not stack.apply:
            return PENDING
        group_id = ec2.create_security_group(
            GroupName=name,
            Description=description,
            VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": as_list(stack.tags())}],
        )["GroupId"]
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=ingress)
        return group_id
    group = found[0]
    if not is_ours(group.get("Tags"), stack.settings.prefix):
        raise DeployError(f"security group {name} in {vpc_id} exists but was not created by this deployment")
    current = sorted(map(_rule_key, group.get("IpPermissions", [])))
    if current == sorted(map(_rule_key, ingress)):
        stack.report.record(Action.UNCHANGED, "security group", name, group["GroupId"])
        return group["GroupId"]
    stack.report.record(Action.UPDATE, "security group", name, "ingress rules")
    if stack.apply:
        if group.get("IpPermissions"):
            ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=group["IpPermissions"])
        ec2.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=ingress)
    return group["GroupId"]


def ensure_security_groups(stack: Stack, network: Network) -> tuple[str, str]:
    """(load balancer group, task group): HTTP from `allowed_cidr` to the ALB, the gateway port from the ALB only."""
    names = stack.names
    alb = ensure_security_group(
        stack,
        names.alb_security_group,
        "memefly load balancer: HTTP in",
        network.vpc_id,
        [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": stack.settings.allowed_cidr}]}],
    )
    from_alb = [{"GroupId": alb}] if alb != PENDING else []
    tasks = ensure_security_group(
        stack,
        names.task_security_group,
        "memefly gateway tasks: gateway port from the load balancer",
        network.vpc_id,
        [{"IpProtocol": "tcp", "FromPort": GATEWAY_PORT, "ToPort": GATEWAY_PORT, "UserIdGroupPairs": from_alb}],
    )
    return alb, tasks
