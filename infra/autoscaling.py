"""Application Auto Scaling of the endpoint variant on SageMakerVariantInvocationsPerInstance."""

from __future__ import annotations

from infra.changes import Action
from infra.context import Stack

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"


def ensure_autoscaling(stack: Stack) -> None:
    scaling = stack.aws.client("application-autoscaling")
    settings, names = stack.settings, stack.names
    resource = {"ServiceNamespace": NAMESPACE, "ResourceId": names.scaling_resource_id, "ScalableDimension": DIMENSION}
    targets = scaling.describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[names.scaling_resource_id], ScalableDimension=DIMENSION
    )["ScalableTargets"]
    bounds = {"MinCapacity": settings.min_instance_count, "MaxCapacity": settings.max_instance_count}
    detail = f"{bounds['MinCapacity']}..{bounds['MaxCapacity']} instances"
    if targets and all(targets[0][key] == value for key, value in bounds.items()):
        stack.report.record(Action.UNCHANGED, "autoscaling target", names.scaling_resource_id, detail)
    else:
        action = Action.UPDATE if targets else Action.CREATE
        stack.report.record(action, "autoscaling target", names.scaling_resource_id, detail)
        if stack.apply:
            scaling.register_scalable_target(**resource, **bounds, Tags=stack.tags())

    policy = {
        "TargetValue": settings.invocations_per_instance,
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        "ScaleInCooldown": 300,
        "ScaleOutCooldown": 60,
    }
    found = scaling.describe_scaling_policies(PolicyNames=[names.scaling_policy], **resource)["ScalingPolicies"]
    detail = f"{settings.invocations_per_instance:g} invocations per instance per minute"
    if found and found[0].get("TargetTrackingScalingPolicyConfiguration") == policy:
        stack.report.record(Action.UNCHANGED, "autoscaling policy", names.scaling_policy, detail)
        return
    stack.report.record(Action.UPDATE if found else Action.CREATE, "autoscaling policy", names.scaling_policy, detail)
    if stack.apply:
        scaling.put_scaling_policy(
            PolicyName=names.scaling_policy,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration=policy,
            **resource,
        )


def deregister_if_instance_type_changes(stack: Stack, current_config: str) -> None:
    """AWS refuses UpdateEndpoint that changes the instance type of a variant registered for autoscaling."""
    sagemaker = stack.aws.client("sagemaker")
    current = sagemaker.describe_endpoint_config(EndpointConfigName=current_config)["ProductionVariants"][0]
    if current["InstanceType"] == stack.settings.instance_type:
        return
    scaling = stack.aws.client("application-autoscaling")
    targets = scaling.describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[stack.names.scaling_resource_id], ScalableDimension=DIMENSION
    )["ScalableTargets"]
    if targets:
        stack.report.record(
            Action.DELETE,
            "autoscaling target",
            stack.names.scaling_resource_id,
            "instance type changes; registered again after",
        )
        scaling.deregister_scalable_target(
            ServiceNamespace=NAMESPACE, ResourceId=stack.names.scaling_resource_id, ScalableDimension=DIMENSION
        )
