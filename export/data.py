"""Reader for the meme data set (`../shared/data/memes`, see its README) and the train/validation split."""

from __future__ import annotations

import gzip
import json
import os
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from memefly.paths import DEFAULT_DATA_DIR, REPO_ROOT

DATA_DIR_ENV = "MEMEFLY_DATA_DIR"
BUILT_DATA_DIR = REPO_ROOT / "data" / "memes"
"""Where `make data` builds the data set from its public sources when there is no `../shared/data/memes`."""
CAPTIONS_FILE = "captions.jsonl.gz"


class DataMissingError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class MemeTemplate:
    id: str
    name: str
    image_path: Path
    width: int
    height: int
    text_boxes: tuple[dict, ...]
    example: tuple[str, ...]


@dataclass(frozen=True)
class Caption:
    template: str
    boxes: tuple[str, ...]


def configured_data_dir(path: str | os.PathLike | None = None) -> Path:
    """Where the data set should be: `path`, else $MEMEFLY_DATA_DIR, else `../shared/data/memes` when that
    folder exists, else `data/memes` in the repository (what `make data` builds offline from ../shared)."""
    if path or os.environ.get(DATA_DIR_ENV):
        return Path(path or os.environ[DATA_DIR_ENV])
    return DEFAULT_DATA_DIR if DEFAULT_DATA_DIR.is_dir() else BUILT_DATA_DIR


def missing_data(folder: Path, captions: bool = True) -> list[str]:
    """The data set files that `folder` lacks (empty: it is complete)."""
    wanted = ["templates.json"] + ([CAPTIONS_FILE] if captions else [])
    return [name for name in wanted if not (folder / name).is_file()]


def data_dir(path: str | os.PathLike | None = None, *, captions: bool = True) -> Path:
    """The data set folder (see `configured_data_dir`), with its templates.json and, unless `captions` is
    false, its caption corpus; `DataMissingError` says what is missing and how to get it."""
    folder = configured_data_dir(path)
    missing = missing_data(folder, captions)
    if missing:
        raise DataMissingError(
            f"meme data set not found at {folder} (no {' or '.join(missing)}): run `make data` to build it "
            f"from its public sources, or set {DATA_DIR_ENV} to the folder that holds templates.json and "
            f"{CAPTIONS_FILE} (for example ../shared/data/memes)"
        )
    return folder


def load_templates(folder: Path) -> list[MemeTemplate]:
    with open(folder / "templates.json", encoding="utf-8") as f:
        entries = json.load(f)
    return [
        MemeTemplate(
            id=entry["id"],
            name=entry["name"],
            image_path=folder / entry["image"],
            width=entry["width"],
            height=entry["height"],
            text_boxes=tuple(entry.get("text_boxes") or ()),
            example=tuple(entry.get("example") or ()),
        )
        for entry in entries
    ]


def iter_captions(folder: Path) -> Iterator[Caption]:
    with gzip.open(folder / "captions.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            boxes = tuple(box.strip() for box in record["boxes"] if box and box.strip())
            if boxes:
                yield Caption(record["template"], boxes)


def split_by_template(
    captions: list[Caption], validation_fraction: float, seed: int
) -> tuple[list[Caption], list[Caption]]:
    """Split by caption, stratified by template, reproducibly: every template with at least two
    captions keeps one or more in each part."""
    by_template: dict[str, list[Caption]] = defaultdict(list)
    for caption in captions:
        by_template[caption.template].append(caption)
    rng = random.Random(seed)
    train: list[Caption] = []
    validation: list[Caption] = []
    for template in sorted(by_template):
        group = by_template[template]
        rng.shuffle(group)
        n_validation = round(len(group) * validation_fraction)
        if len(group) >= 2:
            n_validation = min(max(n_validation, 1), len(group) - 1)
        else:
            n_validation = 0
        validation.extend(group[:n_validation])
        train.extend(group[n_validation:])
    return train, validation
