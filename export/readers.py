"""Readers for other caption data sets, giving the `MemeTemplate` and `Caption` records of export/data.py.

- **Memefly** (the project this one follows): a JSON list of memes, each with `meme_name`, `meme_text`
  (a list of captions, one string a meme: its boxes are not split), `meme_bounding_box` (CSS box strings)
  and `meme_url`; the images are downloaded beside it as `images/<meme_name>.jpg`.
- **Flickr8k**: `Flickr8k.token.txt` (lines `<image>#<n><TAB><caption>`, often under `Flickr8k_text/`) or
  Kaggle's `captions.txt` (CSV with an `image,caption` header), and the photos in `Flicker8k_Dataset/`,
  `Flickr8k_Dataset/` or `Images/`. Each photo is a "template" with its five captions.

A file whose structure is wrong raises `DataFormatError`. A single bad record (a malformed line, an empty
caption, a missing or unreadable image) is skipped and reported in `CaptionData.skipped`, or raises with
`strict=True`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from export.data import Caption, MemeTemplate

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
FLICKR8K_CAPTION_FILES = ("Flickr8k.token.txt", "Flickr8k_text/Flickr8k.token.txt", "captions.txt")
FLICKR8K_IMAGE_FOLDERS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images")
KAGGLE_HEADER = ["image", "caption"]


class DataFormatError(ValueError):
    """A data set file that cannot be read as the format it should have; the message names the file."""


@dataclass(frozen=True)
class Skipped:
    where: str
    """The file and line (or JSON item) of the record."""
    reason: str
    """A short category, the same for every record skipped for that reason."""
    detail: str = ""


@dataclass
class CaptionData:
    templates: list[MemeTemplate] = field(default_factory=list)
    captions: list[Caption] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped_by_reason().items()))
        skipped = f"; skipped {len(self.skipped)} ({reasons})" if self.skipped else ""
        return f"{len(self.templates)} images, {len(self.captions)} captions{skipped}"


class _Collector:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.data = CaptionData()

    def skip(self, where: str, reason: str, detail: str = "") -> None:
        if self.strict:
            raise DataFormatError(f"{where}: {reason}{f' ({detail})' if detail else ''}")
        self.data.skipped.append(Skipped(where, reason, detail))


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header, or None when it is not an image Pillow can read."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return None


def _files_in(folder: Path) -> set[str]:
    return {entry.name for entry in os.scandir(folder) if entry.is_file()}


# --------------------------------------------------------------------------------------------------
# Memefly
# --------------------------------------------------------------------------------------------------

_CSS_PIXELS = re.compile(r"\b(left|top|width|height)\s*:\s*(-?[\d.]+)px")
_CSS_ROTATE = re.compile(r"rotate\(\s*(-?[\d.]+)deg\s*\)")


def css_box(css: str, width: int, height: int) -> dict | None:
    """A Memefly `meme_bounding_box` string → a templates.json-style text box (fractions of the image).

    Memefly's boxes are the CSS of the meme generator's editor; their pixels are taken to be the
    image's own. None when the string lacks a position or size.
    """
    values = {key: float(number) for key, number in _CSS_PIXELS.findall(css)}
    if set(values) != {"left", "top", "width", "height"} or width <= 0 or height <= 0:
        return None
    rotate = _CSS_ROTATE.search(css)
    # CSS rotate() turns clockwise, the renderer's `angle` anticlockwise: rotate(344deg) is angle 16.
    angle = (180.0 - float(rotate.group(1))) % 360.0 - 180.0 if rotate else 0.0

    def fraction(value: float, extent: int) -> float:
        return round(min(max(value / extent, 0.0), 1.0), 4)

    return {
        "anchor_x": fraction(values["left"], width),
        "anchor_y": fraction(values["top"], height),
        "scale_x": fraction(values["width"], width),
        "scale_y": fraction(values["height"], height),
        "angle": angle,
    }


def _memefly_image(images_dir: Path, files: set[str], name: str, url: object) -> Path | None:
    candidates = [name + suffix for suffix in IMAGE_SUFFIXES]
    if isinstance(url, str) and url:
        candidates.append(url.rsplit("/", 1)[-1])
    return next((images_dir / c for c in candidates if c in files), None)


def _display_name(meme_name: str) -> str:
    return " ".join(word.capitalize() for word in re.split(r"[-_\s]+", meme_name) if word)


def read_memefly(
    json_file: str | os.PathLike, images_dir: str | os.PathLike | None = None, *, strict: bool = False
) -> CaptionData:
    """Read a Memefly JSON file (`combined_data.json`) and its images (default: `images/` beside it)."""
    json_file = Path(json_file)
    images_dir = Path(images_dir) if images_dir is not None else json_file.parent / "images"
    try:
        entries = json.loads(json_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{json_file} is not a Memefly JSON file: {error}") from error
    if not isinstance(entries, list):
        raise DataFormatError(
            f"{json_file} is not a Memefly JSON file: expected a list of memes, got {type(entries).__name__}"
        )
    if not images_dir.is_dir():
        raise DataFormatError(f"Memefly images folder {images_dir} not found (expected <meme_name>.jpg files)")
    files = _files_in(images_dir)
    collector = _Collector(strict)
    by_id: dict[str, MemeTemplate] = {}
    for index, entry in enumerate(entries):
        where = f"{json_file.name} item {index}"
        if not isinstance(entry, dict):
            collector.skip(where, "not a meme object", type(entry).__name__)
            continue
        name, texts = entry.get("meme_name"), entry.get("meme_text")
        if not isinstance(name, str) or not name.strip():
            collector.skip(where, "no meme_name")
            continue
        name = name.strip()
        where = f"{where} ({name})"
        if not isinstance(texts, list):
            collector.skip(where, "no meme_text list", type(texts).__name__)
            continue
        template = by_id.get(name)
        if template is None:
            image_path = _memefly_image(images_dir, files, name, entry.get("meme_url"))
            size = _image_size(image_path) if image_path else None
            if image_path is None:
                collector.skip(where, "image not found", f"no {name}.jpg in {images_dir}; {len(texts)} captions")
                continue
            if size is None:
                collector.skip(where, "unreadable image", f"{image_path}; {len(texts)} captions")
                continue
            boxes = entry.get("meme_bounding_box") or []
            text_boxes = [css_box(b, *size) for b in boxes if isinstance(b, str)]
            text_boxes = sorted((b for b in text_boxes if b), key=lambda b: (b["anchor_y"], b["anchor_x"]))
            first = next((t.strip() for t in texts if isinstance(t, str) and t.strip()), "")
            template = MemeTemplate(
                id=name,
                name=_display_name(name),
                image_path=image_path,
                width=size[0],
                height=size[1],
                text_boxes=tuple(text_boxes),
                example=(first,) if first else (),
            )
            by_id[name] = template
            collector.data.templates.append(template)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                collector.skip(f"{where} meme_text {position}", "caption is not a string", type(text).__name__)
            elif not text.strip():
                collector.skip(f"{where} meme_text {position}", "empty caption")
            else:
                collector.data.captions.append(Caption(name, (text.strip(),)))
    return collector.data


# --------------------------------------------------------------------------------------------------
# Flickr8k
# --------------------------------------------------------------------------------------------------


def flickr8k_files(folder: str | os.PathLike) -> tuple[Path, Path]:
    """(captions file, images folder) of a Flickr8k folder, in the original or the Kaggle layout."""
    folder = Path(folder)
    captions = next((folder / name for name in FLICKR8K_CAPTION_FILES if (folder / name).is_file()), None)
    if captions is None:
        raise DataFormatError(f"no Flickr8k captions file in {folder} (looked for {', '.join(FLICKR8K_CAPTION_FILES)})")
    images = _flickr8k_images(folder)
    if images is None:
        raise DataFormatError(f"no Flickr8k images folder in {folder} (looked for {', '.join(FLICKR8K_IMAGE_FOLDERS)})")
    return captions, images


def _flickr8k_images(folder: Path) -> Path | None:
    for name in FLICKR8K_IMAGE_FOLDERS:
        candidate = folder / name
        if candidate.is_dir():
            # The original zip unpacks as Flickr8k_Dataset/Flicker8k_Dataset/ on some mirrors.
            nested = _flickr8k_images(candidate) if not any(candidate.glob("*.jpg")) else None
            return nested or candidate
    return None


def _token_lines(path: Path, lines: Iterable[str]) -> Iterable[tuple[str, str | None, str]]:
    """(where, image, caption) of `Flickr8k.token.txt` lines; image None when the line is malformed."""
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        image = key.strip().rsplit("#", 1)[0] if "#" in key else key.strip()
        yield f"{path.name} line {number}", (image if tab and image else None), caption


def _kaggle_rows(path: Path, lines: list[str], header: int) -> Iterable[tuple[str, str | None, str]]:
    """(where, image, caption) of Kaggle `captions.txt` rows after the header at index `header`."""
    reader = csv.reader(lines[header + 1 :])
    for row in reader:
        where = f"{path.name} line {header + 1 + reader.line_num}"
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip():
            yield where, None, ""
        else:
            # An unquoted comma in a caption splits it into more fields; image names never hold one.
            yield where, row[0].strip(), ",".join(row[1:])


def read_flickr8k(
    folder: str | os.PathLike | None = None,
    *,
    captions_file: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    strict: bool = False,
) -> CaptionData:
    """Read Flickr8k from `folder` (files found by `flickr8k_files`), or from the files given."""
    if captions_file is None or images_dir is None:
        if folder is None:
            raise ValueError("give the Flickr8k folder, or both captions_file and images_dir")
        found_captions, found_images = flickr8k_files(folder)
        captions_file = captions_file or found_captions
        images_dir = images_dir or found_images
    captions_file, images_dir = Path(captions_file), Path(images_dir)
    if not images_dir.is_dir():
        raise DataFormatError(f"Flickr8k images folder {images_dir} not found")
    try:
        text = captions_file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{captions_file} is not UTF-8 text: {error}") from error
    lines = text.splitlines(keepends=True)
    header = next((i for i, line in enumerate(lines) if line.strip()), 0)
    first = lines[header].strip() if lines else ""
    if [name.strip().lower() for name in first.split(",")] == KAGGLE_HEADER:
        records = _kaggle_rows(captions_file, lines, header)
    elif any("\t" in line for line in lines[header : header + 20]):
        records = _token_lines(captions_file, lines)
    else:
        raise DataFormatError(
            f"{captions_file} is neither Flickr8k.token.txt (<image>#<n><TAB><caption> lines) nor Kaggle "
            f"captions.txt (an 'image,caption' header); its first line is {first[:80]!r}"
        )

    files = _files_in(images_dir)
    collector = _Collector(strict)
    templates: dict[str, MemeTemplate | None] = {}
    for where, image, caption in records:
        caption = caption.strip()
        if image is None:
            collector.skip(where, "malformed line", "expected an image name and a caption")
            continue
        if not caption:
            collector.skip(where, "empty caption", image)
            continue
        if image not in templates:
            templates[image] = _flickr8k_template(images_dir, files, image, caption)
        template = templates[image]
        if template is None:
            reason = "image not found" if image not in files else "unreadable image"
            collector.skip(where, reason, str(images_dir / image))
            continue
        collector.data.captions.append(Caption(template.id, (caption,)))
    collector.data.templates = [t for t in templates.values() if t is not None]
    return collector.data


def _flickr8k_template(images_dir: Path, files: set[str], image: str, caption: str) -> MemeTemplate | None:
    if image not in files:
        return None
    path = images_dir / image
    size = _image_size(path)
    if size is None:
        return None
    return MemeTemplate(
        id=Path(image).stem,
        name=Path(image).stem,
        image_path=path,
        width=size[0],
        height=size[1],
        text_boxes=(),
        example=(caption,),
    )
