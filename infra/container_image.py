"""The gateway image: built and pushed to ECR when a docker engine answers, else the given image URI."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

from infra.changes import Action
from infra.context import PENDING, DeployError, Stack
from infra.tags import as_list

_DOCKER_TIMEOUT_SECONDS = 10


def docker_engine_problem() -> str | None:
    """None when `docker info` answers; otherwise why not, in a few words."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=_DOCKER_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer within {_DOCKER_TIMEOUT_SECONDS} s"
    if result.returncode != 0:
        return f"`docker info` failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}"
    return None


def image_tag(context: Path) -> str:
    """The source commit, marked when the work tree has changes (read-only git calls)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=context, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return "latest"


def ensure_repository(stack: Stack) -> str:
    ecr = stack.aws.client("ecr")
    name = stack.names.repository
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"]
    except ecr.exceptions.RepositoryNotFoundException:
        pass
    stack.report.record(Action.CREATE, "ecr repository", name, "scan on push")
    if not stack.apply:
        return f"{stack.aws.account}.dkr.ecr.{stack.aws.region}.{stack.aws.url_suffix}/{name}"
    return ecr.create_repository(
        repositoryName=name, imageScanningConfiguration={"scanOnPush": True}, tags=as_list(stack.tags())
    )["repository"]["repositoryUri"]


def _pushed(stack: Stack, tag: str) -> bool:
    ecr = stack.aws.client("ecr")
    try:
        ecr.describe_images(repositoryName=stack.names.repository, imageIds=[{"imageTag": tag}])
        return True
    except (ecr.exceptions.ImageNotFoundException, ecr.exceptions.RepositoryNotFoundException):
        return False


def _docker(*args: str, stdin: str | None = None) -> None:
    result = subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise DeployError(f"docker {args[0]} failed: {result.stderr.strip()[-2000:]}")


def ensure_gateway_image(stack: Stack) -> str:
    settings = stack.settings
    problem = docker_engine_problem() if settings.build_gateway_image else "building is off (build_gateway_image=false)"
    if problem is not None:
        if not settings.gateway_image_uri:
            raise DeployError(
                f"docker: {problem}, so the gateway image cannot be built; set MEMEFLY_DEPLOY_GATEWAY_IMAGE_URI "
                "to an image built from this repository's Dockerfile"
            )
        stack.report.record(
            Action.SKIP,
            "gateway image build+push",
            settings.gateway_image_uri,
            f"docker: {problem}; using the given image URI",
        )
        return settings.gateway_image_uri
    repository = ensure_repository(stack)
    tag = image_tag(settings.build_context)
    uri = f"{repository}:{tag}"
    if not tag.endswith("-dirty") and _pushed(stack, tag):
        stack.report.record(Action.UNCHANGED, "gateway image", uri, "this commit is already in ECR")
        return uri
    stack.report.record(Action.CREATE, "gateway image build+push", uri, f"docker build {settings.build_context}")
    if not stack.apply or repository == PENDING:
        return uri
    token = stack.aws.client("ecr").get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    _docker("login", "--username", user, "--password-stdin", token["proxyEndpoint"], stdin=password)
    _docker("build", "--tag", uri, str(settings.build_context))
    _docker("push", uri)
    return uri
