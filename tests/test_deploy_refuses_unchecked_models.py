"""`make deploy-plan` and `make deploy` refuse a model version without a passing serving check for the
SageMaker target's TensorFlow, before any AWS resource exists; against a moto server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.__main__ import app
from infra.model_archive import build_model_archive
from memefly.serving_targets import SAGEMAKER, serving_target
from tests.support import free_port
from tests.test_deploy_support import (
    deploy_environment,
    moto_on_loopback,
    record_made_up_check,
    tagged_resources,
    write_model_version,
)

TENSORFLOW = serving_target(SAGEMAKER).tensorflow


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_on_loopback() as url:
        yield url


def invoke(command: str, model_base_path: Path, **overrides: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [command], env=deploy_environment(model_base_path, **overrides))
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize("command", ["plan", "deploy"])
def test_a_version_never_checked_is_refused_and_nothing_is_created(moto: str, tmp_path: Path, command: str) -> None:
    write_model_version(tmp_path / "memefly", 1, checked=False)

    exit_code, output = invoke(command, tmp_path)

    assert exit_code == 1
    assert "memefly version 1 (content " in output
    assert f"has not been checked with TensorFlow {TENSORFLOW}" in output
    assert f"tensorflow-inference:{TENSORFLOW}" in output and "SAGEMAKER_TFS_VERSION" in output
    assert "Run `make serving-check`" in output
    assert tagged_resources() == []


def test_a_version_that_failed_the_check_is_refused_with_its_record(moto: str, tmp_path: Path) -> None:
    folder = write_model_version(tmp_path / "memefly", 1, checked=False)
    record = record_made_up_check(folder, passed=False)

    exit_code, output = invoke("plan", tmp_path)

    assert exit_code == 1
    assert f"failed the check with TensorFlow {TENSORFLOW}: see {record}" in output


def test_a_check_with_another_tensorflow_release_does_not_count(moto: str, tmp_path: Path) -> None:
    folder = write_model_version(tmp_path / "memefly", 1, checked=False)
    record_made_up_check(folder, tensorflow="2.21.0")

    exit_code, output = invoke("plan", tmp_path)

    assert exit_code == 1
    assert f"has not been checked with TensorFlow {TENSORFLOW}" in output


def test_a_version_changed_after_its_check_is_refused(moto: str, tmp_path: Path) -> None:
    folder = write_model_version(tmp_path / "memefly", 1)
    assert invoke("plan", tmp_path)[0] == 0
    (folder / "variables" / "variables.data-00000-of-00001").write_text("weights trained again")

    exit_code, output = invoke("plan", tmp_path)

    assert exit_code == 1
    assert "has not been checked" in output


def test_every_version_in_the_archive_must_have_passed(moto: str, tmp_path: Path) -> None:
    write_model_version(tmp_path / "memefly", 1)
    write_model_version(tmp_path / "memefly", 2, checked=False)
    archive = build_model_archive({tmp_path / "memefly": [1, 2]}, tmp_path / "model.tar.gz").path

    exit_code, output = invoke("plan", tmp_path, model_archive=archive)

    assert exit_code == 1
    assert "memefly version 2" in output and "memefly version 1" not in output
    record_made_up_check(tmp_path / "memefly" / "2")
    exit_code, output = invoke("plan", tmp_path, model_archive=archive)
    assert exit_code == 0, output
    assert f"memefly versions 1,2 passed the serving check with TensorFlow {TENSORFLOW}" in output


def test_the_refusal_comes_before_any_aws_call(tmp_path: Path) -> None:
    # No moto: boto3 is pointed at a loopback port nobody listens on, so any AWS call would fail otherwise.
    write_model_version(tmp_path / "memefly", 1, checked=False)
    closed = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }

    result = CliRunner().invoke(app, ["plan"], env={**deploy_environment(tmp_path), **closed})

    assert result.exit_code == 1
    assert "AWS error" not in result.output
    assert f"has not been checked with TensorFlow {TENSORFLOW}" in " ".join(result.output.split())
