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

from memefly.paths import DEFAULT_DATA_DIR

DATA_DIR_ENV = "MEMEFLY_DATA_DIR"


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


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data set folder: `path`, else $MEMEFLY_DATA_DIR, else `../shared/data/memes`."""
    folder = Path(path or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    if not (folder / "templates.json").is_file():
        raise DataMissingError(
            f"meme data set not found at {folder} (no templates.json); "
            f"set {DATA_DIR_ENV} to the folder that holds templates.json and captions.jsonl.gz"
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
