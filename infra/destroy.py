"""`destroy`: find what carries the deployment's tag, and delete exactly that, dependents first.

Candidates are listed per service (narrowed by name or path where the API allows), and each one's tags
are read before it is deleted: a resource without `memefly:deployment=<prefix>` is never touched,
whatever its name. Application Auto Scaling targets go with the tagged endpoint they scale (their own
tags cannot be read back from moto). After deleting, destroy looks again and fails if anything is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from infra.autoscaling import DIMENSION, NAMESPACE
from infra.aws import Aws, error_code
from infra.changes import Action, Report
from infra.context import DeployError, Stack
from infra.settings import DeploySettings
from infra.storage import bucket_tags
from infra.tags import DEPLOYMENT, is_ours

_DEPENDENCY_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Doomed:
    kind: str
    name: str
    delete: Callable[[], None]


def _ecs(stack: Stack) -> Iterator[Doomed]:
    ecs, names, prefix = stack.aws.client("ecs"), stack.names, stack.settings.prefix
    clusters = ecs.describe_clusters(clusters=[names.cluster], include=["TAGS"])["clusters"]
    ours = [c for c in clusters if c["status"] == "ACTIVE" and is_ours(c.get("tags"), prefix)]
    for cluster in ours:
        arns = ecs.list_services(cluster=cluster["clusterName"])["serviceArns"]
        for service in (
            ecs.describe_services(cluster=cluster["clusterName"], services=arns, include=["TAGS"])["services"]
            if arns
            else []
        ):
            if service["status"] != "INACTIVE" and is_ours(service.get("tags"), prefix):

                def delete(
                    cluster_name: str = cluster["clusterName"], service_name: str = service["serviceName"]
                ) -> None:
                    ecs.update_service(cluster=cluster_name, service=service_name, desiredCount=0)
                    ecs.delete_service(cluster=cluster_name, service=service_name, force=True)
                    ecs.get_waiter("services_inactive").wait(cluster=cluster_name, services=[service_name])

                yield Doomed("ecs service", service["serviceName"], delete)
    for status in ("ACTIVE", "INACTIVE"):
        for arn in ecs.list_task_definitions(familyPrefix=names.task_family, status=status)["taskDefinitionArns"]:
            described = ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"])
            if is_ours(described.get("tags"), prefix):

                def delete(arn: str = arn, active: bool = status == "ACTIVE") -> None:
                    if active:
                        ecs.deregister_task_definition(taskDefinition=arn)
                    ecs.delete_task_definitions(taskDefinitions=[arn])

                yield Doomed("ecs task definition", arn.rsplit("/", 1)[-1], delete)
    for cluster in ours:
        yield Doomed(
            "ecs cluster", cluster["clusterName"], lambda name=cluster["clusterName"]: ecs.delete_cluster(cluster=name)
        )


def _tagged_elb(elb: Any, items: list[dict[str, Any]], arn_key: str, prefix: str) -> list[dict[str, Any]]:
    ours = []
    for start in range(0, len(items), 20):
        chunk = items[start : start + 20]
        tags = {
            d["ResourceArn"]: d["Tags"]
            for d in elb.describe_tags(ResourceArns=[i[arn_key] for i in chunk])["TagDescriptions"]
        }
        ours += [item for item in chunk if is_ours(tags.get(item[arn_key]), prefix)]
    return ours


def _load_balancing(stack: Stack) -> Iterator[Doomed]:
    elb, prefix = stack.aws.client("elbv2"), stack.settings.prefix
    balancers = [lb for page in elb.get_paginator("describe_load_balancers").paginate() for lb in page["LoadBalancers"]]
    for balancer in _tagged_elb(elb, balancers, "LoadBalancerArn", prefix):

        def delete(arn: str = balancer["LoadBalancerArn"]) -> None:
            elb.delete_load_balancer(LoadBalancerArn=arn)  # its listeners go with it
            elb.get_waiter("load_balancers_deleted").wait(LoadBalancerArns=[arn])

        yield Doomed("load balancer", balancer["LoadBalancerName"], delete)
    groups = [tg for page in elb.get_paginator("describe_target_groups").paginate() for tg in page["TargetGroups"]]
    for group in _tagged_elb(elb, groups, "TargetGroupArn", prefix):
        yield Doomed(
            "target group",
            group["TargetGroupName"],
            lambda arn=group["TargetGroupArn"]: elb.delete_target_group(TargetGroupArn=arn),
        )


def _retry_while_in_use(action: Callable[[], Any]) -> None:
    # Network interfaces of deleted tasks and load balancers are released minutes later.
    deadline = time.monotonic() + _DEPENDENCY_TIMEOUT_SECONDS
    while True:
        try:
            action()
            return
        except ClientError as error:
            if error_code(error) != "DependencyViolation" or time.monotonic() > deadline:
                raise
            time.sleep(10)


def _security_groups(stack: Stack) -> Iterator[Doomed]:
    ec2, prefix = stack.aws.client("ec2"), stack.settings.prefix
    groups = ec2.describe_security_groups(Filters=[{"Name": f"tag:{DEPLOYMENT}", "Values": [prefix]}])["SecurityGroups"]
    groups = [g for g in groups if is_ours(g.get("Tags"), prefix)]
    # Rules that name another group keep it alive: revoke them before deleting any group.
    for group in groups:
        referencing = [p for p in group.get("IpPermissions", []) if p.get("UserIdGroupPairs")]
        if referencing:

            def revoke(group_id: str = group["GroupId"], rules: list = referencing) -> None:
                ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=rules)

            yield Doomed("security group rules", group["GroupName"], revoke)
    for group in groups:
        yield Doomed(
            "security group",
            f"{group['GroupName']} ({group['GroupId']})",
            lambda group_id=group["GroupId"]: _retry_while_in_use(lambda: ec2.delete_security_group(GroupId=group_id)),
        )


def _log_groups(stack: Stack) -> Iterator[Doomed]:
    logs, prefix = stack.aws.client("logs"), stack.settings.prefix
    for group in logs.describe_log_groups(logGroupNamePrefix=f"/ecs/{prefix}")["logGroups"]:
        arn = group.get("logGroupArn") or group["arn"].removesuffix(":*")
        if is_ours(logs.list_tags_for_resource(resourceArn=arn)["tags"], prefix):
            yield Doomed(
                "log group",
                group["logGroupName"],
                lambda name=group["logGroupName"]: logs.delete_log_group(logGroupName=name),
            )


def _sagemaker(stack: Stack) -> Iterator[Doomed]:
    sagemaker, scaling, prefix = (
        stack.aws.client("sagemaker"),
        stack.aws.client("application-autoscaling"),
        stack.settings.prefix,
    )

    def ours(items: list[dict[str, Any]], arn_key: str) -> list[dict[str, Any]]:
        return [item for item in items if is_ours(sagemaker.list_tags(ResourceArn=item[arn_key])["Tags"], prefix)]

    endpoints = ours(sagemaker.list_endpoints(NameContains=prefix, MaxResults=100)["Endpoints"], "EndpointArn")
    for endpoint in endpoints:
        variants = sagemaker.describe_endpoint(EndpointName=endpoint["EndpointName"]).get("ProductionVariants", [])
        resource_ids = [f"endpoint/{endpoint['EndpointName']}/variant/{v['VariantName']}" for v in variants]
        targets = (
            scaling.describe_scalable_targets(
                ServiceNamespace=NAMESPACE, ResourceIds=resource_ids, ScalableDimension=DIMENSION
            )["ScalableTargets"]
            if resource_ids
            else []
        )
        for target in targets:

            def deregister(resource_id: str = target["ResourceId"]) -> None:
                # Deregistering a target deletes its scaling policies too.
                scaling.deregister_scalable_target(
                    ServiceNamespace=NAMESPACE, ResourceId=resource_id, ScalableDimension=DIMENSION
                )

            yield Doomed("autoscaling target", target["ResourceId"], deregister)
    for endpoint in endpoints:

        def delete(name: str = endpoint["EndpointName"]) -> None:
            sagemaker.delete_endpoint(EndpointName=name)
            sagemaker.get_waiter("endpoint_deleted").wait(EndpointName=name)

        yield Doomed("sagemaker endpoint", endpoint["EndpointName"], delete)
    configs = sagemaker.list_endpoint_configs(NameContains=prefix, MaxResults=100)["EndpointConfigs"]
    for config in ours(configs, "EndpointConfigArn"):
        name = config["EndpointConfigName"]
        yield Doomed(
            "sagemaker endpoint config",
            name,
            lambda name=name: sagemaker.delete_endpoint_config(EndpointConfigName=name),
        )
    for model in ours(sagemaker.list_models(NameContains=prefix, MaxResults=100)["Models"], "ModelArn"):
        yield Doomed(
            "sagemaker model",
            model["ModelName"],
            lambda name=model["ModelName"]: sagemaker.delete_model(ModelName=name),
        )


def _alarms(stack: Stack) -> Iterator[Doomed]:
    cloudwatch, prefix = stack.aws.client("cloudwatch"), stack.settings.prefix
    for alarm in cloudwatch.describe_alarms(AlarmNamePrefix=prefix, AlarmTypes=["MetricAlarm"])["MetricAlarms"]:
        if is_ours(cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"], prefix):
            name = alarm["AlarmName"]
            yield Doomed("cloudwatch alarm", name, lambda name=name: cloudwatch.delete_alarms(AlarmNames=[name]))


def _roles(stack: Stack) -> Iterator[Doomed]:
    iam, prefix = stack.aws.client("iam"), stack.settings.prefix
    for role in iam.list_roles(PathPrefix=stack.names.role_path)["Roles"]:
        if not is_ours(iam.list_role_tags(RoleName=role["RoleName"])["Tags"], prefix):
            continue

        def delete(name: str = role["RoleName"]) -> None:
            for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
                iam.delete_role_policy(RoleName=name, PolicyName=policy)
            for attached in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
                iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
            iam.delete_role(RoleName=name)

        yield Doomed("iam role", role["RoleName"], delete)


def _repositories(stack: Stack) -> Iterator[Doomed]:
    ecr, prefix = stack.aws.client("ecr"), stack.settings.prefix
    for repository in ecr.describe_repositories()["repositories"]:
        if is_ours(ecr.list_tags_for_resource(resourceArn=repository["repositoryArn"])["tags"], prefix):
            name = repository["repositoryName"]
            yield Doomed(
                "ecr repository", name, lambda name=name: ecr.delete_repository(repositoryName=name, force=True)
            )


def _storage(stack: Stack) -> Iterator[Doomed]:
    s3, prefix = stack.aws.client("s3"), stack.settings.prefix
    for bucket in s3.list_buckets()["Buckets"]:
        name = bucket["Name"]
        if not (name.startswith(prefix) or name == stack.settings.bucket):
            continue
        if is_ours(bucket_tags(s3, name), prefix):

            def empty_and_delete(name: str = name) -> None:
                for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
                    doomed = [
                        {"Key": v["Key"], "VersionId": v["VersionId"]}
                        for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
                    ]
                    if doomed:
                        s3.delete_objects(Bucket=name, Delete={"Objects": doomed})
                s3.delete_bucket(Bucket=name)

            yield Doomed("s3 bucket", name, empty_and_delete)
            continue
        # Someone else's bucket: only the objects this deployment wrote and tagged.
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=stack.names.object_prefix):
            for item in page.get("Contents", []):
                tags = s3.get_object_tagging(Bucket=name, Key=item["Key"])["TagSet"]
                if is_ours(tags, prefix):
                    key = item["Key"]
                    yield Doomed(
                        "s3 object",
                        f"s3://{name}/{key}",
                        lambda name=name, key=key: s3.delete_object(Bucket=name, Key=key),
                    )


FINDERS = (_ecs, _load_balancing, _security_groups, _log_groups, _sagemaker, _alarms, _roles, _repositories, _storage)
"""In deletion order: users of a resource go before it."""


def destroy(settings: DeploySettings, dry_run: bool = False, echo: Callable[[str], None] = print) -> Report:
    aws = Aws(settings.region, read_only=dry_run)
    report = Report(echo)
    stack = Stack(settings, aws, report, apply=not dry_run)
    verb = "destroy (dry run: nothing is deleted)" if dry_run else "destroy"
    report.echo(f"{verb}: everything tagged {DEPLOYMENT}={settings.prefix} in {aws.region}, account {aws.account}")
    for finder in FINDERS:
        # Each finder lists its candidates after the previous ones are gone, so waits and order hold.
        for doomed in list(finder(stack)):
            report.record(Action.DELETE, doomed.kind, doomed.name)
            if not dry_run:
                doomed.delete()
    if dry_run or not report.changes:
        report.echo(
            "Nothing tagged with this deployment was found."
            if not report.changes
            else f"{report.count(Action.DELETE)} would be deleted."
        )
        return report
    leftovers = [f"{d.kind} {d.name}" for finder in FINDERS for d in finder(stack)]
    if leftovers:
        raise DeployError("still tagged with this deployment after destroy: " + "; ".join(leftovers))
    report.echo(
        f"Done: {report.count(Action.DELETE)} deleted; a new look finds nothing tagged {DEPLOYMENT}={settings.prefix}"
    )
    return report
