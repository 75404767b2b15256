"""plan, then deploy, then deploy again, against a moto server on loopback; asserts on the resulting AWS state.

moto answers for S3, IAM, SageMaker, CloudWatch, Application Auto Scaling, EC2, ELBv2, ECS and Logs here; it
never starts a container, so the endpoint is InService at once and InvokeEndpoint answers a canned body.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.backends import ModelUnavailableError
from gateway.backends.sagemaker import SageMakerBackend
from infra.__main__ import app
from infra.aws import Aws, MutationRefused
from infra.changes import Action
from infra.deploy import run
from infra.names import Names
from infra.policies import violations
from infra.tags import DEPLOYMENT, MODEL_VERSIONS, as_dict
from memefly.serving_targets import read_declarations
from tests.test_deploy_support import (
    ACCOUNT,
    GATEWAY_IMAGE,
    PREFIX,
    REGION,
    client,
    deploy_environment,
    deploy_settings,
    moto_on_loopback,
    tagged_resources,
    write_model_version,
)

NAMES = Names(PREFIX)


@dataclass
class Run:
    exit_code: int
    output: str


@dataclass
class FirstRun:
    plan: Run
    after_plan: list[str]
    deploy_lines: list[str]
    deploy_actions: list[Action]
    second_deploy: Run
    model_base_path: Path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    model_base_path = tmp_path_factory.mktemp("models")
    write_model_version(model_base_path / "memefly", 1)
    runner = CliRunner()
    with moto_on_loopback():
        plan = runner.invoke(app, ["plan"], env=deploy_environment(model_base_path))
        after_plan = tagged_resources()
        lines: list[str] = []
        report = run(deploy_settings(model_base_path), apply=True, echo=lines.append)
        second = runner.invoke(app, ["deploy"], env=deploy_environment(model_base_path))
        yield FirstRun(
            Run(plan.exit_code, plan.output),
            after_plan,
            lines,
            [change.action for change in report.changes],
            Run(second.exit_code, second.output),
            model_base_path,
        )


def test_plan_lists_what_deploy_will_create_and_creates_nothing(first_run: FirstRun) -> None:
    assert first_run.plan.exit_code == 0, first_run.plan.output
    output = first_run.plan.output
    for kind, name in [
        ("s3 bucket", NAMES.bucket(ACCOUNT, REGION)),
        ("iam role", NAMES.sagemaker_role),
        ("sagemaker endpoint", NAMES.endpoint),
        ("autoscaling policy", NAMES.scaling_policy),
        ("load balancer", NAMES.load_balancer),
        ("ecs service", NAMES.service),
    ]:
        assert any(line.startswith("create") and kind in line and name in line for line in output.splitlines()), kind
    assert "skip      gateway image build+push" in output
    assert "Plan: 20 to create; 0 unchanged." in output
    assert first_run.after_plan == []


def test_a_read_only_session_refuses_mutating_calls(first_run: FirstRun) -> None:
    aws = Aws(REGION, read_only=True)
    with pytest.raises(MutationRefused, match="s3:CreateBucket refused"):
        aws.client("s3").create_bucket(Bucket="anything")
    assert "anything" not in [bucket["Name"] for bucket in aws.client("s3").list_buckets()["Buckets"]]
    # The SageMaker SDK's session makes its own clients from the same boto3 session: refused as well.
    with pytest.raises(MutationRefused, match="sagemaker:CreateEndpoint refused"):
        aws.sagemaker.create_endpoint("anything", "anything", wait=False)
    with pytest.raises(MutationRefused, match="s3:PutObject refused"):
        aws.sagemaker.upload_string_as_file_body("x", NAMES.bucket(ACCOUNT, REGION), "anything")


def test_deploy_shows_each_step_and_creates_everything_it_planned(first_run: FirstRun) -> None:
    assert first_run.deploy_actions.count(Action.CREATE) == 20
    assert "==> SageMaker endpoint" in first_run.deploy_lines
    assert f"          endpoint {NAMES.endpoint}: InService" in first_run.deploy_lines
    assert first_run.deploy_lines[-2] == "Done: 20 to create; 0 unchanged."


def test_the_model_archive_is_in_the_bucket_in_the_tf_serving_container_layout(first_run: FirstRun) -> None:
    s3 = client("s3")
    bucket = NAMES.bucket(ACCOUNT, REGION)
    [item] = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert item["Key"].startswith(f"{PREFIX}/models/memefly/") and item["Key"].endswith("/model.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())) as tar:
        names = sorted(tar.getnames())
    # Without MEMEFLY_DEPLOY_IMAGE_INVOCATION, no inference.py: the container's JSON path stays as it was.
    assert names == [
        "memefly/1",
        "memefly/1/assets",
        "memefly/1/assets.extra",
        "memefly/1/assets.extra/tf_serving_warmup_requests",
        "memefly/1/assets/vocabulary.txt",
        "memefly/1/saved_model.pb",
        "memefly/1/variables",
        "memefly/1/variables/variables.data-00000-of-00001",
        "memefly/1/variables/variables.index",
    ]
    assert as_dict(s3.get_object_tagging(Bucket=bucket, Key=item["Key"])["TagSet"])[DEPLOYMENT] == PREFIX
    assert as_dict(s3.get_bucket_tagging(Bucket=bucket)["TagSet"])[DEPLOYMENT] == PREFIX
    blocked = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(blocked.values())


def test_roles_trust_one_service_each_and_their_policies_are_least_privilege(first_run: FirstRun) -> None:
    iam = client("iam")
    endpoint_arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{NAMES.endpoint}"
    expected = {
        NAMES.sagemaker_role: (
            "sagemaker.amazonaws.com",
            f"arn:aws:s3:::{NAMES.bucket(ACCOUNT, REGION)}/{PREFIX}/models/*",
        ),
        NAMES.gateway_execution_role: (
            "ecs-tasks.amazonaws.com",
            f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/memefly-gateway",
        ),
        NAMES.gateway_task_role: ("ecs-tasks.amazonaws.com", endpoint_arn),
    }
    roles = iam.list_roles(PathPrefix=NAMES.role_path)["Roles"]
    assert sorted(role["RoleName"] for role in roles) == sorted(expected)
    for role in roles:
        service, scoped_resource = expected[role["RoleName"]]
        trust = iam.get_role(RoleName=role["RoleName"])["Role"]["AssumeRolePolicyDocument"]
        assert trust["Statement"] == [
            {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
        ]
        [policy_name] = iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]
        policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName=policy_name)["PolicyDocument"]
        assert violations(policy) == []
        assert not any("*" == s["Action"] or "*" in s["Action"] for s in policy["Statement"])
        assert any(scoped_resource in s["Resource"] for s in policy["Statement"])
        assert iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
    task_policy = iam.get_role_policy(RoleName=NAMES.gateway_task_role, PolicyName=f"{NAMES.gateway_task_role}-policy")
    assert task_policy["PolicyDocument"]["Statement"] == [
        {"Sid": "InvokeModel", "Effect": "Allow", "Action": ["sagemaker:InvokeEndpoint"], "Resource": [endpoint_arn]}
    ]


def test_the_endpoint_is_in_service_on_the_tf_serving_image_with_the_archive(first_run: FirstRun) -> None:
    sagemaker = client("sagemaker")
    endpoint = sagemaker.describe_endpoint(EndpointName=NAMES.endpoint)
    assert endpoint["EndpointStatus"] == "InService"
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    [variant] = config["ProductionVariants"]
    assert (variant["VariantName"], variant["InstanceType"], variant["InitialInstanceCount"]) == (
        "AllTraffic",
        "ml.m5.large",
        1,
    )
    model = sagemaker.describe_model(ModelName=variant["ModelName"])
    container = model["PrimaryContainer"]
    declared = read_declarations()["SAGEMAKER_TFS_VERSION"]  # serving/versions.env
    assert container["Image"] == f"763104351884.dkr.ecr.{REGION}.amazonaws.com/tensorflow-inference:{declared}-cpu"
    [item] = client("s3").list_objects_v2(Bucket=NAMES.bucket(ACCOUNT, REGION))["Contents"]
    assert container["ModelDataUrl"] == f"s3://{NAMES.bucket(ACCOUNT, REGION)}/{item['Key']}"
    assert container["Environment"] == {"SAGEMAKER_TFS_DEFAULT_MODEL_NAME": "memefly"}
    assert model["ExecutionRoleArn"] == f"arn:aws:iam::{ACCOUNT}:role{NAMES.role_path}{NAMES.sagemaker_role}"
    assert as_dict(sagemaker.list_tags(ResourceArn=model["ModelArn"])["Tags"])[MODEL_VERSIONS] == "memefly=1"


def test_a_rollback_alarm_watches_the_endpoints_server_errors(first_run: FirstRun) -> None:
    [alarm] = client("cloudwatch").describe_alarms(AlarmNames=[NAMES.rollback_alarm])["MetricAlarms"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["ComparisonOperator"], alarm["Threshold"]) == (
        "AWS/SageMaker",
        "Invocation5XXErrors",
        "GreaterThanThreshold",
        0.0,
    )
    assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {
        "EndpointName": NAMES.endpoint,
        "VariantName": "AllTraffic",
    }


def test_the_endpoint_scales_on_invocations_per_instance_within_the_set_bounds(first_run: FirstRun) -> None:
    scaling = client("application-autoscaling")
    [target] = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (NAMES.scaling_resource_id, 1, 3)
    [policy] = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyName"] == NAMES.scaling_policy
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
    }
    assert tracking["TargetValue"] == 600.0


def test_gateways_run_on_fargate_behind_an_alb_pointed_at_the_endpoint(first_run: FirstRun) -> None:
    ecs, elb, ec2 = client("ecs"), client("elbv2"), client("ec2")
    [service] = ecs.describe_services(cluster=NAMES.cluster, services=[NAMES.service])["services"]
    assert (service["launchType"], service["desiredCount"], service["status"]) == ("FARGATE", 2, "ACTIVE")
    [target_group] = elb.describe_target_groups(Names=[NAMES.target_group])["TargetGroups"]
    assert (target_group["TargetType"], target_group["Port"], target_group["HealthCheckPath"]) == (
        "ip",
        8000,
        "/readyz",
    )
    assert service["loadBalancers"] == [
        {"targetGroupArn": target_group["TargetGroupArn"], "containerName": "gateway", "containerPort": 8000}
    ]
    [balancer] = elb.describe_load_balancers(Names=[NAMES.load_balancer])["LoadBalancers"]
    assert (balancer["Scheme"], balancer["Type"]) == ("internet-facing", "application")
    [listener] = elb.describe_listeners(LoadBalancerArn=balancer["LoadBalancerArn"])["Listeners"]
    assert (listener["Port"], listener["DefaultActions"]) == (
        80,
        [{"Type": "forward", "TargetGroupArn": target_group["TargetGroupArn"]}],
    )
    groups = {g["GroupName"]: g for g in ec2.describe_security_groups()["SecurityGroups"]}
    alb_group, task_group = groups[NAMES.alb_security_group], groups[NAMES.task_security_group]
    assert balancer["SecurityGroups"] == [alb_group["GroupId"]]
    [http_in] = alb_group["IpPermissions"]
    assert (http_in["FromPort"], http_in["IpRanges"]) == (80, [{"CidrIp": "0.0.0.0/0"}])
    [from_alb] = task_group["IpPermissions"]
    assert (from_alb["FromPort"], [p["GroupId"] for p in from_alb["UserIdGroupPairs"]]) == (
        8000,
        [alb_group["GroupId"]],
    )
    assert from_alb["IpRanges"] == []
    network = service["networkConfiguration"]["awsvpcConfiguration"]
    assert network["securityGroups"] == [task_group["GroupId"]]

    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    [container] = definition["containerDefinitions"]
    assert container["image"] == GATEWAY_IMAGE
    assert {e["name"]: e["value"] for e in container["environment"]} == {
        "MEMEFLY_BACKEND": "sagemaker",
        "MEMEFLY_MODEL_NAME": "memefly",
        "MEMEFLY_SAGEMAKER_ENDPOINT_NAME": NAMES.endpoint,
        "MEMEFLY_SAGEMAKER_MODEL_VERSION": "1",
        "MEMEFLY_SAGEMAKER_REGION": REGION,
    }
    assert definition["taskRoleArn"].endswith(f"role{NAMES.role_path}{NAMES.gateway_task_role}")
    assert container["logConfiguration"]["options"]["awslogs-group"] == NAMES.log_group


def test_every_created_resource_carries_the_deployment_tag(first_run: FirstRun) -> None:
    kinds = sorted({entry.rsplit(" ", 1)[0] for entry in tagged_resources()})
    assert kinds == [
        "alarm",
        "autoscaling target",
        "ecs cluster",
        "ecs service",
        "ecs task definition",
        "elb",
        "iam role",
        "log group",
        "s3 bucket",
        "s3 object",
        "sagemaker endpoint",
        "sagemaker endpoint config",
        "sagemaker model",
        "security group",
    ]
    assert len(tagged_resources()) == 18


def test_a_second_deploy_with_nothing_changed_changes_nothing_and_says_so(first_run: FirstRun) -> None:
    assert first_run.second_deploy.exit_code == 0, first_run.second_deploy.output
    lines = first_run.second_deploy.output.splitlines()
    assert "Nothing changed: the deployment already matches the settings." in lines
    changes = [line for line in lines if line.split(" ", 1)[0] in {a.value for a in Action}]
    assert {line.split(" ", 1)[0] for line in changes} == {"unchanged", "skip"}
    assert len(changes) == 21
    assert client("ecs").list_task_definitions(familyPrefix=NAMES.task_family)["taskDefinitionArns"] == [
        f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{NAMES.task_family}:1"
    ]


def test_the_gateway_backend_as_the_deploy_configured_it_reaches_the_endpoint(first_run: FirstRun) -> None:
    ecs = client("ecs")
    [service] = ecs.describe_services(cluster=NAMES.cluster, services=[NAMES.service])["services"]
    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    environment = {e["name"]: e["value"] for e in definition["containerDefinitions"][0]["environment"]}
    backend = SageMakerBackend(
        environment["MEMEFLY_SAGEMAKER_ENDPOINT_NAME"],
        environment["MEMEFLY_MODEL_NAME"],
        environment["MEMEFLY_SAGEMAKER_REGION"],
        model_version=int(environment["MEMEFLY_SAGEMAKER_MODEL_VERSION"]),
    )
    try:
        # moto runs no container: InvokeEndpoint answers its canned body, which is not TF Serving JSON.
        with pytest.raises(ModelUnavailableError) as raised:
            backend.load_metadata()
    finally:
        backend.close()
    assert str(raised.value) == (
        f"endpoint {NAMES.endpoint} answered metadata_rest with 'content_type' b'body', not TF Serving's columnar JSON"
    )
