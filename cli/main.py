"""The `memefly` command."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import typer

from memefly.paths import DEFAULT_BUNDLE_DIR, DEFAULT_MODEL_BASE_PATH, REPO_ROOT

app = typer.Typer(help="memefly: photo in, meme out.", no_args_is_help=True)


DataDirOption = Annotated[
    Path | None, typer.Option(help="meme data set; default $MEMEFLY_DATA_DIR or ../shared/data/memes")
]


@contextlib.contextmanager
def _needs_corpus() -> Iterator[None]:
    """Stops the command with the data set's own message (what is missing, `make data`) instead of a trace."""
    from export.data import DataMissingError

    try:
        yield
    except DataMissingError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


@app.command()
def data(data_dir: DataDirOption = None) -> None:
    """Make sure the meme data set is there: use it when present, else build it from its pinned public
    sources (export/sources.json); offline, say what is missing and where to put it."""
    from export.sources import prepare_data

    with _needs_corpus():
        prepare_data(data_dir)


@app.command("build-model")
def build_model(
    bundle: Annotated[Path | None, typer.Option(help="assemble from a trained bundle instead of training")] = None,
    preset: Annotated[str, typer.Option(help="without --bundle: tiny (seconds) or slice (minutes)")] = "slice",
    model_base_path: Annotated[Path, typer.Option(help="where <model_name>/<version>/ goes")] = DEFAULT_MODEL_BASE_PATH,
    data_dir: DataDirOption = None,
    version: Annotated[int | None, typer.Option(help="version number; default the next free one")] = None,
) -> None:
    """Export a versioned SavedModel: assembled from a bundle, or trained from a preset."""
    if bundle is not None:
        from export.bundle import assemble

        path = assemble(bundle, model_base_path, version)
    else:
        from export.data import data_dir as resolve_data_dir
        from export.train import build_model as build

        with _needs_corpus():
            path = build(preset, resolve_data_dir(data_dir), model_base_path, version)
    typer.echo(f"exported {path}")


@app.command()
def train(
    preset: Annotated[str, typer.Option(help="a preset of export/train.py")] = "full",
    bundle_dir: Annotated[Path, typer.Option(help="where the trained bundle is written")] = DEFAULT_BUNDLE_DIR,
    data_dir: DataDirOption = None,
    epochs: Annotated[int | None, typer.Option(help="override the preset's epoch count")] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(help="checkpoints; a run stopped midway resumes from its last epoch [default: var/train/PRESET]"),
    ] = None,
    continue_from: Annotated[
        Path | None,
        typer.Option(help="a finished bundle of this preset: train on from its weights and last epoch", exists=True),
    ] = None,
) -> None:
    """Train the caption decoder and write a bundle (weights, vocabulary, config, curves)."""
    from export.bundle import save_bundle, warm_start_from
    from export.data import data_dir as resolve_data_dir
    from export.model import CaptionModelConfig
    from export.train import PRESETS
    from export.train import train as run_training

    model_config, train_config = PRESETS[preset]
    if epochs is not None:
        from dataclasses import replace

        train_config = replace(train_config, epochs=epochs)
    work_dir = work_dir or REPO_ROOT / "var" / "train" / preset
    warm_start = None
    if continue_from is not None:
        if CaptionModelConfig.from_file(continue_from / "config.json") != model_config:
            raise typer.BadParameter(f"not a {preset!r} bundle: {continue_from}", param_hint="--continue-from")
        warm_start = warm_start_from(continue_from)
    with _needs_corpus():
        result = run_training(model_config, train_config, resolve_data_dir(data_dir), work_dir, warm_start)
    save_bundle(result, bundle_dir)
    typer.echo(f"bundle written to {bundle_dir}; validation perplexity {result.history['val_perplexity']}")


@app.command()
def evaluate(
    bundle_dir: Annotated[Path, typer.Option(help="the trained bundle")] = DEFAULT_BUNDLE_DIR,
    out_dir: Annotated[Path | None, typer.Option(help="where evaluation.json and EVALUATION.md go")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Perplexity with and without the image, caption variety, copying and template retrieval."""
    from evaluation.evaluate import evaluate as run_evaluation
    from evaluation.evaluate import write_reports
    from evaluation.model_card import write_model_card
    from export.data import data_dir as resolve_data_dir

    with _needs_corpus():
        report = run_evaluation(
            bundle_dir, resolve_data_dir(data_dir), contact_sheet=(out_dir or bundle_dir) / "contact_sheet.png"
        )
    write_reports(report, out_dir or bundle_dir)
    if out_dir is None or out_dir == bundle_dir:
        typer.echo(f"wrote {write_model_card(bundle_dir)}")
    typer.echo(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict | list)}, indent=2))


@app.command()
def generate(
    images: Annotated[list[Path], typer.Argument(help="image files to caption", exists=True, dir_okay=False)],
    out_dir: Annotated[Path, typer.Option("-o", "--out-dir", help="where the memes are written")] = Path("memes"),
    backend: Annotated[
        str | None, typer.Option(help="embedded, tfserving or sagemaker; default $MEMEFLY_BACKEND")
    ] = None,
    beam_width: Annotated[int, typer.Option(min=1, max=16)] = 4,
    image_format: Annotated[Literal["png", "jpeg", "webp"], typer.Option("--format")] = "png",
    topic: Annotated[str, typer.Option(help="what the captions are about; default: what each photo shows")] = "",
    style: Annotated[str, typer.Option(help="a style (template id) to write in; default: one that fits")] = "",
) -> None:
    """Caption images and write the memes to a folder, with a progress bar (the API's pipeline:
    the same decoding rules, content filter and rerun on a model version change)."""
    from gateway.app import make_backend
    from gateway.captioner import ModelSession
    from gateway.content_filter import ContentFilter
    from gateway.errors import ApiError
    from gateway.meme_service import MemeService, Picture
    from gateway.metrics import Metrics
    from gateway.model_router import ModelRouter
    from gateway.schemas import MemeOptions
    from gateway.settings import Settings
    from gateway.templates import TemplateStore

    settings = Settings(**({"backend": backend} if backend else {}))
    options = MemeOptions(n=1, beam_width=beam_width, topic=topic, style=style, format=image_format)
    session = ModelSession(make_backend(settings))
    memes = MemeService(
        settings,
        ModelRouter.single(settings.model_name, session),
        TemplateStore(settings.templates_dir),
        None,
        ContentFilter.from_settings(settings.content_filter, settings.blocked_words_file),
        Metrics(),
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        extension = {"png": "png", "jpeg": "jpg", "webp": "webp"}[image_format]
        with typer.progressbar(images, label="memes") as progress:
            for path in progress:
                try:
                    meme = memes.make(Picture(path.read_bytes()), options, store=False)
                except ApiError as error:
                    if error.code in ("unknown_style", "unsupported_by_model"):
                        raise typer.BadParameter(error.message, param_hint="--style") from error
                    typer.echo(f"\nskipped {path}: {error.message}", err=True)
                    continue
                target = out_dir / f"{path.stem}.{extension}"
                target.write_bytes(meme.content)
                best = meme.result.captions[0] if meme.result.captions else None
                used = f" [{best.style}; {best.topic or 'no topic'}]" if best and best.style else ""
                typer.echo(f"\n{target}: {' / '.join(meme.boxes)}{used}")
    finally:
        session.close()


@app.command()
def templates(
    templates_dir: Annotated[Path | None, typer.Option(help="default: the shipped templates")] = None,
) -> None:
    """List the known meme templates: id, boxes, name."""
    from gateway.settings import Settings
    from gateway.templates import TemplateStore

    store = TemplateStore(templates_dir or Settings().templates_dir)
    for template in store.all():
        typer.echo(f"{template.id}\t{len(template.layout) or 2}\t{template.name}")


def _sample_image(templates_dir: Path | None) -> str:
    from gateway.templates import TemplateStore

    template = TemplateStore(templates_dir).get("buzz")
    if template is None:
        return "photo.jpg"
    try:
        return str(template.image_path.relative_to(Path.cwd()))
    except ValueError:
        return str(template.image_path)


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: Annotated[
        str | None, typer.Option(help="embedded, tfserving or sagemaker; default $MEMEFLY_BACKEND")
    ] = None,
) -> None:
    """Run the gateway (settings from MEMEFLY_* variables); SIGTERM drains it gracefully."""
    from gateway.app import create_app
    from gateway.server import gateway_server
    from gateway.settings import Settings

    settings = Settings(**({"backend": backend} if backend else {}))
    typer.echo(f"memefly gateway on http://{host}:{port} with the {settings.backend} backend; make a meme with:")
    sample = _sample_image(settings.templates_dir)
    typer.echo(f"  curl -sS -F image=@{sample} http://{host}:{port}/v1/memes -o meme.png")
    gateway_server(create_app(settings), host, port, settings.request_timeout_seconds).run()


if __name__ == "__main__":
    app()
