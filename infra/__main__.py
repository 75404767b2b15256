"""`python -m infra plan|deploy|destroy|package`: settings from MEMEFLY_DEPLOY_* variables or .env."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from infra.aws import MutationRefused
from infra.context import DeployError
from infra.settings import DeploySettings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _settings() -> DeploySettings:
    try:
        return DeploySettings()
    except ValidationError as error:
        typer.secho(f"settings: {error}", fg="red", err=True)
        raise typer.Exit(2) from error


def _guarded(action) -> None:
    try:
        action()
    except (DeployError, MutationRefused, FileNotFoundError, ValueError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(1) from error
    except (ClientError, BotoCoreError) as error:
        typer.secho(f"AWS error: {error}", fg="red", err=True)
        raise typer.Exit(1) from error


@app.command()
def plan() -> None:
    """Print what deploy would create or change. Calls no mutating AWS API."""
    from infra.deploy import run

    _guarded(lambda: run(_settings(), apply=False, echo=typer.echo))


@app.command()
def deploy() -> None:
    """Create or update everything, step by step; a rerun with nothing changed changes nothing."""
    from infra.deploy import run

    _guarded(lambda: run(_settings(), apply=True, echo=typer.echo))


@app.command()
def destroy(
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be deleted")] = False,
) -> None:
    """Delete everything tagged memefly:deployment=<prefix>, and nothing else."""
    from infra.destroy import destroy as run_destroy

    settings = _settings()
    if not (yes or dry_run):
        typer.confirm(
            f"Delete everything tagged memefly:deployment={settings.prefix} in {settings.region}?", abort=True
        )
    _guarded(lambda: run_destroy(settings, dry_run=dry_run, echo=typer.echo))


@app.command()
def package(
    output: Annotated[Path, typer.Option(help="where to write the archive")] = Path("build/model.tar.gz"),
    version: Annotated[
        list[int] | None, typer.Option(help="versions of the default model to pack (default: the newest)")
    ] = None,
) -> None:
    """Build model.tar.gz for the SageMaker TF Serving container from <model_base_path>/<model_name>/, with
    each of MEMEFLY_DEPLOY_MORE_MODELS at its newest version beside it."""
    from infra.model_archive import INFERENCE_SCRIPT, build_model_archive, newest_version

    settings = _settings()
    script = INFERENCE_SCRIPT if settings.image_invocation else None

    def build() -> None:
        model_dirs = [settings.model_base_path / name for name in settings.model_names]
        packs = {model_dir: [newest_version(model_dir)] for model_dir in model_dirs}
        if version:
            packs[model_dirs[0]] = version
        archive = build_model_archive(packs, output, inference_script=script)
        typer.echo(f"{archive.path}: {archive.describe()}, sha256 {archive.sha256}")

    _guarded(build)


if __name__ == "__main__":
    app()
