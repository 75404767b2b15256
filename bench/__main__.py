"""`python -m bench`: run the benchmark, print the table, write report.json, report.md and report.png."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memefly.paths import DEFAULT_MODEL_BASE_PATH, DEFAULT_MODEL_NAME, model_versions

app = typer.Typer(add_completion=False, help=__doc__)

QUICK_CONCURRENCIES = (1, 4)
FULL_CONCURRENCIES = (1, 4, 16, 64)


def other_models(model_base_path: Path, model_name: str) -> list[str]:
    """The models with at least one version under `model_base_path`, besides `model_name`."""
    if not model_base_path.is_dir():
        return []
    return sorted(p.name for p in model_base_path.iterdir() if p.name != model_name and model_versions(p))


@app.command()
def main(
    quick: Annotated[bool, typer.Option(help="a short smoke run: few memes per row, no warm-up rounds")] = False,
    out: Annotated[Path, typer.Option(help="where report.json, report.md and report.png go")] = Path("var/bench"),
    model_base_path: Annotated[
        Path, typer.Option(envvar="MEMEFLY_MODEL_BASE_PATH", help="holds <model_name>/<version>/")
    ] = DEFAULT_MODEL_BASE_PATH,
    model_name: Annotated[str, typer.Option(envvar="MEMEFLY_MODEL_NAME")] = DEFAULT_MODEL_NAME,
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="MEMEFLY_DATA_DIR", help="template images and layouts; default: the shipped templates"),
    ] = None,
    mode: Annotated[
        list[int] | None,
        typer.Option(help="run only these modes (repeatable; 1 runs in-process and over REST JSON); default 1-7"),
    ] = None,
    concurrency: Annotated[
        list[int] | None, typer.Option(help="concurrent clients (repeatable); default 1 4 16 64, quick: 1 4")
    ] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="memes per row = rounds × concurrency (default 3)")] = None,
    min_memes: Annotated[int | None, typer.Option(min=1, help="at least this many memes per row")] = None,
    offline_batch: Annotated[
        list[int] | None, typer.Option(help="mode 6 batch sizes (repeatable); default 16 64 256, quick: 8")
    ] = None,
    serving_target: Annotated[
        str | None, typer.Option(help="use this running serving tier (host:port) instead of starting one")
    ] = None,
    paired_rounds: Annotated[
        int | None,
        typer.Option(min=0, help="interleaved rounds the targets use; 0: use the table (default 3, quick 1)"),
    ] = None,
    profile: Annotated[bool, typer.Option(help="also profile mode 3 with py-spy (client and serving tier)")] = False,
    also_model: Annotated[
        list[str] | None,
        typer.Option(help="another served model for mode 4's row (repeatable); default: every other model folder"),
    ] = None,
) -> None:
    from bench.runner import BenchOptions, machine_line, run

    options = BenchOptions(
        model_base_path=model_base_path,
        out_dir=out,
        model_name=model_name,
        more_models=tuple(also_model if also_model is not None else other_models(model_base_path, model_name)),
        data_dir=data_dir,
        modes=tuple(mode or (1, 2, 3, 4, 5, 6, 7)),
        concurrencies=tuple(concurrency or (QUICK_CONCURRENCIES if quick else FULL_CONCURRENCIES)),
        rounds=rounds or (1 if quick else 3),
        min_memes=min_memes or (2 if quick else 16),
        offline_batches=tuple(offline_batch or ((8,) if quick else (16, 64, 256))),
        offline_repeats=1 if quick else 2,
        paired_rounds=paired_rounds if paired_rounds is not None else (1 if quick else 3),
        serving_target=serving_target,
        profile=profile,
        quick=quick,
    )
    result = run(options)

    from bench import report

    typer.echo("")
    typer.echo(f"Machine: {machine_line(result)}.")
    typer.echo(report.markdown_table(result["rows"]))
    typer.echo("")
    typer.echo(report.targets_table(result["targets"]))
    typer.echo(f"\nwritten: {out / 'report.json'}, {out / 'report.md'}, {out / 'report.png'}")


if __name__ == "__main__":
    app()
