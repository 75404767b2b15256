"""The SageMaker model tier: model, endpoint config, endpoint; blue/green updates; waiting for InService.

Creating goes through the SageMaker Python SDK's session (`sagemaker.core.helper.session_helper.Session`:
`create_model`, `create_endpoint_config`, `create_endpoint`), which also applies the defaults of a SageMaker
SDK config file, if the user has one. The blue/green update goes through the SDK's endpoint resource
(`sagemaker.core.resources.Endpoint.update`): the session's `update_endpoint` takes no `DeploymentConfig`.
Reads stay boto3: the SDK's resources cannot parse moto's answers (infra/README.md).
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError
from sagemaker.core.resources import Endpoint
from sagemaker.core.shapes import DeploymentConfig
from sagemaker.core.utils.code_injection.codec import transform

from infra.aws import Aws, error_code
from infra.changes import Action
from infra.context import DeployError, Stack
from infra.model_archive import ModelArchive
from infra.names import VARIANT, digest
from infra.tags import MODEL_VERSIONS, as_dict, as_list, format_model_versions, is_ours, parse_model_versions

_ROLE_PROPAGATION_SECONDS = 90
_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "UpdateRollbackFailed")


def describe_endpoint(stack: Stack) -> dict[str, Any] | None:
    try:
        return stack.aws.client("sagemaker").describe_endpoint(EndpointName=stack.names.endpoint)
    except ClientError as error:
        if error_code(error) == "ValidationException":
            return None
        raise


def deployed_versions(stack: Stack) -> dict[str, tuple[int, ...]]:
    """Each model's versions the endpoint's current SageMaker model was packed with (from its tags)."""
    endpoint = describe_endpoint(stack)
    if endpoint is None:
        return {}
    sagemaker = stack.aws.client("sagemaker")
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    tags = as_dict(sagemaker.list_tags(ResourceArn=model["ModelArn"])["Tags"])
    return parse_model_versions(tags.get(MODEL_VERSIONS, ""))


def ensure_model(
    stack: Stack, image_uri: str, model_data_url: str, role_arn: str, archive: ModelArchive, version: int
) -> str:
    """SageMaker models are immutable: a new archive, image or role is a new model, named by their digest and
    the default model's `version`."""
    sagemaker = stack.aws.client("sagemaker")
    container = {
        "Image": image_uri,
        "ModelDataUrl": model_data_url,
        # The TF Serving model name the container falls back to when a request names none.
        "Environment": {"SAGEMAKER_TFS_DEFAULT_MODEL_NAME": stack.settings.model_name},
    }
    name = stack.names.model(version, digest({"container": container, "role": role_arn}))
    try:
        sagemaker.describe_model(ModelName=name)
        stack.report.record(Action.UNCHANGED, "sagemaker model", name)
        return name
    except ClientError as error:
        if error_code(error) != "ValidationException":
            raise
    stack.report.record(Action.CREATE, "sagemaker model", name, f"{archive.describe()}, {image_uri}")
    if stack.apply:
        tags = as_list(stack.tags(**{MODEL_VERSIONS: format_model_versions(archive.models)}))
        deadline = time.monotonic() + _ROLE_PROPAGATION_SECONDS
        while True:
            try:
                stack.aws.sagemaker.create_model(name, role=role_arn, container_defs=dict(container), tags=tags)
                break
            except ClientError as error:
                # A role created seconds ago may not be assumable yet (IAM is eventually consistent).
                if "assume" not in str(error).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(5)
    return name


def ensure_endpoint_config(stack: Stack, model: str) -> str:
    sagemaker = stack.aws.client("sagemaker")
    settings = stack.settings
    variant = {
        "VariantName": VARIANT,
        "ModelName": model,
        "InitialInstanceCount": settings.initial_instance_count,
        "InstanceType": settings.instance_type,
        "InitialVariantWeight": 1.0,
    }
    name = stack.names.endpoint_config(digest(variant))
    try:
        sagemaker.describe_endpoint_config(EndpointConfigName=name)
        stack.report.record(Action.UNCHANGED, "sagemaker endpoint config", name)
        return name
    except ClientError as error:
        if error_code(error) != "ValidationException":
            raise
    detail = f"{settings.initial_instance_count} x {settings.instance_type}"
    stack.report.record(Action.CREATE, "sagemaker endpoint config", name, detail)
    if stack.apply:
        stack.aws.sagemaker.create_endpoint_config(name, [dict(variant)], tags=as_list(stack.tags()))
    return name


def deployment_config(stack: Stack) -> dict[str, Any]:
    settings = stack.settings
    routing: dict[str, Any] = {"Type": settings.traffic_routing, "WaitIntervalInSeconds": settings.canary_wait_seconds}
    step = {"Type": "CAPACITY_PERCENT", "Value": settings.canary_percent}
    if settings.traffic_routing == "CANARY":
        routing["CanarySize"] = step
    elif settings.traffic_routing == "LINEAR":
        routing["LinearStepSize"] = step
    else:
        routing = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": settings.canary_wait_seconds}
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": settings.termination_wait_seconds,
            "MaximumExecutionTimeoutInSeconds": max(600, int(settings.endpoint_timeout_seconds)),
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": stack.names.rollback_alarm}]},
    }


def update_endpoint_blue_green(aws: Aws, endpoint: str, config: str, deployment: dict[str, Any]) -> None:
    """The one UpdateEndpoint call: a new fleet on `config`, traffic shifted to it, rolled back on the alarm.

    Through the SDK's endpoint resource, the one SDK call that takes a `DeploymentConfig`. moto 5.x does not
    implement UpdateEndpoint (HTTP 500), and the resource cannot even read moto's endpoint (DescribeEndpoint's
    empty `DataCaptureConfig` fails its validation); the tests replace this function, and only it.
    """
    resource = Endpoint.get(endpoint, session=aws.session, region=aws.region)
    resource.endpoint_config_name = config
    resource.update(deployment_config=DeploymentConfig(**transform(deployment, "DeploymentConfig")))


def wait_in_service(stack: Stack, what: str) -> dict[str, Any]:
    settings = stack.settings
    deadline = time.monotonic() + settings.endpoint_timeout_seconds
    name = stack.names.endpoint
    while True:
        endpoint = describe_endpoint(stack)
        status = endpoint["EndpointStatus"] if endpoint else "missing"
        if status == "InService":
            return endpoint
        if status in ("Failed", "missing"):
            reason = (endpoint or {}).get("FailureReason", "no reason given")
            raise DeployError(
                f"endpoint {name} {status.lower()} while {what}: {reason}. Container logs: CloudWatch log group "
                f"/aws/sagemaker/Endpoints/{name}. `python -m infra destroy` removes it."
            )
        if time.monotonic() >= deadline:
            raise DeployError(
                f"endpoint {name} still {status} after {settings.endpoint_timeout_seconds:.0f} s while {what}. "
                f"SageMaker goes on without us: run deploy again to keep waiting, or destroy. "
                f"Container logs: CloudWatch log group /aws/sagemaker/Endpoints/{name}."
            )
        stack.report.echo(f"          endpoint {name}: {status}; waiting ({deadline - time.monotonic():.0f} s left)")
        time.sleep(settings.poll_seconds)


def ensure_endpoint(stack: Stack, config: str, before_update: Any = None) -> None:
    """Creates the endpoint, or moves it to `config` blue/green; waits for InService either way.

    `before_update(current_config)` runs just before a blue/green update (autoscaling needs it).
    """
    sagemaker = stack.aws.client("sagemaker")
    name = stack.names.endpoint
    endpoint = describe_endpoint(stack)
    if endpoint is None:
        stack.report.record(Action.CREATE, "sagemaker endpoint", name, f"config {config}")
        if stack.apply:
            stack.aws.sagemaker.create_endpoint(name, config, tags=as_list(stack.tags()), wait=False)
            wait_in_service(stack, "being created")
            stack.report.echo(f"          endpoint {name}: InService")
        return
    if not is_ours(sagemaker.list_tags(ResourceArn=endpoint["EndpointArn"])["Tags"], stack.settings.prefix):
        raise DeployError(f"sagemaker endpoint {name} exists but was not created by deployment {stack.settings.prefix}")
    if stack.apply and endpoint["EndpointStatus"] in _BUSY:
        stack.report.echo(f"          endpoint {name} is {endpoint['EndpointStatus']}: waiting before going on")
        endpoint = wait_in_service(stack, "finishing an earlier change")
    if endpoint["EndpointStatus"] == "Failed":
        raise DeployError(f"endpoint {name} is Failed: {endpoint.get('FailureReason')}. Destroy it and deploy again.")
    current = endpoint["EndpointConfigName"]
    if current == config:
        stack.report.record(
            Action.UNCHANGED, "sagemaker endpoint", name, f"{endpoint['EndpointStatus']}, config {config}"
        )
        return
    routing = stack.settings.traffic_routing.lower().replace("_", " ")
    detail = f"blue/green {current} -> {config}, {routing}, rollback on alarm {stack.names.rollback_alarm}"
    stack.report.record(Action.UPDATE, "sagemaker endpoint", name, detail)
    if not stack.apply:
        return
    if before_update is not None:
        before_update(current)
    update_endpoint_blue_green(stack.aws, name, config, deployment_config(stack))
    endpoint = wait_in_service(stack, "updating blue/green")
    if endpoint["EndpointConfigName"] != config:
        raise DeployError(
            f"endpoint {name} rolled back to {endpoint['EndpointConfigName']} instead of moving to {config} "
            f"(alarm {stack.names.rollback_alarm} or a failed new fleet; see /aws/sagemaker/Endpoints/{name})"
        )
    stack.report.echo(f"          endpoint {name}: InService on {config}")
