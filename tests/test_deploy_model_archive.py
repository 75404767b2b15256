"""model.tar.gz for the SageMaker TF Serving container: layout, reproducibility, which versions go in it."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.__main__ import app
from infra.aws import Aws
from infra.changes import Action, Report
from infra.context import Stack
from infra.model_archive import build_model_archive, read_model_archive, versions_to_pack
from infra.storage import ensure_bucket, ensure_model_object
from infra.tags import DEPLOYMENT, as_dict
from infra.tfs_image import inference_image_uri
from tests.test_deploy_support import (
    PREFIX,
    REGION,
    client,
    deploy_environment,
    deploy_settings,
    moto_on_loopback,
    write_model_version,
)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    for version in (1, 2):
        write_model_version(tmp_path / "memefly", version)
    return tmp_path / "memefly"


def test_archive_holds_each_version_under_the_model_name_with_all_its_folders(model_dir: Path, tmp_path: Path) -> None:
    archive = build_model_archive({model_dir: [2, 1]}, tmp_path / "out" / "model.tar.gz")

    with tarfile.open(archive.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert archive.models == {"memefly": (1, 2)}
    for version in (1, 2):
        for folder in ("variables", "assets", "assets.extra"):
            assert members[f"memefly/{version}/{folder}"].isdir()
        assert members[f"memefly/{version}/saved_model.pb"].isfile()
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members.values()} == {(0, 0, 0, "")}


def test_the_same_model_gives_the_same_bytes(model_dir: Path, tmp_path: Path) -> None:
    first = build_model_archive({model_dir: [1]}, tmp_path / "a.tar.gz")
    (model_dir / "1" / "saved_model.pb").touch()  # a new mtime, the same content
    second = build_model_archive({model_dir: [1]}, tmp_path / "b.tar.gz")

    assert first.sha256 == second.sha256
    with gzip.open(first.path) as unzipped:
        assert tarfile.open(fileobj=io.BytesIO(unzipped.read())).getnames()[0] == "memefly/1"


def test_an_archive_with_a_bare_version_folder_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bare.tar.gz"
    write_model_version(tmp_path / "src", 3)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "3", arcname="3")

    with pytest.raises(ValueError, match="would be served as `model`"):
        read_model_archive(archive)


@pytest.mark.parametrize(
    "target, deployed, available, packed",
    [
        (1, (), (1,), (1,)),
        (2, (1,), (1, 2), (1, 2)),  # the new fleet still serves gateways pinned to 1
        (2, (1, 2), (1, 2), (1, 2)),  # a rerun builds the same archive
        (3, (1, 2), (1, 2, 3), (2, 3)),
        (3, (2,), (3,), (3,)),  # version 2 is gone locally: cannot be packed
    ],
)
def test_the_archive_keeps_the_serving_version_while_gateways_move(
    target: int, deployed: tuple[int, ...], available: tuple[int, ...], packed: tuple[int, ...]
) -> None:
    assert versions_to_pack(target, deployed, available) == packed


def test_package_command_writes_the_archive(model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "build" / "model.tar.gz"
    result = CliRunner().invoke(
        app,
        ["package", "--output", str(output), "--version", "1", "--version", "2"],
        env=deploy_environment(model_dir.parent),
    )

    assert result.exit_code == 0, result.output
    assert read_model_archive(output).models == {"memefly": (1, 2)}
    assert f"{output}: memefly versions 1,2, sha256 " in result.output


@pytest.mark.parametrize(
    "region, instance_type, uri",
    [
        ("eu-west-1", "ml.m5.large", "763104351884.dkr.ecr.eu-west-1.amazonaws.com/tensorflow-inference:2.19.0-cpu"),
        ("af-south-1", "ml.g5.xlarge", "626614931356.dkr.ecr.af-south-1.amazonaws.com/tensorflow-inference:2.19.0-gpu"),
        (
            "cn-north-1",
            "ml.c5.large",
            "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/tensorflow-inference:2.19.0-cpu",
        ),
    ],
)
def test_the_tf_serving_image_comes_from_the_regions_registry(region: str, instance_type: str, uri: str) -> None:
    assert inference_image_uri(region, "2.19.0", instance_type) == uri


def test_the_sdk_knows_registries_and_tag_forms_the_old_hand_written_table_did_not() -> None:
    # ca-west-1 has its own registry account (the hand-written table sent it to the default one), and
    # from 2.20 the tag names the Python version.
    assert inference_image_uri("ca-west-1", "2.19.0", "ml.m5.large") == (
        "204538143572.dkr.ecr.ca-west-1.amazonaws.com/tensorflow-inference:2.19.0-cpu"
    )
    assert inference_image_uri("us-east-1", "2.20.0", "ml.m5.large").endswith("tensorflow-inference:2.20.0-cpu-py312")


def test_a_tf_serving_version_the_sdk_does_not_know_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"Unsupported tensorflow version: 2\.99\.0.*2\.19\.0"):
        inference_image_uri("us-east-1", "2.99.0", "ml.m5.large")


def test_a_prebuilt_archive_of_another_name_is_uploaded_by_the_sdk_under_its_digest_key(
    model_dir: Path, tmp_path: Path
) -> None:
    archive = build_model_archive({model_dir: [1, 2]}, tmp_path / "prebuilt-v2.tar.gz")
    with moto_on_loopback():
        stack = Stack(deploy_settings(model_dir.parent), Aws(REGION), Report(lambda _: None), apply=True)
        bucket = ensure_bucket(stack)
        url = ensure_model_object(stack, bucket, archive)
        again = ensure_model_object(stack, bucket, archive)
        key = stack.names.model_key("memefly", archive.sha256)
        s3 = client("s3")
        head = s3.head_object(Bucket=bucket, Key=key)
        tags = as_dict(s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"])
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    assert url == again == f"s3://{bucket}/{key}"
    assert [c.action for c in stack.report.changes[-2:]] == [Action.CREATE, Action.UNCHANGED]
    assert head["Metadata"] == {"sha256": archive.sha256, "model-versions": "memefly=1+2"}
    assert head["ServerSideEncryption"] == "AES256"
    assert tags[DEPLOYMENT] == PREFIX
    assert body == archive.path.read_bytes()
