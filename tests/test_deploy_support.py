"""Helpers for the deploy tests (no tests here): a moto server on loopback, fake credentials, a model folder.

The model folder holds the files of a TF Serving version directory, with made-up contents: these tests
exercise AWS state, and moto never runs a container, so no real SavedModel is needed. For the same reason
each made-up version gets a passing serving-check record (deploy refuses a version without one); the
check itself, and the refusal, are tested in tests/test_serving_check_*.py and
tests/test_deploy_refuses_unchecked_models.py.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from infra.settings import DeploySettings
from infra.tags import DEPLOYMENT, as_dict
from memefly.serving_targets import SAGEMAKER, serving_target, version_digest, write_record

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
PREFIX = "mf-test"
GATEWAY_IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/memefly-gateway:0123abcd"


@contextmanager
def moto_on_loopback() -> Iterator[str]:
    """A moto server in a thread on a free loopback port, and the environment that points boto3 at it.

    Not to be nested: starting one resets the state every server in this process shares.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # Servers started in one process share moto's state: each test module starts from an empty account.
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).close()
    environment = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        yield url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def client(service: str) -> Any:
    """A boto3 client for assertions, at the moto server the environment names; no retries."""
    return boto3.client(service, region_name=REGION, config=Config(retries={"mode": "standard", "max_attempts": 1}))


def serving_checks_dir(model_base_path: Path) -> Path:
    return model_base_path / "serving-checks"


def record_made_up_check(version_dir: Path, passed: bool = True, tensorflow: str | None = None) -> Path:
    """A serving-check record for a made-up version, in the checks folder beside its model folder."""
    record = {
        "passed": passed,
        "digest": version_digest(version_dir),
        "tensorflow": tensorflow or serving_target(SAGEMAKER).tensorflow,
        "note": "written by the deploy tests for a made-up model",
    }
    return write_record(serving_checks_dir(version_dir.parent.parent), record)


def write_model_version(model_dir: Path, version: int, checked: bool = True) -> Path:
    """`<model_dir>/<version>/` with made-up files; `checked`: with a passing serving-check record."""
    folder = model_dir / str(version)
    for name, text in {
        "saved_model.pb": f"saved model {model_dir.name} {version}",
        "variables/variables.index": f"index {version}",
        "variables/variables.data-00000-of-00001": f"weights {version}",
        "assets/vocabulary.txt": "<pad>\n<start>\n<end>\n<unk>\n<sep>\ncat\n",
        "assets.extra/tf_serving_warmup_requests": "",
    }.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    if checked:
        record_made_up_check(folder)
    return folder


def settings_values(model_base_path: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "region": REGION,
        "prefix": PREFIX,
        "model_base_path": model_base_path,
        "model_name": "memefly",
        "gateway_image_uri": GATEWAY_IMAGE,
        "build_gateway_image": False,
        "min_instance_count": 1,
        "initial_instance_count": 1,
        "max_instance_count": 3,
        "poll_seconds": 0.05,
        "endpoint_timeout_seconds": 10,
        "serving_checks_dir": serving_checks_dir(model_base_path),
        **overrides,
    }


def deploy_settings(model_base_path: Path, **overrides: Any) -> DeploySettings:
    return DeploySettings(_env_file=None, **settings_values(model_base_path, **overrides))


def deploy_environment(model_base_path: Path, **overrides: Any) -> dict[str, str]:
    """The same settings as MEMEFLY_DEPLOY_* variables, for the CLI."""
    values = settings_values(model_base_path, **overrides)
    return {
        f"MEMEFLY_DEPLOY_{key.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in values.items()
    }


def tagged_resources(prefix: str = PREFIX) -> list[str]:
    """Everything carrying `memefly:deployment=<prefix>`, read service by service (independently of infra)."""
    found: list[str] = []

    def keep(kind: str, name: str, tags: Any) -> None:
        if as_dict(tags).get(DEPLOYMENT) == prefix:
            found.append(f"{kind} {name}")

    s3 = client("s3")
    for bucket in s3.list_buckets()["Buckets"]:
        try:
            keep("s3 bucket", bucket["Name"], s3.get_bucket_tagging(Bucket=bucket["Name"])["TagSet"])
        except s3.exceptions.ClientError:
            pass
        for item in s3.list_objects_v2(Bucket=bucket["Name"]).get("Contents", []):
            keep("s3 object", item["Key"], s3.get_object_tagging(Bucket=bucket["Name"], Key=item["Key"])["TagSet"])
    iam = client("iam")
    for role in iam.list_roles()["Roles"]:
        keep("iam role", role["RoleName"], iam.list_role_tags(RoleName=role["RoleName"])["Tags"])
    sagemaker = client("sagemaker")
    for kind, listing, key, arn in (
        ("sagemaker model", sagemaker.list_models()["Models"], "ModelName", "ModelArn"),
        (
            "sagemaker endpoint config",
            sagemaker.list_endpoint_configs()["EndpointConfigs"],
            "EndpointConfigName",
            "EndpointConfigArn",
        ),
        ("sagemaker endpoint", sagemaker.list_endpoints()["Endpoints"], "EndpointName", "EndpointArn"),
    ):
        for item in listing:
            keep(kind, item[key], sagemaker.list_tags(ResourceArn=item[arn])["Tags"])
    cloudwatch = client("cloudwatch")
    for alarm in cloudwatch.describe_alarms()["MetricAlarms"]:
        keep("alarm", alarm["AlarmName"], cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"])
    ecs = client("ecs")
    clusters = ecs.list_clusters()["clusterArns"]
    for cluster in ecs.describe_clusters(clusters=clusters, include=["TAGS"])["clusters"] if clusters else []:
        if cluster["status"] == "ACTIVE":
            keep("ecs cluster", cluster["clusterName"], cluster.get("tags"))
            services = ecs.list_services(cluster=cluster["clusterArn"])["serviceArns"]
            for service in (
                ecs.describe_services(cluster=cluster["clusterArn"], services=services, include=["TAGS"])["services"]
                if services
                else []
            ):
                if service["status"] != "INACTIVE":
                    keep("ecs service", service["serviceName"], service.get("tags"))
    for arn in ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"]:
        keep("ecs task definition", arn, ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"]).get("tags"))
    elb = client("elbv2")
    arns = [lb["LoadBalancerArn"] for lb in elb.describe_load_balancers()["LoadBalancers"]]
    arns += [tg["TargetGroupArn"] for tg in elb.describe_target_groups()["TargetGroups"]]
    for description in elb.describe_tags(ResourceArns=arns)["TagDescriptions"] if arns else []:
        keep("elb", description["ResourceArn"], description["Tags"])
    for group in client("ec2").describe_security_groups()["SecurityGroups"]:
        keep("security group", group["GroupName"], group.get("Tags"))
    logs = client("logs")
    for group in logs.describe_log_groups()["logGroups"]:
        keep("log group", group["logGroupName"], logs.list_tags_for_resource(resourceArn=group["logGroupArn"])["tags"])
    ecr = client("ecr")
    for repository in ecr.describe_repositories()["repositories"]:
        keep(
            "ecr repository",
            repository["repositoryName"],
            ecr.list_tags_for_resource(resourceArn=repository["repositoryArn"])["tags"],
        )
    targets = client("application-autoscaling").describe_scalable_targets(ServiceNamespace="sagemaker")[
        "ScalableTargets"
    ]
    found += [f"autoscaling target {t['ResourceId']}" for t in targets if f"/{prefix}-" in t["ResourceId"]]
    return found


@dataclass
class UpdateEndpointStub:
    """Stands in for the blue/green UpdateEndpoint moto does not implement: swaps the endpoint's config."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, aws: Any, endpoint: str, config: str, deployment: dict[str, Any]) -> None:
        self.calls.append({"EndpointName": endpoint, "EndpointConfigName": config, "DeploymentConfig": deployment})
        sagemaker = aws.client("sagemaker")
        arn = sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointArn"]
        tags = sagemaker.list_tags(ResourceArn=arn)["Tags"]
        sagemaker.delete_endpoint(EndpointName=endpoint)
        sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=config, Tags=tags)
