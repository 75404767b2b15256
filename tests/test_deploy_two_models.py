"""`make deploy` with the transformer beside the GRU: one archive and one endpoint serving both models, gateways
that serve both and pin each one's version; against a moto server on loopback."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import infra.endpoint
from infra.__main__ import app
from infra.deploy import run
from infra.destroy import destroy
from infra.names import Names
from infra.tags import MODEL_VERSIONS, as_dict, parse_model_versions
from tests.test_deploy_support import (
    PREFIX,
    UpdateEndpointStub,
    client,
    deploy_environment,
    deploy_settings,
    moto_on_loopback,
    write_model_version,
)

GRU, TRANSFORMER = "memefly", "memefly-transformer"
NAMES = Names(PREFIX)
# SageMaker's pattern for tag keys and values: letters, digits, spaces and _.:/=+-@ (no commas).
SAGEMAKER_TAG = re.compile(r"[\w\s.:/=+\-@]*")


@dataclass
class TwoModelDeploy:
    first: dict[str, Any]
    after_new_transformer: dict[str, Any]
    update_calls: int


def deployed_state() -> dict[str, Any]:
    sagemaker, ecs, s3 = client("sagemaker"), client("ecs"), client("s3")
    endpoint = sagemaker.describe_endpoint(EndpointName=NAMES.endpoint)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    [variant] = config["ProductionVariants"]
    model = sagemaker.describe_model(ModelName=variant["ModelName"])
    bucket, key = model["PrimaryContainer"]["ModelDataUrl"].removeprefix("s3://").split("/", 1)
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as tar:
        saved_models = sorted(n for n in tar.getnames() if n.endswith("saved_model.pb"))
    [service] = ecs.describe_services(cluster=NAMES.cluster, services=[NAMES.service])["services"]
    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    tags = [
        tag
        for arn in (endpoint["EndpointArn"], config["EndpointConfigArn"], model["ModelArn"])
        for tag in sagemaker.list_tags(ResourceArn=arn)["Tags"]
    ]
    return {
        "saved models": saved_models,
        "container environment": model["PrimaryContainer"]["Environment"],
        "model versions tag": as_dict(sagemaker.list_tags(ResourceArn=model["ModelArn"])["Tags"])[MODEL_VERSIONS],
        "sagemaker tags": tags,
        "gateway environment": {e["name"]: e["value"] for e in definition["containerDefinitions"][0]["environment"]},
    }


@pytest.fixture(scope="module")
def two_model_deploy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoModelDeploy]:
    base = tmp_path_factory.mktemp("models")
    write_model_version(base / GRU, 1)
    write_model_version(base / TRANSFORMER, 1)
    stub = UpdateEndpointStub()
    with moto_on_loopback(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(infra.endpoint, "update_endpoint_blue_green", stub)
        settings = deploy_settings(base, more_models=[TRANSFORMER])
        run(settings, apply=True, echo=lambda _: None)
        first = deployed_state()
        write_model_version(base / TRANSFORMER, 2)
        run(settings, apply=True, echo=lambda _: None)
        yield TwoModelDeploy(first, deployed_state(), len(stub.calls))
        destroy(settings, echo=lambda _: None)


def test_one_endpoint_serves_both_models_from_one_archive(two_model_deploy: TwoModelDeploy) -> None:
    state = two_model_deploy.first
    assert state["saved models"] == [f"{TRANSFORMER}/1/saved_model.pb", f"{GRU}/1/saved_model.pb"]
    assert state["container environment"] == {"SAGEMAKER_TFS_DEFAULT_MODEL_NAME": GRU}
    assert parse_model_versions(state["model versions tag"]) == {GRU: (1,), TRANSFORMER: (1,)}


def test_the_gateways_serve_both_models_each_pinned_to_its_version(two_model_deploy: TwoModelDeploy) -> None:
    environment = two_model_deploy.first["gateway environment"]
    assert json.loads(environment["MEMEFLY_MODELS"]) == [TRANSFORMER]
    assert json.loads(environment["MEMEFLY_SAGEMAKER_MODEL_VERSIONS"]) == {GRU: 1, TRANSFORMER: 1}
    assert environment["MEMEFLY_MODEL_NAME"] == GRU


def test_a_new_transformer_version_goes_out_blue_green_keeping_the_served_one(
    two_model_deploy: TwoModelDeploy,
) -> None:
    state = two_model_deploy.after_new_transformer
    assert two_model_deploy.update_calls == 1
    assert state["saved models"] == [
        f"{TRANSFORMER}/1/saved_model.pb",
        f"{TRANSFORMER}/2/saved_model.pb",
        f"{GRU}/1/saved_model.pb",
    ]
    assert json.loads(state["gateway environment"]["MEMEFLY_SAGEMAKER_MODEL_VERSIONS"]) == {GRU: 1, TRANSFORMER: 2}
    assert state["model versions tag"] == f"{GRU}=1 {TRANSFORMER}=1+2"


def test_every_sagemaker_tag_is_one_sagemaker_accepts(two_model_deploy: TwoModelDeploy) -> None:
    tags = two_model_deploy.after_new_transformer["sagemaker tags"]
    assert tags
    for tag in tags:
        assert SAGEMAKER_TAG.fullmatch(tag["Key"]) and SAGEMAKER_TAG.fullmatch(tag["Value"]), tag


def test_the_deploys_gateway_environment_is_a_gateway_configuration(
    two_model_deploy: TwoModelDeploy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.app import make_backend
    from gateway.settings import Settings

    for name, value in two_model_deploy.after_new_transformer["gateway environment"].items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)

    assert (settings.model_name, settings.models) == (GRU, [TRANSFORMER])
    assert make_backend(settings).model_version == 1
    assert make_backend(settings, TRANSFORMER).model_version == 2


def test_a_transformer_version_without_a_serving_check_is_refused_by_name(tmp_path: Path) -> None:
    write_model_version(tmp_path / GRU, 1)
    write_model_version(tmp_path / TRANSFORMER, 1, checked=False)
    with moto_on_loopback():
        result = CliRunner().invoke(
            app, ["plan"], env={**deploy_environment(tmp_path), "MEMEFLY_DEPLOY_MORE_MODELS": f'["{TRANSFORMER}"]'}
        )
    output = " ".join(result.output.split())
    assert result.exit_code == 1
    assert f"{TRANSFORMER} version 1 (content " in output and "has not been checked" in output
    assert f"{GRU} version 1" not in output
