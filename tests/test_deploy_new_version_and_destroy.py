"""A new model version goes out blue/green, then destroy removes exactly what deploy created.

moto 5.x answers SageMaker UpdateEndpoint with HTTP 500 (not implemented). The one stub in these tests
replaces `infra.endpoint.update_endpoint_blue_green`, the single function that calls it: the stub
records the request and leaves the state a finished blue/green update leaves (the endpoint on the new
config), using calls moto has. Everything else runs against the moto server.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pydantic import ValidationError
from sagemaker.core.shapes import DeploymentConfig
from sagemaker.core.utils.code_injection.codec import transform
from sagemaker.core.utils.utils import serialize

import infra.endpoint
from infra.aws import Aws
from infra.changes import Action, Report
from infra.deploy import run
from infra.destroy import destroy
from infra.names import Names
from infra.tags import DEPLOYMENT, MODEL_VERSIONS, as_dict, as_list
from tests.test_deploy_support import (
    PREFIX,
    REGION,
    UpdateEndpointStub,
    client,
    deploy_settings,
    moto_on_loopback,
    tagged_resources,
    write_model_version,
)

NAMES = Names(PREFIX)
UNRELATED_BUCKET = f"{PREFIX}-notes"  # shares the prefix, carries no tag
UNRELATED_MODEL = f"{PREFIX}-v9-handmade"
UNRELATED_ROLE = f"{PREFIX}-handmade"  # same IAM path, another deployment's tag
ROLE = "arn:aws:iam::123456789012:role/mine"


@dataclass
class Lifecycle:
    first: Report
    plan_v2: Report
    update_calls_during_plan: int
    deploy_v2: Report
    update_calls: list[dict[str, Any]]
    state_after_v2: dict[str, Any]
    destroy: Report
    left_tagged: list[str]
    unrelated_after_destroy: dict[str, Any]
    second_destroy: Report


def create_unrelated_resources() -> None:
    s3 = client("s3")
    s3.create_bucket(Bucket=UNRELATED_BUCKET)
    s3.put_object(Bucket=UNRELATED_BUCKET, Key=f"{PREFIX}/models/keep-me.txt", Body=b"mine")
    client("iam").create_role(
        RoleName=UNRELATED_ROLE,
        Path=NAMES.role_path,
        AssumeRolePolicyDocument='{"Version": "2012-10-17", "Statement": []}',
        Tags=as_list({DEPLOYMENT: "someone-else"}),
    )
    client("sagemaker").create_model(
        ModelName=UNRELATED_MODEL,
        PrimaryContainer={"Image": "example.com/mine:1"},
        ExecutionRoleArn="arn:aws:iam::123456789012:role/mine",
    )


def unrelated_state() -> dict[str, Any]:
    return {
        "bucket objects": [o["Key"] for o in client("s3").list_objects_v2(Bucket=UNRELATED_BUCKET).get("Contents", [])],
        "role": client("iam").get_role(RoleName=UNRELATED_ROLE)["Role"]["RoleName"],
        "model": client("sagemaker").describe_model(ModelName=UNRELATED_MODEL)["ModelName"],
    }


def state_after_v2() -> dict[str, Any]:
    sagemaker, ecs, s3 = client("sagemaker"), client("ecs"), client("s3")
    endpoint = sagemaker.describe_endpoint(EndpointName=NAMES.endpoint)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    url = model["PrimaryContainer"]["ModelDataUrl"].removeprefix("s3://")
    bucket, key = url.split("/", 1)
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as tar:
        saved_models = sorted(n for n in tar.getnames() if n.endswith("saved_model.pb"))
    [service] = ecs.describe_services(cluster=NAMES.cluster, services=[NAMES.service])["services"]
    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    return {
        "endpoint": endpoint,
        "config": config,
        "model versions tag": as_dict(sagemaker.list_tags(ResourceArn=model["ModelArn"])["Tags"])[MODEL_VERSIONS],
        "saved models in archive": saved_models,
        "task definition revision": definition["revision"],
        "gateway pinned version": {e["name"]: e["value"] for e in definition["containerDefinitions"][0]["environment"]}[
            "MEMEFLY_SAGEMAKER_MODEL_VERSION"
        ],
        "endpoint configs": sorted(
            c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]
        ),
    }


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lifecycle]:
    model_dir = tmp_path_factory.mktemp("models") / "memefly"
    write_model_version(model_dir, 1)
    quiet: list[str] = []
    stub = UpdateEndpointStub()
    with moto_on_loopback(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(infra.endpoint, "update_endpoint_blue_green", stub)
        create_unrelated_resources()
        settings = deploy_settings(model_dir.parent)
        first = run(settings, apply=True, echo=quiet.append)
        write_model_version(model_dir, 2)
        plan_v2 = run(settings, apply=False, echo=quiet.append)
        calls_after_plan = len(stub.calls)
        deploy_v2 = run(settings, apply=True, echo=quiet.append)
        after_v2 = state_after_v2()
        destroyed = destroy(settings, echo=quiet.append)
        yield Lifecycle(
            first,
            plan_v2,
            calls_after_plan,
            deploy_v2,
            stub.calls,
            after_v2,
            destroyed,
            tagged_resources(),
            unrelated_state(),
            destroy(settings, echo=quiet.append),
        )


def changed(report: Report) -> list[tuple[str, str]]:
    return [(c.action.value, c.kind) for c in report.changes if c.action not in (Action.UNCHANGED, Action.SKIP)]


def test_moto_still_answers_update_endpoint_with_not_implemented() -> None:
    # When this fails, moto has UpdateEndpoint and the stub can go.
    with moto_on_loopback():
        with pytest.raises(ClientError) as raised:
            client("sagemaker").update_endpoint(EndpointName="any", EndpointConfigName="any")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_the_sdks_endpoint_resource_cannot_read_motos_endpoint() -> None:
    # Where the SageMaker SDK stops against moto: `update_endpoint_blue_green` reads the endpoint with the SDK's
    # resource, and moto's DescribeEndpoint answers an empty DataCaptureConfig that the resource's pydantic
    # shape refuses (AWS leaves the key out). When this fails, only UpdateEndpoint keeps the stub.
    with moto_on_loopback():
        sagemaker = client("sagemaker")
        sagemaker.create_model(ModelName="m", PrimaryContainer={"Image": "example.com/m:1"}, ExecutionRoleArn=ROLE)
        variant = {"VariantName": "v", "ModelName": "m", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}
        sagemaker.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[variant])
        sagemaker.create_endpoint(EndpointName="e", EndpointConfigName="c")
        with pytest.raises(ValidationError, match=r"data_capture_config\.enable_capture\s+Field required"):
            infra.endpoint.update_endpoint_blue_green(Aws(REGION), "e", "c", {})


def test_the_sdk_sends_the_deployment_config_as_written(lifecycle: Lifecycle) -> None:
    [call] = lifecycle.update_calls
    shape = DeploymentConfig(**transform(call["DeploymentConfig"], "DeploymentConfig"))

    assert serialize(shape) == call["DeploymentConfig"]


def test_planning_a_new_version_shows_a_blue_green_update_and_calls_nothing(lifecycle: Lifecycle) -> None:
    assert lifecycle.update_calls_during_plan == 0
    assert changed(lifecycle.plan_v2) == [
        ("create", "s3 object"),
        ("create", "sagemaker model"),
        ("create", "sagemaker endpoint config"),
        ("update", "sagemaker endpoint"),
        ("update", "ecs task definition"),
        ("update", "ecs service"),
    ]
    [endpoint_change] = [c for c in lifecycle.plan_v2.changes if c.kind == "sagemaker endpoint"]
    assert "blue/green" in endpoint_change.detail and NAMES.rollback_alarm in endpoint_change.detail


def test_a_new_version_updates_the_endpoint_blue_green_with_the_rollback_alarm(lifecycle: Lifecycle) -> None:
    assert changed(lifecycle.deploy_v2) == changed(lifecycle.plan_v2)
    [call] = lifecycle.update_calls
    new_config = lifecycle.state_after_v2["endpoint"]["EndpointConfigName"]
    assert (call["EndpointName"], call["EndpointConfigName"]) == (NAMES.endpoint, new_config)
    assert call["DeploymentConfig"] == {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "CANARY",
                "WaitIntervalInSeconds": 300,
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
            },
            "TerminationWaitInSeconds": 300,
            "MaximumExecutionTimeoutInSeconds": 600,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": NAMES.rollback_alarm}]},
    }


def test_after_the_update_the_endpoint_serves_both_versions_and_gateways_pin_the_new_one(lifecycle: Lifecycle) -> None:
    state = lifecycle.state_after_v2
    assert state["endpoint"]["EndpointStatus"] == "InService"
    assert state["model versions tag"] == "memefly=1+2"
    assert state["saved models in archive"] == ["memefly/1/saved_model.pb", "memefly/2/saved_model.pb"]
    assert (state["task definition revision"], state["gateway pinned version"]) == (2, "2")
    assert len(state["endpoint configs"]) == 2  # the old one stays until destroy: it is the rollback target


def test_destroy_removes_everything_tagged_and_leaves_nothing_tagged(lifecycle: Lifecycle) -> None:
    deleted = sorted({c.kind for c in lifecycle.destroy.changes})
    assert deleted == [
        "autoscaling target",
        "cloudwatch alarm",
        "ecs cluster",
        "ecs service",
        "ecs task definition",
        "iam role",
        "load balancer",
        "log group",
        "s3 bucket",
        "sagemaker endpoint",
        "sagemaker endpoint config",
        "sagemaker model",
        "security group",
        "security group rules",
        "target group",
    ]
    assert lifecycle.left_tagged == []
    # The tagging API agrees, except for deleted ECS clusters and services: ECS keeps them as INACTIVE records.
    tagging = client("resourcegroupstaggingapi")
    listed = [
        r["ResourceARN"]
        for r in tagging.get_resources(TagFilters=[{"Key": DEPLOYMENT, "Values": [PREFIX]}])["ResourceTagMappingList"]
    ]
    ecs = client("ecs")
    assert sorted(listed) == [
        f"arn:aws:ecs:us-east-1:123456789012:cluster/{NAMES.cluster}",
        f"arn:aws:ecs:us-east-1:123456789012:service/{NAMES.cluster}/{NAMES.service}",
    ]
    assert ecs.describe_clusters(clusters=[NAMES.cluster])["clusters"][0]["status"] == "INACTIVE"
    assert ecs.describe_services(cluster=NAMES.cluster, services=[NAMES.service])["services"][0]["status"] == "INACTIVE"


def test_destroy_keeps_resources_it_did_not_create_even_with_the_prefix_in_their_name(lifecycle: Lifecycle) -> None:
    assert lifecycle.unrelated_after_destroy == {
        "bucket objects": [f"{PREFIX}/models/keep-me.txt"],
        "role": UNRELATED_ROLE,
        "model": UNRELATED_MODEL,
    }
    assert [c.name for c in lifecycle.destroy.changes if c.kind == "sagemaker model"] == [
        c.name
        for c in lifecycle.first.changes + lifecycle.deploy_v2.changes
        if c.kind == "sagemaker model" and c.action == Action.CREATE
    ]


def test_destroying_again_finds_nothing(lifecycle: Lifecycle) -> None:
    assert lifecycle.second_destroy.changes == []


def test_every_model_archive_went_with_the_bucket(lifecycle: Lifecycle) -> None:
    buckets = [b["Name"] for b in client("s3").list_buckets()["Buckets"]]
    assert buckets == [UNRELATED_BUCKET]
