"""The `memefly` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memefly.paths import DEFAULT_MODEL_BASE_PATH

app = typer.Typer(help="memefly: photo in, meme out.", no_args_is_help=True)


@app.command("build-model")
def build_model(
    preset: Annotated[str, typer.Option(help="tiny (seconds, for tests) or slice (minutes)")] = "slice",
    model_base_path: Annotated[
        Path, typer.Option(help="where <model_name>/<version>/ is written")
    ] = DEFAULT_MODEL_BASE_PATH,
    data_dir: Annotated[
        Path | None, typer.Option(help="meme data set; default $MEMEFLY_DATA_DIR or ../shared/data/memes")
    ] = None,
    version: Annotated[int | None, typer.Option(help="version number; default the next free one")] = None,
) -> None:
    """Train a model preset on the meme data set and export it as a versioned SavedModel."""
    from export.data import data_dir as resolve_data_dir
    from export.train import build_model as build

    path = build(preset, resolve_data_dir(data_dir), model_base_path, version)
    typer.echo(f"exported {path}")


def _sample_image() -> str:
    from export.data import DataMissingError, data_dir

    try:
        return str(data_dir() / "templates" / "buzz.jpg")
    except DataMissingError:
        return "photo.jpg"


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: Annotated[str | None, typer.Option(help="embedded or tfserving; default $MEMEFLY_BACKEND")] = None,
) -> None:
    """Run the gateway (settings from MEMEFLY_* variables)."""
    import uvicorn

    from gateway.app import create_app
    from gateway.settings import Settings

    settings = Settings(**({"backend": backend} if backend else {}))
    typer.echo(f"memefly gateway on http://{host}:{port} with the {settings.backend} backend; make a meme with:")
    typer.echo(f"  curl -sS -F image=@{_sample_image()} http://{host}:{port}/v1/memes -o meme.png")
    uvicorn.run(create_app(settings), host=host, port=port)


if __name__ == "__main__":
    app()
