"""Deploy never takes over what it did not create, and says clearly when the endpoint does not come up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.aws import Aws
from infra.changes import Report
from infra.context import DeployError, Stack
from infra.deploy import run
from infra.endpoint import wait_in_service
from infra.names import Names
from tests.test_deploy_support import PREFIX, REGION, client, deploy_settings, moto_on_loopback, write_model_version

NAMES = Names(PREFIX)


@pytest.fixture(scope="module")
def model_base_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("models")
    write_model_version(base / "memefly", 1)
    with moto_on_loopback():
        yield base


def test_an_untagged_role_with_the_deployments_name_stops_the_deploy(model_base_path: Path) -> None:
    client("iam").create_role(
        RoleName=NAMES.sagemaker_role, Path=NAMES.role_path, AssumeRolePolicyDocument='{"Statement": []}'
    )

    with pytest.raises(DeployError, match=f"iam role {NAMES.sagemaker_role} exists but was not created by deployment"):
        run(deploy_settings(model_base_path), apply=True, echo=lambda _: None)

    assert client("iam").list_role_policies(RoleName=NAMES.sagemaker_role)["PolicyNames"] == []
    assert client("sagemaker").list_endpoints()["Endpoints"] == []


def test_an_endpoint_that_is_not_there_while_waiting_fails_with_where_to_look(model_base_path: Path) -> None:
    stack = Stack(deploy_settings(model_base_path), Aws(REGION), Report(lambda _: None), apply=True)

    with pytest.raises(DeployError) as raised:
        wait_in_service(stack, "being created")

    assert str(raised.value) == (
        f"endpoint {NAMES.endpoint} missing while being created: no reason given. Container logs: CloudWatch log "
        f"group /aws/sagemaker/Endpoints/{NAMES.endpoint}. `python -m infra destroy` removes it."
    )
