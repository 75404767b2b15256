"""Each target's TF Serving release is named once, in serving/versions.env, and compose, make, deploy and the
export's pins all read or agree with it; no target says `latest`."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import tensorflow as tf
import yaml

from infra.settings import DeploySettings
from memefly.paths import REPO_ROOT
from memefly.serving_targets import (
    COMPOSE,
    DECLARATIONS,
    export_tensorflow,
    read_declarations,
    serving_target,
    serving_targets,
)

DECLARED = read_declarations()


def make_dry_run(*targets: str) -> str:
    done = subprocess.run(["make", "-n", *targets], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return done.stdout


def test_compose_takes_its_tensorflow_serving_tag_from_the_declarations() -> None:
    image = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["tfserving"]["image"]
    # Compose's interpolation: ${NAME:?message} is NAME's value from the --env-file, or an error.
    resolved = re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", lambda m: DECLARED[m.group(1)], image)

    assert resolved == f"tensorflow/serving:{serving_target(COMPOSE).tensorflow}"
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+", resolved)


def test_make_passes_the_declarations_to_compose_and_makes_one_environment_per_release() -> None:
    assert "docker compose --env-file serving/versions.env up" in make_dry_run("compose-up")
    assert "--verify compose" in make_dry_run("compose-up")
    venvs = make_dry_run("-B", "serving-venvs")
    for target in serving_targets():
        assert f"pip install --quiet tensorflow-cpu=={target.tensorflow}" in venvs


def test_deploy_has_no_second_place_for_the_sagemaker_version() -> None:
    assert not any("tfs" in name or "tensorflow" in name for name in DeploySettings.model_fields)


@pytest.mark.parametrize("value", ["latest", "2.19", "2.19.0-gpu", ""])
def test_a_target_that_names_no_exact_release_is_refused(tmp_path: Path, value: str) -> None:
    declarations = tmp_path / "versions.env"
    declarations.write_text(
        DECLARATIONS.read_text().replace("COMPOSE_TFSERVING_VERSION=", f"COMPOSE_TFSERVING_VERSION={value}#")
    )

    with pytest.raises(ValueError, match="COMPOSE_TFSERVING_VERSION must name an exact TF Serving release"):
        serving_targets(declarations)


def test_the_export_tensorflow_is_the_declared_release() -> None:
    release = export_tensorflow()
    major, minor = map(int, release.split("."))
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = [
        requirement
        for extra in project["optional-dependencies"].values()
        for requirement in extra
        if re.match(r"tensorflow(-serving-api)?[><=]", requirement)
    ]

    assert pins and all(pin.endswith(f">={release},<{major}.{minor + 1}") for pin in pins), pins
    assert tf.__version__.startswith(f"{release}.")
