"""The gateway tier: ECS Fargate tasks behind an Application Load Balancer, logging to CloudWatch."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from infra.aws import error_code
from infra.changes import Action
from infra.context import PENDING, DeployError, Stack
from infra.names import CONTAINER, GATEWAY_PORT, digest
from infra.network import Network
from infra.tags import SPEC, as_dict, as_list, as_lower_list, is_ours

LOG_RETENTION_DAYS = 14
HEALTH_CHECK_PATH = "/readyz"


def ensure_log_group(stack: Stack) -> str:
    logs = stack.aws.client("logs")
    name = stack.names.log_group
    found = [g for g in logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"] if g["logGroupName"] == name]
    if found and found[0].get("retentionInDays") == LOG_RETENTION_DAYS:
        stack.report.record(Action.UNCHANGED, "log group", name)
    else:
        stack.report.record(Action.UPDATE if found else Action.CREATE, "log group", name, f"{LOG_RETENTION_DAYS} days")
        if stack.apply:
            if not found:
                logs.create_log_group(logGroupName=name, tags=stack.tags())
            logs.put_retention_policy(logGroupName=name, retentionInDays=LOG_RETENTION_DAYS)
    return stack.aws.arn("logs", f"log-group:{name}")


def _elb_tags(elb: Any, arn: str) -> dict[str, str]:
    return as_dict(elb.describe_tags(ResourceArns=[arn])["TagDescriptions"][0]["Tags"])


def ensure_load_balancer(stack: Stack, network: Network, security_group: str) -> tuple[str, str]:
    """(ARN, DNS name) of the internet-facing ALB."""
    elb = stack.aws.client("elbv2")
    name = stack.names.load_balancer
    try:
        found = elb.describe_load_balancers(Names=[name])["LoadBalancers"][0]
    except ClientError as error:
        if error_code(error) != "LoadBalancerNotFound":
            raise
        stack.report.record(Action.CREATE, "load balancer", name, f"internet-facing, {len(network.subnet_ids)} subnets")
        if not stack.apply:
            return PENDING, PENDING
        created = elb.create_load_balancer(
            Name=name,
            Subnets=network.subnet_ids,
            SecurityGroups=[security_group],
            Scheme="internet-facing",
            Type="application",
            Tags=as_list(stack.tags()),
        )["LoadBalancers"][0]
        return created["LoadBalancerArn"], created["DNSName"]
    arn = found["LoadBalancerArn"]
    if not is_ours(_elb_tags(elb, arn), stack.settings.prefix):
        raise DeployError(f"load balancer {name} exists but was not created by this deployment")
    updates = []
    if set(found.get("SecurityGroups", [])) != {security_group}:
        updates.append("security groups")
    if {zone["SubnetId"] for zone in found.get("AvailabilityZones", [])} != set(network.subnet_ids):
        updates.append("subnets")
    stack.report.record(Action.UPDATE if updates else Action.UNCHANGED, "load balancer", name, ", ".join(updates))
    if stack.apply and "security groups" in updates:
        elb.set_security_groups(LoadBalancerArn=arn, SecurityGroups=[security_group])
    if stack.apply and "subnets" in updates:
        elb.set_subnets(LoadBalancerArn=arn, Subnets=network.subnet_ids)
    return arn, found["DNSName"]


def ensure_target_group(stack: Stack, network: Network) -> str:
    elb = stack.aws.client("elbv2")
    name = stack.names.target_group
    health = {"HealthCheckPath": HEALTH_CHECK_PATH, "HealthCheckIntervalSeconds": 15, "Matcher": {"HttpCode": "200"}}
    try:
        found = elb.describe_target_groups(Names=[name])["TargetGroups"][0]
    except ClientError as error:
        if error_code(error) != "TargetGroupNotFound":
            raise
        stack.report.record(
            Action.CREATE, "target group", name, f"ip targets on port {GATEWAY_PORT}, health {HEALTH_CHECK_PATH}"
        )
        if not stack.apply:
            return PENDING
        return elb.create_target_group(
            Name=name,
            Protocol="HTTP",
            Port=GATEWAY_PORT,
            VpcId=network.vpc_id,
            TargetType="ip",
            Tags=as_list(stack.tags()),
            **health,
        )["TargetGroups"][0]["TargetGroupArn"]
    arn = found["TargetGroupArn"]
    if not is_ours(_elb_tags(elb, arn), stack.settings.prefix):
        raise DeployError(f"target group {name} exists but was not created by this deployment")
    if found["VpcId"] != network.vpc_id:
        raise DeployError(f"target group {name} is in {found['VpcId']}, not {network.vpc_id}: destroy, then deploy")
    if all(found.get(key) == value for key, value in health.items()):
        stack.report.record(Action.UNCHANGED, "target group", name)
    else:
        stack.report.record(Action.UPDATE, "target group", name, "health check")
        if stack.apply:
            elb.modify_target_group(TargetGroupArn=arn, **health)
    return arn


def ensure_listener(stack: Stack, load_balancer_arn: str, target_group_arn: str) -> None:
    elb = stack.aws.client("elbv2")
    forward = [{"Type": "forward", "TargetGroupArn": target_group_arn}]
    listeners = (
        [] if load_balancer_arn == PENDING else elb.describe_listeners(LoadBalancerArn=load_balancer_arn)["Listeners"]
    )
    found = [listener for listener in listeners if listener["Port"] == 80]
    name = f"{stack.names.load_balancer}:80"
    if not found:
        stack.report.record(Action.CREATE, "listener", name, f"HTTP -> {stack.names.target_group}")
        if stack.apply:
            elb.create_listener(
                LoadBalancerArn=load_balancer_arn,
                Protocol="HTTP",
                Port=80,
                DefaultActions=forward,
                Tags=as_list(stack.tags()),
            )
        return
    actions = [{"Type": a["Type"], "TargetGroupArn": a.get("TargetGroupArn")} for a in found[0]["DefaultActions"]]
    if actions == forward:
        stack.report.record(Action.UNCHANGED, "listener", name)
        return
    stack.report.record(Action.UPDATE, "listener", name, f"forward to {stack.names.target_group}")
    if stack.apply:
        elb.modify_listener(ListenerArn=found[0]["ListenerArn"], DefaultActions=forward)


def ensure_cluster(stack: Stack) -> None:
    ecs = stack.aws.client("ecs")
    name = stack.names.cluster
    clusters = ecs.describe_clusters(clusters=[name], include=["TAGS"])["clusters"]
    active = [c for c in clusters if c["status"] == "ACTIVE"]
    if active:
        if not is_ours(active[0].get("tags"), stack.settings.prefix):
            raise DeployError(f"ECS cluster {name} exists but was not created by this deployment")
        stack.report.record(Action.UNCHANGED, "ecs cluster", name)
        return
    stack.report.record(Action.CREATE, "ecs cluster", name, "Fargate")
    if stack.apply:
        ecs.create_cluster(clusterName=name, tags=as_lower_list(stack.tags()))


def gateway_environment(stack: Stack, model_versions: Mapping[str, int]) -> dict[str, str]:
    """The gateway's settings (gateway/settings.py) for the sagemaker backend: every model the endpoint serves,
    each pinned to its version."""
    settings = stack.settings
    environment = {
        "MEMEFLY_BACKEND": "sagemaker",
        "MEMEFLY_MODEL_NAME": settings.model_name,
        "MEMEFLY_SAGEMAKER_ENDPOINT_NAME": stack.names.endpoint,
        "MEMEFLY_SAGEMAKER_REGION": stack.aws.region,
        "MEMEFLY_SAGEMAKER_MODEL_VERSION": str(model_versions[settings.model_name]),
    }
    if settings.more_models:
        environment["MEMEFLY_MODELS"] = json.dumps(settings.more_models)
        environment["MEMEFLY_SAGEMAKER_MODEL_VERSIONS"] = json.dumps(dict(sorted(model_versions.items())))
    return environment


def ensure_task_definition(
    stack: Stack, image_uri: str, model_versions: Mapping[str, int], execution_role_arn: str, task_role_arn: str
) -> str:
    """Registers a new revision only when the desired definition differs (its digest is a tag)."""
    ecs = stack.aws.client("ecs")
    family = stack.names.task_family
    environment = gateway_environment(stack, model_versions)
    definition = {
        "family": family,
        "requiresCompatibilities": ["FARGATE"],
        "networkMode": "awsvpc",
        "cpu": str(stack.settings.gateway_cpu),
        "memory": str(stack.settings.gateway_memory),
        "executionRoleArn": execution_role_arn,
        "taskRoleArn": task_role_arn,
        "containerDefinitions": [
            {
                "name": CONTAINER,
                "image": image_uri,
                "essential": True,
                # The image's default command pins the tfserving backend; MEMEFLY_BACKEND chooses instead.
                "command": ["memefly", "serve", "--host", "0.0.0.0", "--port", str(GATEWAY_PORT)],
                "portMappings": [{"containerPort": GATEWAY_PORT, "protocol": "tcp"}],
                "environment": [{"name": key, "value": value} for key, value in sorted(environment.items())],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {
                        "awslogs-group": stack.names.log_group,
                        "awslogs-region": stack.aws.region,
                        "awslogs-stream-prefix": CONTAINER,
                    },
                },
            }
        ],
    }
    spec = digest(definition)
    try:
        latest = ecs.describe_task_definition(taskDefinition=family, include=["TAGS"])
    except ClientError as error:
        if error_code(error) not in ("ClientException", "InvalidParameterException"):
            raise
        latest = None
    if latest and latest["taskDefinition"].get("status") == "ACTIVE" and as_dict(latest.get("tags")).get(SPEC) == spec:
        arn = latest["taskDefinition"]["taskDefinitionArn"]
        stack.report.record(Action.UNCHANGED, "ecs task definition", arn.rsplit("/", 1)[-1])
        return arn
    pins = ", ".join(f"{name} {version}" for name, version in model_versions.items())
    detail = f"image {image_uri}, model version {pins}"
    stack.report.record(
        Action.UPDATE if latest else Action.CREATE, "ecs task definition", f"{family} (new revision)", detail
    )
    if not stack.apply:
        return PENDING
    registered = ecs.register_task_definition(**definition, tags=as_lower_list(stack.tags(**{SPEC: spec})))
    return registered["taskDefinition"]["taskDefinitionArn"]


def ensure_service(
    stack: Stack, network: Network, task_security_group: str, target_group_arn: str, task_definition_arn: str
) -> None:
    ecs = stack.aws.client("ecs")
    names, settings = stack.names, stack.settings
    try:
        services = ecs.describe_services(cluster=names.cluster, services=[names.service], include=["TAGS"])["services"]
    except ecs.exceptions.ClusterNotFoundException:
        services = []
    active = [s for s in services if s["status"] != "INACTIVE"]
    if not active:
        stack.report.record(
            Action.CREATE, "ecs service", names.service, f"{settings.gateway_count} Fargate tasks behind the ALB"
        )
        if stack.apply:
            ecs.create_service(
                cluster=names.cluster,
                serviceName=names.service,
                taskDefinition=task_definition_arn,
                desiredCount=settings.gateway_count,
                launchType="FARGATE",
                networkConfiguration={
                    "awsvpcConfiguration": {
                        "subnets": network.subnet_ids,
                        "securityGroups": [task_security_group],
                        # Public subnets without a NAT gateway: tasks need a public IP to pull the image.
                        "assignPublicIp": "ENABLED",
                    }
                },
                loadBalancers=[
                    {"targetGroupArn": target_group_arn, "containerName": CONTAINER, "containerPort": GATEWAY_PORT}
                ],
                healthCheckGracePeriodSeconds=60,
                deploymentConfiguration={
                    "minimumHealthyPercent": 100,
                    "maximumPercent": 200,
                    "deploymentCircuitBreaker": {"enable": True, "rollback": True},
                },
                propagateTags="SERVICE",
                tags=as_lower_list(stack.tags()),
            )
        return
    service = active[0]
    if not is_ours(service.get("tags"), settings.prefix):
        raise DeployError(f"ECS service {names.service} exists but was not created by this deployment")
    updates = []
    if service["taskDefinition"] != task_definition_arn:
        updates.append(f"task definition {task_definition_arn.rsplit('/', 1)[-1]}")
    if service["desiredCount"] != settings.gateway_count:
        updates.append(f"{settings.gateway_count} tasks")
    if not updates:
        stack.report.record(Action.UNCHANGED, "ecs service", names.service)
        return
    stack.report.record(Action.UPDATE, "ecs service", names.service, "rolling: " + ", ".join(updates))
    if stack.apply:
        ecs.update_service(
            cluster=names.cluster,
            service=names.service,
            taskDefinition=task_definition_arn,
            desiredCount=settings.gateway_count,
        )
