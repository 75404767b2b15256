"""`plan` and `deploy`: one walk over every resource; `plan` only reads and reports what `deploy` would do."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from infra.alarm import ensure_rollback_alarm
from infra.autoscaling import deregister_if_instance_type_changes, ensure_autoscaling
from infra.aws import Aws
from infra.changes import Report
from infra.container_image import ensure_gateway_image
from infra.context import PENDING, DeployError, Stack
from infra.endpoint import deployed_versions, ensure_endpoint, ensure_endpoint_config, ensure_model
from infra.gateway_service import (
    ensure_cluster,
    ensure_listener,
    ensure_load_balancer,
    ensure_log_group,
    ensure_service,
    ensure_target_group,
    ensure_task_definition,
)
from infra.iam import ensure_role
from infra.model_archive import (
    INFERENCE_SCRIPT,
    ModelArchive,
    archive_version_digests,
    available_versions,
    build_model_archive,
    newest_version,
    read_model_archive,
    versions_to_pack,
)
from infra.network import ensure_security_groups, find_network
from infra.policies import (
    ecr_repository_arn,
    gateway_execution_policy,
    gateway_task_policy,
    sagemaker_execution_policy,
    trust_policy,
)
from infra.settings import DeploySettings
from infra.storage import ensure_bucket, ensure_model_object
from infra.tfs_image import inference_image_uri
from memefly.serving_targets import SAGEMAKER, NotCheckedError, require_checked, serving_target, version_digest


def require_serving_check(settings: DeploySettings, digests: Mapping[str, Mapping[int, str]]) -> None:
    """DeployError unless each model's versions (by content digest) passed `make serving-check` for SageMaker's
    release."""
    try:
        for model_name, versions in digests.items():
            require_checked(settings.serving_checks_dir, model_name, dict(versions), serving_target(SAGEMAKER))
    except NotCheckedError as error:
        raise DeployError(str(error)) from error


def require_target_checked(settings: DeploySettings) -> None:
    """The check before any AWS call: each model's version to deploy, or every version of a prebuilt archive."""
    if settings.model_archive is not None:
        require_serving_check(settings, archive_version_digests(settings.model_archive))
        return
    digests = {}
    for model_name in settings.model_names:
        model_dir = settings.model_base_path / model_name
        version = target_version(settings, model_name)
        digests[model_name] = {version: version_digest(model_dir / str(version))}
    require_serving_check(settings, digests)


def target_version(settings: DeploySettings, model_name: str) -> int:
    """The version the gateways use: `model_version` for the default model, else the newest one built."""
    if model_name == settings.model_name and settings.model_version:
        return settings.model_version
    return newest_version(settings.model_base_path / model_name)


def model_archive(stack: Stack, workdir: Path) -> tuple[ModelArchive, dict[str, int]]:
    """The archive to deploy and the version of each model the gateways pin; built from the model base path
    unless given."""
    settings = stack.settings
    deployed = deployed_versions(stack)
    if settings.model_archive is not None:
        archive = read_model_archive(settings.model_archive)
        missing = [name for name in settings.model_names if name not in archive.models]
        if missing:
            raise DeployError(f"{archive.path} holds models {sorted(archive.models)}, not {missing}")
        targets = {name: max(archive.versions(name)) for name in settings.model_names}
        if settings.model_version:
            targets[settings.model_name] = settings.model_version
        for name, target in targets.items():
            if target not in archive.versions(name):
                raise DeployError(f"{archive.path} holds {name} versions {archive.versions(name)}, not {target}")
    else:
        targets = {name: target_version(settings, name) for name in settings.model_names}
        packs = {
            settings.model_base_path / name: versions_to_pack(
                target, deployed.get(name, ()), available_versions(settings.model_base_path / name)
            )
            for name, target in targets.items()
        }
        script = INFERENCE_SCRIPT if settings.image_invocation else None
        archive = build_model_archive(packs, workdir / "model.tar.gz", inference_script=script)
    pins = ", ".join(f"{name} {version}" for name, version in targets.items())
    stack.report.echo(f"          {archive.path}: {archive.describe()}; gateways use {pins}")
    # Every version in the archive is loaded by the new fleet, the ones kept for pinned gateways too.
    require_serving_check(settings, archive_version_digests(archive.path))
    release = serving_target(SAGEMAKER).tensorflow
    stack.report.echo(f"          {archive.describe()} passed the serving check with TensorFlow {release}")
    for name, target in targets.items():
        served = deployed.get(name)
        if served and max(served) != target and max(served) not in archive.versions(name):
            stack.report.echo(
                f"          warning: {name} version {max(served)} (served now) is not in the archive: gateways "
                "pinned to it answer 503 for requests the new fleet takes, until the ECS service has replaced them"
            )
    return archive, targets


def run(settings: DeploySettings, apply: bool, echo: Callable[[str], None] = print) -> Report:
    require_target_checked(settings)
    aws = Aws(settings.region, read_only=not apply)
    report = Report(echo)
    stack = Stack(settings, aws, report, apply)
    names = stack.names
    verb = "deploy" if apply else "plan (reads only; nothing is changed)"
    report.echo(f"{verb}: deployment {settings.prefix!r} in {aws.region}, account {aws.account}")

    with tempfile.TemporaryDirectory(prefix="memefly-deploy-") as workdir:
        report.step("model archive")
        archive, versions = model_archive(stack, Path(workdir))
        report.step("S3")
        bucket = ensure_bucket(stack)
        model_data_url = ensure_model_object(stack, bucket, archive)

    report.step("gateway image")
    gateway_image = ensure_gateway_image(stack)
    model_image = settings.model_image_uri or inference_image_uri(
        aws.region, serving_target(SAGEMAKER).tensorflow, settings.instance_type
    )

    report.step("IAM roles")
    partition = aws.partition
    endpoint_arn = aws.arn("sagemaker", f"endpoint/{names.endpoint.lower()}")
    sagemaker_role = ensure_role(
        stack,
        names.sagemaker_role,
        trust_policy("sagemaker.amazonaws.com"),
        sagemaker_execution_policy(
            f"arn:{partition}:s3:::{bucket}/{names.object_prefix}models/*",
            ecr_repository_arn(model_image, partition),
            aws.arn("logs", f"log-group:/aws/sagemaker/Endpoints/{names.endpoint}"),
        ),
        "the endpoint's container: read its model archive, pull its image, write its logs",
    )
    execution_role = ensure_role(
        stack,
        names.gateway_execution_role,
        trust_policy("ecs-tasks.amazonaws.com"),
        gateway_execution_policy(
            ecr_repository_arn(gateway_image, partition), aws.arn("logs", f"log-group:{names.log_group}")
        ),
        "ECS starting a gateway task: pull its image, write its logs",
    )
    task_role = ensure_role(
        stack,
        names.gateway_task_role,
        trust_policy("ecs-tasks.amazonaws.com"),
        gateway_task_policy(endpoint_arn),
        "the gateway: invoke its endpoint",
    )

    report.step("SageMaker endpoint")
    model = ensure_model(stack, model_image, model_data_url, sagemaker_role, archive, versions[settings.model_name])
    ensure_rollback_alarm(stack)
    config = ensure_endpoint_config(stack, model)
    ensure_endpoint(stack, config, before_update=lambda current: deregister_if_instance_type_changes(stack, current))

    report.step("endpoint autoscaling")
    ensure_autoscaling(stack)

    report.step("gateway: ECS Fargate behind an Application Load Balancer")
    network = find_network(stack)
    alb_group, task_group = ensure_security_groups(stack, network)
    ensure_log_group(stack)
    load_balancer, dns_name = ensure_load_balancer(stack, network, alb_group)
    target_group = ensure_target_group(stack, network)
    ensure_listener(stack, load_balancer, target_group)
    ensure_cluster(stack)
    task_definition = ensure_task_definition(stack, gateway_image, versions, execution_role, task_role)
    ensure_service(stack, network, task_group, target_group, task_definition)

    if not report.changed:
        report.echo("Nothing changed: the deployment already matches the settings." if apply else "Nothing to change.")
    else:
        report.echo(("Done: " if apply else "Plan: ") + report.summary() + ".")
    if dns_name != PENDING:
        report.echo(
            f"Gateway: http://{dns_name}/v1/memes (ready once the tasks pass {names.target_group}'s health check)"
        )
    return report
